package bpf

import (
	"encoding/binary"
	"fmt"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// One table version lives in one BPF array map of 64-byte records (sg.c reads it):
//
//	record 0            header (generation, counts, record offsets of every region, flags)
//	off4 …              IPv4 address intervals: 8 × {u32 start, u32 node} per record, sorted by start
//	off6 …              IPv6 address intervals: 2 × {u64 hi, u64 lo, u32 node, pad} per record
//	offNodes …          nodes: 2 × {tcpOff, tcpCnt, udpOff, udpCnt u32; tcpNoPort, udpNoPort, icmp, other i32}
//	offPorts …          destination-port intervals: 8 × {u16 start, pad, i32 entry} per record
//	offEntries …        entries: 4 × {u32 action, i32 ruleIndex, u32 sg, pad} per record
//	offSGs …            one sgId per record, NUL-padded
//
// The regions are dataplane.Classifier's flat arrays (a node is one ClassifierAnswer), so the kernel and
// the Go engine answer from the same structure: two binary searches (address, then port), each bounded
// by the size of the structure, never a scan of the rules.
const (
	recSize     = 64
	hdrFlagNoSG = 1
	maxSGName   = 64
)

// serialise builds the records of table t at generation gen.
func serialise(t *compiler.Table, gen uint64) ([]byte, error) {
	if len(t.Entries) == 0 || !t.Entries[len(t.Entries)-1].Implicit() {
		return nil, fmt.Errorf("serialise table %s/%s: it does not end with the implicit DROP", t.ENI, t.Direction)
	}
	if len(t.Entries) > 1<<30 {
		return nil, fmt.Errorf("serialise table %s/%s: %d entries is too many", t.ENI, t.Direction, len(t.Entries))
	}
	a := dataplane.NewClassifier(t).Arrays()
	if len(a.V4Starts) == 0 || a.V4Starts[0] != 0 || len(a.V6Hi) == 0 || a.V6Hi[0] != 0 || a.V6Lo[0] != 0 {
		return nil, fmt.Errorf("serialise table %s/%s: classifier address intervals do not start at 0", t.ENI, t.Direction)
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
	ceil := func(n, per int) int { return (n + per - 1) / per }
	off4 := 1
	off6 := off4 + ceil(len(a.V4Starts), 8)
	offNodes := off6 + ceil(len(a.V6Hi), 2)
	offPorts := offNodes + ceil(len(a.Answers), 2)
	offEntries := offPorts + ceil(len(a.PortStart), 8)
	offSGs := offEntries + ceil(len(t.Entries), 4)
	total := offSGs + len(sgs)
	if total >= 1<<31 {
		return nil, fmt.Errorf("serialise table %s/%s: %d records is too many", t.ENI, t.Direction, total)
	}
	buf := make([]byte, total*recSize)
	le := binary.LittleEndian
	h := buf[:recSize]
	le.PutUint64(h[0:], gen)
	le.PutUint32(h[8:], uint32(len(a.V4Starts)))
	le.PutUint32(h[12:], uint32(len(a.V6Hi)))
	for i, v := range []int{off4, off6, offNodes, offPorts, offEntries, len(t.Entries), offSGs} {
		le.PutUint32(h[16+4*i:], uint32(v))
	}
	if t.NoSG {
		le.PutUint32(h[44:], hdrFlagNoSG)
	}
	for i, v := range a.V4Starts {
		o := off4*recSize + i*8
		le.PutUint32(buf[o:], v)
		le.PutUint32(buf[o+4:], uint32(a.V4Answer[i]))
	}
	for i := range a.V6Hi {
		o := off6*recSize + i*32
		le.PutUint64(buf[o:], a.V6Hi[i])
		le.PutUint64(buf[o+8:], a.V6Lo[i])
		le.PutUint32(buf[o+16:], uint32(a.V6Answer[i]))
	}
	for i, n := range a.Answers {
		o := offNodes*recSize + i*32
		for j, v := range []uint32{n.TCPOff, n.TCPLen, n.UDPOff, n.UDPLen,
			uint32(n.TCPNoPort), uint32(n.UDPNoPort), uint32(n.ICMP), uint32(n.Other)} {
			le.PutUint32(buf[o+4*j:], v)
		}
	}
	for i, p := range a.PortStart {
		o := offPorts*recSize + i*8
		le.PutUint16(buf[o:], p)
		le.PutUint32(buf[o+4:], uint32(a.PortEntry[i]))
	}
	for i, e := range t.Entries {
		o := offEntries*recSize + i*16
		if e.Action == model.Accept {
			le.PutUint32(buf[o:], 1)
		}
		le.PutUint32(buf[o+4:], uint32(int32(e.RuleIndex)))
		le.PutUint32(buf[o+8:], sgIdx[e.SgID])
	}
	for i, s := range sgs {
		copy(buf[(offSGs+i)*recSize:], s)
	}
	return buf, nil
}
