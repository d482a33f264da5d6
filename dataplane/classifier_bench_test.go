package dataplane_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sgsim/sgsim/bench"
	"github.com/sgsim/sgsim/bench/peers"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// benchTable is one table benchmarked, with the name its results are reported under.
type benchTable struct {
	name string
	tab  *compiler.Table
}

// benchTables lists the tables benchmarked: every ClassBench set at 1k and 10k, the first 100 rules of
// each 1k set (`_100`), and 100k synthetic.
func benchTables(b *testing.B) []benchTable {
	var out []benchTable
	files, _ := filepath.Glob(filepath.Join(classbenchDir, "*_*k"))
	if len(files) == 0 && os.Getenv("CI") == "true" {
		b.Fatalf("no ClassBench sets in %s", classbenchDir)
	}
	addState := func(name string, st *model.State, err error) {
		if err != nil {
			b.Fatal(err)
		}
		tab, err := bench.IngressTable(st)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, benchTable{name, tab})
	}
	for _, f := range files {
		if set, ok := strings.CutSuffix(filepath.Base(f), "_1k"); ok {
			st, err := bench.LoadClassBench(f, 100, 1)
			addState(set+"_100", st, err)
		}
		st, err := bench.LoadClassBench(f, 0, 1)
		addState(filepath.Base(f), st, err)
	}
	st, err := bench.StateFromRules(bench.Synthetic(100000, 1, true), 1)
	addState("synth_100k", st, err)
	// The table of the Modify-to-enforced benchmark: 10k random, mostly disjoint IPv4 prefixes and port
	// ranges, with the stream's DROP inserted (the rule change that must be enforced within 20 ms).
	ts, err := peers.CompileRules(peers.WithStreamDrop(peers.SyntheticRules(10000, netip.MustParseAddr("198.18.0.1"), 9000, 42)))
	if err != nil {
		b.Fatal(err)
	}
	return append(out, benchTable{"peers_10k", ts.Ingress})
}

// BenchmarkClassifier reports ns/lookup, bytes/rule and build-ms of the classifier per table.
// Run: go test -run '^$' -bench Classifier -benchmem ./dataplane
func BenchmarkClassifier(b *testing.B) {
	for _, tt := range benchTables(b) {
		b.Run(tt.name, func(b *testing.B) {
			start := time.Now()
			c := dataplane.NewClassifier(tt.tab)
			build := time.Since(start)
			pkts := bench.Packets(tt.tab, 5000, 5000, 1)
			rules := len(tt.tab.Entries) - 1
			b.ReportAllocs()
			b.ResetTimer()
			sink := 0
			// Batches of 1000 timed apart: the median batch is robust to preemption on a shared machine.
			var per []float64
			for done := 0; done < b.N; {
				n := min(1000, b.N-done)
				start := time.Now()
				for i := done; i < done+n; i++ {
					sink += c.Lookup(&pkts[i%len(pkts)])
				}
				per = append(per, float64(time.Since(start).Nanoseconds())/float64(n))
				done += n
			}
			b.StopTimer()
			_ = sink
			slices.Sort(per)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/lookup")
			b.ReportMetric(per[len(per)/2], "p50-ns/lookup")
			b.ReportMetric(float64(c.SizeBytes())/float64(rules), "bytes/rule")
			b.ReportMetric(float64(build.Microseconds())/1000, "build-ms")
		})
	}
}

// BenchmarkClassifierBuild times building the classifier alone.
func BenchmarkClassifierBuild(b *testing.B) {
	for _, tt := range benchTables(b) {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			var times []float64
			for i := 0; i < b.N; i++ {
				start := time.Now()
				dataplane.NewClassifier(tt.tab)
				times = append(times, float64(time.Since(start).Microseconds())/1000)
			}
			slices.Sort(times)
			b.ReportMetric(times[len(times)/2], "build-ms")
		})
	}
}

// BenchmarkLinear is the reference matcher on the same tables and packets.
func BenchmarkLinear(b *testing.B) {
	for _, tt := range benchTables(b) {
		b.Run(tt.name, func(b *testing.B) {
			l := dataplane.NewLinearTable(tt.tab)
			pkts := bench.Packets(tt.tab, 5000, 5000, 1)
			b.ReportAllocs()
			b.ResetTimer()
			sink := 0
			for i := 0; i < b.N; i++ {
				sink += l.Lookup(&pkts[i%len(pkts)])
			}
			b.StopTimer()
			_ = sink
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/lookup")
		})
	}
}

// Example of the flat arrays a BPF loader would serialise.
func ExampleClassifier_Arrays() {
	st, _ := bench.StateFromRules(bench.Synthetic(10, 1, false), 1)
	tab, _ := bench.IngressTable(st)
	a := dataplane.NewClassifier(tab).Arrays()
	fmt.Println(a.V4Starts[0], len(a.V4Starts) == len(a.V4Answer), len(a.PortStart) == len(a.PortEntry))
	// Output: 0 true true
}
