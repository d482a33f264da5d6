package control

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Timings are the write path's latency histograms, one set per Controller (no global registry): the
// caller registers Collectors wherever it exposes metrics.
type Timings struct {
	// Apply is a change from compiling the affected ENIs until every dataplane enforces them, the
	// store's commit (which runs beside the staging) included.
	Apply prometheus.Histogram
	// Compile, Stage and Switch are its steps: compiling the affected ENIs' tables, building them in
	// every dataplane beside the live ones, and putting them in force once the commit is durable.
	Compile, Stage, Switch prometheus.Histogram
}

// latencyBuckets are upper bounds in seconds, from a one-ENI change to a 100k-rule publish.
func latencyBuckets() []float64 {
	return []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5}
}

func newTimings() *Timings {
	h := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: latencyBuckets()})
	}
	return &Timings{
		Apply:   h("sgsim_recompile_seconds", "Time to apply a change: compile the affected ENIs, stage them in every dataplane while the store commits, switch them in."),
		Compile: h("sgsim_compile_seconds", "Time to compile the tables of the ENIs a change affects."),
		Stage:   h("sgsim_stage_seconds", "Time to build a change's tables in every dataplane beside the live ones."),
		Switch:  h("sgsim_switch_seconds", "Time to put a committed change's staged tables in force in every dataplane."),
	}
}

// Collectors returns every histogram, to register.
func (t *Timings) Collectors() []prometheus.Collector {
	return []prometheus.Collector{t.Apply, t.Compile, t.Stage, t.Switch}
}

// since observes the time from start in h.
func since(h prometheus.Histogram, start time.Time) { h.Observe(time.Since(start).Seconds()) }
