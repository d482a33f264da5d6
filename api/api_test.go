package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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
	"github.com/sgsim/sgsim/store/nonce"
)

const (
	app1, app2   = "1250000001", "1250000002"
	secretID1    = "AKIDdemo0000000000000000000000000001"
	secretKey1   = "demo-secret-key-0000000000000001"
	secretID2    = "AKIDdemo0000000000000000000000000002"
	secretKey2   = "demo-secret-key-0000000000000002"
	project1     = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
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
	code, b := a.roundTrip(http.MethodPost, fmt.Sprintf("/%s/%s/security-groups/%s/instance/action", version, project, sg), "X-Auth-Token", token, body)
	var out map[string]any
	require.NoError(a.t, json.NewDecoder(bytes.NewReader(b)).Decode(&out))
	return code, out
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
	code, b := a.roundTrip(http.MethodPost, "/sgsim/v1/check", "Authorization", "Bearer "+adminToken, body+"}")
	require.Equal(a.t, http.StatusOK, code)
	var out checkOut
	require.NoError(a.t, json.NewDecoder(bytes.NewReader(b)).Decode(&out))
	return out
}

// get GETs path as the admin.
func (a *testAPI) get(path string) (int, string) {
	a.t.Helper()
	return a.getWith(path, "Authorization", "Bearer "+adminToken)
}

// getWith GETs path with one header (none when value is "").
func (a *testAPI) getWith(path, name, value string) (int, string) {
	a.t.Helper()
	code, b := a.roundTrip(http.MethodGet, path, name, value, "")
	return code, string(b)
}

// roundTrip sends one request to the handler with one header (none when value is "") and returns
// the status and the whole body.
func (a *testAPI) roundTrip(method, path, name, value, body string) (int, []byte) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.srv.URL+path, strings.NewReader(body))
	require.NoError(a.t, err)
	if value != "" {
		req.Header.Set(name, value)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(a.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(a.t, err)
	return resp.StatusCode, b
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

// benchState: sg-big (100 ingress rules) used by 100 ENIs; sg-ref (an sgId rule naming sg-big) used by
// 100 more; eni-x in no SG, to be moved in and out of sg-big.
func benchState(b *testing.B) *model.State {
	s, err := model.LoadTopologyFile(demoTopology)
	require.NoError(b, err)
	e := s.Edit()
	big := model.SecurityGroup{SgID: "sg-big", AppID: app1, SgName: "big"}
	for i := range 100 {
		big.Ingress = append(big.Ingress, model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("198.19.%d.0/24", i), PortRange: strconv.Itoa(1000 + i), Action: "ACCEPT"})
	}
	require.NoError(b, e.PutSG(big))
	require.NoError(b, e.PutSG(model.SecurityGroup{SgID: "sg-ref", AppID: app1, SgName: "ref",
		Ingress: []model.Rule{{SgID: "sg-big", Action: "ACCEPT"}}}))
	for i := range 200 {
		sg := "sg-big"
		if i >= 100 {
			sg = "sg-ref"
		}
		require.NoError(b, e.PutENI(model.NetworkInterface{NetworkInterfaceID: fmt.Sprintf("eni-b%d", i), AppID: app1,
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.%d.%d", 100+i/250, i%250+1)}, SgIDs: []string{sg}}))
	}
	require.NoError(b, e.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-x", AppID: app1, PrivateIPAddresses: []string{"198.18.99.1"}}))
	return e.State()
}

// BenchmarkModifyToEnforced measures request in → response out for a signed Tencent call through the
// handler, which returns only after the new tables are swapped into the engine.
func BenchmarkModifyToEnforced(b *testing.B) {
	for _, storeKind := range []string{"memory", "bolt"} {
		for _, op := range []string{"rules", "membership"} {
			b.Run(storeKind+"/"+op, func(b *testing.B) {
				var st store.Store = store.NewMemory()
				if storeKind == "bolt" {
					bs, err := store.OpenBolt(filepath.Join(b.TempDir(), "b.db"))
					require.NoError(b, err)
					b.Cleanup(func() { bs.Close() })
					st = bs
				}
				ctrl, err := control.New(context.Background(), st, benchState(b), control.Options{})
				require.NoError(b, err)
				h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }})
				bodies := make([][]string, 2)
				for v := range 2 {
					switch op {
					case "rules":
						kv := []string{"Action", ActModifyPolicy, "sgId", "sg-big"}
						for i := range 100 {
							p := "ingress." + strconv.Itoa(i) + "."
							kv = append(kv, p+"ipProtocol", "tcp", p+"cidrIp", fmt.Sprintf("198.19.%d.0/24", i), p+"portRange", strconv.Itoa(1000+i+v), p+"action", "ACCEPT")
						}
						bodies[v] = kv
					case "membership":
						kv := []string{"Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-x"}
						if v == 0 {
							kv = append(kv, "networkInterfaceSet.0.sgIds.0", "sg-big")
						}
						bodies[v] = kv
					}
				}
				// Sign every request up front: the client's work is not the server's latency.
				encoded := make([]string, b.N)
				for i := range encoded {
					p := url.Values{}
					kv := bodies[i%2]
					for j := 0; j < len(kv); j += 2 {
						p.Set(kv[j], kv[j+1])
					}
					encoded[i] = signForBench(p, i)
				}
				lat := timeCalls(b, h, encoded)
				pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
				b.ReportMetric(pct(0.50), "p50-ms")
				b.ReportMetric(pct(0.99), "p99-ms")
			})
		}
	}
}

// signForBench signs p as the i-th benchmark request (Nonce i+1: a Nonce is positive) and encodes it.
func signForBench(p url.Values, i int) string {
	p.Set("Nonce", strconv.Itoa(i+1))
	p.Set("Timestamp", strconv.FormatInt(testNow.Unix(), 10))
	p.Set("SecretId", secretID1)
	p.Set("SignatureMethod", "HmacSHA256")
	Sign(http.MethodPost, "bench", p, secretKey1)
	return p.Encode()
}

// timeCalls POSTs each encoded request to h, timing only ServeHTTP, and returns the latencies sorted;
// a call that is not answered with code 0 fails the benchmark.
func timeCalls(b *testing.B, h http.Handler, encoded []string) []time.Duration {
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		req := httptest.NewRequest(http.MethodPost, "http://bench"+TencentPath, strings.NewReader(encoded[i]))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		b.StartTimer()
		start := time.Now()
		h.ServeHTTP(rec, req)
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if !strings.HasPrefix(rec.Body.String(), `{"code":0,`) {
			b.Fatalf("call failed: %s", rec.Body.String())
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	return lat
}

// BenchmarkModifyBigPolicy measures the daemon's side of a ModifySecurityGroupPolicy that replaces a
// 1k- or 10k-rule SG (limits raised): parse, authenticate, validate, commit (memory store, or bbolt with
// its fsync and the durable Nonce record, as the daemon runs), compile and publish into the built-in Go
// engine. bench/peers' PeerUpdate/sgsim-api adds HTTP and the BPF publish to this, end to end on a veth
// path.
func BenchmarkModifyBigPolicy(b *testing.B) {
	for _, storeKind := range []string{"memory", "bolt"} {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/rules=%d", storeKind, n), func(b *testing.B) { benchModifyBigPolicy(b, storeKind, n) })
		}
	}
}

func benchModifyBigPolicy(b *testing.B, storeKind string, n int) {
	lim := control.DefaultLimits()
	lim.RulesPerDirection = n
	var st store.Store = store.NewMemory()
	var nonces NonceStore
	if storeKind == "bolt" {
		bs, err := store.OpenBolt(filepath.Join(b.TempDir(), "b.db"))
		require.NoError(b, err)
		b.Cleanup(func() { bs.Close() })
		st, nonces = bs, bs
	}
	ctrl, err := control.New(context.Background(), st, demoState(b), control.Options{Limits: &lim})
	require.NoError(b, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, MaxParams: 8*n + 64, MaxBodyBytes: int64(n) << 10, Nonces: nonces})
	// Two policies to alternate between, so every call is a change; signed up front.
	encoded := make([]string, b.N)
	for i := range encoded {
		encoded[i] = signForBench(bigPolicy(n, i%2), i)
	}
	lat := timeCalls(b, h, encoded)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
}

// bigPolicy is the unsigned parameters of a ModifySecurityGroupPolicy setting n ingress rules of sg-web;
// variant shifts the ports, so two variants differ in every rule.
func bigPolicy(n, variant int) url.Values {
	p := url.Values{}
	p.Set("Action", ActModifyPolicy)
	p.Set("sgId", "sg-web")
	for r := range n {
		k := "ingress." + strconv.Itoa(r) + "."
		p.Set(k+"ipProtocol", "tcp")
		p.Set(k+"cidrIp", fmt.Sprintf("10.%d.%d.0/24", r/256, r%256))
		p.Set(k+"portRange", strconv.Itoa(1000+r+variant))
		p.Set(k+"action", "ACCEPT")
	}
	return p
}

// BenchmarkAdmitBigPolicy measures only the handler's work before dispatch for BenchmarkModifyBigPolicy's
// request: body read, parameter parsing, decoding (rules included), signature check, Timestamp and the
// in-memory Nonce check. The controller, store and engine are not involved.
func BenchmarkAdmitBigPolicy(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			ctrl, err := control.New(context.Background(), store.NewMemory(), demoState(b), control.Options{})
			require.NoError(b, err)
			h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, MaxParams: 8*n + 64, MaxBodyBytes: int64(n) << 10})
			// One signed request, its Nonce forgotten after every call.
			encoded := signForBench(bigPolicy(n, 0), 0)
			b.ReportAllocs()
			b.SetBytes(int64(len(encoded)))
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				req := httptest.NewRequest(http.MethodPost, "http://bench"+TencentPath, strings.NewReader(encoded))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				h.nonces = LocalNonces(nonce.New(nonce.DefaultLimits()))
				b.StartTimer()
				call, _, _, refusal := h.admitTencent(req)
				if refusal != nil || len(call.Ingress) != n {
					b.Fatalf("call refused: %v", refusal)
				}
			}
		})
	}
}

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
		{`{"eni":"eni-web1","direction":"ingress","protocol":"tcp","remote":"198.18.0.1"} {}`, 400, "byte 81: one JSON object expected, more follows"},
		{`{"ENI":"eni-web1","direction":"ingress","protocol":"tcp","remote":"198.18.0.1"}`, 400, `key "ENI": must be written "eni"`},
		{`{"eni":"eni-web1","eni":"eni-db1","direction":"ingress","protocol":"tcp","remote":"198.18.0.1"}`, 400, `key "eni" given twice`},
		{`{"eni":"eni-web1","direction":`, 400, "unexpected end of JSON input after byte 30"},
		{``, 400, "the body is empty"},
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

// TestMetricsForgetDeletedRules: the check series of a rule an SG no longer has, or of an ENI the
// state no longer has, are dropped at the next check after the change, so create-check-delete loops
// cannot grow /metrics for good.
func TestMetricsForgetDeletedRules(t *testing.T) {
	a := newTestAPI(t)
	a.check("eni-web1", "ingress", "tcp", "203.0.113.7", 443) // sg-web rule 2
	_, body := a.get("/metrics")
	require.Contains(t, body, `sgsim_rule_hits_total{direction="ingress",eni="eni-web1",rule_index="2",sg_id="sg-web"} 1`)
	// sg-web keeps one ingress rule: its rule 2 is gone.
	r := a.tc("Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.ipProtocol", "tcp", "ingress.0.cidrIp", "0.0.0.0/0",
		"ingress.0.portRange", "80", "ingress.0.action", "ACCEPT")
	require.Equal(t, 0, r.Code, r.Message)
	a.check("eni-web1", "ingress", "tcp", "203.0.113.7", 80)
	_, body = a.get("/metrics")
	assert.NotContains(t, body, `rule_index="2",sg_id="sg-web"`)
	assert.Contains(t, body, `sgsim_rule_hits_total{direction="ingress",eni="eni-web1",rule_index="0",sg_id="sg-web"} 1`)
}
