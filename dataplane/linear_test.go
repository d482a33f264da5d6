package dataplane_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

func TestReasonNames(t *testing.T) {
	names := map[dataplane.Reason]string{
		dataplane.ReasonRule: "rule", dataplane.ReasonDefaultDrop: "default-drop", dataplane.ReasonEstablished: "established",
		dataplane.ReasonNoSG: "no-sg", dataplane.ReasonARP: "arp", dataplane.ReasonND: "nd", dataplane.ReasonNotIP: "not-ip",
		dataplane.ReasonMalformed: "malformed", dataplane.Reason(200): "unknown",
	}
	for r, want := range names {
		assert.Equal(t, want, r.String())
	}
	b, err := json.Marshal(struct{ R dataplane.Reason }{dataplane.ReasonNoSG})
	require.NoError(t, err)
	assert.JSONEq(t, `{"R":"no-sg"}`, string(b))
}

func TestEntryMatches(t *testing.T) {
	p10 := netip.MustParsePrefix("10.0.0.0/8")
	tests := []struct {
		name  string
		entry compiler.Entry
		pkt   dataplane.Packet
		want  bool
	}{
		{"any matches v4", compiler.Entry{AnyRemote: true}, pkt("10.1.1.1", 47, 0), true},
		{"any matches v6", compiler.Entry{AnyRemote: true}, pkt("2001:db8::1", 58, 0), true},
		{"remote inside", compiler.Entry{Remotes: []netip.Prefix{p10}}, pkt("10.1.1.1", 6, 1), true},
		{"remote outside", compiler.Entry{Remotes: []netip.Prefix{p10}}, pkt("11.1.1.1", 6, 1), false},
		{"second remote", compiler.Entry{Remotes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), p10}}, pkt("10.1.1.1", 6, 1), true},
		{"no remotes match nothing", compiler.Entry{}, pkt("10.1.1.1", 6, 1), false},
		{"protocol mismatch", compiler.Entry{AnyRemote: true, Protocol: model.ProtoUDP}, pkt("10.1.1.1", 6, 1), false},
		{"port in range", compiler.Entry{AnyRemote: true, Protocol: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 81}}, pkt("10.1.1.1", 6, 81), true},
		{"port out of range", compiler.Entry{AnyRemote: true, Protocol: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 81}}, pkt("10.1.1.1", 6, 82), false},
		{"unknown port never matches a range", compiler.Entry{AnyRemote: true, Protocol: model.ProtoTCP, Ports: model.PortRange{Lo: 1, Hi: 65535}},
			dataplane.Packet{Remote: netip.MustParseAddr("10.1.1.1"), Proto: 6}, false},
		{"icmp not over v6", compiler.Entry{AnyRemote: true, Protocol: model.ProtoICMP}, pkt("2001:db8::1", 1, 0), false},
		{"icmpv6 over v6", compiler.Entry{AnyRemote: true, Protocol: model.ProtoICMPv6}, pkt("2001:db8::1", 58, 0), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, dataplane.EntryMatches(&tc.entry, &tc.pkt))
		})
	}
}

func TestExplainAndLinearTable(t *testing.T) {
	tabs := compileRules(t,
		model.Rule{IPProtocol: "tcp", PortRange: "22", Action: "DROP"},
		model.Rule{IPProtocol: "tcp", Action: "ACCEPT"})
	tab := tabs["eni-1"].Ingress
	lt := dataplane.NewLinearTable(tab)

	p := pkt("198.18.9.9", 6, 22)
	i := lt.Lookup(&p)
	assert.Equal(t, 0, i)
	assert.Equal(t, dataplane.Verdict{Action: model.Drop, Reason: dataplane.ReasonRule, SgID: "sg-x", RuleIndex: 0, Entry: 0}, dataplane.VerdictOf(tab, i))

	p = pkt("198.18.9.9", 6, 80)
	assert.Equal(t, dataplane.Verdict{Action: model.Accept, Reason: dataplane.ReasonRule, SgID: "sg-x", RuleIndex: 1, Entry: 1},
		dataplane.VerdictOf(tab, lt.Lookup(&p)))

	p = pkt("198.18.9.9", 17, 80)
	assert.Equal(t, dataplane.Verdict{Action: model.Drop, Reason: dataplane.ReasonDefaultDrop, RuleIndex: -1, Entry: 2},
		dataplane.VerdictOf(tab, lt.Lookup(&p)))

	noSG := &compiler.Table{ENI: "eni-z", NoSG: true, Entries: []compiler.Entry{{AnyRemote: true, RuleIndex: -1}}}
	assert.Equal(t, dataplane.Verdict{Action: model.Drop, Reason: dataplane.ReasonNoSG, RuleIndex: -1, Entry: 0},
		dataplane.VerdictOf(noSG, dataplane.NewLinearTable(noSG).Lookup(&p)))
}

// BenchmarkLinearLookup measures the reference matcher: a packet that matches no rule scans every entry.
func BenchmarkLinearLookup(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		rules := make([]model.Rule, n)
		for i := range rules {
			rules[i] = model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("198.19.%d.0/24", i%256), PortRange: fmt.Sprint(1 + i), Action: "ACCEPT"}
		}
		tab := compileRules(b, rules...)["eni-1"].Ingress
		lt := dataplane.NewLinearTable(tab)
		p := pkt("203.0.113.1", 6, 80)
		b.Run(fmt.Sprintf("rules=%d/miss", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if lt.Lookup(&p) != n {
					b.Fatal("expected the implicit drop")
				}
			}
		})
	}
}
