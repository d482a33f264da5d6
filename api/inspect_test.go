package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"syscall"
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

func TestCheckEndpoint(t *testing.T) {
	a := newTestAPI(t)
	c := a.check("eni-web1", "ingress", "tcp", "198.18.66.9", 80)
	assert.Equal(t, "DROP", c.Verdict)
	assert.Equal(t, "rule", c.Reason)
	assert.Equal(t, "sg-web", c.SgID)
	require.NotNil(t, c.RuleIndex)
	assert.Equal(t, 0, *c.RuleIndex)
	require.NotNil(t, c.Rule)
	assert.Equal(t, "198.18.66.0/24", c.Rule.CidrIP)
	assert.Equal(t, a.ctrl.View().Generation, c.Generation)

	c = a.check("eni-web1", "egress", "udp", "2001:db8::1", 53)
	assert.Equal(t, "ACCEPT", c.Verdict)

	for _, tt := range []struct {
		body   string
		status int
		msg    string
	}{
		{`{"eni":"eni-nope","direction":"ingress","protocol":"tcp","remote":"198.18.0.1","port":1}`, 404, "eni-nope"},
		{`{"eni":"eni-web1","direction":"sideways","protocol":"tcp","remote":"198.18.0.1"}`, 400, "direction"},
		{`{"eni":"eni-web1","direction":"ingress","protocol":"tcp","remote":"nope"}`, 400, "remote"},
		{`{"eni":"eni-web1","direction":"ingress","protocol":"icmp","remote":"198.18.0.1","port":5}`, 400, "port"},
		{`{"eni":"eni-web1","direction":"ingress","protocol":"tcp","remote":"198.18.0.1","port":70000}`, 400, "port"},
		{`{"eni":"eni-web1","direction":"ingress","protocol":"gre","remote":"198.18.0.1"}`, 400, "protocol"},
		{`[1,2]`, 400, "body"},
	} {
		status, b := a.roundTrip(http.MethodPost, "/sgsim/v1/check", "Authorization", "Bearer "+adminToken, tt.body)
		var out map[string]string
		require.NoError(t, json.NewDecoder(bytes.NewReader(b)).Decode(&out))
		assert.Equal(t, tt.status, status, tt.body)
		assert.Contains(t, out["error"], tt.msg)
	}
}

func TestTableEndpoint(t *testing.T) {
	a := newTestAPI(t)
	status, body := a.get("/sgsim/v1/enis/eni-db1/table")
	require.Equal(t, http.StatusOK, status)
	var tab TableResponse
	require.NoError(t, json.Unmarshal([]byte(body), &tab))
	assert.Equal(t, uint64(1), tab.Generation)
	require.Len(t, tab.Ingress, 4, "3 rules and the implicit drop")
	assert.Equal(t, "sg-db", tab.Ingress[0].SgID)
	assert.Equal(t, []string{"198.18.1.10/32", "198.18.1.11/32", "2001:db8:1::10/128"}, tab.Ingress[0].Remotes, "sg-web members")
	assert.True(t, tab.Ingress[3].Implicit)
	assert.Equal(t, -1, tab.Ingress[3].RuleIndex)

	// A change to sg-web's membership recompiles eni-db1 (it references sg-web) but not eni-spare.
	r := a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-ssh")
	require.Equal(t, 0, r.Code)
	_, body = a.get("/sgsim/v1/enis/eni-db1/table")
	require.NoError(t, json.Unmarshal([]byte(body), &tab))
	assert.Equal(t, uint64(2), tab.TableGeneration)
	assert.Equal(t, []string{"198.18.1.11/32"}, tab.Ingress[0].Remotes)
	_, body = a.get("/sgsim/v1/enis/eni-spare/table")
	require.NoError(t, json.Unmarshal([]byte(body), &tab))
	assert.Equal(t, uint64(2), tab.Generation)
	assert.Equal(t, uint64(1), tab.TableGeneration, "unaffected ENI not recompiled")

	status, _ = a.get("/sgsim/v1/enis/eni-nope/table")
	assert.Equal(t, http.StatusNotFound, status)
}

func TestMetricsAndHealth(t *testing.T) {
	a := newTestAPI(t)
	a.check("eni-web1", "ingress", "tcp", "203.0.113.7", 80)
	a.check("eni-web1", "ingress", "tcp", "203.0.113.7", 80)
	a.check("eni-web1", "ingress", "udp", "203.0.113.7", 80)
	a.tc("Action", ActDescribePolicy, "sgId", "sg-web")
	a.tc("Action", ActDeleteSG, "sgId", "sg-preset")
	a.huawei("v2.0", project1, "sg-web", "bad", portsBody("add", "eni-spare"))
	resp, _ := http.Get(a.srv.URL + TencentPath + "?" + url.Values{"Action": {"x"}}.Encode())
	resp.Body.Close()
	a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-spare", "networkInterfaceSet.0.sgIds.0", "sg-ssh")

	status, body := a.get("/metrics")
	require.Equal(t, http.StatusOK, status)
	for _, want := range []string{
		`sgsim_rule_hits_total{direction="ingress",eni="eni-web1",rule_index="1",sg_id="sg-web"} 2`,
		`sgsim_rule_hits_total{direction="ingress",eni="eni-web1",rule_index="default-drop",sg_id=""} 1`,
		`sgsim_eni_verdicts_total{direction="ingress",eni="eni-web1",verdict="ACCEPT"} 2`,
		`sgsim_eni_verdicts_total{direction="ingress",eni="eni-web1",verdict="DROP"} 1`,
		`sgsim_api_calls_total{action="DescribeSecurityGroupPolicy",code="0",dialect="tencent"} 1`,
		`sgsim_api_calls_total{action="DeleteSecurityGroup",code="7006",dialect="tencent"} 1`,
		`sgsim_api_calls_total{action="",code="4000",dialect="tencent"} 1`,
		`sgsim_api_calls_total{action="instance/action",code="VPC.0008",dialect="huawei"} 1`,
		`sgsim_recompile_seconds_bucket{le="+Inf"} 2`,
		`sgsim_recompile_seconds_count 2`,
		"# TYPE sgsim_recompile_seconds histogram",
	} {
		assert.Contains(t, body, want)
	}
	status, body = a.get("/healthz")
	assert.Equal(t, http.StatusOK, status)
	assert.JSONEq(t, `{"status":"ok","generation":2}`, body)
}

// TestMetricsRuleCounts: an enforcing dataplane's counters appear per rule, entries of one rule summed;
// a failing reader leaves the rest of /metrics intact.
func TestMetricsRuleCounts(t *testing.T) {
	idx := func(i int) *int { return &i }
	counts := []RuleCount{
		{dataplane.Explained{Verdict: model.Accept, ENI: "eni-web1", Direction: model.Ingress, SgID: "sg-web", RuleIndex: idx(1), Reason: dataplane.ReasonRule}, 5},
		{dataplane.Explained{Verdict: model.Accept, ENI: "eni-web1", Direction: model.Ingress, SgID: "sg-web", RuleIndex: idx(1), Reason: dataplane.ReasonRule}, 2},
		{dataplane.Explained{Verdict: model.Drop, ENI: "eni-web1", Direction: model.Ingress, Reason: dataplane.ReasonDefaultDrop}, 9},
	}
	var readErr error
	ctrl, err := control.New(context.Background(), store.NewMemory(), demoState(t), control.Options{})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{RuleCounts: func() ([]RuleCount, error) { return counts, readErr }, AdminTokens: []string{adminToken}})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}

	status, body := a.get("/metrics")
	require.Equal(t, http.StatusOK, status)
	assert.Contains(t, body, "# TYPE sgsim_dataplane_rule_packets_total counter")
	assert.Contains(t, body, `sgsim_dataplane_rule_packets_total{direction="ingress",eni="eni-web1",rule_index="1",sg_id="sg-web",verdict="ACCEPT"} 7`)
	assert.Contains(t, body, `sgsim_dataplane_rule_packets_total{direction="ingress",eni="eni-web1",rule_index="default-drop",sg_id="",verdict="DROP"} 9`)

	readErr = errors.New("map gone")
	status, body = a.get("/metrics")
	require.Equal(t, http.StatusOK, status)
	assert.NotContains(t, body, "sgsim_dataplane_rule_packets")
	assert.Contains(t, body, "sgsim_generation")
}

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
		status, _ := a.roundTrip(http.MethodPost, "/sgsim/v1/check", header, value,
			`{"eni":"`+eni+`","direction":"ingress","protocol":"tcp","remote":"198.18.0.1","port":80}`)
		return status
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

// fullDisk is a memory store whose commits fail with ENOSPC while full is set.
type fullDisk struct {
	*store.Memory
	full atomic.Bool
}

func (d *fullDisk) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if d.full.Load() {
		return fmt.Errorf("store: commit generation %d: write sgsim.db: %w", gen, syscall.ENOSPC)
	}
	return d.Memory.Commit(ctx, s, gen)
}

// TestProbesFollowTheStore: /readyz and /healthz say not ready, and why, while commits fail; /livez and
// reads keep answering; a commit that works again makes the daemon ready.
func TestProbesFollowTheStore(t *testing.T) {
	disk := &fullDisk{Memory: store.NewMemory()}
	mon := store.NewMonitored(disk, store.MonitorOptions{Now: func() time.Time { return testNow }})
	ctrl, err := control.New(context.Background(), mon, demoState(t), control.Options{})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, StoreHealth: mon.Health})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}

	for _, path := range []string{"/livez", "/readyz", "/healthz"} {
		status, body := a.get(path)
		assert.Equal(t, http.StatusOK, status, path)
		assert.Contains(t, body, `"status":"ok"`, path)
	}

	disk.full.Store(true)
	before := a.sg("sg-web")
	r := a.tc("Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.action", "DROP")
	assert.Equal(t, 6000, r.Code, r.Message)
	assert.Equal(t, before, a.sg("sg-web"), "a failed commit changes nothing")

	for _, path := range []string{"/readyz", "/healthz"} {
		status, body := a.get(path)
		assert.Equal(t, http.StatusServiceUnavailable, status, path)
		assert.JSONEq(t, `{"status":"not ready","generation":1,"reason":"the last commit failed 0s ago: store: commit generation 2: write sgsim.db: no space left on device"}`,
			body, path)
	}
	status, body := a.get("/livez")
	assert.Equal(t, http.StatusOK, status)
	assert.JSONEq(t, `{"status":"ok"}`, body)
	assert.Equal(t, 0, a.tc("Action", ActDescribePolicy, "sgId", "sg-web").Code, "reads keep working")

	disk.full.Store(false)
	assert.Equal(t, 0, a.tc("Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.action", "DROP").Code)
	status, body = a.get("/readyz")
	assert.Equal(t, http.StatusOK, status)
	assert.JSONEq(t, `{"status":"ok","generation":2}`, body)
}
