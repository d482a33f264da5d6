package bpf

import (
	"encoding/binary"
	"fmt"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// One table version is one byte string, stored as the chunks of one BPF array map (CHUNK_SIZE-byte
// values; sg.c reads it through a one-chunk cache, so a table that fits one chunk costs one map lookup per
// packet). Offsets are in bytes; every region starts on a 64-byte boundary and holds power-of-two sized
// elements, so no element straddles two chunks:
//
//	0                   header (generation, counts, offsets of every region, flags, IPv4 index shift)
//	offV4Idx …          IPv4 index: u32 per value of the address's top bits (ClassifierArrays.V4Index)
//	off4 …              IPv4 address intervals: {u32 start, u32 node}, sorted by start
//	off6 …              IPv6 address intervals: {u64 hi, u64 lo, u32 node, pad} (32 bytes)
//	offNodes …          nodes: {tcpOff, tcpCnt, udpOff, udpCnt u32; tcpNoPort, udpNoPort, icmp, other i32}
//	offPorts …          destination-port intervals: {u16 start, pad, i32 entry}
//	offEntries …        entries: {u32 action, i32 ruleIndex, u32 sg, pad}
//	offSGs …            one sgId per 64 bytes, NUL-padded
//	offCounts …         one u64 packet counter per entry, which the program increments (zero when written)
//
// The regions are dataplane.Classifier's flat arrays (a node is one ClassifierAnswer), so the kernel and
// the Go engine answer from the same structure: two binary searches (address, then port), each bounded
// by the size of the structure, never a scan of the rules.
const (
	chunkShift  = 16 // CHUNK_SHIFT in sg.c
	chunkSize   = 1 << chunkShift
	hdrSize     = 64
	hdrFlagNoSG = 1
	maxSGName   = 64
)

// serialise builds the bytes of table t at generation gen, padded to whole chunks, in buf when it is
// big enough (a new buffer otherwise).
func serialise(t *compiler.Table, gen uint64, buf []byte) ([]byte, error) {
	if len(t.Entries) == 0 || !t.Entries[len(t.Entries)-1].Implicit() {
		return nil, fmt.Errorf("serialise table %s/%s: it does not end with the implicit DROP", t.ENI, t.Direction)
	}
	if len(t.Entries) > 1<<26 {
		return nil, fmt.Errorf("serialise table %s/%s: %d entries is too many", t.ENI, t.Direction, len(t.Entries))
	}
	a := dataplane.NewClassifier(t).Arrays()
	if len(a.V4Starts) == 0 || a.V4Starts[0] != 0 || len(a.V6Hi) == 0 || a.V6Hi[0] != 0 || a.V6Lo[0] != 0 {
		return nil, fmt.Errorf("serialise table %s/%s: classifier address intervals do not start at 0", t.ENI, t.Direction)
	}
	if len(a.V4Index) != 1<<(32-a.V4Shift)+1 {
		return nil, fmt.Errorf("serialise table %s/%s: IPv4 index of %d entries for shift %d", t.ENI, t.Direction, len(a.V4Index), a.V4Shift)
	}
	sgIdx := map[string]uint32{}
	var sgs []string
	for _, e := range t.Entries {
		if e.SgID == "" {
			continue
		}
		if _, ok := sgIdx[e.SgID]; !ok {
			if len(e.SgID) > maxSGName {
				return nil, fmt.Errorf("serialise table %s/%s: sgId %q longer than %d bytes", t.ENI, t.Direction, e.SgID, maxSGName)
			}
			sgIdx[e.SgID] = uint32(len(sgs))
			sgs = append(sgs, e.SgID)
		}
	}
	end := hdrSize
	region := func(n, size int) int {
		o := end
		end = (o + n*size + 63) &^ 63
		return o
	}
	offV4Idx := region(len(a.V4Index), 4)
	off4 := region(len(a.V4Starts), 8)
	off6 := region(len(a.V6Hi), 32)
	offNodes := region(len(a.Answers), 32)
	offPorts := region(len(a.PortStart), 8)
	offEntries := region(len(t.Entries), 16)
	offSGs := region(len(sgs), maxSGName)
	offCounts := region(len(t.Entries), 8)
	if end >= 1<<31 {
		return nil, fmt.Errorf("serialise table %s/%s: %d bytes is too many", t.ENI, t.Direction, end)
	}
	size := (end + chunkSize - 1) / chunkSize * chunkSize
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	clear(buf)
	le := binary.LittleEndian
	le.PutUint64(buf[0:], gen)
	le.PutUint32(buf[8:], uint32(len(a.V4Starts)))
	le.PutUint32(buf[12:], uint32(len(a.V6Hi)))
	for i, v := range []int{off4, off6, offNodes, offPorts, offEntries, len(t.Entries), offSGs} {
		le.PutUint32(buf[16+4*i:], uint32(v))
	}
	if t.NoSG {
		le.PutUint32(buf[44:], hdrFlagNoSG)
	}
	le.PutUint32(buf[48:], uint32(offV4Idx))
	le.PutUint32(buf[52:], uint32(a.V4Shift))
	le.PutUint32(buf[56:], uint32(offCounts))
	for i, v := range a.V4Index {
		le.PutUint32(buf[offV4Idx+i*4:], v)
	}
	for i, v := range a.V4Starts {
		o := off4 + i*8
		le.PutUint32(buf[o:], v)
		le.PutUint32(buf[o+4:], uint32(a.V4Answer[i]))
	}
	for i := range a.V6Hi {
		o := off6 + i*32
		le.PutUint64(buf[o:], a.V6Hi[i])
		le.PutUint64(buf[o+8:], a.V6Lo[i])
		le.PutUint32(buf[o+16:], uint32(a.V6Answer[i]))
	}
	for i, n := range a.Answers {
		o := offNodes + i*32
		for j, v := range []uint32{n.TCPOff, n.TCPLen, n.UDPOff, n.UDPLen,
			uint32(n.TCPNoPort), uint32(n.UDPNoPort), uint32(n.ICMP), uint32(n.Other)} {
			le.PutUint32(buf[o+4*j:], v)
		}
	}
	for i, p := range a.PortStart {
		o := offPorts + i*8
		le.PutUint16(buf[o:], p)
		le.PutUint32(buf[o+4:], uint32(a.PortEntry[i]))
	}
	for i, e := range t.Entries {
		o := offEntries + i*16
		if e.Action == model.Accept {
			le.PutUint32(buf[o:], 1)
		}
		le.PutUint32(buf[o+4:], uint32(int32(e.RuleIndex)))
		le.PutUint32(buf[o+8:], sgIdx[e.SgID])
	}
	for i, s := range sgs {
		copy(buf[offSGs+i*maxSGName:], s)
	}
	return buf, nil
}
