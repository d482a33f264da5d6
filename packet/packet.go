// Package packet decodes captured frames into what security-group matching and connection tracking
// need (addresses, protocol, ports, TCP flags, ICMP type and quoted flow, fragment facts, SPEC §2
// classification), without allocating: it reads typed views of the frame's bytes.
package packet

import (
	"encoding/binary"
	"net/netip"
)

// Link types (pcap LINKTYPE_* values) the decoder understands.
const (
	LinkNull     = 0   // BSD loopback: 4-byte host-order address family
	LinkEthernet = 1   // Ethernet II / 802.3
	LinkRawBSD   = 12  // DLT_RAW on some BSDs, as libpcap writes it
	LinkRawBSD2  = 14  // DLT_RAW on others
	LinkRaw      = 101 // raw IPv4 or IPv6, version nibble decides
	LinkLoop     = 108 // OpenBSD loopback: network-order address family
	LinkSLL      = 113 // Linux cooked capture v1
	LinkIPv4     = 228 // raw IPv4
	LinkIPv6     = 229 // raw IPv6
	LinkSLL2     = 276 // Linux cooked capture v2
)

// Class is the SPEC §2 classification of a frame before any rule is consulted.
type Class uint8

const (
	ClassIP        Class = iota // an IP packet the rules decide
	ClassARP                    // ARP: passes (reason arp)
	ClassND                     // ICMPv6 neighbour discovery 133–136: passes (reason nd)
	ClassNotIP                  // any other non-IP frame: dropped (reason not-ip)
	ClassMalformed              // IP too short or malformed to classify: dropped (reason malformed)
)

var classNames = [...]string{"ip", "arp", "nd", "not-ip", "malformed"}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "unknown"
}

// IP protocol numbers.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// TCP flag bits.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// Tuple is a flow's 5-tuple. Ports are zero when HasPorts is false.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
	HasPorts         bool
}

// Reverse returns the tuple of the other direction.
func (t Tuple) Reverse() Tuple {
	return Tuple{Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort, Proto: t.Proto, HasPorts: t.HasPorts}
}

// Decoded is one decoded frame. It holds no references into the frame, so it may outlive it.
type Decoded struct {
	Class Class
	// Detail says why a frame is not-ip or malformed (a constant string: no allocation).
	Detail string

	HasMAC         bool
	SrcMAC, DstMAC [6]byte
	VLANs          uint8 // number of 802.1Q/802.1ad tags looked through

	Tuple // valid when Class is ClassIP or ClassND

	TCPFlags uint8

	IsICMP   bool // ICMP (v4) or ICMPv6 with its type and code read
	ICMPType uint8
	ICMPCode uint8
	// ICMPID is the echo identifier of echo requests and replies (also in the ports, as EchoPorts puts
	// it, so that the echo exchange tracks like a flow).
	ICMPID uint16
	// ICMPError: the ICMP message is an error quoting a packet; Inner is that packet's tuple as it was
	// sent (HasInner false when the quote is too short to read).
	ICMPError bool
	HasInner  bool
	Inner     Tuple

	// Fragment facts: Fragment is set for any fragment; FirstFragment for the one at offset 0 (it
	// carries the ports); FragID with the addresses and protocol identifies the datagram.
	Fragment      bool
	FirstFragment bool
	FragID        uint32
}

// Decode fills d from frame of the given pcap link type, overwriting every field. It never allocates
// and never panics: anything it cannot read is reported through d.Class and d.Detail.
func Decode(linkType int, frame []byte, d *Decoded) {
	*d = Decoded{}
	switch linkType {
	case LinkEthernet:
		decodeEthernet(frame, d)
	case LinkSLL:
		if len(frame) < 16 {
			d.setMalformed("linux cooked (SLL) header truncated")
			return
		}
		hatype := binary.BigEndian.Uint16(frame[2:4])
		if alen := binary.BigEndian.Uint16(frame[4:6]); hatype == 1 && alen == 6 {
			d.HasMAC = true
			copy(d.SrcMAC[:], frame[6:12])
		}
		decodeEtherType(binary.BigEndian.Uint16(frame[14:16]), frame[16:], d)
	case LinkSLL2:
		if len(frame) < 20 {
			d.setMalformed("linux cooked (SLL2) header truncated")
			return
		}
		hatype := binary.BigEndian.Uint16(frame[8:10])
		if hatype == 1 && frame[11] == 6 {
			d.HasMAC = true
			copy(d.SrcMAC[:], frame[12:18])
		}
		decodeEtherType(binary.BigEndian.Uint16(frame[0:2]), frame[20:], d)
	case LinkRaw, LinkRawBSD, LinkRawBSD2:
		decodeRawIP(frame, d)
	case LinkIPv4:
		decodeIPv4(frame, d)
	case LinkIPv6:
		decodeIPv6(frame, d)
	case LinkNull, LinkLoop:
		if len(frame) < 4 {
			d.setMalformed("loopback header truncated")
			return
		}
		fam := binary.LittleEndian.Uint32(frame[:4])
		if linkType == LinkLoop || fam > 0xffff {
			fam = binary.BigEndian.Uint32(frame[:4])
		}
		switch fam {
		case 2:
			decodeIPv4(frame[4:], d)
		case 24, 28, 30: // AF_INET6 on NetBSD/OpenBSD, FreeBSD, Darwin
			decodeIPv6(frame[4:], d)
		default:
			d.setNotIP("loopback frame of a non-IP address family")
		}
	default:
		d.setNotIP("unsupported link type")
	}
}

func (d *Decoded) setMalformed(why string) { d.Class, d.Detail = ClassMalformed, why }
func (d *Decoded) setNotIP(why string)     { d.Class, d.Detail = ClassNotIP, why }

func decodeEthernet(b []byte, d *Decoded) {
	if len(b) < 14 {
		d.setMalformed("ethernet header truncated")
		return
	}
	d.HasMAC = true
	copy(d.DstMAC[:], b[0:6])
	copy(d.SrcMAC[:], b[6:12])
	decodeEtherType(binary.BigEndian.Uint16(b[12:14]), b[14:], d)
}

// decodeEtherType follows VLAN tags to the payload's type.
func decodeEtherType(et uint16, b []byte, d *Decoded) {
	for {
		switch et {
		case 0x8100, 0x88a8, 0x9100:
			if len(b) < 4 {
				d.setMalformed("VLAN tag truncated")
				return
			}
			d.VLANs++
			et = binary.BigEndian.Uint16(b[2:4])
			b = b[4:]
			continue
		case 0x0800:
			decodeIPv4(b, d)
		case 0x86dd:
			decodeIPv6(b, d)
		case 0x0806:
			d.Class = ClassARP
		default:
			if et < 0x0600 {
				d.setNotIP("802.3/LLC frame")
			} else {
				d.setNotIP("non-IP ethertype")
			}
		}
		return
	}
}

func decodeRawIP(b []byte, d *Decoded) {
	if len(b) < 1 {
		d.setMalformed("empty raw IP packet")
		return
	}
	switch b[0] >> 4 {
	case 4:
		decodeIPv4(b, d)
	case 6:
		decodeIPv6(b, d)
	default:
		d.setMalformed("raw IP packet with unknown IP version")
	}
}

func decodeIPv4(b []byte, d *Decoded) {
	if len(b) < 20 {
		d.setMalformed("IPv4 header truncated")
		return
	}
	if b[0]>>4 != 4 {
		d.setMalformed("IPv4 packet with wrong version")
		return
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || len(b) < ihl || total < ihl {
		d.setMalformed("IPv4 header length invalid")
		return
	}
	if total < len(b) { // drop link-layer padding; a short capture keeps what it has
		b = b[:total]
	}
	d.Src = netip.AddrFrom4([4]byte(b[12:16]))
	d.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	d.Proto = b[9]
	d.Class = ClassIP
	flags := binary.BigEndian.Uint16(b[6:8])
	off := flags & 0x1fff
	more := flags&0x2000 != 0
	if off != 0 || more {
		d.Fragment = true
		d.FirstFragment = off == 0
		d.FragID = uint32(binary.BigEndian.Uint16(b[4:6]))
		if off != 0 {
			return // no transport header in this fragment
		}
	}
	decodeL4(b[ihl:], false, d)
}

func decodeIPv6(b []byte, d *Decoded) {
	if len(b) < 40 {
		d.setMalformed("IPv6 header truncated")
		return
	}
	if b[0]>>4 != 6 {
		d.setMalformed("IPv6 packet with wrong version")
		return
	}
	if pl := int(binary.BigEndian.Uint16(b[4:6])); pl != 0 && 40+pl < len(b) {
		b = b[:40+pl]
	}
	d.Src = netip.AddrFrom16([16]byte(b[8:24]))
	d.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	d.Class = ClassIP
	next := b[6]
	p := b[40:]
	for {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(p) < 8 {
				d.Proto = next
				d.setMalformed("IPv6 extension header truncated")
				return
			}
			n := (int(p[1]) + 1) * 8
			if len(p) < n {
				d.setMalformed("IPv6 extension header truncated")
				return
			}
			next, p = p[0], p[n:]
			continue
		case 51: // authentication header
			if len(p) < 8 {
				d.setMalformed("IPv6 AH truncated")
				return
			}
			n := (int(p[1]) + 2) * 4
			if len(p) < n {
				d.setMalformed("IPv6 AH truncated")
				return
			}
			next, p = p[0], p[n:]
			continue
		case 44: // fragment
			if len(p) < 8 {
				d.setMalformed("IPv6 fragment header truncated")
				return
			}
			fo := binary.BigEndian.Uint16(p[2:4])
			d.Fragment = true
			d.FirstFragment = fo>>3 == 0
			d.FragID = binary.BigEndian.Uint32(p[4:8])
			next = p[0]
			if !d.FirstFragment {
				d.Proto = next
				return
			}
			// An atomic fragment (offset 0, no more) is a whole datagram: not a fragment at all.
			if fo&1 == 0 {
				d.Fragment, d.FirstFragment, d.FragID = false, false, 0
			}
			p = p[8:]
			continue
		}
		break
	}
	d.Proto = next
	decodeL4(p, true, d)
}

// decodeL4 reads the transport header of an unfragmented packet or a first fragment.
func decodeL4(p []byte, v6 bool, d *Decoded) {
	switch d.Proto {
	case ProtoTCP:
		if len(p) < 14 {
			d.setMalformed("TCP header truncated")
			return
		}
		d.SrcPort = binary.BigEndian.Uint16(p[0:2])
		d.DstPort = binary.BigEndian.Uint16(p[2:4])
		d.HasPorts = true
		d.TCPFlags = p[13]
	case ProtoUDP:
		if len(p) < 8 {
			d.setMalformed("UDP header truncated")
			return
		}
		d.SrcPort = binary.BigEndian.Uint16(p[0:2])
		d.DstPort = binary.BigEndian.Uint16(p[2:4])
		d.HasPorts = true
	case ProtoICMP:
		if v6 {
			return // ICMP inside IPv6 is just another protocol
		}
		decodeICMP(p, false, d)
	case ProtoICMPv6:
		if !v6 {
			return
		}
		decodeICMP(p, true, d)
	}
}

func decodeICMP(p []byte, v6 bool, d *Decoded) {
	if len(p) < 4 {
		d.setMalformed("ICMP header truncated")
		return
	}
	d.IsICMP = true
	d.ICMPType, d.ICMPCode = p[0], p[1]
	echo := false
	if v6 {
		switch {
		case d.ICMPType >= 133 && d.ICMPType <= 136:
			d.Class = ClassND
			return
		case d.ICMPType >= 1 && d.ICMPType <= 4:
			d.ICMPError = true
		case d.ICMPType == 128 || d.ICMPType == 129:
			echo = true
		}
	} else {
		switch d.ICMPType {
		case 3, 4, 5, 11, 12:
			d.ICMPError = true
		case 0, 8, 13, 14:
			echo = true
		}
	}
	if echo && len(p) >= 8 {
		d.ICMPID = binary.BigEndian.Uint16(p[4:6])
		d.SrcPort, d.DstPort = EchoPorts(d.ICMPType, d.ICMPID)
		d.HasPorts = true
	}
	if d.ICMPError && len(p) >= 8 {
		d.HasInner = decodeQuoted(p[8:], v6, &d.Inner)
	}
}

// EchoPorts are the ports an ICMP echo (or timestamp) message of type typ and identifier id is tracked
// by: a request from id to id+1, a reply from id+1 to id, so that a reply is its request's flow
// reversed, and no request reversed is another request's flow, whatever the identifiers: (a, a+1)
// reversed is (a+1, a), and a request (b, b+1) equal to it would need b+1 = a and b = a+1. A request
// coming back the other way is thus a flow of its own (SPEC §3: only replies pass as established).
func EchoPorts(typ uint8, id uint16) (src, dst uint16) {
	switch typ {
	case 0, 14, 129: // echo reply, timestamp reply, ICMPv6 echo reply
		return id + 1, id
	}
	return id, id + 1
}

// decodeQuoted reads the 5-tuple of the packet an ICMP error quotes; ports need its first 4 bytes.
func decodeQuoted(q []byte, v6 bool, t *Tuple) bool {
	var l4 []byte
	if !v6 {
		if len(q) < 20 || q[0]>>4 != 4 {
			return false
		}
		ihl := int(q[0]&0x0f) * 4
		if ihl < 20 || len(q) < ihl {
			return false
		}
		t.Src = netip.AddrFrom4([4]byte(q[12:16]))
		t.Dst = netip.AddrFrom4([4]byte(q[16:20]))
		t.Proto = q[9]
		if binary.BigEndian.Uint16(q[6:8])&0x1fff != 0 {
			return true
		}
		l4 = q[ihl:]
	} else {
		if len(q) < 40 || q[0]>>4 != 6 {
			return false
		}
		t.Src = netip.AddrFrom16([16]byte(q[8:24]))
		t.Dst = netip.AddrFrom16([16]byte(q[24:40]))
		next, p := q[6], q[40:]
	loop:
		for {
			switch next {
			case 0, 43, 60:
				if len(p) < 8 || len(p) < (int(p[1])+1)*8 {
					break loop
				}
				next, p = p[0], p[(int(p[1])+1)*8:]
			case 44:
				if len(p) < 8 {
					break loop
				}
				if binary.BigEndian.Uint16(p[2:4])>>3 != 0 {
					t.Proto = p[0]
					return true
				}
				next, p = p[0], p[8:]
			default:
				break loop
			}
		}
		t.Proto = next
		l4 = p
	}
	switch t.Proto {
	case ProtoTCP, ProtoUDP:
		if len(l4) >= 4 {
			t.SrcPort = binary.BigEndian.Uint16(l4[0:2])
			t.DstPort = binary.BigEndian.Uint16(l4[2:4])
			t.HasPorts = true
		}
	case ProtoICMP, ProtoICMPv6:
		if len(l4) >= 8 && (l4[0] == 8 || l4[0] == 0 || l4[0] == 128 || l4[0] == 129) {
			t.SrcPort, t.DstPort = EchoPorts(l4[0], binary.BigEndian.Uint16(l4[4:6]))
			t.HasPorts = true
		}
	}
	return true
}
