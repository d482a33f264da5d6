package bpf

import (
	"encoding/binary"
	"net/netip"

	"github.com/sgsim/sgsim/packet/craft"
)

// frame describes a test packet; build renders it as an Ethernet frame.
type frame struct {
	vlans    int // number of 802.1Q/802.1ad tags
	src, dst netip.Addr
	proto    uint8
	sport    uint16
	dport    uint16
	tcpFlags uint8
	icmpType uint8
	icmpID   uint16
	fragOff  uint16 // in 8-byte units; non-zero = non-first fragment
	mf       bool   // more fragments follow (with fragOff 0: a first fragment)
	fragID   uint32
	extHdrs  int    // IPv6 destination-options headers before the payload
	truncL4  bool   // cut the L4 header short
	quote    *frame // ICMP error payload
}

func (f *frame) l4() []byte {
	switch f.proto {
	case 6:
		b := make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], f.sport)
		binary.BigEndian.PutUint16(b[2:], f.dport)
		b[12] = 5 << 4
		b[13] = f.tcpFlags
		return b
	case 17:
		b := make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], f.sport)
		binary.BigEndian.PutUint16(b[2:], f.dport)
		binary.BigEndian.PutUint16(b[4:], 8)
		return b
	case 1, 58:
		b := make([]byte, 8)
		b[0] = f.icmpType
		binary.BigEndian.PutUint16(b[4:], f.icmpID)
		if f.quote != nil {
			b = append(b, f.quote.ip()...)
		}
		return b
	}
	return make([]byte, 8)
}

func (f *frame) ip() []byte {
	l4 := f.l4()
	if f.truncL4 {
		l4 = l4[:3]
	}
	if f.fragOff != 0 {
		l4 = make([]byte, 16) // payload of a later fragment: no header
	}
	frag := &craft.Frag{ID: f.fragID, Offset: f.fragOff, More: f.mf}
	if f.src.Is4() {
		return craft.IPv4(f.src, f.dst, f.proto, l4, frag)
	}
	if f.fragOff == 0 && !f.mf {
		frag = nil // IPv6 has no fragment fields outside a fragment header
	}
	exts := make([]craft.Ext, f.extHdrs)
	for i := range exts {
		exts[i].Type = 60 // destination options
	}
	return craft.IPv6(f.src, f.dst, f.proto, l4, exts, frag)
}

func (f *frame) build() []byte {
	b := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1}
	for i := range f.vlans {
		tpid := uint16(0x8100)
		if i == 0 && f.vlans > 1 {
			tpid = 0x88a8
		}
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, uint16(100+i))
	}
	et := uint16(0x0800)
	if f.src.Is6() {
		et = 0x86dd
	}
	b = binary.BigEndian.AppendUint16(b, et)
	b = append(b, f.ip()...)
	for len(b) < 60 {
		b = append(b, 0) // Ethernet padding
	}
	return b
}

// reverse returns the reply of f (ports and addresses swapped; echo request ↔ reply).
func (f frame) reverse() frame {
	r := f
	r.src, r.dst = f.dst, f.src
	r.sport, r.dport = f.dport, f.sport
	switch {
	case f.proto == 1 && f.icmpType == 8:
		r.icmpType = 0
	case f.proto == 58 && f.icmpType == 128:
		r.icmpType = 129
	}
	return r
}

func rawFrame(ethertype uint16, payload int) []byte {
	b := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1}
	b = binary.BigEndian.AppendUint16(b, ethertype)
	return append(b, make([]byte, payload)...)
}
