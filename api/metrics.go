package api

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// metrics holds the counters /metrics exposes, in Prometheus text format.
type metrics struct {
	mu       sync.Mutex
	ruleHits map[[4]string]uint64 // eni, direction, sgId, ruleIndex
	verdicts map[[3]string]uint64 // eni, direction, verdict
	calls    map[[3]string]uint64 // dialect, action, code
}

func newMetrics() *metrics {
	return &metrics{ruleHits: map[[4]string]uint64{}, verdicts: map[[3]string]uint64{}, calls: map[[3]string]uint64{}}
}

func (m *metrics) apiCall(dialect, action, code string) {
	m.mu.Lock()
	m.calls[[3]string{dialect, action, code}]++
	m.mu.Unlock()
}

func (m *metrics) verdict(eni string, d model.Direction, v dataplane.Verdict) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.verdicts[[3]string{eni, d.String(), v.Action.String()}]++
	if v.Reason == dataplane.ReasonRule {
		m.ruleHits[[4]string{eni, d.String(), v.SgID, strconv.Itoa(v.RuleIndex)}]++
	} else {
		m.ruleHits[[4]string{eni, d.String(), "", v.Reason.String()}]++
	}
}

// esc escapes a label value (backslash, quote, newline).
func esc(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func sortedKeys[K comparable](m map[K]uint64, less func(a, b K) bool) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return less(ks[i], ks[j]) })
	return ks
}

func lessArr[K ~[3]string | ~[4]string | ~[5]string](a, b K) bool {
	return fmt.Sprint(a) < fmt.Sprint(b)
}

func (h *Handler) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	var b strings.Builder
	m := h.metrics
	m.mu.Lock()
	b.WriteString("# HELP sgsim_rule_hits_total Lookups through /sgsim/v1/check decided by each rule (ruleIndex is the reason when no rule decided).\n# TYPE sgsim_rule_hits_total counter\n")
	for _, k := range sortedKeys(m.ruleHits, lessArr[[4]string]) {
		fmt.Fprintf(&b, "sgsim_rule_hits_total{eni=\"%s\",direction=\"%s\",sg_id=\"%s\",rule_index=\"%s\"} %d\n", esc(k[0]), k[1], esc(k[2]), k[3], m.ruleHits[k])
	}
	b.WriteString("# HELP sgsim_eni_verdicts_total Verdicts of /sgsim/v1/check lookups per ENI.\n# TYPE sgsim_eni_verdicts_total counter\n")
	for _, k := range sortedKeys(m.verdicts, lessArr[[3]string]) {
		fmt.Fprintf(&b, "sgsim_eni_verdicts_total{eni=\"%s\",direction=\"%s\",verdict=\"%s\"} %d\n", esc(k[0]), k[1], k[2], m.verdicts[k])
	}
	b.WriteString("# HELP sgsim_api_calls_total API calls by dialect, action and answer code.\n# TYPE sgsim_api_calls_total counter\n")
	for _, k := range sortedKeys(m.calls, lessArr[[3]string]) {
		fmt.Fprintf(&b, "sgsim_api_calls_total{dialect=\"%s\",action=\"%s\",code=\"%s\"} %d\n", k[0], esc(k[1]), esc(k[2]), m.calls[k])
	}
	m.mu.Unlock()
	h.writeRuleCounts(&b)
	bounds, cum, sum, n := h.ctrl.RecompileHistogram().Snapshot()
	b.WriteString("# HELP sgsim_recompile_seconds Time to recompile the affected ENIs and publish them to every dataplane.\n# TYPE sgsim_recompile_seconds histogram\n")
	for i, ub := range bounds {
		fmt.Fprintf(&b, "sgsim_recompile_seconds_bucket{le=\"%s\"} %d\n", strconv.FormatFloat(ub, 'g', -1, 64), cum[i])
	}
	fmt.Fprintf(&b, "sgsim_recompile_seconds_bucket{le=\"+Inf\"} %d\nsgsim_recompile_seconds_sum %s\nsgsim_recompile_seconds_count %d\n",
		cum[len(cum)-1], strconv.FormatFloat(sum, 'g', -1, 64), n)
	fmt.Fprintf(&b, "# HELP sgsim_generation Generation of the committed state.\n# TYPE sgsim_generation gauge\nsgsim_generation %d\n", h.ctrl.View().Generation)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = w.Write([]byte(b.String()))
}

// Controller returns the controller behind h.
func (h *Handler) Controller() *control.Controller { return h.ctrl }

// writeRuleCounts writes the enforcing dataplane's per-rule counters, summed per rule (a rule can be
// several table entries). A gauge: an ENI's counters restart when its table is republished.
func (h *Handler) writeRuleCounts(b *strings.Builder) {
	if h.opts.RuleCounts == nil {
		return
	}
	counts, err := h.opts.RuleCounts()
	if err != nil {
		h.log.Error("read dataplane rule counters", "err", err)
		return
	}
	byRule := map[[5]string]uint64{} // eni, direction, sgId, ruleIndex (or reason), verdict
	for _, c := range counts {
		idx := c.Reason.String()
		if c.RuleIndex != nil {
			idx = strconv.Itoa(*c.RuleIndex)
		}
		byRule[[5]string{c.ENI, c.Direction.String(), c.SgID, idx, c.Verdict.String()}] += c.Packets
	}
	b.WriteString("# HELP sgsim_dataplane_rule_packets Packets the enforcing dataplane decided by each rule of the live tables since each ENI's table was last published (rule_index is the reason when no rule decided).\n# TYPE sgsim_dataplane_rule_packets gauge\n")
	for _, k := range sortedKeys(byRule, lessArr[[5]string]) {
		fmt.Fprintf(b, "sgsim_dataplane_rule_packets{eni=\"%s\",direction=\"%s\",sg_id=\"%s\",rule_index=\"%s\",verdict=\"%s\"} %d\n",
			esc(k[0]), k[1], esc(k[2]), k[3], k[4], byRule[k])
	}
}
