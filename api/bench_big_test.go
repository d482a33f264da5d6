package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/nonce"
)

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
