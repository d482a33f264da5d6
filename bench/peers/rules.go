package peers

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// Rule is one IPv4 first-match rule as the kernel peers see it (iptables and nftables are loaded with
// the flattened table's IPv4 rows; the chain ends in DROP like the implicit last rule).
type Rule struct {
	Src    netip.Prefix
	Proto  model.Protocol
	Ports  model.PortRange
	Accept bool
}

// RulesFromTable lowers an ingress table to peer rules: one rule per IPv4 remote prefix of each row, in
// order (an sgId row expands to one rule per member, as OpenStack's iptables driver does without ipsets).
// IPv6 and icmpv6 rows are left out: the peers are loaded into the IPv4 tables only.
func RulesFromTable(t *compiler.Table) []Rule {
	var out []Rule
	for _, e := range t.Entries {
		if e.Implicit() || e.Protocol == model.ProtoICMPv6 {
			continue
		}
		remotes := e.Remotes
		if e.AnyRemote {
			remotes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
		}
		for _, r := range remotes {
			if r.Addr().Is4() {
				out = append(out, Rule{Src: r, Proto: e.Protocol, Ports: e.Ports, Accept: e.Action == model.Accept})
			}
		}
	}
	return out
}

// BenchENI is the ENI the synthetic tables belong to: the fw namespace's end of the path.
const BenchENI = "eni-bench"

// SyntheticTables builds tables for BenchENI whose ingress holds n rules: random 10.0.0.0/8 rules (mixed
// protocols, ports and actions) followed by one ACCEPT for udp from src to dport. A packet of that stream
// is decided by the last rule, the worst case for a linear chain and the case the comparison measures.
func SyntheticTables(n int, src netip.Addr, dport uint16, seed uint64) (*compiler.Tables, error) {
	return CompileRules(SyntheticRules(n, src, dport, seed))
}

// SyntheticRules returns the ingress rules of SyntheticTables in API form, so the same rules can be
// loaded through sgsim's API.
func SyntheticRules(n int, src netip.Addr, dport uint16, seed uint64) []model.Rule {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	rules := make([]model.Rule, 0, n)
	protos := []string{"tcp", "udp", "icmp", ""}
	for i := 0; i < n-1; i++ {
		bits := 16 + rng.IntN(17)
		a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		r := model.Rule{CidrIP: netip.PrefixFrom(a, bits).Masked().String(), Action: "ACCEPT"}
		if i%3 == 2 {
			r.Action = "DROP"
		}
		r.IPProtocol = protos[rng.IntN(len(protos))]
		if r.IPProtocol == "tcp" || r.IPProtocol == "udp" {
			lo := 1 + rng.IntN(60000)
			r.PortRange = fmt.Sprintf("%d-%d", lo, lo+rng.IntN(1000))
		}
		rules = append(rules, r)
	}
	return append(rules, model.Rule{IPProtocol: "udp", CidrIP: src.String(), PortRange: fmt.Sprint(dport), Action: "ACCEPT", Desc: "the measured stream"})
}

// WithStreamDrop returns rules with a DROP for the stream (a copy of the last rule, which must be the
// stream's ACCEPT) inserted just ahead of it: the rule change the update benchmark makes.
func WithStreamDrop(rules []model.Rule) []model.Rule {
	out := slices.Clone(rules)
	drop := out[len(out)-1]
	drop.Action, drop.Desc = "DROP", "the measured stream, cut"
	return slices.Insert(out, len(out)-1, drop)
}

// BenchTopology is the one-account, one-SG, one-ENI state whose SG holds rules as ingress.
func BenchTopology(rules []model.Rule, secretID, secretKey string) model.Topology {
	return model.Topology{
		Accounts:       []model.Account{{AppID: "1", SecretID: secretID, SecretKey: secretKey}},
		SecurityGroups: []model.SecurityGroup{{SgID: BenchSG, AppID: "1", Ingress: rules}},
		NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: BenchENI, AppID: "1",
			PrivateIPAddresses: []string{"198.18.100.2"}, SgIDs: []string{BenchSG}}},
	}
}

// BenchSG is the security group of BenchTopology.
const BenchSG = "sg-bench"

// CompileRules compiles BenchENI's tables for an SG holding rules as ingress.
func CompileRules(rules []model.Rule) (*compiler.Tables, error) {
	st, err := model.NewState(BenchTopology(rules, "", ""))
	if err != nil {
		return nil, fmt.Errorf("synthetic table: %w", err)
	}
	return compiler.New(st).Compile(BenchENI)
}

// IptablesScript renders rules as an iptables-restore input: one chain, a rule per SG rule, jumped to
// from INPUT for traffic arriving on iface, ending in DROP (OpenStack's iptables driver layout).
func IptablesScript(iface string, rules []Rule) []byte {
	var b bytes.Buffer
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:sgsim-sg - [0:0]\n")
	fmt.Fprintf(&b, "-A INPUT -i %s -j sgsim-sg\n", iface)
	for _, r := range rules {
		b.WriteString("-A sgsim-sg -s ")
		b.WriteString(r.Src.String())
		switch r.Proto {
		case model.ProtoTCP, model.ProtoUDP, model.ProtoICMP:
			b.WriteString(" -p " + r.Proto.String())
		}
		if !r.Ports.Any() {
			fmt.Fprintf(&b, " --dport %d:%d", r.Ports.Lo, r.Ports.Hi)
		}
		if r.Accept {
			b.WriteString(" -j ACCEPT\n")
		} else {
			b.WriteString(" -j DROP\n")
		}
	}
	b.WriteString("-A sgsim-sg -j DROP\nCOMMIT\n")
	return b.Bytes()
}

// NftScript renders rules as one atomic `nft -f` transaction replacing table ip sgsim. With useSets,
// consecutive rules that differ only in source prefix become one rule over an anonymous set, which keeps
// first-match order; prefixes covered by another in the same set are dropped (they add nothing to a union
// and nft refuses overlapping interval elements).
func NftScript(iface string, rules []Rule, useSets bool) []byte {
	var b bytes.Buffer
	b.WriteString("add table ip sgsim\ndelete table ip sgsim\ntable ip sgsim {\n")
	fmt.Fprintf(&b, "  chain input {\n    type filter hook input priority 0; policy accept;\n    iifname %q jump sg\n  }\n", iface)
	b.WriteString("  chain sg {\n")
	for i := 0; i < len(rules); {
		j := i + 1
		if useSets {
			for j < len(rules) && sameExceptSrc(rules[i], rules[j]) {
				j++
			}
		}
		b.WriteString("    ip saddr ")
		if srcs := disjointPrefixes(rules[i:j]); len(srcs) == 1 {
			b.WriteString(srcs[0].String())
		} else {
			b.WriteString("{ ")
			for k, p := range srcs {
				if k > 0 {
					b.WriteString(", ")
				}
				b.WriteString(p.String())
			}
			b.WriteString(" }")
		}
		r := rules[i]
		switch r.Proto {
		case model.ProtoTCP, model.ProtoUDP:
			b.WriteString(" " + r.Proto.String())
			if !r.Ports.Any() {
				fmt.Fprintf(&b, " dport %d-%d", r.Ports.Lo, r.Ports.Hi)
			} else {
				b.WriteString(" dport 0-65535")
			}
		case model.ProtoICMP:
			b.WriteString(" ip protocol icmp")
		}
		if r.Accept {
			b.WriteString(" accept\n")
		} else {
			b.WriteString(" drop\n")
		}
		i = j
	}
	b.WriteString("    drop\n  }\n}\n")
	return b.Bytes()
}

func sameExceptSrc(a, b Rule) bool {
	return a.Proto == b.Proto && a.Ports == b.Ports && a.Accept == b.Accept
}

func disjointPrefixes(rules []Rule) []netip.Prefix {
	ps := make([]netip.Prefix, len(rules))
	for i, r := range rules {
		ps[i] = r.Src
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	var out []netip.Prefix
	for _, p := range ps {
		covered := false
		for _, q := range out {
			if q.Contains(p.Addr()) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	return out
}
