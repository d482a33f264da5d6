package compiler_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// world builds a one-account State from SGs and ENIs given in short form.
func world(t testing.TB, sgs []model.SecurityGroup, enis []model.NetworkInterface) *model.State {
	t.Helper()
	for i := range sgs {
		if sgs[i].AppID == "" {
			sgs[i].AppID = "A"
		}
	}
	for i := range enis {
		if enis[i].AppID == "" {
			enis[i].AppID = "A"
		}
	}
	s, err := model.NewState(model.Topology{Accounts: []model.Account{{AppID: "A"}}, SecurityGroups: sgs, NetworkInterfaces: enis})
	require.NoError(t, err)
	return s
}

func eni(id string, sgs []string, ips ...string) model.NetworkInterface {
	if sgs == nil {
		sgs = []string{}
	}
	return model.NetworkInterface{NetworkInterfaceID: id, PrivateIPAddresses: ips, SgIDs: sgs}
}

func r(proto, cidr, ports, action string) model.Rule {
	return model.Rule{IPProtocol: proto, CidrIP: cidr, PortRange: ports, Action: action}
}

func rsg(proto, sg, ports, action string) model.Rule {
	return model.Rule{IPProtocol: proto, SgID: sg, PortRange: ports, Action: action}
}

func tcp(remote string, port uint16) dataplane.Packet {
	return dataplane.Packet{Remote: netip.MustParseAddr(remote), Proto: model.IPProtoTCP, Port: port, HasPort: true}
}

func udp(remote string, port uint16) dataplane.Packet {
	return dataplane.Packet{Remote: netip.MustParseAddr(remote), Proto: model.IPProtoUDP, Port: port, HasPort: true}
}

func proto(n uint8, remote string) dataplane.Packet {
	return dataplane.Packet{Remote: netip.MustParseAddr(remote), Proto: n}
}

// want is an expected verdict: sg and idx only when a rule decided.
type want struct {
	action model.Action
	reason dataplane.Reason
	sg     string
	idx    int
}

func accept(sg string, idx int) want { return want{model.Accept, dataplane.ReasonRule, sg, idx} }
func drop(sg string, idx int) want   { return want{model.Drop, dataplane.ReasonRule, sg, idx} }

var (
	defaultDrop = want{model.Drop, dataplane.ReasonDefaultDrop, "", -1}
	noSG        = want{model.Drop, dataplane.ReasonNoSG, "", -1}
)

type check struct {
	name string
	eni  string
	dir  model.Direction
	pkt  dataplane.Packet
	want want
}

// runChecks compiles s and decides every check with the reference matcher.
func runChecks(t *testing.T, s *model.State, checks []check) {
	t.Helper()
	m := dataplane.NewLinear(compiler.New(s).CompileAll())
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			v, ok := m.Match(c.eni, c.dir, &c.pkt)
			require.True(t, ok)
			got := want{v.Action, v.Reason, v.SgID, v.RuleIndex}
			if v.Reason != dataplane.ReasonRule {
				got.sg, got.idx = "", -1
			}
			assert.Equal(t, c.want, got)
		})
	}
}

const in, out = model.Ingress, model.Egress

func TestSeedExamples(t *testing.T) {
	// ModifySecurityGroupPolicy's example: ingress tcp 10.0.0.0/8 port 22 ACCEPT; egress tcp 10.0.0.0/8 ACCEPT.
	s := world(t, []model.SecurityGroup{{SgID: "sg-seed",
		Ingress: []model.Rule{r("tcp", "10.0.0.0/8", "22", "ACCEPT")},
		Egress:  []model.Rule{r("tcp", "10.0.0.0/8", "", "ACCEPT")}}},
		[]model.NetworkInterface{eni("eni-1", []string{"sg-seed"}, "10.0.0.5")})
	runChecks(t, s, []check{
		{"ssh from 10/8", "eni-1", in, tcp("10.200.1.2", 22), accept("sg-seed", 0)},
		{"port 23", "eni-1", in, tcp("10.200.1.2", 23), defaultDrop},
		{"outside 10/8", "eni-1", in, tcp("11.0.0.1", 22), defaultDrop},
		{"udp 22", "eni-1", in, udp("10.200.1.2", 22), defaultDrop},
		{"egress tcp any port", "eni-1", out, tcp("10.9.9.9", 443), accept("sg-seed", 0)},
		{"egress outside", "eni-1", out, tcp("192.0.2.1", 443), defaultDrop},
		{"egress udp", "eni-1", out, udp("10.9.9.9", 53), defaultDrop},
	})
}

func TestRuleOrderWithinSG(t *testing.T) {
	s := world(t, []model.SecurityGroup{
		{SgID: "sg-dropfirst", Ingress: []model.Rule{r("tcp", "198.18.5.0/24", "", "DROP"), r("tcp", "0.0.0.0/0", "", "ACCEPT")}},
		{SgID: "sg-acceptfirst", Ingress: []model.Rule{r("tcp", "0.0.0.0/0", "", "ACCEPT"), r("tcp", "198.18.5.0/24", "", "DROP")}},
	}, []model.NetworkInterface{
		eni("eni-d", []string{"sg-dropfirst"}, "198.18.0.1"),
		eni("eni-a", []string{"sg-acceptfirst"}, "198.18.0.2"),
	})
	runChecks(t, s, []check{
		{"drop first, blocked net", "eni-d", in, tcp("198.18.5.7", 80), drop("sg-dropfirst", 0)},
		{"drop first, other net", "eni-d", in, tcp("198.18.6.7", 80), accept("sg-dropfirst", 1)},
		{"accept first shadows drop", "eni-a", in, tcp("198.18.5.7", 80), accept("sg-acceptfirst", 0)},
	})
}

func TestSGOrderOnENI(t *testing.T) {
	s := world(t, []model.SecurityGroup{
		{SgID: "sg-deny", Ingress: []model.Rule{r("tcp", "", "22", "DROP")}},
		{SgID: "sg-allow", Ingress: []model.Rule{r("", "", "", "ACCEPT")}},
	}, []model.NetworkInterface{
		eni("eni-deny-first", []string{"sg-deny", "sg-allow"}, "198.18.0.1"),
		eni("eni-allow-first", []string{"sg-allow", "sg-deny"}, "198.18.0.2"),
	})
	runChecks(t, s, []check{
		{"first SG's drop wins", "eni-deny-first", in, tcp("198.18.9.9", 22), drop("sg-deny", 0)},
		{"falls through to second SG", "eni-deny-first", in, tcp("198.18.9.9", 80), accept("sg-allow", 0)},
		{"first SG's accept wins", "eni-allow-first", in, tcp("198.18.9.9", 22), accept("sg-allow", 0)},
	})
}

func TestSgIDRuleMatchesMemberIPsOnly(t *testing.T) {
	s := world(t, []model.SecurityGroup{
		{SgID: "sg-peer"},
		{SgID: "sg-other"},
		{SgID: "sg-target", Ingress: []model.Rule{rsg("", "sg-peer", "", "ACCEPT")}, Egress: []model.Rule{rsg("tcp", "sg-peer", "443", "ACCEPT")}},
	}, []model.NetworkInterface{
		eni("eni-a", []string{"sg-peer"}, "198.18.0.1", "2001:db8::1"),
		eni("eni-b", []string{"sg-other", "sg-peer"}, "198.18.0.2"),
		eni("eni-c", []string{"sg-other"}, "198.18.0.3", "2001:db8::3"),
		eni("eni-t", []string{"sg-target"}, "198.18.1.1"),
	})
	runChecks(t, s, []check{
		{"member a v4", "eni-t", in, proto(47, "198.18.0.1"), accept("sg-target", 0)},
		{"member a v6", "eni-t", in, tcp("2001:db8::1", 80), accept("sg-target", 0)},
		{"member b (second SG)", "eni-t", in, udp("198.18.0.2", 53), accept("sg-target", 0)},
		{"non-member c v4", "eni-t", in, proto(47, "198.18.0.3"), defaultDrop},
		{"non-member c v6", "eni-t", in, tcp("2001:db8::3", 80), defaultDrop},
		{"unassigned neighbour", "eni-t", in, tcp("198.18.0.4", 80), defaultDrop},
		{"unassigned v6 neighbour", "eni-t", in, tcp("2001:db8::2", 80), defaultDrop},
		{"target itself is not a member", "eni-t", in, tcp("198.18.1.1", 80), defaultDrop},
		{"egress to member", "eni-t", out, tcp("2001:db8::1", 443), accept("sg-target", 0)},
		{"egress to member wrong port", "eni-t", out, tcp("2001:db8::1", 444), defaultDrop},
		{"egress to non-member", "eni-t", out, tcp("198.18.0.3", 443), defaultDrop},
	})
	c := compiler.New(s)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("198.18.0.1/32"), netip.MustParsePrefix("198.18.0.2/32"),
		netip.MustParsePrefix("2001:db8::1/128")}, c.Members("sg-peer"))
	assert.Empty(t, c.Members("sg-target-none"))
}

func TestSgIDRuleWithNoMembersMatchesNothing(t *testing.T) {
	s := world(t, []model.SecurityGroup{
		{SgID: "sg-empty"},
		{SgID: "sg-t", Ingress: []model.Rule{rsg("", "sg-empty", "", "DROP"), r("", "", "", "ACCEPT")}},
	}, []model.NetworkInterface{eni("eni-t", []string{"sg-t"}, "198.18.1.1")})
	// The row stays so rule indexes are the API's: the catch-all is still index 1.
	runChecks(t, s, []check{{"skips empty sgId rule", "eni-t", in, tcp("198.18.0.1", 1), accept("sg-t", 1)}})
}

func TestSelfReferencingSG(t *testing.T) {
	s := world(t, []model.SecurityGroup{
		{SgID: "sg-self", Ingress: []model.Rule{rsg("tcp", "sg-self", "5432", "ACCEPT")}},
	}, []model.NetworkInterface{
		eni("eni-x", []string{"sg-self"}, "198.18.2.10"),
		eni("eni-y", []string{"sg-self"}, "198.18.2.11", "2001:db8:2::11"),
	})
	runChecks(t, s, []check{
		{"peer y to x", "eni-x", in, tcp("198.18.2.11", 5432), accept("sg-self", 0)},
		{"peer y v6 to x", "eni-x", in, tcp("2001:db8:2::11", 5432), accept("sg-self", 0)},
		{"x to itself", "eni-x", in, tcp("198.18.2.10", 5432), accept("sg-self", 0)},
		{"x to y", "eni-y", in, tcp("198.18.2.10", 5432), accept("sg-self", 0)},
		{"outsider", "eni-x", in, tcp("198.18.2.12", 5432), defaultDrop},
		{"wrong port", "eni-x", in, tcp("198.18.2.11", 5433), defaultDrop},
	})
}

func TestNoSGAndEmptySG(t *testing.T) {
	s := world(t, []model.SecurityGroup{{SgID: "sg-empty"}}, []model.NetworkInterface{
		eni("eni-none", nil, "198.18.0.1"),
		eni("eni-empty", []string{"sg-empty"}, "198.18.0.2"),
	})
	runChecks(t, s, []check{
		{"no sg ingress", "eni-none", in, tcp("198.18.0.9", 80), noSG},
		{"no sg egress", "eni-none", out, proto(model.IPProtoICMP, "198.18.0.9"), noSG},
		{"empty sg ingress", "eni-empty", in, tcp("198.18.0.9", 80), defaultDrop},
		{"empty sg egress", "eni-empty", out, udp("2001:db8::9", 53), defaultDrop},
	})
	tabs, err := compiler.New(s).Compile("eni-empty")
	require.NoError(t, err)
	require.Len(t, tabs.Ingress.Entries, 1, "one implicit DROP only")
	assert.True(t, tabs.Ingress.Entries[0].Implicit())
	_, err = compiler.New(s).Compile("eni-missing")
	assert.ErrorContains(t, err, "eni-missing")
}

func TestOneImplicitDropAfterLastSG(t *testing.T) {
	s := world(t, []model.SecurityGroup{
		{SgID: "sg-1", Ingress: []model.Rule{r("tcp", "", "1", "DROP")}},
		{SgID: "sg-2", Ingress: []model.Rule{r("tcp", "", "2", "ACCEPT"), r("udp", "", "3", "ACCEPT")}},
	}, []model.NetworkInterface{eni("eni-1", []string{"sg-1", "sg-2"}, "198.18.0.1")})
	tabs, err := compiler.New(s).Compile("eni-1")
	require.NoError(t, err)
	e := tabs.Ingress.Entries
	require.Len(t, e, 4)
	assert.Equal(t, []string{"sg-1", "sg-2", "sg-2", ""}, []string{e[0].SgID, e[1].SgID, e[2].SgID, e[3].SgID})
	assert.Equal(t, []int{0, 0, 1, -1}, []int{e[0].RuleIndex, e[1].RuleIndex, e[2].RuleIndex, e[3].RuleIndex})
	assert.True(t, e[3].Implicit())
	assert.Len(t, tabs.Egress.Entries, 1)
}

func TestPortBoundaries(t *testing.T) {
	s := world(t, []model.SecurityGroup{{SgID: "sg-p", Ingress: []model.Rule{
		r("tcp", "", "12345-12346", "ACCEPT"),
		r("udp", "", "42", "ACCEPT"),
		r("tcp", "", "1", "ACCEPT"),
		r("tcp", "", "65535", "ACCEPT"),
	}}}, []model.NetworkInterface{eni("eni-1", []string{"sg-p"}, "198.18.0.1")})
	runChecks(t, s, []check{
		{"12344", "eni-1", in, tcp("198.18.9.9", 12344), defaultDrop},
		{"12345", "eni-1", in, tcp("198.18.9.9", 12345), accept("sg-p", 0)},
		{"12346", "eni-1", in, tcp("198.18.9.9", 12346), accept("sg-p", 0)},
		{"12347", "eni-1", in, tcp("198.18.9.9", 12347), defaultDrop},
		{"udp in tcp range", "eni-1", in, udp("198.18.9.9", 12345), defaultDrop},
		{"42", "eni-1", in, udp("198.18.9.9", 42), accept("sg-p", 1)},
		{"43", "eni-1", in, udp("198.18.9.9", 43), defaultDrop},
		{"41", "eni-1", in, udp("198.18.9.9", 41), defaultDrop},
		{"1", "eni-1", in, tcp("198.18.9.9", 1), accept("sg-p", 2)},
		{"0", "eni-1", in, tcp("198.18.9.9", 0), defaultDrop},
		{"65535", "eni-1", in, tcp("198.18.9.9", 65535), accept("sg-p", 3)},
		{"65534", "eni-1", in, tcp("198.18.9.9", 65534), defaultDrop},
	})
}

func TestProtocolSemantics(t *testing.T) {
	s := world(t, []model.SecurityGroup{
		{SgID: "sg-all", Ingress: []model.Rule{r("", "", "", "ACCEPT")}},
		{SgID: "sg-allword", Ingress: []model.Rule{r("ALL", "198.18.0.0/15", "", "ACCEPT")}},
		{SgID: "sg-icmp", Ingress: []model.Rule{r("icmp", "", "", "ACCEPT")}},
		{SgID: "sg-icmpv6", Ingress: []model.Rule{r("icmpv6", "", "", "ACCEPT")}},
		{SgID: "sg-v4", Ingress: []model.Rule{r("", "0.0.0.0/0", "", "ACCEPT")}},
		{SgID: "sg-v6", Ingress: []model.Rule{r("", "::/0", "", "ACCEPT")}},
		{SgID: "sg-mapped", Ingress: []model.Rule{r("", "::ffff:0.0.0.0/96", "", "ACCEPT")}},
		{SgID: "sg-tcpany", Ingress: []model.Rule{r("tcp", "", "", "ACCEPT")}},
		{SgID: "sg-tcpports", Ingress: []model.Rule{r("tcp", "", "1-65535", "ACCEPT")}},
	}, []model.NetworkInterface{
		eni("eni-all", []string{"sg-all"}, "198.18.0.1"),
		eni("eni-allword", []string{"sg-allword"}, "198.18.0.2"),
		eni("eni-icmp", []string{"sg-icmp"}, "198.18.0.3"),
		eni("eni-icmpv6", []string{"sg-icmpv6"}, "198.18.0.4"),
		eni("eni-v4", []string{"sg-v4"}, "198.18.0.5"),
		eni("eni-v6", []string{"sg-v6"}, "198.18.0.6"),
		eni("eni-mapped", []string{"sg-mapped"}, "198.18.0.7"),
		eni("eni-tcpany", []string{"sg-tcpany"}, "198.18.0.8"),
		eni("eni-tcpports", []string{"sg-tcpports"}, "198.18.0.9"),
	})
	icmpWithPort := proto(model.IPProtoICMP, "198.18.9.9")
	icmpWithPort.Port, icmpWithPort.HasPort = 80, true
	tcpNoPort := tcp("198.18.9.9", 80)
	tcpNoPort.HasPort = false
	runChecks(t, s, []check{
		{"absent matches tcp", "eni-all", in, tcp("198.18.9.9", 80), accept("sg-all", 0)},
		{"absent matches udp", "eni-all", in, udp("198.18.9.9", 53), accept("sg-all", 0)},
		{"absent matches icmp", "eni-all", in, proto(model.IPProtoICMP, "198.18.9.9"), accept("sg-all", 0)},
		{"absent matches gre", "eni-all", in, proto(47, "198.18.9.9"), accept("sg-all", 0)},
		{"absent matches v6", "eni-all", in, proto(model.IPProtoICMPv6, "2001:db8::9"), accept("sg-all", 0)},
		{"all matches gre", "eni-allword", in, proto(47, "198.18.9.9"), accept("sg-allword", 0)},
		{"icmp v4", "eni-icmp", in, proto(model.IPProtoICMP, "198.18.9.9"), accept("sg-icmp", 0)},
		{"icmp ignores ports", "eni-icmp", in, icmpWithPort, accept("sg-icmp", 0)},
		{"icmp proto over v6", "eni-icmp", in, proto(model.IPProtoICMP, "2001:db8::9"), defaultDrop},
		{"icmp rule not icmpv6", "eni-icmp", in, proto(model.IPProtoICMPv6, "2001:db8::9"), defaultDrop},
		{"icmp rule not tcp", "eni-icmp", in, tcp("198.18.9.9", 80), defaultDrop},
		{"icmpv6 v6", "eni-icmpv6", in, proto(model.IPProtoICMPv6, "2001:db8::9"), accept("sg-icmpv6", 0)},
		{"icmpv6 proto over v4", "eni-icmpv6", in, proto(model.IPProtoICMPv6, "198.18.9.9"), defaultDrop},
		{"icmpv6 rule not icmp", "eni-icmpv6", in, proto(model.IPProtoICMP, "198.18.9.9"), defaultDrop},
		{"v4 rule v4 packet", "eni-v4", in, tcp("203.0.113.1", 1), accept("sg-v4", 0)},
		{"v4 rule v6 packet", "eni-v4", in, tcp("2001:db8::9", 1), defaultDrop},
		{"v4 rule mapped v6 packet", "eni-v4", in, tcp("::ffff:198.18.9.9", 1), defaultDrop},
		{"v6 rule v4 packet", "eni-v6", in, tcp("198.18.9.9", 1), defaultDrop},
		{"v6 rule v6 packet", "eni-v6", in, tcp("2001:db8::9", 1), accept("sg-v6", 0)},
		{"mapped v6 rule v4 packet", "eni-mapped", in, tcp("198.18.9.9", 1), defaultDrop},
		{"tcp no portRange, no ports known", "eni-tcpany", in, tcpNoPort, accept("sg-tcpany", 0)},
		{"portRange never matches unknown ports", "eni-tcpports", in, tcpNoPort, defaultDrop},
		{"portRange matches known port", "eni-tcpports", in, tcp("198.18.9.9", 80), accept("sg-tcpports", 0)},
	})
}

func TestEgressUsesDestination(t *testing.T) {
	s := world(t, []model.SecurityGroup{{SgID: "sg-e",
		Ingress: []model.Rule{r("tcp", "198.18.7.0/24", "", "ACCEPT")},
		Egress:  []model.Rule{r("tcp", "198.18.1.0/24", "443", "ACCEPT")}}},
		[]model.NetworkInterface{eni("eni-1", []string{"sg-e"}, "198.18.1.10")})
	runChecks(t, s, []check{
		// The packet is oriented: for egress Remote is the destination.
		{"egress to allowed destination", "eni-1", out, tcp("198.18.1.20", 443), accept("sg-e", 0)},
		{"egress to other destination", "eni-1", out, tcp("198.18.7.20", 443), defaultDrop},
		{"ingress list not used for egress", "eni-1", out, tcp("198.18.7.20", 80), defaultDrop},
		{"egress list not used for ingress", "eni-1", in, tcp("198.18.1.20", 443), defaultDrop},
		{"ingress from allowed source", "eni-1", in, tcp("198.18.7.20", 443), accept("sg-e", 0)},
	})
}

func TestLinearUnknownENI(t *testing.T) {
	s := world(t, nil, []model.NetworkInterface{eni("eni-1", nil, "198.18.0.1")})
	m := dataplane.NewLinear(compiler.New(s).CompileAll())
	p := tcp("198.18.0.2", 1)
	_, ok := m.Match("eni-2", in, &p)
	assert.False(t, ok)
}

func loadDemo(t *testing.T) *model.State {
	t.Helper()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	return s
}

// TestDemoVerdicts runs the checks of the Makefile's demo target.
func TestDemoVerdicts(t *testing.T) {
	runChecks(t, loadDemo(t), []check{
		{"web1 http from the internet", "eni-web1", in, tcp("203.0.113.7", 80), accept("sg-web", 1)},
		{"web1 http from the blocklisted net", "eni-web1", in, tcp("198.18.66.9", 80), drop("sg-web", 0)},
		{"web2 ssh during lockdown", "eni-web2", in, tcp("198.18.5.1", 22), drop("sg-lockdown", 0)},
		{"web1 ssh from the lab", "eni-web1", in, tcp("198.18.5.1", 22), accept("sg-ssh", 0)},
		{"db1 postgres from web2", "eni-db1", in, tcp("198.18.1.11", 5432), accept("sg-db", 0)},
		{"db1 postgres from spare", "eni-db1", in, tcp("198.18.3.10", 5432), defaultDrop},
		{"db1 dns out", "eni-db1", out, udp("198.18.1.10", 53), drop("sg-db", 1)},
		{"spare ping", "eni-spare", in, proto(model.IPProtoICMP, "198.18.1.10"), noSG},
		// Beyond the Makefile: the v6 rule, replication between db members, ping from the web tier.
		{"web1 http over v6", "eni-web1", in, tcp("2001:db8:9::1", 80), accept("sg-web", 3)},
		{"web1 https over v6", "eni-web1", in, tcp("2001:db8:9::1", 443), defaultDrop},
		{"db1 replication from db2", "eni-db1", in, tcp("198.18.2.11", 5432), accept("sg-db", 1)},
		{"db1 ping from web1 v4", "eni-db1", in, proto(model.IPProtoICMP, "198.18.1.10"), accept("sg-db", 2)},
		{"db1 postgres from web1 v6", "eni-db1", in, tcp("2001:db8:1::10", 5432), accept("sg-db", 0)},
		{"other account", "eni-other", in, proto(47, "198.18.1.10"), accept("sg-other", 0)},
	})
}

func TestIndexDemo(t *testing.T) {
	s := loadDemo(t)
	ix := compiler.NewIndex(s)
	const db2 = "b9ac5247-c4ca-4c9b-b8fa-7d19132e560a"
	assert.Equal(t, []string{"sg-db"}, ix.Referrers("sg-web"))
	assert.Equal(t, []string{"sg-db"}, ix.Referrers("sg-db"), "self-reference counted once")
	assert.Empty(t, ix.Referrers("sg-unused"))
	assert.Equal(t, []string{"eni-db1", db2}, ix.Users("sg-db"))
	assert.Equal(t, []string{"eni-web1", "eni-web2"}, ix.Users("sg-web"))
	assert.Equal(t, []string{"eni-web2"}, ix.Users("sg-lockdown"))
	assert.Empty(t, ix.Users("sg-unused"))
}

// changedENIs compiles both States and returns the ENIs of after whose tables differ from before.
func changedENIs(t *testing.T, before, after *model.State) map[string]bool {
	t.Helper()
	a, b := compiler.New(before).CompileAll(), compiler.New(after).CompileAll()
	out := map[string]bool{}
	for id, tb := range b {
		if !assert.ObjectsAreEqual(a[id], tb) {
			out[id] = true
		}
	}
	return out
}

func setOf(ids ...[]string) map[string]bool {
	out := map[string]bool{}
	for _, l := range ids {
		for _, id := range l {
			out[id] = true
		}
	}
	return out
}

// TestOldSnapshotKeepsOldAnswers edits a State and checks the original still compiles to its old verdicts.
func TestOldSnapshotKeepsOldAnswers(t *testing.T) {
	s := loadDemo(t)
	b := s.Edit()
	g, _ := s.SG("sg-web")
	ng := *g
	ng.Ingress = []model.Rule{r("", "", "", "DROP")}
	require.NoError(t, b.PutSG(ng))
	require.NoError(t, b.SetENISGs("eni-web2", []string{"sg-ssh"}))
	next := b.State()

	webHTTP := tcp("203.0.113.7", 80)
	oldM := dataplane.NewLinear(compiler.New(s).CompileAll())
	newM := dataplane.NewLinear(compiler.New(next).CompileAll())
	v, _ := oldM.Match("eni-web1", in, &webHTTP)
	assert.Equal(t, model.Accept, v.Action)
	v, _ = newM.Match("eni-web1", in, &webHTTP)
	assert.Equal(t, model.Drop, v.Action)

	// eni-web2 left sg-web: the old State still counts it as a member for sg-db's sgId rule.
	fromWeb2 := tcp("198.18.1.11", 5432)
	v, _ = oldM.Match("eni-db1", in, &fromWeb2)
	assert.Equal(t, accept("sg-db", 0), want{v.Action, v.Reason, v.SgID, v.RuleIndex})
	v, _ = newM.Match("eni-db1", in, &fromWeb2)
	assert.Equal(t, model.Drop, v.Action)
}

// randomBytes feeds fuzzTopology and fuzzRule from a seeded generator.
func randomBytes(rng *rand.Rand, n int) *byteSource {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return &byteSource{b: b}
}

// mutate returns s changed in one to three random ways an API call or a topology reload can change it:
// an SG's rules, an ENI's SG list, an ENI's addresses, an ENI added or removed. Edits go through the
// Builder (sharing unchanged objects), removals through a rebuilt State (sharing nothing).
func mutate(t *testing.T, rng *rand.Rand, s *model.State) *model.State {
	src := randomBytes(rng, 256)
	sgIDs := s.SGIDs()
	for range 1 + rng.IntN(3) {
		enis := s.ENIIDs()
		b := s.Edit()
		switch k := rng.IntN(5); {
		case k == 0 || len(enis) == 0:
			g, _ := s.SG(sgIDs[rng.IntN(len(sgIDs))])
			ng := *g
			ng.Ingress = slices.Clone(g.Ingress)
			if len(ng.Ingress) > 0 && rng.IntN(2) == 0 {
				ng.Ingress = slices.Delete(ng.Ingress, 0, 1)
			} else {
				ng.Ingress = append(ng.Ingress, fuzzRule(src, sgIDs))
			}
			require.NoError(t, b.PutSG(ng))
		case k == 1:
			perm := slices.Clone(sgIDs)
			rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
			require.NoError(t, b.SetENISGs(enis[rng.IntN(len(enis))], perm[:rng.IntN(len(perm)+1)]))
		case k == 2:
			n, _ := s.ENI(enis[rng.IntN(len(enis))])
			nn := *n
			nn.PrivateIPAddresses = []string{poolAddr(src.next()).String()}
			if err := b.PutENI(nn); !ipTaken(err) {
				require.NoError(t, err)
			}
		case k == 3:
			err := b.PutENI(model.NetworkInterface{NetworkInterfaceID: fmt.Sprintf("eni-new%d", rng.IntN(1000)),
				AppID: "A", PrivateIPAddresses: []string{poolAddr(src.next()).String()}, SgIDs: sgIDs[:rng.IntN(len(sgIDs)+1)]})
			if !ipTaken(err) {
				require.NoError(t, err)
			}
		default:
			topo := s.Topology()
			topo.NetworkInterfaces = slices.Delete(topo.NetworkInterfaces, 0, 1)
			next, err := model.NewState(topo)
			require.NoError(t, err)
			s = next
			continue
		}
		s = b.State()
	}
	return s
}

// TestAffectedIsExact: for random state pairs, the old tables with Affected(old, new) recompiled (and
// the removed ENIs dropped) are exactly a full CompileAll(new), and every ENI Affected names really
// changed, was added, removed, re-addressed or re-listed (it recompiles nothing needlessly).
func TestAffectedIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 17))
	for i := range 2000 {
		old, err := model.NewState(fuzzTopology(randomBytes(rng, 512)))
		require.NoError(t, err)
		new := mutate(t, rng, old)
		affected := compiler.Affected(old, new)
		require.True(t, slices.IsSorted(affected))

		tables := compiler.New(old).CompileAll()
		comp := compiler.New(new)
		for _, id := range affected {
			if _, ok := new.ENI(id); !ok {
				delete(tables, id)
				continue
			}
			tables[id], err = comp.Compile(id)
			require.NoError(t, err)
		}
		full := comp.CompileAll()
		require.Equal(t, full, tables, "pair %d: affected %v", i, affected)
		require.Equal(t, compiler.NewIndex(new), compiler.NewIndex(old).Next(old, new), "pair %d: index", i)

		before := compiler.New(old).CompileAll()
		for _, id := range affected {
			_, inOld := before[id]
			_, inNew := full[id]
			if inOld && inNew && assert.ObjectsAreEqual(before[id], full[id]) {
				// Only an ENI re-addressed (its own addresses are not in its tables) or re-listed (an SG
				// without rules adds no rows) is recompiled into what it was.
				o, _ := old.ENI(id)
				n, _ := new.ENI(id)
				assert.False(t, slices.Equal(o.Addrs(), n.Addrs()) && slices.Equal(o.SgIDs, n.SgIDs), "pair %d: %s recompiled but unchanged", i, id)
			}
		}
	}
}

func TestAffectedNames(t *testing.T) {
	s := loadDemo(t)
	rule := func(id string, rules ...model.Rule) *model.State {
		b := s.Edit()
		g, _ := s.SG(id)
		ng := *g
		ng.Ingress = rules
		require.NoError(t, b.PutSG(ng))
		return b.State()
	}
	relist := func(eni string, sgs ...string) *model.State {
		b := s.Edit()
		require.NoError(t, b.SetENISGs(eni, sgs))
		return b.State()
	}
	for _, c := range []struct {
		name string
		new  *model.State
		want []string
	}{
		{"nothing", s, []string{}},
		{"one rule of sg-ssh: its users only", rule("sg-ssh", r("tcp", "198.18.0.0/15", "2222", "ACCEPT")), []string{"eni-web1", "eni-web2"}},
		{"eni-spare joins sg-web: it and the users of sg-db, whose rules name sg-web", relist("eni-spare", "sg-web"),
			[]string{"b9ac5247-c4ca-4c9b-b8fa-7d19132e560a", "eni-db1", "eni-spare"}},
		{"eni-db1 leaves self-referencing sg-db", relist("eni-db1"), []string{"b9ac5247-c4ca-4c9b-b8fa-7d19132e560a", "eni-db1"}},
		{"no old state: everything", nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.new == nil {
				assert.Len(t, compiler.Affected(nil, s), len(s.ENIIDs()))
				return
			}
			assert.Equal(t, c.want, compiler.Affected(s, c.new))
			assert.Equal(t, setOf(c.want), changedENIs(t, s, c.new))
		})
	}
}

// ipTaken tells a PutENI refused for a private IP another ENI holds: the random edit is then skipped.
func ipTaken(err error) bool {
	var e *model.Error
	return errors.As(err, &e) && e.Code == model.CodeConflict
}

// NewFrom shares the member index of the compiler before only while the ENIs are the very same: after
// any change of an ENI's addresses or SG list, an ENI added or deleted, no member list of the earlier
// state survives; after a rules-only edit the lists are the same slices.
func TestNewFromNeverKeepsStaleMembers(t *testing.T) {
	s := loadDemo(t)
	prev := compiler.New(s)
	web, _ := s.SG("sg-web")
	web2, _ := s.ENI("eni-web2")
	edits := []struct {
		name   string
		edit   func(b *model.Builder) error
		shared bool
	}{
		{"rules only", func(b *model.Builder) error {
			ng := *web
			ng.Ingress = []model.Rule{rsg("tcp", "sg-web", "80", "ACCEPT")}
			return b.PutSG(ng)
		}, true},
		{"readdressed", func(b *model.Builder) error {
			n := *web2
			n.PrivateIPAddresses = []string{"198.18.1.99"}
			return b.PutENI(n)
		}, false},
		{"left sg-web", func(b *model.Builder) error { return b.SetENISGs("eni-web2", []string{"sg-ssh"}) }, false},
		{"joined sg-web", func(b *model.Builder) error { return b.SetENISGs("eni-spare", []string{"sg-web"}) }, false},
		{"deleted", func(b *model.Builder) error { return b.DeleteENI("eni-web2") }, false},
		{"added", func(b *model.Builder) error {
			return b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-web3", AppID: web2.AppID, PrivateIPAddresses: []string{"198.18.1.13"}, SgIDs: []string{"sg-web"}})
		}, false},
	}
	for _, c := range edits {
		t.Run(c.name, func(t *testing.T) {
			b := s.Edit()
			require.NoError(t, c.edit(b))
			next := b.State()
			got, want := compiler.NewFrom(prev, next), compiler.New(next)
			for _, sg := range slices.Concat(s.SGIDs(), next.SGIDs()) {
				assert.Equal(t, want.Members(sg), got.Members(sg), sg)
				if m, g := prev.Members(sg), got.Members(sg); len(m) > 0 {
					assert.Equal(t, c.shared, len(g) > 0 && &m[0] == &g[0], "%s: the earlier list", sg)
				}
			}
			assert.Equal(t, want.CompileAll(), got.CompileAll())
		})
	}
	if !t.Failed() {
		m := prev.Members("sg-web")
		assert.NotContains(t, m, netip.MustParsePrefix("198.18.1.99/32"), "the earlier compiler's own lists are untouched")
	}
}

// A chain of compilers, each NewFrom the one before, over random edits (rules, SG lists, addresses,
// ENIs added, removed through a rebuilt state) compiles exactly what a fresh compiler does.
func TestNewFromChainEqualsNew(t *testing.T) {
	rng := rand.New(rand.NewPCG(29, 31))
	for i := range 300 {
		s, err := model.NewState(fuzzTopology(randomBytes(rng, 512)))
		require.NoError(t, err)
		comp := compiler.New(s)
		for step := range 8 {
			s = mutate(t, rng, s)
			comp = compiler.NewFrom(comp, s)
			fresh := compiler.New(s)
			for _, sg := range s.SGIDs() {
				require.Equal(t, fresh.Members(sg), comp.Members(sg), "chain %d step %d: %s", i, step, sg)
			}
			require.Equal(t, fresh.CompileAll(), comp.CompileAll(), "chain %d step %d", i, step)
		}
	}
}
