package scenario

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
)

// InlinePacket is a packet given by its fields, with the verdict it must get.
type InlinePacket struct {
	// Kind is ip (default), arp, nd, not-ip or malformed.
	Kind     string `json:"kind,omitempty"`
	Proto    string `json:"proto,omitempty"` // tcp, udp, icmp, icmpv6 or a number
	Src      string `json:"src,omitempty"`
	Dst      string `json:"dst,omitempty"`
	SrcPort  uint16 `json:"sport,omitempty"`
	DstPort  uint16 `json:"dport,omitempty"`
	Flags    string `json:"flags,omitempty"` // TCP flags: any of S A F R
	ICMPType uint8  `json:"icmpType,omitempty"`
	ICMPCode uint8  `json:"icmpCode,omitempty"`
	// Quote is the packet an ICMP error quotes ("PROTO SRC:PORT > DST:PORT").
	Quote string `json:"quote,omitempty"`
	// Fragment is "first" or "later"; FragID ties fragments of one datagram.
	Fragment string `json:"fragment,omitempty"`
	FragID   uint32 `json:"fragId,omitempty"`
	// ENI and Direction force one check (like --eni/--direction).
	ENI       string `json:"eni,omitempty"`
	Direction string `json:"direction,omitempty"`

	Expect       string `json:"expect"`
	ExpectReason string `json:"reason,omitempty"`
	ExpectSgID   string `json:"sgId,omitempty"`
	ExpectRule   *int   `json:"ruleIndex,omitempty"`
}

// The MACs of crafted frames belong to no ENI: an inline packet names addresses, and the program finds
// its ENI from the interface (here: the check), not from MACs.
var (
	srcMAC    = [6]byte{0x02, 0x53, 0x43, 0, 0, 1}
	dstMAC    = [6]byte{0x02, 0x53, 0x43, 0, 0, 2}
	broadcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// laterOffset is where a crafted non-first fragment starts (8-byte units): past any transport header.
const laterOffset = 8

// Frame builds the Ethernet frame this inline packet describes.
func (p *InlinePacket) Frame() ([]byte, error) {
	switch p.Kind {
	case "arp":
		src, dst, err := p.arpAddrs()
		if err != nil {
			return nil, err
		}
		return craft.Ethernet(broadcast, srcMAC, 0x0806, nil, craft.ARP(srcMAC, src, dst)), nil
	case "not-ip":
		return craft.Ethernet(dstMAC, srcMAC, 0x88b5, nil, make([]byte, 46)), nil // IEEE local experimental
	case "malformed":
		// An IPv4 header claiming 16 bytes, less than the minimum of 20.
		ip := craft.IPv4(netip.IPv4Unspecified(), netip.IPv4Unspecified(), packet.ProtoUDP, make([]byte, 26), nil)
		ip[0] = 0x44
		return craft.Ethernet(dstMAC, srcMAC, 0x0800, nil, ip), nil
	case "", "ip", "nd":
	default:
		return nil, fmt.Errorf("kind %q: want ip, arp, nd, not-ip or malformed", p.Kind)
	}
	src, err := netip.ParseAddr(p.Src)
	if err != nil {
		return nil, fmt.Errorf("src %q: %w", p.Src, err)
	}
	dst, err := netip.ParseAddr(p.Dst)
	if err != nil {
		return nil, fmt.Errorf("dst %q: %w", p.Dst, err)
	}
	if src.Is4() != dst.Is4() {
		return nil, fmt.Errorf("src %s and dst %s: different address families", src, dst)
	}
	var ip []byte
	if p.Kind == "nd" {
		if src.Is4() {
			return nil, fmt.Errorf("kind nd: src %s is not IPv6 (neighbour discovery is ICMPv6)", src)
		}
		target := dst.As16()
		ip = craft.IPv6(src, dst, packet.ProtoICMPv6, craft.ICMP(135, 0, append(make([]byte, 4), target[:]...)), nil, nil)
	} else if ip, err = p.ipPacket(src, dst); err != nil {
		return nil, err
	}
	return craft.Ethernet(dstMAC, srcMAC, craft.EtherTypeOf(ip), nil, ip), nil
}

// arpAddrs are an ARP request's addresses: src and dst when given, else unspecified.
func (p *InlinePacket) arpAddrs() (src, dst netip.Addr, err error) {
	src, dst = netip.IPv4Unspecified(), netip.IPv4Unspecified()
	for _, a := range []struct {
		name, s string
		into    *netip.Addr
	}{{"src", p.Src, &src}, {"dst", p.Dst, &dst}} {
		if a.s == "" {
			continue
		}
		v, err := netip.ParseAddr(a.s)
		if err != nil || !v.Is4() {
			return src, dst, fmt.Errorf("kind arp: %s %q: want an IPv4 address", a.name, a.s)
		}
		*a.into = v
	}
	return src, dst, nil
}

// ipPacket builds the IP packet of a kind ip inline packet.
func (p *InlinePacket) ipPacket(src, dst netip.Addr) ([]byte, error) {
	proto, err := parseProto(p.Proto)
	if err != nil {
		return nil, err
	}
	flags, err := tcpFlags(p.Flags)
	if err != nil {
		return nil, err
	}
	var l4 []byte
	switch proto {
	case packet.ProtoTCP:
		l4 = craft.TCP(p.SrcPort, p.DstPort, flags, nil)
	case packet.ProtoUDP:
		l4 = craft.UDP(p.SrcPort, p.DstPort, nil)
	case packet.ProtoICMP, packet.ProtoICMPv6:
		if l4, err = p.icmp(proto); err != nil {
			return nil, err
		}
	}
	var frag *craft.Frag
	switch p.Fragment {
	case "":
	case "first":
		frag = &craft.Frag{ID: p.FragID, More: true}
	case "later":
		frag = &craft.Frag{ID: p.FragID, Offset: laterOffset}
		l4 = make([]byte, 8) // payload from the middle of the datagram: no transport header
	default:
		return nil, fmt.Errorf("fragment %q: want first or later", p.Fragment)
	}
	if src.Is4() {
		if frag != nil && frag.ID > 0xffff {
			return nil, fmt.Errorf("fragId %d: an IPv4 fragment ID has 16 bits", frag.ID)
		}
		return craft.IPv4(src, dst, proto, l4, frag), nil
	}
	return craft.IPv6(src, dst, proto, l4, nil, frag), nil
}

// icmp builds an ICMP message: an echo with identifier SrcPort, an error quoting Quote, or a bare
// message of the type.
func (p *InlinePacket) icmp(proto uint8) ([]byte, error) {
	v6 := proto == packet.ProtoICMPv6
	echo := (!v6 && (p.ICMPType == 8 || p.ICMPType == 0)) || (v6 && (p.ICMPType == 128 || p.ICMPType == 129))
	switch {
	case echo:
		return craft.Echo(p.ICMPType, p.SrcPort, 1), nil
	case p.Quote != "":
		q, err := quotedPacket(p.Quote)
		if err != nil {
			return nil, err
		}
		return craft.ICMPError(p.ICMPType, p.ICMPCode, q), nil
	}
	return craft.ICMP(p.ICMPType, p.ICMPCode, make([]byte, 16)), nil
}

func tcpFlags(s string) (uint8, error) {
	var f uint8
	for _, c := range strings.ToUpper(s) {
		switch c {
		case 'S':
			f |= packet.TCPSyn
		case 'A':
			f |= packet.TCPAck
		case 'F':
			f |= packet.TCPFin
		case 'R':
			f |= packet.TCPRst
		default:
			return 0, fmt.Errorf("flags %q: want letters among S A F R", s)
		}
	}
	return f, nil
}

func parseProto(s string) (uint8, error) {
	n, err := model.ParseIPProtocol(s)
	if err != nil {
		return 0, fmt.Errorf("proto %q: want tcp, udp, icmp, icmpv6 or a number", s)
	}
	return n, nil
}

// quotedPacket builds the packet "PROTO SRC:PORT > DST:PORT" that an ICMP error quotes.
func quotedPacket(s string) ([]byte, error) {
	f := strings.Fields(s)
	if len(f) != 4 || f[2] != ">" {
		return nil, fmt.Errorf("quote %q: want \"PROTO SRC:PORT > DST:PORT\"", s)
	}
	proto, err := parseProto(f[0])
	if err != nil {
		return nil, fmt.Errorf("quote %q: %w", s, err)
	}
	sa, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return nil, fmt.Errorf("quote %q: source: %w", s, err)
	}
	da, err := netip.ParseAddrPort(f[3])
	if err != nil {
		return nil, fmt.Errorf("quote %q: destination: %w", s, err)
	}
	if sa.Addr().Is4() != da.Addr().Is4() {
		return nil, fmt.Errorf("quote %q: different address families", s)
	}
	var l4 []byte
	switch proto {
	case packet.ProtoTCP:
		l4 = craft.TCP(sa.Port(), da.Port(), packet.TCPSyn, nil)
	case packet.ProtoUDP:
		l4 = craft.UDP(sa.Port(), da.Port(), nil)
	case packet.ProtoICMP:
		l4 = craft.Echo(8, sa.Port(), 1)
	case packet.ProtoICMPv6:
		l4 = craft.Echo(128, sa.Port(), 1)
	default:
		l4 = make([]byte, 8)
	}
	if sa.Addr().Is4() {
		return craft.IPv4(sa.Addr(), da.Addr(), proto, l4, nil), nil
	}
	return craft.IPv6(sa.Addr(), da.Addr(), proto, l4, nil, nil), nil
}
