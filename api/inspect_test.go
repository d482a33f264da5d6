package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

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
		req, err := http.NewRequest(http.MethodPost, a.srv.URL+"/sgsim/v1/check", strings.NewReader(tt.body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var out map[string]string
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		resp.Body.Close()
		assert.Equal(t, tt.status, resp.StatusCode, tt.body)
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
