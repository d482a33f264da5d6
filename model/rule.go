package model

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Direction is the side of an ENI a rule list applies to.
type Direction uint8

const (
	Ingress Direction = iota // traffic to the ENI: remote = source address
	Egress                   // traffic from the ENI: remote = destination address
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// ParseDirection accepts "ingress" or "egress" in any case.
func ParseDirection(s string) (Direction, error) {
	switch strings.ToLower(s) {
	case "ingress":
		return Ingress, nil
	case "egress":
		return Egress, nil
	}
	return 0, errValue(CodeBadParameter, "direction", s, "must be ingress or egress")
}

// MarshalText makes directions readable in JSON output.
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses "ingress" or "egress".
func (d *Direction) UnmarshalText(b []byte) error {
	v, err := ParseDirection(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Action is what a rule (or the implicit last rule) does with a matching packet.
type Action uint8

const (
	Drop Action = iota
	Accept
)

func (a Action) String() string {
	if a == Accept {
		return "ACCEPT"
	}
	return "DROP"
}

// MarshalText writes ACCEPT or DROP.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Protocol is a rule's ipProtocol. ICMP means ICMP over IPv4 only and ICMPv6 ICMP over IPv6 only.
type Protocol uint8

const (
	ProtoAll Protocol = iota
	ProtoTCP
	ProtoUDP
	ProtoICMP
	ProtoICMPv6
)

// IP protocol numbers the matcher needs.
const (
	IPProtoICMP   = 1
	IPProtoTCP    = 6
	IPProtoUDP    = 17
	IPProtoICMPv6 = 58
)

func (p Protocol) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return "all"
}

// MarshalText writes the protocol's API name.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Matches tells whether a packet of IP protocol number proto and address family (v6 or not) is covered.
func (p Protocol) Matches(proto uint8, v6 bool) bool {
	switch p {
	case ProtoAll:
		return true
	case ProtoTCP:
		return proto == IPProtoTCP
	case ProtoUDP:
		return proto == IPProtoUDP
	case ProtoICMP:
		return proto == IPProtoICMP && !v6
	case ProtoICMPv6:
		return proto == IPProtoICMPv6 && v6
	}
	return false
}

// PortRange is an inclusive destination-port range; the zero value means every port.
type PortRange struct {
	Lo, Hi uint16
}

// Any tells whether the range leaves ports unconstrained.
func (r PortRange) Any() bool { return r.Lo == 0 && r.Hi == 0 }

// Contains tells whether port lies in the range.
func (r PortRange) Contains(port uint16) bool { return r.Lo <= port && port <= r.Hi }

func (r PortRange) String() string {
	switch {
	case r.Any():
		return "all"
	case r.Lo == r.Hi:
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// MaxDescRunes is the longest rule description the API accepts (seed page, point 10).
const MaxDescRunes = 50

// Rule is a security-group rule in the API's own shape (SPEC §1), as it is sent, stored and described.
type Rule struct {
	IPProtocol string `json:"ipProtocol,omitempty"`
	CidrIP     string `json:"cidrIp,omitempty"`
	SgID       string `json:"sgId,omitempty"`
	PortRange  string `json:"portRange,omitempty"`
	Action     string `json:"action"`
	Desc       string `json:"desc,omitempty"`
}

// ParsedRule is a Rule validated and reduced to what matching needs.
type ParsedRule struct {
	Protocol Protocol
	// Remote is valid when the rule names a cidrIp (masked); RemoteSG is set when it names an sgId.
	// Neither set means every address of both families.
	Remote   netip.Prefix
	RemoteSG string
	Ports    PortRange
	Action   Action
	Desc     string
}

// ParseRule validates r against SPEC §1 (all but what needs other SGs: see State.checkRuleRefs) and
// returns its parsed form. Errors are *Error with code 9003 and a path relative to the rule.
func ParseRule(r Rule) (ParsedRule, error) {
	var p ParsedRule
	var err error
	if p.Protocol, err = parseProtocol(r.IPProtocol); err != nil {
		return p, err
	}
	if r.CidrIP != "" && r.SgID != "" {
		return p, errf(CodeBadRuleFormat, "cidrIp", "cidrIp and sgId are mutually exclusive")
	}
	if r.CidrIP != "" {
		if p.Remote, err = ParseCIDR(r.CidrIP); err != nil {
			return p, err
		}
	}
	if r.SgID != "" {
		if !validID(r.SgID) {
			return p, errValue(CodeBadRuleFormat, "sgId", r.SgID, "not a security group ID")
		}
		p.RemoteSG = r.SgID
	}
	if r.PortRange != "" {
		if p.Protocol != ProtoTCP && p.Protocol != ProtoUDP {
			return p, errValue(CodeBadRuleFormat, "portRange", r.PortRange, "portRange needs ipProtocol tcp or udp")
		}
		if p.Ports, err = ParsePortRange(r.PortRange); err != nil {
			return p, err
		}
	}
	switch strings.ToUpper(r.Action) {
	case "ACCEPT":
		p.Action = Accept
	case "DROP":
		p.Action = Drop
	case "":
		return p, errf(CodeBadRuleFormat, "action", "action is required (ACCEPT or DROP)")
	default:
		return p, errValue(CodeBadRuleFormat, "action", r.Action, "must be ACCEPT or DROP")
	}
	if !utf8.ValidString(r.Desc) {
		return p, errf(CodeBadRuleFormat, "desc", "not valid UTF-8")
	}
	if n := utf8.RuneCountInString(r.Desc); n > MaxDescRunes {
		return p, errf(CodeBadRuleFormat, "desc", "%d characters, at most %d allowed", n, MaxDescRunes)
	}
	p.Desc = r.Desc
	return p, nil
}

// Rule returns the canonical API form of p: lower-case protocol, masked CIDR, upper-case action.
func (p ParsedRule) Rule() Rule {
	r := Rule{SgID: p.RemoteSG, Action: p.Action.String(), Desc: p.Desc}
	if p.Protocol != ProtoAll {
		r.IPProtocol = p.Protocol.String()
	}
	if p.Remote.IsValid() {
		r.CidrIP = p.Remote.String()
	}
	if !p.Ports.Any() {
		r.PortRange = p.Ports.String()
	}
	return r
}

// String renders the rule for people: `ACCEPT tcp 10.0.0.0/8 port 22 "ssh"`.
func (p ParsedRule) String() string {
	remote := "any"
	switch {
	case p.Remote.IsValid():
		remote = p.Remote.String()
	case p.RemoteSG != "":
		remote = "sg:" + p.RemoteSG
	}
	s := fmt.Sprintf("%s %s %s", p.Action, p.Protocol, remote)
	if !p.Ports.Any() {
		s += " port " + p.Ports.String()
	}
	if p.Desc != "" {
		s += " " + strconv.Quote(p.Desc)
	}
	return s
}

func parseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "", "all":
		return ProtoAll, nil
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	case "icmpv6":
		return ProtoICMPv6, nil
	}
	return 0, errValue(CodeBadRuleFormat, "ipProtocol", s, "must be tcp, udp, icmp, icmpv6 or all")
}

// ParseCIDR accepts an IPv4 or IPv6 CIDR or bare address (= /32 or /128) and masks host bits.
func ParseCIDR(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, errValue(CodeBadRuleFormat, "cidrIp", s, "zoned addresses are not allowed")
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, errValue(CodeBadRuleFormat, "cidrIp", s, "not an IPv4 or IPv6 CIDR")
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		reason := "not an IPv4 or IPv6 CIDR"
		if a, _, ok := strings.Cut(s, "/"); ok {
			if addr, aerr := netip.ParseAddr(a); aerr == nil {
				reason = fmt.Sprintf("prefix length must be 0-%d", addr.BitLen())
			}
		}
		return netip.Prefix{}, errValue(CodeBadRuleFormat, "cidrIp", s, reason)
	}
	return p.Masked(), nil
}

// ParsePortRange accepts "80" or "8000-8010": decimal ports 1-65535, low ≤ high, nothing else.
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	l, err := parsePort(s, lo)
	if err != nil {
		return PortRange{}, err
	}
	h, err := parsePort(s, hi)
	if err != nil {
		return PortRange{}, err
	}
	if l > h {
		return PortRange{}, errValue(CodeBadRuleFormat, "portRange", s, "low port above high port")
	}
	return PortRange{Lo: l, Hi: h}, nil
}

func parsePort(whole, part string) (uint16, error) {
	if part == "" || len(part) > 5 || strings.TrimLeft(part, "0123456789") != "" {
		return 0, errValue(CodeBadRuleFormat, "portRange", whole, `must be a port "80" or a range "8000-8010"`)
	}
	n, _ := strconv.Atoi(part)
	if n < 1 || n > 65535 {
		return 0, errValue(CodeBadRuleFormat, "portRange", whole, fmt.Sprintf("port %d out of range 1-65535", n))
	}
	return uint16(n), nil
}

// validID reports whether s fits the topology-file ID form [A-Za-z0-9-]{1,64}.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidID reports whether s is a well-formed SG or ENI ID: [A-Za-z0-9-]{1,64}.
func ValidID(s string) bool { return validID(s) }

// ValidHost reports whether s can name a fleet host (an ENI's host, an agent's --host): 1 to 253
// bytes of UTF-8, not "." or "..", without '/' (the name is a segment of the host's etcd keys, which
// a '/' would make another's) or control characters.
func ValidHost(s string) bool {
	if len(s) == 0 || len(s) > 253 || s == "." || s == ".." || !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r == '/' || unicode.IsControl(r) })
}

// validInterfaceName reports whether s is a name Linux gives an interface: 1 to 15 bytes (IFNAMSIZ
// less the NUL), not "." or "..", without '/', ':' or what the kernel's isspace calls space (its
// dev_valid_name); control bytes and DEL, which no tool names a link with, are refused too.
func validInterfaceName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f || c == 0xa0 || c == '/' || c == ':' {
			return false
		}
	}
	return true
}

// ParseIPProtocol reads a packet's protocol as people write it: tcp, udp, icmp, icmpv6 (any case) or an
// IP protocol number 0-255.
func ParseIPProtocol(s string) (uint8, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return IPProtoTCP, nil
	case "udp":
		return IPProtoUDP, nil
	case "icmp":
		return IPProtoICMP, nil
	case "icmpv6":
		return IPProtoICMPv6, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, errValue(CodeBadParameter, "protocol", s, "want tcp, udp, icmp, icmpv6 or a number 0-255")
	}
	return uint8(n), nil
}

// IPProtocolName is the inverse of ParseIPProtocol: a name for the four known protocols, else the number.
func IPProtocolName(n uint8) string {
	switch n {
	case IPProtoTCP:
		return "tcp"
	case IPProtoUDP:
		return "udp"
	case IPProtoICMP:
		return "icmp"
	case IPProtoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(n))
}
