package api

import (
	"bytes"
	"context"
	"encoding/json"
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
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
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
				h.nonces = nonce.New(nonce.DefaultLimits())
				b.StartTimer()
				call, _, _, refusal := h.admitTencent(req)
				if refusal != nil || len(call.Ingress) != n {
					b.Fatalf("call refused: %v", refusal)
				}
			}
		})
	}
}
