package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/store"
)

func portsBody(action string, ids ...string) string {
	var ps []string
	for _, id := range ids {
		ps = append(ps, fmt.Sprintf(`{"id":%q}`, id))
	}
	return fmt.Sprintf(`{"ports":[%s],"action":%q}`, strings.Join(ps, ","), action)
}

func TestHuaweiSeedExample(t *testing.T) {
	a := newTestAPI(t)
	// The page's own example (with /v1/): one known port, one unknown.
	status, out := a.huawei("v1", project1, "sg-web", token1, portsBody("add", dbPort, "aa2f8625-0042-4627-a05c-61500b604cc3"))
	require.Equal(t, http.StatusOK, status, out)
	assert.Equal(t, map[string]any{"fail": []any{map[string]any{
		"id":         "aa2f8625-0042-4627-a05c-61500b604cc3",
		"error_code": "VPC.0608",
		"error_msg":  `{"NeutronError":{"message":"Port aa2f8625-0042-4627-a05c-61500b604cc3 could not be found.","type":"PortNotFound","detail":""}}`,
	}}}, out)
	assert.Equal(t, []string{"sg-db", "sg-web"}, a.eniSGs(dbPort), "the known port was applied, appended last")

	// Repeated add: no error, no change, no new generation.
	gen := a.ctrl.View().Generation
	status, out = a.huawei("v2.0", project1, "sg-web", token1, portsBody("ADD", dbPort))
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, map[string]any{"fail": []any{}}, out)
	assert.Equal(t, gen, a.ctrl.View().Generation)
	assert.Equal(t, []string{"sg-db", "sg-web"}, a.eniSGs(dbPort))

	// The new membership is in force for sgId rules naming sg-web: eni-db1 accepts postgres from the port.
	assert.Equal(t, "ACCEPT", a.check("eni-db1", "ingress", "tcp", "198.18.2.11", 5432).Verdict)

	// Remove it again, then removing the last SG is refused for that port only.
	status, out = a.huawei("v2.0", project1, "sg-web", token1, portsBody("Remove", dbPort))
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, map[string]any{"fail": []any{}}, out)
	assert.Equal(t, []string{"sg-db"}, a.eniSGs(dbPort))
	status, out = a.huawei("v2.0", project1, "sg-db", token1, portsBody("remove", dbPort, "eni-db1"))
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, map[string]any{"fail": []any{
		map[string]any{"id": dbPort, "error_code": "VPC.0607", "error_msg": "An instance must belong to at least one security group"},
		map[string]any{"id": "eni-db1", "error_code": "VPC.0607", "error_msg": "An instance must belong to at least one security group"},
	}}, out)
	assert.Equal(t, []string{"sg-db"}, a.eniSGs(dbPort))
}

func TestHuaweiErrors(t *testing.T) {
	ports21 := make([]string, 21)
	for i := range ports21 {
		ports21[i] = fmt.Sprintf("eni-%d", i)
	}
	tests := []struct {
		name                 string
		version, project, sg string
		token, body          string
		status               int
		code, msg            string
	}{
		{"no token", "v2.0", project1, "sg-web", "", portsBody("add", "eni-spare"), 401, "VPC.0008", "Invalid token in the header"},
		{"wrong token", "v2.0", project1, "sg-web", "tok-nope", portsBody("add", "eni-spare"), 401, "VPC.0008", "Invalid token in the header"},
		{"other project's token", "v2.0", project1, "sg-web", token2, portsBody("add", "eni-spare"), 400, "VPC.0007", "Inconsistent tenant IDs"},
		{"21 ports", "v2.0", project1, "sg-web", token1, portsBody("add", ports21...), 400, "VPC.0609", "Ports list exceeds limit"},
		{"unknown SG", "v2.0", project1, "sg-nope", token1, portsBody("add", "eni-spare"), 400, "VPC.0606", "Request is invalid: security group sg-nope"},
		{"other account's SG", "v2.0", project1, "sg-other", token1, portsBody("add", "eni-spare"), 400, "VPC.0606", "sg-other"},
		{"not JSON", "v2.0", project1, "sg-web", token1, "ports=1", 400, "VPC.0606", "Request is invalid"},
		{"unknown field", "v2.0", project1, "sg-web", token1, `{"ports":[{"id":"eni-spare"}],"action":"add","x":1}`, 400, "VPC.0606", "unknown field"},
		{"trailing data", "v2.0", project1, "sg-web", token1, portsBody("add", "eni-spare") + "{}", 400, "VPC.0606", "one JSON object expected, more follows"},
		{"bad action", "v2.0", project1, "sg-web", token1, portsBody("attach", "eni-spare"), 400, "VPC.0606", "attach"},
		{"empty ports", "v2.0", project1, "sg-web", token1, `{"ports":[],"action":"add"}`, 400, "VPC.0606", "empty"},
		{"action twice", "v2.0", project1, "sg-web", token1, `{"ports":[{"id":"eni-spare"}],"action":"remove","action":"add"}`, 400, "VPC.0606", `body: byte 49: key "action" given twice`},
		{"action capitalised", "v2.0", project1, "sg-web", token1, `{"ports":[{"id":"eni-spare"}],"Action":"add"}`, 400, "VPC.0606", `body: byte 31: key "Action": must be written "action"`},
		{"action in two cases", "v2.0", project1, "sg-web", token1, `{"ports":[{"id":"eni-spare"}],"action":"remove","ACTION":"add"}`, 400, "VPC.0606", `body: byte 49: key "ACTION": must be written "action"`},
		{"ports twice", "v2.0", project1, "sg-web", token1, `{"ports":[{"id":"x"}],"ports":[{"id":"eni-spare"}],"action":"add"}`, 400, "VPC.0606", `body: byte 23: key "ports" given twice`},
		{"port id capitalised", "v2.0", project1, "sg-web", token1, `{"ports":[{"ID":"eni-spare"}],"action":"add"}`, 400, "VPC.0606", `body: byte 12: ports[0]: key "ID": must be written "id"`},
		{"port id twice", "v2.0", project1, "sg-web", token1, `{"ports":[{"id":"x","id":"eni-spare"}],"action":"add"}`, 400, "VPC.0606", `body: byte 21: ports[0]: key "id" given twice`},
		{"a null port", "v2.0", project1, "sg-web", token1, `{"ports":[null],"action":"add"}`, 400, "VPC.0606", `body: byte 11: ports[0]: null is not a JSON object`},
		{"a port id that is a number", "v2.0", project1, "sg-web", token1, `{"ports":[{"id":7}],"action":"add"}`, 400, "VPC.0606", `body: byte 17: ports[0].id: expected a string, got a number`},
		{"malformed port id", "v2.0", project1, "sg-web", token1, portsBody("add", "eni spare"), 400, "VPC.0606", "ports[0].id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAPI(t)
			gen := a.ctrl.View().Generation
			status, out := a.huawei(tt.version, tt.project, tt.sg, tt.token, tt.body)
			assert.Equal(t, tt.status, status)
			assert.Equal(t, tt.code, out["code"])
			assert.Contains(t, out["message"], tt.msg)
			assert.Len(t, out, 2, "envelope is exactly {code, message}")
			assert.Equal(t, gen, a.ctrl.View().Generation, "nothing applied")
			assert.Empty(t, a.eniSGs("eni-spare"))
		})
	}
}

func TestHuaweiPartialAdd(t *testing.T) {
	a := newTestAPI(t)
	status, out := a.huawei("v2.0", project1, "sg-ssh", token1, portsBody("add", "eni-spare", "eni-nope", "eni-db1", "eni-other"))
	require.Equal(t, http.StatusOK, status)
	fails := out["fail"].([]any)
	require.Len(t, fails, 2, "unknown port and another account's port")
	assert.Equal(t, "eni-nope", fails[0].(map[string]any)["id"])
	assert.Equal(t, "VPC.0608", fails[1].(map[string]any)["error_code"])
	assert.Equal(t, []string{"sg-ssh"}, a.eniSGs("eni-spare"))
	assert.Equal(t, []string{"sg-db", "sg-ssh"}, a.eniSGs("eni-db1"))
	assert.Equal(t, "ACCEPT", a.check("eni-spare", "ingress", "tcp", "198.18.9.9", 22).Verdict)
}

func TestHuaweiRepeatedPortAndLimit(t *testing.T) {
	a := newTestAPI(t)
	status, out := a.huawei("v2.0", project1, "sg-lockdown", token1, portsBody("add", "eni-web1", "eni-web1"))
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, map[string]any{"fail": []any{}}, out)
	assert.Equal(t, []string{"sg-web", "sg-ssh", "sg-lockdown"}, a.eniSGs("eni-web1"))

	for _, sg := range []string{"sg-db", "sg-preset"} {
		status, _ = a.huawei("v2.0", project1, sg, token1, portsBody("add", "eni-web2"))
		require.Equal(t, http.StatusOK, status)
	}
	require.Len(t, a.eniSGs("eni-web2"), 5)
	r := a.tc("Action", ActCreateSG, "sgName", "sixth")
	require.Equal(t, 0, r.Code)
	var created struct{ SgID string }
	require.NoError(t, json.Unmarshal(r.Data, &created))
	status, out = a.huawei("v2.0", project1, created.SgID, token1, portsBody("add", "eni-web2", "eni-spare"))
	require.Equal(t, http.StatusOK, status)
	fails := out["fail"].([]any)
	require.Len(t, fails, 1)
	assert.Equal(t, "eni-web2", fails[0].(map[string]any)["id"])
	assert.Contains(t, fails[0].(map[string]any)["error_msg"], "limit")
	assert.Len(t, a.eniSGs("eni-web2"), 5)
	assert.Equal(t, []string{created.SgID}, a.eniSGs("eni-spare"))
}

// TestHuaweiENIsPerSGQuota: an add that would take the SG past its quota of ENIs is a request error
// (400 VPC.0606 naming the quota), nothing applied, not a server failure.
func TestHuaweiENIsPerSGQuota(t *testing.T) {
	lim := control.DefaultLimits()
	lim.ENIsPerSG = 1
	ctrl, err := control.New(context.Background(), store.NewMemory(), demoState(t), control.Options{Limits: &lim})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}
	before := ctrl.View()
	status, out := a.huawei("v2.0", project1, "sg-lockdown", token1, portsBody("add", "eni-spare"))
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Equal(t, "VPC.0606", out["code"])
	assert.Contains(t, out["message"], "at most 1 allowed")
	assert.Same(t, before, ctrl.View(), "nothing applied")
}
