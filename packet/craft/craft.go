// Package craft builds frames byte by byte for tests, scenarios and the capture generator: just enough
// of each header for decoders and Wireshark to read them (IPv4 header checksums are set; transport
// checksums are left zero, which capture tools accept as "not computed").
package craft

import (
	"encoding/binary"
	"net/netip"
)

// VLAN TPIDs.
const (
	TPID8021Q  = 0x8100
	TPID8021AD = 0x88a8
	TPID9100   = 0x9100
)

// Frag describes IPv4/IPv6 fragmentation of one packet: Offset in 8-byte units, More when more follow.
type Frag struct {
	ID     uint32
	Offset uint16
	More   bool
}

// TCP returns a 20-byte TCP header followed by payload.
func TCP(sport, dport uint16, flags uint8, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 1000)
	b[12] = 5 << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	copy(b[20:], payload)
	return b
}

// UDP returns a UDP header followed by payload.
func UDP(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[8:], payload)
	return b
}

// ICMP returns an ICMP or ICMPv6 message: type, code, zero checksum, then rest (e.g. id+seq, or the
// unused word plus the quoted packet of an error).
func ICMP(typ, code uint8, rest []byte) []byte {
	b := make([]byte, 4+len(rest))
	b[0], b[1] = typ, code
	copy(b[4:], rest)
	return b
}

// Echo returns the body of an echo request/reply with identifier id and sequence seq.
func Echo(typ uint8, id, seq uint16) []byte {
	r := make([]byte, 4+8)
	binary.BigEndian.PutUint16(r[0:], id)
	binary.BigEndian.PutUint16(r[2:], seq)
	return ICMP(typ, 0, r)
}

// ICMPError returns an ICMP error message quoting quoted (an IP packet).
func ICMPError(typ, code uint8, quoted []byte) []byte {
	return ICMP(typ, code, append(make([]byte, 4), quoted...))
}

// IPv4 returns an IPv4 packet around payload; f may be nil for an unfragmented packet.
func IPv4(src, dst netip.Addr, proto uint8, payload []byte, f *Frag) []byte {
	b := make([]byte, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	if f != nil {
		binary.BigEndian.PutUint16(b[4:], uint16(f.ID))
		v := f.Offset & 0x1fff
		if f.More {
			v |= 0x2000
		}
		binary.BigEndian.PutUint16(b[6:], v)
	}
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[10:], ^uint16(sum))
	copy(b[20:], payload)
	return b
}

// Ext is an IPv6 extension header of type Type (0, 43 or 60) with Len 8-byte units of body after the
// first 8 bytes.
type Ext struct {
	Type uint8
	Len  uint8
}

// IPv6 returns an IPv6 packet around payload with the given extension headers, and a fragment header
// after them when f is not nil.
func IPv6(src, dst netip.Addr, proto uint8, payload []byte, exts []Ext, f *Frag) []byte {
	var hdrs []byte
	types := make([]uint8, 0, len(exts)+1)
	for _, e := range exts {
		types = append(types, e.Type)
	}
	if f != nil {
		types = append(types, 44)
	}
	first := proto
	if len(types) > 0 {
		first = types[0]
	}
	for i, e := range exts {
		next := proto
		if i+1 < len(types) {
			next = types[i+1]
		}
		h := make([]byte, 8+int(e.Len)*8)
		h[0], h[1] = next, e.Len
		if e.Type == 60 || e.Type == 0 {
			h[2], h[3] = 1, byte(len(h)-4) // one PadN option filling the header
		}
		hdrs = append(hdrs, h...)
	}
	if f != nil {
		h := make([]byte, 8)
		h[0] = proto
		v := f.Offset << 3
		if f.More {
			v |= 1
		}
		binary.BigEndian.PutUint16(h[2:], v)
		binary.BigEndian.PutUint32(h[4:], f.ID)
		hdrs = append(hdrs, h...)
	}
	b := make([]byte, 40, 40+len(hdrs)+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(hdrs)+len(payload)))
	b[6] = first
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b = append(b, hdrs...)
	return append(b, payload...)
}

// EtherTypeOf returns the ethertype of an IP packet by its version nibble.
func EtherTypeOf(ip []byte) uint16 {
	if len(ip) > 0 && ip[0]>>4 == 6 {
		return 0x86dd
	}
	return 0x0800
}

// Ethernet returns an Ethernet II frame; each tag is (TPID, VLAN ID), outermost first.
func Ethernet(dst, src [6]byte, etherType uint16, tags [][2]uint16, payload []byte) []byte {
	b := make([]byte, 0, 14+4*len(tags)+len(payload))
	b = append(b, dst[:]...)
	b = append(b, src[:]...)
	for _, t := range tags {
		b = binary.BigEndian.AppendUint16(b, t[0])
		b = binary.BigEndian.AppendUint16(b, t[1])
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

// SLL returns a Linux cooked (v1) frame sent by src.
func SLL(src [6]byte, etherType uint16, payload []byte) []byte {
	b := make([]byte, 16, 16+len(payload))
	binary.BigEndian.PutUint16(b[0:], 4) // sent by us
	binary.BigEndian.PutUint16(b[2:], 1) // ARPHRD_ETHER
	binary.BigEndian.PutUint16(b[4:], 6)
	copy(b[6:], src[:])
	binary.BigEndian.PutUint16(b[14:], etherType)
	return append(b, payload...)
}

// SLL2 returns a Linux cooked v2 frame sent by src on interface ifindex.
func SLL2(src [6]byte, etherType uint16, ifindex uint32, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], etherType)
	binary.BigEndian.PutUint32(b[4:], ifindex)
	binary.BigEndian.PutUint16(b[8:], 1)
	b[10] = 4
	b[11] = 6
	copy(b[12:], src[:])
	return append(b, payload...)
}

// ARP returns an ARP request payload (for an Ethernet frame of type 0x0806).
func ARP(srcMAC [6]byte, srcIP, dstIP netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)
	binary.BigEndian.PutUint16(b[2:], 0x0800)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], 1)
	copy(b[8:], srcMAC[:])
	s, d := srcIP.As4(), dstIP.As4()
	copy(b[14:], s[:])
	copy(b[24:], d[:])
	return b
}

// MAC parses "02:00:00:00:00:01"-style addresses; it returns the zero MAC on bad input (test helper).
func MAC(s string) [6]byte {
	var m [6]byte
	if len(s) != 17 {
		return m
	}
	for i := 0; i < 6; i++ {
		m[i] = hex(s[i*3])<<4 | hex(s[i*3+1])
	}
	return m
}

func hex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}
