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
