package model_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

func TestParseRuleProtocol(t *testing.T) {
	tests := []struct {
		in   string
		want model.Protocol
		bad  bool
	}{
		{in: "tcp", want: model.ProtoTCP},
		{in: "TCP", want: model.ProtoTCP},
		{in: "Udp", want: model.ProtoUDP},
		{in: "icmp", want: model.ProtoICMP},
		{in: "ICMP", want: model.ProtoICMP},
		{in: "icmpv6", want: model.ProtoICMPv6},
		{in: "ICMPv6", want: model.ProtoICMPv6},
		{in: "all", want: model.ProtoAll},
		{in: "ALL", want: model.ProtoAll},
		{in: "", want: model.ProtoAll},
		{in: "gre", bad: true},
		{in: "6", bad: true},
		{in: " tcp", bad: true},
		{in: "tcp ", bad: true},
		{in: "icmp6", bad: true},
		{in: "any", bad: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			p, err := model.ParseRule(model.Rule{IPProtocol: tc.in, Action: "ACCEPT"})
			if tc.bad {
				assertBadRuleFormat(t, err, "ipProtocol")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, p.Protocol)
		})
	}
}

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in   string
		want string
		bad  string // substring of the error when the input is bad
	}{
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "10.1.2.3", want: "10.1.2.3/32"},
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},
		{in: "198.18.0.1/32", want: "198.18.0.1/32"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "2001:db8::1/32", want: "2001:db8::/32"},
		{in: "::/0", want: "::/0"},
		{in: "2001:db8::/128", want: "2001:db8::/128"},
		{in: "10.0.0.0/33", bad: "prefix length must be 0-32"},
		{in: "2001:db8::/129", bad: "prefix length must be 0-128"},
		{in: "10.0.0.0/-1", bad: "prefix length"},
		{in: "10.0.0/8", bad: "not an IPv4 or IPv6 CIDR"},
		{in: "300.0.0.0/8", bad: "not an IPv4 or IPv6 CIDR"},
		{in: "fe80::1%eth0", bad: "zoned"},
		{in: "fe80::1%eth0/64", bad: "zoned"},
		{in: "banana", bad: "not an IPv4 or IPv6 CIDR"},
		{in: " 10.0.0.0/8", bad: "not an IPv4 or IPv6 CIDR"},
		{in: "10.0.0.0/", bad: "cidrIp"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			p, err := model.ParseCIDR(tc.in)
			if tc.bad != "" {
				assertBadRuleFormat(t, err, "cidrIp", tc.bad)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, netip.MustParsePrefix(tc.want), p)
		})
	}
}

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in     string
		lo, hi uint16
		bad    string
	}{
		{in: "1", lo: 1, hi: 1},
		{in: "80", lo: 80, hi: 80},
		{in: "65535", lo: 65535, hi: 65535},
		{in: "8000-8010", lo: 8000, hi: 8010},
		{in: "1-65535", lo: 1, hi: 65535},
		{in: "80-80", lo: 80, hi: 80},
		{in: "0", bad: "out of range"},
		{in: "0-80", bad: "out of range"},
		{in: "65536", bad: "out of range"},
		{in: "80-65536", bad: "out of range"},
		{in: "99999", bad: "out of range"},
		{in: "100000", bad: "must be a port"},
		{in: "80-", bad: "must be a port"},
		{in: "-80", bad: "must be a port"},
		{in: " 80", bad: "must be a port"},
		{in: "80 ", bad: "must be a port"},
		{in: "80 - 90", bad: "must be a port"},
		{in: "+80", bad: "must be a port"},
		{in: "80-90-100", bad: "must be a port"},
		{in: "0x50", bad: "must be a port"},
		{in: "http", bad: "must be a port"},
		{in: "80,443", bad: "must be a port"},
		{in: "80-70", bad: "low port above high port"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			r, err := model.ParsePortRange(tc.in)
			if tc.bad != "" {
				assertBadRuleFormat(t, err, "portRange", tc.bad)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, model.PortRange{Lo: tc.lo, Hi: tc.hi}, r)
		})
	}
}

func TestParsePortRangeMessage(t *testing.T) {
	_, err := model.ParsePortRange("80-70")
	require.Error(t, err)
	assert.Equal(t, `portRange: "80-70": low port above high port`, err.Error())
}

func TestParseRuleConstraints(t *testing.T) {
	desc := func(s string, n int) string { return strings.Repeat(s, n) }
	tests := []struct {
		name  string
		rule  model.Rule
		field string // "" = valid
		check func(t *testing.T, p model.ParsedRule)
	}{
		{name: "seed ingress example", rule: model.Rule{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "22", Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) {
				assert.Equal(t, model.ParsedRule{Protocol: model.ProtoTCP, Remote: netip.MustParsePrefix("10.0.0.0/8"),
					Ports: model.PortRange{Lo: 22, Hi: 22}, Action: model.Accept}, p)
			}},
		{name: "action lower case", rule: model.Rule{Action: "accept"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, model.Accept, p.Action) }},
		{name: "action mixed case drop", rule: model.Rule{Action: "DrOp"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, model.Drop, p.Action) }},
		{name: "absent everything is any", rule: model.Rule{Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) {
				assert.False(t, p.Remote.IsValid())
				assert.Empty(t, p.RemoteSG)
				assert.True(t, p.Ports.Any())
				assert.Equal(t, model.ProtoAll, p.Protocol)
			}},
		{name: "sgId rule", rule: model.Rule{SgID: "sg-abc", Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, "sg-abc", p.RemoteSG) }},
		{name: "udp with range", rule: model.Rule{IPProtocol: "udp", PortRange: "53-54", Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, model.PortRange{Lo: 53, Hi: 54}, p.Ports) }},
		{name: "host bits masked", rule: model.Rule{CidrIP: "10.1.2.3/8", Action: "DROP"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, netip.MustParsePrefix("10.0.0.0/8"), p.Remote) }},
		{name: "desc 50 ascii", rule: model.Rule{Action: "ACCEPT", Desc: desc("a", 50)}},
		{name: "desc 50 é", rule: model.Rule{Action: "ACCEPT", Desc: desc("é", 50)}},
		{name: "desc 50 中", rule: model.Rule{Action: "ACCEPT", Desc: desc("中", 50)}},
		{name: "desc 51 ascii", rule: model.Rule{Action: "ACCEPT", Desc: desc("a", 51)}, field: "desc"},
		{name: "desc 51 é", rule: model.Rule{Action: "ACCEPT", Desc: desc("é", 51)}, field: "desc"},
		{name: "desc 51 中", rule: model.Rule{Action: "ACCEPT", Desc: desc("中", 51)}, field: "desc"},
		{name: "desc invalid utf8", rule: model.Rule{Action: "ACCEPT", Desc: "\xff"}, field: "desc"},
		{name: "seed example 83-char desc", rule: model.Rule{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "22", Action: "ACCEPT",
			Desc: desc("x", 83)}, field: "desc"},
		{name: "action missing", rule: model.Rule{IPProtocol: "tcp"}, field: "action"},
		{name: "action bad", rule: model.Rule{Action: "ALLOW"}, field: "action"},
		{name: "action reject", rule: model.Rule{Action: "REJECT"}, field: "action"},
		{name: "cidr and sgId", rule: model.Rule{CidrIP: "10.0.0.0/8", SgID: "sg-a", Action: "ACCEPT"}, field: "cidrIp and sgId"},
		{name: "bad sgId", rule: model.Rule{SgID: "sg_a", Action: "ACCEPT"}, field: "sgId"},
		{name: "sgId too long", rule: model.Rule{SgID: desc("a", 65), Action: "ACCEPT"}, field: "sgId"},
		{name: "portRange with icmp", rule: model.Rule{IPProtocol: "icmp", PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange with icmpv6", rule: model.Rule{IPProtocol: "icmpv6", PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange without protocol", rule: model.Rule{PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange with all", rule: model.Rule{IPProtocol: "all", PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange 0", rule: model.Rule{IPProtocol: "tcp", PortRange: "0", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange 65536", rule: model.Rule{IPProtocol: "tcp", PortRange: "65536", Action: "ACCEPT"}, field: "portRange"},
		{name: "bad cidr", rule: model.Rule{CidrIP: "10.0.0.0/33", Action: "ACCEPT"}, field: "cidrIp"},
		{name: "bad protocol", rule: model.Rule{IPProtocol: "sctp", Action: "ACCEPT"}, field: "ipProtocol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := model.ParseRule(tc.rule)
			if tc.field != "" {
				assertBadRuleFormat(t, err, tc.field)
				return
			}
			require.NoError(t, err)
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

func TestParsedRuleRoundTrip(t *testing.T) {
	in := model.Rule{IPProtocol: "TCP", CidrIP: "10.1.2.3/8", PortRange: "80-80", Action: "accept", Desc: "x"}
	p, err := model.ParseRule(in)
	require.NoError(t, err)
	assert.Equal(t, model.Rule{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "80", Action: "ACCEPT", Desc: "x"}, p.Rule())
	assert.Equal(t, `ACCEPT tcp 10.0.0.0/8 port 80 "x"`, p.String())
}

func TestErrorAtPath(t *testing.T) {
	_, err := model.ParseRule(model.Rule{IPProtocol: "tcp", PortRange: "80-70", Action: "ACCEPT"})
	require.Error(t, err)
	err = model.AtPath("ingress[0]", err)
	err = model.AtPath("securityGroups[1]", err)
	assert.Equal(t, `securityGroups[1].ingress[0].portRange: "80-70": low port above high port`, err.Error())
	assertBadRuleFormat(t, err)
	assert.Equal(t, model.CodeInternal, model.CodeOf(assert.AnError))
}

// FuzzParseRule checks that the parser never panics, that every accepted rule survives the canonical
// round trip unchanged, and that every rejection is a coded 9003 naming a field.
func FuzzParseRule(f *testing.F) {
	f.Add("tcp", "10.0.0.0/8", "", "22", "ACCEPT", "ssh")
	f.Add("udp", "2001:db8::1", "", "53-54", "drop", "")
	f.Add("", "", "sg-web", "", "ACCEPT", "中文")
	f.Add("icmp", "10.1.2.3/8", "", "", "accept", "é")
	f.Add("icmpv6", "::/0", "", "80", "ACCEPT", "")
	f.Add("tcp", "10.0.0.0/33", "", "80-70", "", "")
	f.Add("ALL", "::ffff:1.2.3.4/120", "", "", "Drop", "")
	f.Fuzz(func(t *testing.T, proto, cidr, sg, ports, action, desc string) {
		in := model.Rule{IPProtocol: proto, CidrIP: cidr, SgID: sg, PortRange: ports, Action: action, Desc: desc}
		p, err := model.ParseRule(in)
		if err != nil {
			var e *model.Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, model.CodeBadRuleFormat, e.Code)
			assert.NotEmpty(t, e.Error())
			assert.NotEmpty(t, e.Path, "error %q names no field", err)
			return
		}
		canon := p.Rule()
		again, err := model.ParseRule(canon)
		require.NoError(t, err, "canonical form %+v of %+v rejected", canon, in)
		assert.Equal(t, p, again)
		assert.Equal(t, canon, again.Rule())
	})
}

// assertBadRuleFormat checks that err is a bad rule format (9003) whose message holds each of want.
func assertBadRuleFormat(t *testing.T, err error, want ...string) {
	t.Helper()
	require.Error(t, err)
	assert.Equal(t, model.CodeBadRuleFormat, model.CodeOf(err))
	for _, w := range want {
		assert.Contains(t, err.Error(), w)
	}
}
