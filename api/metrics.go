package api

import (
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// metrics are what /metrics exposes, in a registry of the handler's own (no global registry).
type metrics struct {
	reg      *prometheus.Registry
	calls    *prometheus.CounterVec   // dialect, action, code
	latency  *prometheus.HistogramVec // dialect, action, code
	ruleHits *prometheus.CounterVec   // eni, direction, sg_id, rule_index
	verdicts *prometheus.CounterVec   // eni, direction, verdict

	// The check series, labelled by what API calls create and delete, are kept only for ENIs and rules
	// the state still has: a tenant creating, checking and deleting SGs in a loop would otherwise grow
	// them for good. seen holds every rule series made, prunedAt the generation last pruned at.
	mu       sync.Mutex
	seen     map[ruleSeries]bool
	enis     map[string]bool // every ENI a check series names
	prunedAt uint64
}

// ruleSeries is one sgsim_rule_hits_total series made by a rule's decision.
type ruleSeries struct {
	eni  string
	dir  model.Direction
	sg   string
	rule int
}

// apiLatencyBuckets are upper bounds in seconds, from a rejected call to a 10k-rule policy on disk.
func apiLatencyBuckets() []float64 {
	return []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10}
}

func newMetrics(h *Handler) *metrics {
	m := &metrics{
		reg:  prometheus.NewRegistry(),
		seen: map[ruleSeries]bool{},
		enis: map[string]bool{},
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sgsim_api_calls_total",
			Help: "API calls by dialect, action and answer code."}, []string{"dialect", "action", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sgsim_api_call_duration_seconds",
			Help:    "Time from receiving an API call to its answer, by dialect, action and answer code.",
			Buckets: apiLatencyBuckets()}, []string{"dialect", "action", "code"}),
		ruleHits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sgsim_rule_hits_total",
			Help: "Lookups of the Go engine through /sgsim/v1/check decided by each rule (rule_index is the reason when no rule decided)."},
			[]string{"eni", "direction", "sg_id", "rule_index"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sgsim_eni_verdicts_total",
			Help: "Verdicts of the Go engine's /sgsim/v1/check lookups per ENI."}, []string{"eni", "direction", "verdict"}),
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.calls, m.latency, m.ruleHits, m.verdicts, stateCollector{h})
	m.reg.MustRegister(h.ctrl.Timings().Collectors()...)
	m.reg.MustRegister(h.opts.Collectors...)
	return m
}

// apiCall counts one answered call and its latency since start.
func (m *metrics) apiCall(dialect, action, code string, start time.Time) {
	m.calls.WithLabelValues(dialect, action, code).Inc()
	m.latency.WithLabelValues(dialect, action, code).Observe(time.Since(start).Seconds())
}

// verdict counts v, the decision of a check at state st (generation gen), first dropping the series of
// ENIs and rules st no longer has if the state moved since the last time.
func (m *metrics) verdict(st *model.State, gen uint64, eni string, d model.Direction, v dataplane.Verdict) {
	m.prune(st, gen)
	m.mu.Lock()
	m.enis[eni] = true
	if v.Reason == dataplane.ReasonRule {
		m.seen[ruleSeries{eni, d, v.SgID, v.RuleIndex}] = true
	}
	m.mu.Unlock()
	m.verdicts.WithLabelValues(eni, d.String(), v.Action.String()).Inc()
	if v.Reason == dataplane.ReasonRule {
		m.ruleHits.WithLabelValues(eni, d.String(), v.SgID, strconv.Itoa(v.RuleIndex)).Inc()
	} else {
		m.ruleHits.WithLabelValues(eni, d.String(), "", v.Reason.String()).Inc()
	}
}

// prune deletes the check series of ENIs st has not and of rules its SGs no longer have.
func (m *metrics) prune(st *model.State, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen == m.prunedAt {
		return
	}
	m.prunedAt = gen
	for s := range m.seen {
		_, eniThere := st.ENI(s.eni)
		g, sgThere := st.SG(s.sg)
		if eniThere && sgThere && s.rule < len(g.Rules(s.dir)) {
			continue
		}
		delete(m.seen, s)
		m.ruleHits.DeleteLabelValues(s.eni, s.dir.String(), s.sg, strconv.Itoa(s.rule))
	}
	for eni := range m.enis {
		if _, there := st.ENI(eni); !there {
			delete(m.enis, eni)
			m.ruleHits.DeletePartialMatch(prometheus.Labels{"eni": eni})
			m.verdicts.DeletePartialMatch(prometheus.Labels{"eni": eni})
		}
	}
}

// stateCollector reads, at each scrape, what the committed state and the dataplanes hold.
type stateCollector struct{ h *Handler }

var (
	descGeneration = prometheus.NewDesc("sgsim_generation", "Generation of the committed state.", nil, nil)
	descENIs       = prometheus.NewDesc("sgsim_enis", "ENIs in the committed state.", nil, nil)
	descSGs        = prometheus.NewDesc("sgsim_security_groups", "Security groups in the committed state.", nil, nil)
	descEntries    = prometheus.NewDesc("sgsim_table_entries", "Entries of each ENI's flattened table, the implicit drop included.",
		[]string{"eni", "direction"}, nil)
	descRulePackets = prometheus.NewDesc("sgsim_dataplane_rule_packets_total",
		"Packets the enforcing dataplane (the kernel's) decided by each rule of the live tables; an ENI's count restarts when its table is republished (rule_index is the reason when no rule decided).",
		[]string{"eni", "direction", "sg_id", "rule_index", "verdict"}, nil)
	descFlows = prometheus.NewDesc("sgsim_tracked_flows", "Flows the enforcing dataplane tracks.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGeneration, descENIs, descSGs, descEntries, descRulePackets, descFlows} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A dataplane whose counters cannot be read is logged and
// left out; the rest of the exposition stands.
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	v := c.h.ctrl.View()
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(v.Generation))
	ch <- prometheus.MustNewConstMetric(descENIs, prometheus.GaugeValue, float64(len(v.State.ENIIDs())))
	ch <- prometheus.MustNewConstMetric(descSGs, prometheus.GaugeValue, float64(len(v.State.SGIDs())))
	for _, id := range v.State.ENIIDs() {
		if t, ok := v.Tables[id]; ok {
			ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(len(t.Ingress.Entries)), id, model.Ingress.String())
			ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(len(t.Egress.Entries)), id, model.Egress.String())
		}
	}
	if f := c.h.opts.TrackedFlows; f != nil {
		if n, err := f(); err != nil {
			c.h.log.Error("read tracked flows", "err", err)
		} else {
			ch <- prometheus.MustNewConstMetric(descFlows, prometheus.GaugeValue, float64(n))
		}
	}
	c.collectRuleCounts(ch)
}

// collectRuleCounts sums the enforcing dataplane's per-rule counters per rule (a rule can be several
// table entries).
func (c stateCollector) collectRuleCounts(ch chan<- prometheus.Metric) {
	if c.h.opts.RuleCounts == nil {
		return
	}
	counts, err := c.h.opts.RuleCounts()
	if err != nil {
		c.h.log.Error("read dataplane rule counters", "err", err)
		return
	}
	byRule := map[[5]string]uint64{} // eni, direction, sgId, ruleIndex (or reason), verdict
	for _, rc := range counts {
		idx := rc.Reason.String()
		if rc.RuleIndex != nil {
			idx = strconv.Itoa(*rc.RuleIndex)
		}
		byRule[[5]string{rc.ENI, rc.Direction.String(), rc.SgID, idx, rc.Verdict.String()}] += rc.Packets
	}
	for k, n := range byRule {
		ch <- prometheus.MustNewConstMetric(descRulePackets, prometheus.CounterValue, float64(n), k[:]...)
	}
}

func (h *Handler) serveMetrics(w http.ResponseWriter, r *http.Request) {
	who, ok := h.inspector(w, r)
	if !ok {
		return
	}
	var g prometheus.Gatherer = h.metrics.reg
	if !who.admin {
		g = tenantGatherer{g, h.ownENIs(who.appID)}
	}
	promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
}

// tenantGatherer keeps only the series of one tenant's ENIs: every figure that is not an ENI's (calls,
// timings, the process) is summed over every tenant, so none of it is shown to one.
type tenantGatherer struct {
	prometheus.Gatherer
	enis map[string]bool
}

// Gather implements prometheus.Gatherer.
func (g tenantGatherer) Gather() ([]*dto.MetricFamily, error) {
	all, err := g.Gatherer.Gather()
	var out []*dto.MetricFamily
	for _, mf := range all {
		kept := slices.DeleteFunc(mf.Metric, func(m *dto.Metric) bool {
			i := slices.IndexFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == "eni" })
			return i < 0 || !g.enis[m.Label[i].GetValue()]
		})
		if len(kept) > 0 {
			mf.Metric = kept
			out = append(out, mf)
		}
	}
	return out, err
}
