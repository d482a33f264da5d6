package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
)

// Result is one run of the fast classifier against the reference on the same table and packets.
type Result struct {
	Name            string
	Rules           int // table rows, the implicit DROP excluded
	Packets         int
	Build           time.Duration // classifier build (median of several builds)
	FastNs, RefNs   float64       // median ns per lookup over batches
	Ratio           float64       // RefNs / FastNs
	Bytes           int           // size of the classifier's flat arrays
	BytesPerRule    float64
	AllocsPerLookup float64 // fast path
	Mismatches      int     // packets on which the two disagree (must be 0)
}

// FastLookupsPerSec and RefLookupsPerSec convert the medians to rates.
func (r Result) FastLookupsPerSec() float64 { return 1e9 / r.FastNs }

// RefLookupsPerSec is the reference's rate.
func (r Result) RefLookupsPerSec() float64 { return 1e9 / r.RefNs }

// Run measures t with pkts: build time, median ns/lookup of both matchers, size and allocations.
// It checks every packet's answer against the reference too. ctx cancels between batches.
func Run(ctx context.Context, name string, t *compiler.Table, pkts []dataplane.Packet) (Result, error) {
	if len(pkts) == 0 {
		return Result{}, fmt.Errorf("bench %s: no packets", name)
	}
	r := Result{Name: name, Rules: len(t.Entries) - 1, Packets: len(pkts)}
	var builds []time.Duration
	var c *dataplane.Classifier
	for i := 0; i < 5; i++ {
		start := time.Now()
		c = dataplane.NewClassifier(t)
		builds = append(builds, time.Since(start))
	}
	r.Build = median(builds)
	r.Bytes = c.SizeBytes()
	r.BytesPerRule = float64(r.Bytes) / float64(max(r.Rules, 1))
	ref := dataplane.NewLinearTable(t)
	for i := range pkts {
		if c.Lookup(&pkts[i]) != ref.Lookup(&pkts[i]) {
			r.Mismatches++
		}
	}
	var err error
	if r.FastNs, err = medianNs(ctx, c, pkts, 1000, 300*time.Millisecond); err != nil {
		return r, err
	}
	// The reference is a linear scan, far slower: fewer packets per batch keeps the run short.
	if r.RefNs, err = medianNs(ctx, ref, pkts[:min(len(pkts), 2000)], 20, 300*time.Millisecond); err != nil {
		return r, err
	}
	r.Ratio = r.RefNs / r.FastNs
	r.AllocsPerLookup = allocsPerLookup(c, pkts)
	return r, nil
}

// allocsPerLookup counts the heap allocations of the fast path's lookups. The runtime's counter is the
// whole process's, so a timer or the test framework allocating meanwhile would be charged to the
// lookups: it counts over several windows, each covering every packet and at least 65,536 lookups, and
// takes the least. An allocation that some packet makes, or that comes every n-th lookup for n up to a
// window's length, is in every window.
func allocsPerLookup(c dataplane.TableMatcher, pkts []dataplane.Packet) float64 {
	const windows = 4
	perWindow := max(len(pkts), 1<<16)
	least := uint64(math.MaxUint64)
	for w := 0; w < windows; w++ {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := 0; i < perWindow; i++ {
			c.Lookup(&pkts[i%len(pkts)])
		}
		runtime.ReadMemStats(&after)
		least = min(least, after.Mallocs-before.Mallocs)
	}
	return float64(least) / float64(perWindow)
}

// medianNs runs batches over pkts for about d and returns the median of the per-batch ns/lookup.
func medianNs(ctx context.Context, m dataplane.TableMatcher, pkts []dataplane.Packet, batch int, d time.Duration) (float64, error) {
	var per []float64
	sink := 0
	deadline := time.Now().Add(d)
	for len(per) < 5 || time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("bench: %w", err)
		}
		// Short batches, so the median drops those a preemption or interrupt landed in.
		for lo := 0; lo < len(pkts); lo += batch {
			b := pkts[lo:min(lo+batch, len(pkts))]
			start := time.Now()
			for i := range b {
				sink += m.Lookup(&b[i])
			}
			per = append(per, float64(time.Since(start).Nanoseconds())/float64(len(b)))
		}
	}
	_ = sink
	slices.Sort(per)
	return per[len(per)/2], nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// WriteHeader and Write print results as an aligned table.
func WriteHeader(w io.Writer) {
	fmt.Fprintf(w, "%-12s %7s %8s %10s %9s %12s %9s %12s %8s %10s %8s %6s\n", "table", "rules", "packets", "build", "fast ns", "fast lk/s",
		"ref ns", "ref lk/s", "ratio", "bytes/rule", "allocs", "diff")
}

// Write prints one result line.
func Write(w io.Writer, r Result) {
	fmt.Fprintf(w, "%-12s %7d %8d %10s %9.1f %12.0f %9.0f %12.0f %7.0fx %10.1f %8.2f %6d\n", r.Name, r.Rules, r.Packets,
		r.Build.Round(10*time.Microsecond), r.FastNs, r.FastLookupsPerSec(), r.RefNs, r.RefLookupsPerSec(), r.Ratio,
		r.BytesPerRule, r.AllocsPerLookup, r.Mismatches)
}
