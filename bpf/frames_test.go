package bpf

import (
	"encoding/binary"
	"net/netip"
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
	if f.src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		fl := f.fragOff & 0x1fff
		if f.mf {
			fl |= 0x2000
		}
		binary.BigEndian.PutUint16(h[4:], uint16(f.fragID))
		binary.BigEndian.PutUint16(h[6:], fl)
		h[8] = 64
		h[9] = f.proto
		s, d := f.src.As4(), f.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(h, l4...)
	}
	var ext []byte
	next := f.proto
	if f.fragOff != 0 || f.mf {
		fr := make([]byte, 8)
		fr[0] = next
		fo := f.fragOff << 3
		if f.mf {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fr[2:], fo)
		binary.BigEndian.PutUint32(fr[4:], f.fragID)
		ext = append(fr, ext...)
		next = 44
	}
	for range f.extHdrs {
		o := make([]byte, 8)
		o[0] = next
		o[2] = 1 // PadN filling the header
		o[3] = 4
		ext = append(o, ext...)
		next = 60
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = next
	h[7] = 64
	s, d := f.src.As16(), f.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, ext...), l4...)
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
