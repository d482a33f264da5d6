package bench

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/model"
)

func TestParseClassBenchMapping(t *testing.T) {
	in := strings.Join([]string{
		"@10.1.2.3/8\t1.2.3.4/32\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0000\t", // 1 tcp 80, host bits masked
		"@192.168.0.0/16 0.0.0.0/0 0 : 65535 0 : 65535 0x11/0xFF",                 // 2 udp, all ports
		"@0.0.0.0/0 0.0.0.0/0 0 : 65535 0 : 1023 0x06/0xFF",                       // 3 tcp 1-1023, DROP
		"@1.1.1.1/32 0.0.0.0/0 0 : 65535 0 : 0 0x06/0xFF",                         // left out: dport 0:0
		"",
		"@2.2.2.0/24 0.0.0.0/0 0 : 65535 53 : 53 0x01/0xFF",  // 4 icmp, no portRange
		"@3.3.0.0/16 0.0.0.0/0 0 : 65535 53 : 53 0x06/0x00",  // 5 mask 0 → all, no portRange
		"@4.0.0.0/8 0.0.0.0/0 0 : 65535 100 : 200 0x2f/0xFF", // 6 gre → all, DROP
		"@5.0.0.0/8 0.0.0.0/0 10 : 20 100 : 200 0x11/0xFF",   // 7 udp 100-200
	}, "\n")
	rules, err := ParseClassBench("t.rules", strings.NewReader(in), 0)
	require.NoError(t, err)
	want := []model.Rule{
		{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "80-80", Action: "ACCEPT"},
		{IPProtocol: "udp", CidrIP: "192.168.0.0/16", Action: "ACCEPT"},
		{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "1-1023", Action: "DROP"},
		{IPProtocol: "icmp", CidrIP: "2.2.2.0/24", Action: "ACCEPT"},
		{CidrIP: "3.3.0.0/16", Action: "ACCEPT"},
		{CidrIP: "4.0.0.0/8", Action: "DROP"},
		{IPProtocol: "udp", CidrIP: "5.0.0.0/8", PortRange: "100-200", Action: "ACCEPT"},
	}
	assert.Equal(t, want, rules)

	limited, err := ParseClassBench("t.rules", strings.NewReader(in), 2)
	require.NoError(t, err)
	assert.Equal(t, want[:2], limited)

	st, err := StateFromRules(rules, 3)
	require.NoError(t, err)
	eni, ok := st.ENI(ENIID)
	require.True(t, ok)
	assert.Equal(t, []string{"sg-bench-0", "sg-bench-1", "sg-bench-2"}, eni.SgIDs)
	tab, err := IngressTable(st)
	require.NoError(t, err)
	assert.Len(t, tab.Entries, len(rules)+1)
	assert.Equal(t, "sg-bench-1", tab.Entries[3].SgID)
	assert.Equal(t, 0, tab.Entries[3].RuleIndex)
}

func TestParseClassBenchErrors(t *testing.T) {
	tests := []struct {
		name, line, want string
	}{
		{"fields", "@1.2.3.4/32 0.0.0.0/0 0 : 65535", "t.rules:2: 5 fields"},
		{"no at", "1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF", "t.rules:2: source"},
		{"bad src", "@1.2.3/32 0.0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF", "source prefix"},
		{"bad dst", "@1.2.3.4/32 0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF", "destination prefix"},
		{"bad colon", "@1.2.3.4/32 0.0.0.0/0 0 - 65535 0 : 65535 0x06/0xFF", "lo : hi"},
		{"big port", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65536 0x06/0xFF", "destination port range"},
		{"lo>hi", "@1.2.3.4/32 0.0.0.0/0 9 : 1 0 : 65535 0x06/0xFF", "source port range 9 : 1: low above high"},
		{"proto", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 0x06", "want value/mask"},
		{"proto byte", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 0x106/0xFF", "bytes"},
		{"proto not hex", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 017/0xFF", `"017": want 0x`},
		{"flags", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF garbage", `flags "garbage"`},
		{"flags too wide", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF 0x10000/0x0200", "at most 4 hex digits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF\n" + tt.line
			_, err := ParseClassBench("t.rules", strings.NewReader(in), 0)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), "t.rules:2:")
		})
	}
}

// TestParseClassBenchNoRule: a file with no rule to use (empty, blank, or only 0 : 0 destination
// ports, which the mapping skips) is refused, not benched as zero rules.
func TestParseClassBenchNoRule(t *testing.T) {
	for _, in := range []string{"", "\n\n", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 0 0x06/0xFF 0x0000/0x0000\n"} {
		_, err := ParseClassBench("t.rules", strings.NewReader(in), 0)
		assert.ErrorContains(t, err, "t.rules: no rule to use", "%q", in)
	}
}

func TestSyntheticDeterministic(t *testing.T) {
	a, b := Synthetic(500, 7, true), Synthetic(500, 7, true)
	assert.Equal(t, a, b)
	assert.NotEqual(t, a, Synthetic(500, 8, true))
	v6 := 0
	for _, r := range a {
		_, err := model.ParseRule(r)
		require.NoError(t, err)
		if strings.Contains(r.CidrIP, ":") {
			v6++
		}
	}
	assert.Positive(t, v6)
	for _, r := range Synthetic(500, 7, false) {
		assert.NotContains(t, r.CidrIP, ":")
	}
}

func TestPacketsHitCorners(t *testing.T) {
	st, err := StateFromRules([]model.Rule{{IPProtocol: "tcp", CidrIP: "10.0.0.0/24", PortRange: "80-90", Action: "ACCEPT"}}, 1)
	require.NoError(t, err)
	tab, err := IngressTable(st)
	require.NoError(t, err)
	pkts := Packets(tab, 0, 10, 1)
	seen := map[string]bool{}
	for _, p := range pkts {
		seen[p.Remote.String()] = true
		if p.HasPort && p.Remote.String() == "10.0.0.0" {
			seen["port:"+string(rune(p.Port))] = true
		}
	}
	for _, a := range []string{"10.0.0.0", "10.0.0.255", "9.255.255.255", "10.0.1.0"} {
		assert.True(t, seen[a], a)
	}
	for _, port := range []uint16{79, 80, 90, 91} {
		assert.True(t, seen["port:"+string(rune(port))], port)
	}
	assert.Len(t, Packets(tab, 5, 0, 1), 5)
}

func TestRunClassBench(t *testing.T) {
	path := testkit.SharedData(t, "classbench", "acl1_1k")
	st, err := LoadClassBench(path, 300, 2)
	require.NoError(t, err)
	tab, err := IngressTable(st)
	require.NoError(t, err)
	assert.Len(t, tab.Entries, 301)
	r, err := Run(context.Background(), "acl1", tab, Packets(tab, 500, 500, 1))
	require.NoError(t, err)
	assert.Zero(t, r.Mismatches)
	assert.Zero(t, r.AllocsPerLookup)
	assert.Positive(t, r.FastNs)
	assert.Positive(t, r.BytesPerRule)
	var sb strings.Builder
	WriteHeader(&sb)
	Write(&sb, r)
	assert.Contains(t, sb.String(), "acl1")
}

func TestLoadClassBenchErrors(t *testing.T) {
	_, err := LoadClassBench(filepath.Join(t.TempDir(), "missing"), 0, 1)
	require.Error(t, err)
	p := testkit.WriteFile(t, "bad", "@1.2.3.4/32 0.0.0.0/0 0 : 65535 0 : 65535 0x06/0xFF\n\n@x\n")
	_, err = LoadClassBench(p, 0, 1)
	require.ErrorContains(t, err, p+":3:")
}

// FuzzParseClassBench: the parser never panics, and every rule it returns is a valid SG rule.
func FuzzParseClassBench(f *testing.F) {
	f.Add("@176.19.181.33/32\t90.145.23.162/32\t0 : 65535\t1550 : 1550\t0x06/0xFF\t0x0000/0x0200\t")
	f.Add("@0.0.0.0/0 0.0.0.0/0 0 : 65535 0 : 0 0x00/0x00")
	f.Add("@::/0 ::/0 0 : 1 2 : 3 0x11/0xFF")
	f.Fuzz(func(t *testing.T, in string) {
		rules, err := ParseClassBench("f", strings.NewReader(in), 0)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		for i, r := range rules {
			if _, err := model.ParseRule(r); err != nil {
				t.Fatalf("rule %d %+v is not valid: %v", i, r, err)
			}
			if want := (i+1)%3 == 0; want != (r.Action == "DROP") {
				t.Fatalf("rule %d action %s", i, r.Action)
			}
		}
	})
}

// allocatingMatcher allocates on one packet in every hundred, as a lookup with a rare escaping path would.
type allocatingMatcher struct{ kept [][]byte }

func (m *allocatingMatcher) Lookup(p *dataplane.Packet) int {
	if p.Port%100 == 0 {
		m.kept = append(m.kept[:0], make([]byte, 64))
	}
	return 0
}

// periodicMatcher allocates on every n-th lookup whatever the packet, as a buffer refilled now and then.
type periodicMatcher struct {
	n, calls int
	kept     []byte
}

func (m *periodicMatcher) Lookup(*dataplane.Packet) int {
	if m.calls++; m.calls%m.n == 0 {
		m.kept = make([]byte, 64)
	}
	return 0
}

// The allocation count takes the least over windows, so it must still see an allocation the lookups
// make themselves, however rare.
func TestAllocsPerLookupSeesTheLookupsOwn(t *testing.T) {
	pkts := make([]dataplane.Packet, 1000)
	for i := range pkts {
		pkts[i].Port = uint16(i)
	}
	assert.InDelta(t, 0.01, allocsPerLookup(&allocatingMatcher{}, pkts), 0.001, "one packet in a hundred")
	// A window (65,536 lookups) holds one or two of them: the least is one.
	assert.Equal(t, 1.0/(1<<16), allocsPerLookup(&periodicMatcher{n: 50000}, pkts), "every 50,000th lookup")
	st, err := StateFromRules([]model.Rule{{IPProtocol: "tcp", CidrIP: "10.0.0.0/24", PortRange: "80-90", Action: "ACCEPT"}}, 1)
	require.NoError(t, err)
	tab, err := IngressTable(st)
	require.NoError(t, err)
	assert.Zero(t, allocsPerLookup(dataplane.NewClassifier(tab), pkts), "the classifier allocates nothing")
}
