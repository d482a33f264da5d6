package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const sample = `goos: linux
pkg: example.com/a
BenchmarkLookup/acl1/rules=1000/fast-2   	 1000	        25.5 ns/op	       0 B/op	       0 allocs/op
BenchmarkLookup/acl1/rules=10000/fast-2  	 1000	        31.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkLookup/acl1/rules=1000/linear-2 	 1000	      900 ns/op	       0 B/op	       0 allocs/op
pkg: example.com/b
BenchmarkPeerUDP/none/rules=100-2 	1	1091379706 ns/op	      8206 cpu-ns/pkt	         0 load-ms	    217998 pkt/s
BenchmarkPeerUDP/sgsim-tc/rules=100-2 	1	1091379706 ns/op	      4000 cpu-ns/pkt	         2 load-ms	    300000 pkt/s
PASS
`

func TestParse(t *testing.T) {
	rs, err := Parse(strings.NewReader(sample))
	require.NoError(t, err)
	require.Len(t, rs, 5)
	assert.Equal(t, "example.com/a", rs[0].Pkg)
	assert.Equal(t, "Lookup/acl1/rules=1000/fast", rs[0].Name)
	assert.Equal(t, "Lookup", rs[0].Family())
	assert.InDelta(t, 25.5, rs[0].Metrics["ns/op"], 1e-9)
	assert.Equal(t, "example.com/b", rs[3].Pkg)
	assert.InDelta(t, 217998, rs[3].Metrics["pkt/s"], 1e-9)
	assert.Equal(t, []string{"ns/op", "cpu-ns/pkt", "load-ms", "pkt/s"}, rs[3].Units)
}

func TestParseRejectsBrokenLine(t *testing.T) {
	_, err := Parse(strings.NewReader("BenchmarkX-2 10 12 ns/op 7\n"))
	require.ErrorContains(t, err, "line 1")
	_, err = Parse(strings.NewReader("BenchmarkX-2 10 abc ns/op\n"))
	require.ErrorContains(t, err, `value "abc"`)
}

func TestRunWritesReportAndPlots(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "bench.txt")
	require.NoError(t, os.WriteFile(in, []byte(sample), 0o644))
	out := filepath.Join(dir, "REPORT.md")
	o := Options{}
	c, err := parseCompare("Matching=Lookup:ns/op")
	require.NoError(t, err)
	r, err := parseRatio("Lookup/Lookup:ns/op")
	require.NoError(t, err)
	vs, err := parseVersus("PeerUDP:cpu-ns/pkt:sgsim-tc")
	require.NoError(t, err)
	assert.Equal(t, Versus{"PeerUDP", "cpu-ns/pkt", "sgsim-tc"}, vs)
	o.Compare, o.Ratios, o.Versus = []Compare{c}, []Ratio{r}, []Versus{vs}
	require.NoError(t, run(in, out, "", o))
	md, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Contains(t, string(md), "| Lookup/acl1/rules=1000/fast | 25.5 | 0 | 0 |")
	assert.Contains(t, string(md), "![Lookup_ns_op.png](Lookup_ns_op.png)")
	assert.Contains(t, string(md), "| Lookup ns/op | 900 | 31 |", "upper median per rule count: 1000 rules has 25.5 and 900")
	assert.Contains(t, string(md), "| acl1/rules=1000/fast | 25.5 | 25.5 | 1× |")
	assert.Contains(t, string(md), "| cpu-ns/pkt (× sgsim-tc) | 100 rules |\n|---|---:|\n| none | 8206 (2.051×) |\n| sgsim-tc | 4000 (1×) |\n")
	_, err = parseVersus("PeerUDP:pkt/s")
	assert.ErrorContains(t, err, "want Family:unit:base")
	_, err = parseRatio("nonsense")
	assert.ErrorContains(t, err, "want Num/Den:unit")
	png, err := os.ReadFile(filepath.Join(dir, "Lookup_ns_op.png"))
	require.NoError(t, err)
	assert.True(t, bytes.HasPrefix(png, []byte("\x89PNG")))
	require.ErrorContains(t, run(filepath.Join(dir, "missing"), out, "", Options{}), "open bench output")
}

func FuzzParse(f *testing.F) {
	f.Add(sample)
	f.Add("BenchmarkX 1 2 ns/op\n")
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, r := range rs {
			assert.Len(t, r.Units, len(r.Metrics)+countDupUnits(r.Units))
		}
	})
}

func countDupUnits(units []string) int {
	seen := map[string]bool{}
	d := 0
	for _, u := range units {
		if seen[u] {
			d++
		}
		seen[u] = true
	}
	return d
}

func TestRuleCount(t *testing.T) {
	for _, tc := range []struct {
		name    string
		n       float64
		matched string
		ok      bool
	}{
		{"PeerUDP/none/rules=100", 100, "rules=100", true},
		{"Classifier/acl1_10k", 10000, "_10k", true},
		{"Classifier/acl1_100", 100, "_100", true},
		{"Classifier/synth_100k", 100000, "_100k", true},
		{"Replay/classifier", 0, "", false},
	} {
		n, matched, ok := ruleCount(tc.name)
		assert.Equal(t, tc.ok, ok, tc.name)
		assert.Equal(t, tc.n, n, tc.name)
		assert.Equal(t, tc.matched, matched, tc.name)
	}
}

func TestAxisOf(t *testing.T) {
	for _, tc := range []struct {
		name, axis, variant string
		n                   float64
		ok                  bool
	}{
		{"PeerUDP/none/rules=100", "rules", "none", 100, true},
		{"ChangeEnforced/hosts=1000/all", "hosts", "all", 1000, true},
		{"ChangeEnforced/hosts=10", "hosts", "ChangeEnforced", 10, true},
		{"AgentRestart", "", "", 0, false},
	} {
		axis, n, variant, ok := Result{Name: tc.name}.variant()
		assert.Equal(t, tc.ok, ok, tc.name)
		assert.Equal(t, tc.axis, axis, tc.name)
		assert.Equal(t, tc.n, n, tc.name)
		assert.Equal(t, tc.variant, variant, tc.name)
	}
}

func TestPlotsHostsAxis(t *testing.T) {
	rs, err := Parse(strings.NewReader(`BenchmarkChangeEnforced/hosts=10/all-2  20  1 ns/op  10 p50-ms  70 p99-ms  5 B/op  1 allocs/op
BenchmarkChangeEnforced/hosts=100/all-2  20  1 ns/op  90 p50-ms  170 p99-ms  5 B/op  1 allocs/op
`))
	require.NoError(t, err)
	dir := t.TempDir()
	files, err := Plot(rs, dir)
	require.NoError(t, err)
	assert.Equal(t, []string{"ChangeEnforced_p50-ms.png", "ChangeEnforced_p99-ms.png"}, files["ChangeEnforced"])
	for _, f := range files["ChangeEnforced"] {
		require.FileExists(t, filepath.Join(dir, f))
	}
}
