package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

const (
	app1, app2   = "1250000001", "1250000002"
	secretID1    = "AKIDdemo0000000000000000000000000001"
	secretKey1   = "demo-secret-key-0000000000000001"
	secretID2    = "AKIDdemo0000000000000000000000000002"
	secretKey2   = "demo-secret-key-0000000000000002"
	project1     = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
	project2     = "ffeeddccbbaa49988776655443322110"
	token1       = "tok-demo-1"
	token2       = "tok-demo-2"
	dbPort       = "b9ac5247-c4ca-4c9b-b8fa-7d19132e560a"
	adminToken   = "admin-token-for-tests"
	demoTopology = "../testdata/demo.json"
)

var testNow = time.Unix(1_700_000_000, 0)

// demoState is the demo topology plus a preset SG of account 1 (the demo has none).
func demoState(t testing.TB) *model.State {
	t.Helper()
	s, err := model.LoadTopologyFile(demoTopology)
	require.NoError(t, err)
	b := s.Edit()
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-preset", AppID: app1, SgName: "default", Preset: true,
		Ingress: []model.Rule{{Action: "ACCEPT"}}}))
	return b.State()
}

type testAPI struct {
	t     testing.TB
	srv   *httptest.Server
	h     *Handler
	ctrl  *control.Controller
	nonce atomic.Int64
}

func newTestAPI(t testing.TB) *testAPI {
	t.Helper()
	ctrl, err := control.New(context.Background(), store.NewMemory(), demoState(t), control.Options{})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, AdminTokens: []string{adminToken}})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}
}

type tcResp struct {
	Code       int             `json:"code"`
	Message    string          `json:"message"`
	TotalCount *int            `json:"totalCount"`
	Data       json.RawMessage `json:"data"`
}

// signed builds signed Tencent parameters for account 1 (or the given credentials).
func (a *testAPI) signed(method, id, key string, kv ...string) url.Values {
	p := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	p.Set("SecretId", id)
	p.Set("Region", "ap-guangzhou")
	p.Set("Timestamp", strconv.FormatInt(testNow.Unix(), 10))
	if p.Get("Nonce") == "" {
		p.Set("Nonce", strconv.FormatInt(a.nonce.Add(1), 10))
	}
	p.Set("SignatureMethod", "HmacSHA256")
	Sign(method, strings.TrimPrefix(a.srv.URL, "http://"), p, key)
	return p
}

func (a *testAPI) send(method string, p url.Values) tcResp {
	a.t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodGet {
		resp, err = http.Get(a.srv.URL + TencentPath + "?" + p.Encode())
	} else {
		resp, err = http.PostForm(a.srv.URL+TencentPath, p)
	}
	require.NoError(a.t, err)
	defer resp.Body.Close()
	require.Equal(a.t, http.StatusOK, resp.StatusCode)
	var out tcResp
	require.NoError(a.t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

// tc sends a signed POST as account 1.
func (a *testAPI) tc(kv ...string) tcResp {
	a.t.Helper()
	return a.send(http.MethodPost, a.signed(http.MethodPost, secretID1, secretKey1, kv...))
}

func (a *testAPI) huawei(version, project, sg, token, body string) (int, map[string]any) {
	a.t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/%s/%s/security-groups/%s/instance/action", a.srv.URL, version, project, sg), strings.NewReader(body))
	require.NoError(a.t, err)
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(a.t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(a.t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

// checkOut is CheckResponse as a client reads it.
type checkOut struct {
	Verdict, ENI, Direction, SgID, Reason string
	RuleIndex                             *int
	Rule                                  *model.Rule
	Generation                            uint64
}

func (a *testAPI) check(eni, dir, proto, remote string, port int) checkOut {
	a.t.Helper()
	body := fmt.Sprintf(`{"eni":%q,"direction":%q,"protocol":%q,"remote":%q`, eni, dir, proto, remote)
	if port > 0 {
		body += fmt.Sprintf(`,"port":%d`, port)
	}
	req, err := http.NewRequest(http.MethodPost, a.srv.URL+"/sgsim/v1/check", strings.NewReader(body+"}"))
	require.NoError(a.t, err)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(a.t, err)
	defer resp.Body.Close()
	require.Equal(a.t, http.StatusOK, resp.StatusCode)
	var out checkOut
	require.NoError(a.t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

// get GETs path as the admin.
func (a *testAPI) get(path string) (int, string) {
	a.t.Helper()
	return a.getWith(path, "Authorization", "Bearer "+adminToken)
}

// getWith GETs path with one header (none when name is "").
func (a *testAPI) getWith(path, name, value string) (int, string) {
	a.t.Helper()
	req, err := http.NewRequest(http.MethodGet, a.srv.URL+path, nil)
	require.NoError(a.t, err)
	if name != "" {
		req.Header.Set(name, value)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(a.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(a.t, err)
	return resp.StatusCode, string(b)
}

func (a *testAPI) sg(id string) *model.SecurityGroup {
	g, ok := a.ctrl.View().State.SG(id)
	require.True(a.t, ok, id)
	return g
}

func (a *testAPI) eniSGs(id string) []string {
	n, ok := a.ctrl.View().State.ENI(id)
	require.True(a.t, ok, id)
	return n.SgIDs
}
