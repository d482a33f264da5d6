package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/nonce"
)

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
