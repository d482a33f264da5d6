package bpf

import (
	"fmt"
	"unsafe"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// One table version is one byte string, stored as the chunks of one BPF array map (chunkSize-byte
// values; sg.c reads it through a one-chunk cache, so a lookup costs one map lookup per chunk it moves to).
// Offsets are in bytes; every region starts on a 64-byte boundary and holds power-of-two sized elements,
// so no element straddles two chunks. Every element is a struct of sg.c whose Go type bpf2go generates
// (sg_bpfel.go), so the two sides cannot disagree on a field's offset:
//
//	0                   header (sgHdr: generation, counts, offsets of every region, flags, IPv4 index shift)
//	OffV4idx …          IPv4 index: u32 per value of the address's top bits (ClassifierArrays.V4Index)
//	Off4 …              IPv4 address intervals (sgV4iv), sorted by start
//	Off6 …              IPv6 address intervals (sgV6iv)
//	OffNodes …          nodes (sgNode): where each answer's port intervals are, and its port-less entries
//	OffPorts …          destination-port intervals (sgPortiv)
//	OffEntries …        entries (sgEntry: action, rule index, SG)
//	OffSgs …            one sgId per nameSize bytes, NUL-padded
//	OffCounts …         one u64 packet counter per entry, which the program increments (zero when written)
//
// The regions are dataplane.Classifier's flat arrays (a node is one ClassifierAnswer), so the kernel and
// the Go engine answer from the same structure: two binary searches (address, then port), each bounded
// by the size of the structure, never a scan of the rules.
const (
	chunkShift  = int(sgSgConstSG_CHUNK_SHIFT)
	chunkSize   = int(sgSgConstSG_CHUNK_SIZE)
	hdrSize     = int(sgSgConstSG_HDR_SIZE)
	hdrFlagNoSG = uint32(sgSgConstSG_HDR_FLAG_NOSG)
	nameSize    = int(sgSgConstSG_NAME_SIZE)
)

// serialise builds the bytes of table t at generation gen, padded to whole chunks, in buf when it is
// big enough (a new buffer otherwise).
func serialise(t *compiler.Table, gen uint64, buf []byte) ([]byte, error) {
	a, err := kernelArrays(t)
	if err != nil {
		return nil, fmt.Errorf("serialise table %s/%s: %w", t.ENI, t.Direction, err)
	}
	sgs, sgIdx, err := tableSGs(t)
	if err != nil {
		return nil, fmt.Errorf("serialise table %s/%s: %w", t.ENI, t.Direction, err)
	}
	h, end := layoutOf(a, len(t.Entries), len(sgs))
	if end >= 1<<31 {
		return nil, fmt.Errorf("serialise table %s/%s: %d bytes is too many", t.ENI, t.Direction, end)
	}
	h.Gen = gen
	if t.NoSG {
		h.Flags = hdrFlagNoSG
	}
	size := (end + chunkSize - 1) / chunkSize * chunkSize
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	clear(buf)
	regionOf[sgHdr](buf, 0, 1)[0] = h
	copy(regionOf[uint32](buf, h.OffV4idx, len(a.V4Index)), a.V4Index)
	v4 := regionOf[sgV4iv](buf, h.Off4, len(a.V4Starts))
	for i := range v4 {
		v4[i] = sgV4iv{Start: a.V4Starts[i], Node: uint32(a.V4Answer[i])}
	}
	v6 := regionOf[sgV6iv](buf, h.Off6, len(a.V6Hi))
	for i := range v6 {
		v6[i] = sgV6iv{Hi: a.V6Hi[i], Lo: a.V6Lo[i], Node: uint32(a.V6Answer[i])}
	}
	nodes := regionOf[sgNode](buf, h.OffNodes, len(a.Answers))
	for i, n := range a.Answers {
		nodes[i] = sgNode{TcpOff: n.TCPOff, TcpCnt: n.TCPLen, UdpOff: n.UDPOff, UdpCnt: n.UDPLen,
			TcpNp: n.TCPNoPort, UdpNp: n.UDPNoPort, Icmp: n.ICMP, Other: n.Other}
	}
	ports := regionOf[sgPortiv](buf, h.OffPorts, len(a.PortStart))
	for i := range ports {
		ports[i] = sgPortiv{Start: a.PortStart[i], Entry: a.PortEntry[i]}
	}
	entries := regionOf[sgEntry](buf, h.OffEntries, len(t.Entries))
	for i, e := range t.Entries {
		entries[i] = sgEntry{RuleIndex: int32(e.RuleIndex), Sg: sgIdx[e.SgID]}
		if e.Action == model.Accept {
			entries[i].Action = 1
		}
	}
	for i, s := range sgs {
		copy(buf[int(h.OffSgs)+i*nameSize:], s)
	}
	return buf, nil
}

// regionOf is the n elements of type T at byte off of buf (regions are 64-byte aligned, and the
// generated types have the C layout on this little-endian host); nil when n is 0.
func regionOf[T any](buf []byte, off uint32, n int) []T {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&buf[off])), n)
}

// kernelArrays returns the classifier arrays of t after checking what the program relies on.
func kernelArrays(t *compiler.Table) (*dataplane.ClassifierArrays, error) {
	if len(t.Entries) == 0 || !t.Entries[len(t.Entries)-1].Implicit() {
		return nil, fmt.Errorf("it does not end with the implicit DROP")
	}
	if len(t.Entries) > 1<<26 {
		return nil, fmt.Errorf("%d entries is too many", len(t.Entries))
	}
	a := dataplane.NewClassifier(t).Arrays()
	if len(a.V4Starts) == 0 || a.V4Starts[0] != 0 || len(a.V6Hi) == 0 || a.V6Hi[0] != 0 || a.V6Lo[0] != 0 {
		return a, fmt.Errorf("classifier address intervals do not start at 0")
	}
	if len(a.V4Index) != 1<<(32-a.V4Shift)+1 {
		return a, fmt.Errorf("IPv4 index of %d entries for shift %d", len(a.V4Index), a.V4Shift)
	}
	return a, nil
}

// tableSGs returns the distinct sgIds of t's entries in first-use order and each one's index.
func tableSGs(t *compiler.Table) ([]string, map[string]uint32, error) {
	sgIdx := map[string]uint32{}
	var sgs []string
	for _, e := range t.Entries {
		if _, ok := sgIdx[e.SgID]; ok || e.SgID == "" {
			continue
		}
		if len(e.SgID) > nameSize {
			return nil, nil, fmt.Errorf("sgId %q longer than %d bytes", e.SgID, nameSize)
		}
		sgIdx[e.SgID] = uint32(len(sgs))
		sgs = append(sgs, e.SgID)
	}
	return sgs, sgIdx, nil
}

// layoutOf places the regions of a table with these arrays, entries and SGs; returns the header
// (generation and flags unset) and the end of the last region.
func layoutOf(a *dataplane.ClassifierArrays, entries, sgs int) (sgHdr, int) {
	end := hdrSize
	region := func(n, size int) uint32 {
		o := end
		end = (o + n*size + 63) &^ 63
		return uint32(o)
	}
	h := sgHdr{N4: uint32(len(a.V4Starts)), N6: uint32(len(a.V6Hi)), N_entries: uint32(entries), V4shift: uint32(a.V4Shift)}
	h.OffV4idx = region(len(a.V4Index), 4)
	h.Off4 = region(len(a.V4Starts), int(unsafe.Sizeof(sgV4iv{})))
	h.Off6 = region(len(a.V6Hi), int(unsafe.Sizeof(sgV6iv{})))
	h.OffNodes = region(len(a.Answers), int(unsafe.Sizeof(sgNode{})))
	h.OffPorts = region(len(a.PortStart), int(unsafe.Sizeof(sgPortiv{})))
	h.OffEntries = region(entries, int(unsafe.Sizeof(sgEntry{})))
	h.OffSgs = region(sgs, nameSize)
	h.OffCounts = region(entries, 8)
	return h, end
}
