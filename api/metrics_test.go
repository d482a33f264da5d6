package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// TestMetricsLintAndMove: the whole exposition, every optional source on, passes Prometheus' lint;
// each kind of call moves exactly the counters it should.
func TestMetricsLintAndMove(t *testing.T) {
	idx := 0
	ctrl, err := control.New(context.Background(), store.NewMemory(), demoState(t), control.Options{})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, AdminTokens: []string{adminToken},
		RuleCounts: func() ([]RuleCount, error) {
			return []RuleCount{{dataplane.Explained{Verdict: model.Accept, ENI: "eni-web1", Direction: model.Ingress, SgID: "sg-web", RuleIndex: &idx, Reason: dataplane.ReasonRule}, 3}}, nil
		},
		TrackedFlows: func() (int, error) { return 42, nil }})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}

	m := h.metrics
	calls := func(dialect, action, code string) float64 {
		return testutil.ToFloat64(m.calls.WithLabelValues(dialect, action, code))
	}
	require.Zero(t, calls("tencent", ActModifyENISGs, "0"))
	a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-spare", "networkInterfaceSet.0.sgIds.0", "sg-ssh")
	assert.Equal(t, 1.0, calls("tencent", ActModifyENISGs, "0"))
	a.tc("Action", ActDeleteSG, "sgId", "sg-preset")
	assert.Equal(t, 1.0, calls("tencent", ActDeleteSG, "7006"))
	a.huawei("v2.0", project1, "sg-web", token1, portsBody("add", "eni-spare"))
	assert.Equal(t, 1.0, calls("huawei", "instance/action", "200"))
	a.check("eni-web1", "ingress", "tcp", "203.0.113.7", 80)
	assert.Equal(t, 1.0, testutil.ToFloat64(m.ruleHits.WithLabelValues("eni-web1", "ingress", "sg-web", "1")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.verdicts.WithLabelValues("eni-web1", "ingress", "ACCEPT")))
	assert.Equal(t, 3, testutil.CollectAndCount(m.latency), "one latency series per dialect, action and code")

	_, body := a.get("/metrics")
	for _, want := range []string{
		"# TYPE sgsim_api_call_duration_seconds histogram",
		`sgsim_api_call_duration_seconds_count{action="ModifySecurityGroupsOfNetworkInterface",code="0",dialect="tencent"} 1`,
		"sgsim_recompile_seconds_count 3", // the initial compile and two changes
		"sgsim_compile_seconds_count 2", "sgsim_stage_seconds_count 2", "sgsim_switch_seconds_count 2",
		"# TYPE sgsim_dataplane_rule_packets_total counter",
		`sgsim_dataplane_rule_packets_total{direction="ingress",eni="eni-web1",rule_index="0",sg_id="sg-web",verdict="ACCEPT"} 3`,
		"sgsim_tracked_flows 42", "sgsim_enis 6", "sgsim_generation 3",
		`sgsim_table_entries{direction="ingress",eni="eni-web1"} 7`,
		"go_goroutines", "process_resident_memory_bytes",
	} {
		assert.Contains(t, body, want)
	}
	problems, err := testutil.GatherAndLint(m.reg)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// TestInspectionNeedsCredential: the table, check and metrics endpoints answer 401 without a
// credential; an admin token (Options or topology) sees everything; a tenant's X-Auth-Token sees its
// own ENIs only, other tenants' as absent, and none of the figures summed over every tenant.
func TestInspectionNeedsCredential(t *testing.T) {
	s := demoState(t)
	topo := s.Topology()
	topo.AdminTokens = []string{"topology-admin"}
	s, err := model.NewState(topo)
	require.NoError(t, err)
	ctrl, err := control.New(context.Background(), store.NewMemory(), s, control.Options{})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, AdminTokens: []string{adminToken}})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}
	a.check("eni-other", "ingress", "tcp", "203.0.113.7", 80)
	a.check("eni-web1", "ingress", "tcp", "203.0.113.7", 80)

	checkAs := func(header, value, eni string) int {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/sgsim/v1/check",
			strings.NewReader(`{"eni":"`+eni+`","direction":"ingress","protocol":"tcp","remote":"198.18.0.1","port":80}`))
		require.NoError(t, err)
		if header != "" {
			req.Header.Set(header, value)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tt := range []struct {
		name, header, value string
		web1, other         int // status of eni-web1's (account 1) and eni-other's (account 2) table and check
		metrics             int
	}{
		{"none", "", "", 401, 401, 401},
		{"unknown bearer", "Authorization", "Bearer nope", 401, 401, 401},
		{"empty bearer", "Authorization", "Bearer ", 401, 401, 401},
		{"Tencent SecretId is no bearer", "Authorization", "Bearer " + secretID1, 401, 401, 401},
		{"unknown X-Auth-Token", "X-Auth-Token", "tok-nope", 401, 401, 401},
		{"options admin", "Authorization", "Bearer " + adminToken, 200, 200, 200},
		{"topology admin", "Authorization", "Bearer topology-admin", 200, 200, 200},
		{"tenant 1", "X-Auth-Token", token1, 200, 404, 200},
		{"tenant 2", "X-Auth-Token", token2, 404, 200, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body := a.getWith("/sgsim/v1/enis/eni-web1/table", tt.header, tt.value)
			assert.Equal(t, tt.web1, status, body)
			status, _ = a.getWith("/sgsim/v1/enis/eni-other/table", tt.header, tt.value)
			assert.Equal(t, tt.other, status)
			assert.Equal(t, tt.web1, checkAs(tt.header, tt.value, "eni-web1"))
			assert.Equal(t, tt.other, checkAs(tt.header, tt.value, "eni-other"))
			status, body = a.getWith("/metrics", tt.header, tt.value)
			assert.Equal(t, tt.metrics, status)
			if status == 401 {
				assert.Contains(t, body, "credential")
				assert.NotContains(t, body, "sgsim_")
			}
			if tt.header == "X-Auth-Token" && status == 200 {
				own, foreign := "eni-web1", "eni-other"
				if tt.value == token2 {
					own, foreign = foreign, own
				}
				assert.Contains(t, body, `eni="`+own+`"`)
				assert.NotContains(t, body, foreign)
				for _, global := range []string{"sgsim_api_calls_total", "sgsim_generation", "go_goroutines", "process_"} {
					assert.NotContains(t, body, global)
				}
			}
		})
	}
}

func TestTopologyAdminTokens(t *testing.T) {
	_, err := model.ParseTopology("t.json", []byte(`{"accounts":[],"securityGroups":[],"networkInterfaces":[],"adminTokens":["a",""]}`))
	require.ErrorContains(t, err, "adminTokens[1]")
	s, err := model.ParseTopology("t.json", []byte(`{"accounts":[],"securityGroups":[],"networkInterfaces":[],"adminTokens":["a"]}`))
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, s.Topology().AdminTokens)
	assert.Equal(t, []string{"a"}, s.Edit().State().AdminTokens(), "kept through an edit")
}
