// Package bench produces rule tables and packets for measuring matchers: a ClassBench importer (SPEC §7),
// a deterministic synthetic table generator, packet generators that hit every rule's corners, and the
// runner behind `sgsim bench` that times the fast classifier against the reference linear matcher.
package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// Names used in the states this package builds.
const (
	AppID = "1250000001"
	ENIID = "eni-bench"
)

// ParseClassBench reads ClassBench rules (SPEC §7) from r; name (a file name) and the line number prefix
// every error. At most limit rules are kept (limit ≤ 0: all).
func ParseClassBench(name string, r io.Reader, limit int) ([]model.Rule, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	var out []model.Rule
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		rule, keep, err := parseClassBenchLine(text)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if !keep {
			continue
		}
		// Every rule whose position among the kept rules is a multiple of 3 drops.
		if (len(out)+1)%3 == 0 {
			rule.Action = "DROP"
		}
		out = append(out, rule)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", name, line+1, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no rule to use in %d lines (rules of destination ports 0 : 0 are skipped)", name, line)
	}
	return out, nil
}

// parseClassBenchLine maps `@src/len dst/len slo : shi dlo : dhi proto/mask [flags/mask]` to an ingress
// rule; keep is false for a rule whose dport range is 0 : 0.
func parseClassBenchLine(s string) (model.Rule, bool, error) {
	f := strings.Fields(s)
	if len(f) != 9 && len(f) != 10 {
		return model.Rule{}, false, fmt.Errorf("%d fields, want 9 or 10 (@src dst slo : shi dlo : dhi proto/mask [flags/mask])", len(f))
	}
	if !strings.HasPrefix(f[0], "@") {
		return model.Rule{}, false, fmt.Errorf("source %q: must start with @", f[0])
	}
	src, err := netip.ParsePrefix(f[0][1:])
	if err != nil {
		return model.Rule{}, false, fmt.Errorf("source prefix %q: %w", f[0][1:], err)
	}
	if _, err := netip.ParsePrefix(f[1]); err != nil {
		return model.Rule{}, false, fmt.Errorf("destination prefix %q: %w", f[1], err)
	}
	if f[3] != ":" || f[6] != ":" {
		return model.Rule{}, false, fmt.Errorf("port ranges must be written `lo : hi`")
	}
	if _, _, err := portPair(f[2], f[4], "source"); err != nil {
		return model.Rule{}, false, err
	}
	dlo, dhi, err := portPair(f[5], f[7], "destination")
	if err != nil {
		return model.Rule{}, false, err
	}
	pv, pm, err := hexPair(f[8], 8)
	if err != nil {
		return model.Rule{}, false, fmt.Errorf("protocol %q: %w (value and mask are bytes like 0x06/0xFF)", f[8], err)
	}
	if len(f) == 10 {
		if _, _, err := hexPair(f[9], 16); err != nil {
			return model.Rule{}, false, fmt.Errorf("flags %q: %w (value and mask are 16-bit like 0x0000/0x0200)", f[9], err)
		}
	}
	if dlo == 0 && dhi == 0 {
		return model.Rule{}, false, nil
	}
	r := model.Rule{CidrIP: src.Masked().String(), Action: "ACCEPT"}
	if pm != 0 {
		switch pv {
		case 0x06:
			r.IPProtocol = "tcp"
		case 0x11:
			r.IPProtocol = "udp"
		case 0x01:
			r.IPProtocol = "icmp"
		}
	}
	if (r.IPProtocol == "tcp" || r.IPProtocol == "udp") && !(dlo == 0 && dhi == 65535) {
		r.PortRange = fmt.Sprintf("%d-%d", max(dlo, 1), dhi)
	}
	return r, true, nil
}

// hexPair reads ClassBench's value/mask, both hexadecimal with 0x (as its generator writes them) of at
// most bits bits.
func hexPair(s string, bits int) (uint64, uint64, error) {
	v, m, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, errors.New("want value/mask")
	}
	var out [2]uint64
	for i, x := range []string{v, m} {
		digits, ok := strings.CutPrefix(strings.ToLower(x), "0x")
		if !ok || digits == "" || len(digits) > bits/4 {
			return 0, 0, fmt.Errorf("%q: want 0x and at most %d hex digits", x, bits/4)
		}
		n, err := strconv.ParseUint(digits, 16, bits)
		if err != nil {
			return 0, 0, err
		}
		out[i] = n
	}
	return out[0], out[1], nil
}

func portPair(lo, hi, which string) (uint16, uint16, error) {
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%s port range %q : %q: ports must be 0-65535", which, lo, hi)
	}
	if l > h {
		return 0, 0, fmt.Errorf("%s port range %d : %d: low above high", which, l, h)
	}
	return uint16(l), uint16(h), nil
}

// LoadClassBench reads a ClassBench file (at most limit rules; ≤ 0: all) into a State of one account,
// one ENI and the rules as its ingress, split over sgs consecutive SGs (sgs ≤ 1: one SG).
func LoadClassBench(path string, limit, sgs int) (*model.State, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("classbench: %w", err)
	}
	defer f.Close()
	rules, err := ParseClassBench(path, f, limit)
	if err != nil {
		return nil, err
	}
	st, err := StateFromRules(rules, sgs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// StateFromRules builds a State of one account and one ENI (198.18.0.1, 2001:db8::1) whose ingress is
// rules in order, split into sgs consecutive SGs (sg-bench-0, …) in that order on the ENI.
func StateFromRules(rules []model.Rule, sgs int) (*model.State, error) {
	sgs = max(sgs, 1)
	topo := model.Topology{
		Accounts: []model.Account{{AppID: AppID}},
		NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: ENIID, AppID: AppID,
			PrivateIPAddresses: []string{"198.18.0.1", "2001:db8::1"}}},
	}
	per := (len(rules) + sgs - 1) / sgs
	for i := 0; i < sgs; i++ {
		lo, hi := min(i*per, len(rules)), min((i+1)*per, len(rules))
		id := fmt.Sprintf("sg-bench-%d", i)
		topo.SecurityGroups = append(topo.SecurityGroups, model.SecurityGroup{SgID: id, AppID: AppID,
			Ingress: rules[lo:hi], Egress: []model.Rule{}})
		topo.NetworkInterfaces[0].SgIDs = append(topo.NetworkInterfaces[0].SgIDs, id)
	}
	st, err := model.NewState(topo)
	if err != nil {
		return nil, fmt.Errorf("build state: %w", err)
	}
	return st, nil
}

// IngressTable compiles the ingress table of the bench ENI of st.
func IngressTable(st *model.State) (*compiler.Table, error) {
	ts, err := compiler.New(st).Compile(ENIID)
	if err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	return ts.Ingress, nil
}

// Synthetic returns n random rules from a deterministic seed: mixed protocols, prefixes of every length
// (nested and disjoint), port ranges and actions; with v6 about a third are IPv6.
func Synthetic(n int, seed uint64, v6 bool) []model.Rule {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed5eed))
	protos := []string{"tcp", "tcp", "udp", "udp", "icmp", "", "icmpv6"}
	out := make([]model.Rule, 0, n)
	for i := 0; i < n; i++ {
		r := model.Rule{Action: "ACCEPT"}
		if rng.IntN(3) == 0 {
			r.Action = "DROP"
		}
		r.IPProtocol = protos[rng.IntN(len(protos))]
		ported := (r.IPProtocol == "tcp" || r.IPProtocol == "udp") && rng.IntN(4) != 0
		switch {
		case ported && rng.IntN(50) == 0:
			// no cidrIp, as service rules often are; only with ports, so the table is not shadowed early
		case v6 && rng.IntN(3) == 0:
			var b [16]byte
			b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
			for j := 4; j < 16; j++ {
				b[j] = byte(rng.IntN(16)) // few values, so prefixes nest and share
			}
			r.CidrIP = netip.PrefixFrom(netip.AddrFrom16(b), 32+rng.IntN(97)).Masked().String()
		default:
			a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
			bits := 12 + rng.IntN(21)
			if r.IPProtocol == "" {
				bits = 24 + rng.IntN(9) // short all-protocol prefixes would shadow most of the table
			}
			r.CidrIP = netip.PrefixFrom(a, bits).Masked().String()
		}
		if ported {
			lo := 1 + rng.IntN(65535)
			hi := min(65535, lo+rng.IntN(3)*rng.IntN(1000))
			r.PortRange = fmt.Sprintf("%d-%d", lo, hi)
		}
		out = append(out, r)
	}
	return out
}

// Packets returns packets that hit every entry's corners (first and last address of each remote prefix,
// and one below and above; port lo, hi, lo-1, hi+1; every protocol the entry concerns, with and without
// ports) followed by random packets, nRandom of them. At most maxCorner corner packets are kept
// (evenly spread over the table; ≤ 0: all).
func Packets(t *compiler.Table, maxCorner, nRandom int, seed uint64) []dataplane.Packet {
	rng := rand.New(rand.NewPCG(seed, seed^0xbadc0ffee))
	var corners []dataplane.Packet
	protoOf := map[model.Protocol][]uint8{
		model.ProtoAll: {model.IPProtoTCP, model.IPProtoUDP, model.IPProtoICMP, model.IPProtoICMPv6, 47},
		model.ProtoTCP: {model.IPProtoTCP}, model.ProtoUDP: {model.IPProtoUDP},
		model.ProtoICMP: {model.IPProtoICMP}, model.ProtoICMPv6: {model.IPProtoICMPv6},
	}
	for i := range t.Entries {
		e := &t.Entries[i]
		var addrs []netip.Addr
		remotes := e.Remotes
		if e.AnyRemote {
			remotes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
		}
		for _, p := range remotes {
			first := p.Masked().Addr()
			last := lastAddr(p)
			addrs = append(addrs, first, last)
			if a := first.Prev(); a.IsValid() {
				addrs = append(addrs, a)
			}
			if a := last.Next(); a.IsValid() {
				addrs = append(addrs, a)
			}
		}
		ports := []uint16{uint16(rng.IntN(65536))} // last: a port inside the range when there is one
		if !e.Ports.Any() {
			ports = append(ports, e.Ports.Hi, e.Ports.Lo-1, e.Ports.Hi+1, e.Ports.Lo)
		}
		// Address corners with one port, port corners with one address: every corner, not every product.
		for k, a := range addrs {
			for _, pr := range protoOf[e.Protocol] {
				ps := ports[len(ports)-1:]
				if k == 0 {
					ps = ports
				}
				for _, port := range ps {
					corners = append(corners, dataplane.Packet{Remote: a, Proto: pr, Port: port, HasPort: true})
				}
				corners = append(corners, dataplane.Packet{Remote: a, Proto: pr})
			}
		}
	}
	if maxCorner > 0 && len(corners) > maxCorner {
		step := float64(len(corners)) / float64(maxCorner)
		kept := make([]dataplane.Packet, 0, maxCorner)
		for i := 0; i < maxCorner; i++ {
			kept = append(kept, corners[int(float64(i)*step)])
		}
		corners = kept
	}
	out := corners
	protos := []uint8{model.IPProtoTCP, model.IPProtoTCP, model.IPProtoUDP, model.IPProtoUDP, model.IPProtoICMP, model.IPProtoICMPv6, 47}
	for i := 0; i < nRandom; i++ {
		var a netip.Addr
		switch {
		case len(corners) > 0 && rng.IntN(2) == 0:
			// near a rule's prefix: keep the top bits of a corner address, randomise the rest
			a = jitter(corners[rng.IntN(len(corners))].Remote, rng)
		case rng.IntN(4) == 0:
			var b [16]byte
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
			a = netip.AddrFrom16(b)
		default:
			a = netip.AddrFrom4([4]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		}
		out = append(out, dataplane.Packet{Remote: a, Proto: protos[rng.IntN(len(protos))],
			Port: uint16(rng.IntN(65536)), HasPort: rng.IntN(10) != 0})
	}
	return out
}

func jitter(a netip.Addr, rng *rand.Rand) netip.Addr {
	keep := rng.IntN(a.BitLen() + 1)
	b := a.AsSlice()
	for bit := keep; bit < len(b)*8; bit++ {
		if rng.IntN(2) == 0 {
			b[bit/8] ^= 0x80 >> (bit % 8)
		}
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for bit := p.Bits(); bit < len(b)*8; bit++ {
		b[bit/8] |= 0x80 >> (bit % 8)
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}
