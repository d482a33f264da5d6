package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// admin sends an admin request with token ("" = none) and returns its status and body.
func (a *testAPI) admin(method, path, token, body string) (int, string) {
	a.t.Helper()
	bearer := ""
	if token != "" {
		bearer = "Bearer " + token
	}
	code, b := a.roundTrip(method, path, "Authorization", bearer, body)
	return code, string(b)
}

const web3 = `{"appId":"1250000001","privateIpAddresses":["198.18.1.30"],"sgIds":["sg-web"],"hostInterface":"sgweb3"}`

func TestAdminENIRefusals(t *testing.T) {
	a := newTestAPI(t)
	before := a.ctrl.View()
	tests := []struct {
		name, method, path, token, body string
		status                          int
		msg                             string
	}{
		{"no token", http.MethodPut, "/sgsim/v1/enis/eni-web3", "", web3, 401, "admin token is required"},
		{"unknown token", http.MethodPut, "/sgsim/v1/enis/eni-web3", "nope", web3, 401, "admin token is required"},
		{"tenant token is no admin token", http.MethodGet, "/sgsim/v1/enis", "tok-demo-1", "", 401, "admin token"},
		{"id differs from the path", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"networkInterfaceId":"eni-x","appId":"1250000001","privateIpAddresses":["198.18.1.30"]}`, 400, `networkInterfaceId: "eni-x" is not the "eni-web3" of the path`},
		{"unknown field", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","privateIpAddresses":["198.18.1.30"],"sgs":["sg-web"]}`, 400, `byte 60: unknown field "sgs"`},
		{"an address that is a number", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","privateIpAddresses":["198.18.1.30",7]}`, 400, `byte 59: privateIpAddresses[1]: expected a string, got a number`},
		{"not JSON", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken, `appId=1`, 400, "body: want a topology network interface object"},
		{"two objects", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken, web3 + web3, 400, "one JSON object expected"},
		{"a brace after the object", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken, web3 + "}", 400,
			fmt.Sprintf("byte %d: one JSON object expected, more follows", len(web3)+1)},
		{"a key in another case", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"APPID":"1250000001","privateIpAddresses":["198.18.1.30"]}`, 400, `key "APPID": must be written "appId"`},
		{"a key twice", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","appId":"1250000002","privateIpAddresses":["198.18.1.30"]}`, 400, `key "appId" given twice`},
		{"null", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken, `null`, 400, "null is not a JSON object"},
		{"a syntax error", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken, `{"appId" "1"}`, 400, `byte 10: invalid character '"' after object key`},
		{"no address", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken, `{"appId":"1250000001","privateIpAddresses":[]}`, 400, "privateIpAddresses"},
		{"unknown SG", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","privateIpAddresses":["198.18.1.30"],"sgIds":["sg-nope"]}`, 400, `sgIds[0]: "sg-nope": no such security group`},
		{"another account's SG", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","privateIpAddresses":["198.18.1.30"],"sgIds":["sg-other"]}`, 400, `sgIds[0]: "sg-other"`},
		{"unknown account", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"9","privateIpAddresses":["198.18.1.30"]}`, 400, `appId: "9": no such account`},
		{"too many SGs", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","privateIpAddresses":["198.18.1.30"],"sgIds":["sg-web","sg-db","sg-ssh","sg-lockdown","sg-preset","sg-x"]}`, 400, "at most 5 allowed"},
		{"address of another ENI", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","privateIpAddresses":["198.18.1.10"]}`, 409, "already a private IP of network interface eni-web1"},
		{"interface of another ENI", http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
			`{"appId":"1250000001","privateIpAddresses":["198.18.1.30"],"hostInterface":"sgweb1"}`, 409, "already the host interface of network interface eni-web1"},
		{"delete unknown", http.MethodDelete, "/sgsim/v1/enis/eni-nope", adminToken, "", 404, `"eni-nope": no such network interface`},
		{"get unknown", http.MethodGet, "/sgsim/v1/enis/eni-nope", adminToken, "", 404, `"eni-nope": no such network interface`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := a.admin(tt.method, tt.path, tt.token, tt.body)
			assert.Equal(t, tt.status, status, body)
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			assert.Contains(t, e.Error, tt.msg)
			assert.Same(t, before, a.ctrl.View(), "nothing changed")
		})
	}
}

// TestAdminENILifecycle: an ENI created, listed, re-addressed and deleted through the admin endpoints
// is seen at once by the Tencent and Huawei dialects and by every sgId rule naming its SGs.
func TestAdminENILifecycle(t *testing.T) {
	a := newTestAPI(t)
	status, body := a.admin(http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken, web3)
	require.Equal(t, 200, status, body)
	var got ENIResponse
	require.NoError(t, json.Unmarshal([]byte(body), &got))
	assert.Equal(t, "eni-web3", got.NetworkInterfaceID)
	assert.Equal(t, []string{"198.18.1.30"}, got.PrivateIPAddresses)
	require.NotNil(t, got.Attached, "a single host says")
	assert.False(t, *got.Attached, "nothing attaches interfaces in this handler")
	assert.Equal(t, a.ctrl.View().Generation, got.Generation)
	assert.Equal(t, got.Generation, got.TableGeneration)

	// The Tencent view sees it, in its SG order.
	r := a.tc("Action", ActDescribeENIs, "networkInterfaceId", "eni-web3")
	require.Equal(t, 0, r.Code, r.Message)
	assert.Contains(t, string(r.Data), `"privateIpAddress":"198.18.1.30"`)
	// sg-db's "postgres from the web tier" rule now matches its address.
	assert.Equal(t, "sg-db", a.check("eni-db1", "ingress", "tcp", "198.18.1.30", 5432).SgID)
	// The Huawei view can add it to an SG.
	hs, out := a.huawei("v2.0", project1, "sg-ssh", token1, `{"ports":[{"id":"eni-web3"}],"action":"add"}`)
	require.Equal(t, 200, hs, out)
	assert.Equal(t, []any{}, out["fail"])

	status, body = a.admin(http.MethodGet, "/sgsim/v1/enis", adminToken, "")
	require.Equal(t, 200, status)
	var list ENIList
	require.NoError(t, json.Unmarshal([]byte(body), &list))
	require.Len(t, list.NetworkInterfaces, 7)
	last := list.NetworkInterfaces[6]
	assert.Equal(t, "eni-web3", last.NetworkInterfaceID)
	assert.Equal(t, []string{"sg-web", "sg-ssh"}, last.SgIDs)

	// Re-addressed: the rule follows.
	status, body = a.admin(http.MethodPut, "/sgsim/v1/enis/eni-web3", adminToken,
		`{"networkInterfaceId":"eni-web3","appId":"1250000001","privateIpAddresses":["198.18.1.31"],"sgIds":["sg-web"]}`)
	require.Equal(t, 200, status, body)
	assert.Equal(t, "default-drop", a.check("eni-db1", "ingress", "tcp", "198.18.1.30", 5432).Reason)
	assert.Equal(t, "sg-db", a.check("eni-db1", "ingress", "tcp", "198.18.1.31", 5432).SgID)

	status, body = a.admin(http.MethodDelete, "/sgsim/v1/enis/eni-web3", adminToken, "")
	require.Equal(t, 200, status, body)
	assert.Equal(t, "default-drop", a.check("eni-db1", "ingress", "tcp", "198.18.1.31", 5432).Reason)
	status, _ = a.admin(http.MethodGet, "/sgsim/v1/enis/eni-web3", adminToken, "")
	assert.Equal(t, 404, status)
	r = a.tc("Action", ActDescribeENIs, "networkInterfaceId", "eni-web3")
	assert.Equal(t, 0, r.Code)
	assert.NotContains(t, string(r.Data), "198.18.1.3")
}

func TestChangeStatusNamesWhyThereIsNoAnswer(t *testing.T) {
	ctrl, err := control.New(context.Background(), store.NewMemory(), demoState(t), control.Options{})
	require.NoError(t, err)
	answers := map[uint64]error{
		7: fmt.Errorf("%w: revision 7", ErrNoSuchChange),
		8: fmt.Errorf("%w: change 8", ErrChangeForgotten),
		9: errors.New("etcd 127.0.0.1:1 unreachable"),
	}
	h := NewHandler(ctrl, Options{AdminTokens: []string{adminToken}, Change: func(_ context.Context, rev uint64) (*Enforcement, error) {
		if err, ok := answers[rev]; ok {
			return nil, err
		}
		return &Enforcement{Revision: rev, Hosts: 1, Pending: []string{"h1"}, Down: []string{}}, nil
	}})
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/sgsim/v1/changes/6", http.StatusOK, `{"revision":6,"hosts":1,"pending":["h1"],"down":[]}`},
		{"/sgsim/v1/changes/7", http.StatusNotFound, "revision 7"},
		{"/sgsim/v1/changes/8", http.StatusGone, "change 8"},
		{"/sgsim/v1/changes/9", http.StatusServiceUnavailable, "etcd 127.0.0.1:1 unreachable"},
		{"/sgsim/v1/changes/0", http.StatusBadRequest, "want a positive integer"},
		{"/sgsim/v1/changes/x", http.StatusBadRequest, `revision \"x\"`},
	} {
		req := httptest.NewRequest(http.MethodGet, tc.path, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		assert.Equal(t, tc.status, w.Code, tc.path)
		assert.Contains(t, w.Body.String(), tc.body, tc.path)
	}
}
