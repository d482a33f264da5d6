package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

// deepNameBody is issue 17's request: a 1 MiB form body whose one parameter name has ~524k
// dot-separated segments.
func deepNameBody() string {
	head := "Action=" + ActModifyPolicy + "&Timestamp=1&Nonce=1&ingress."
	return head + strings.Repeat("a.", (1<<20-len(head)-3)/2) + "a=1"
}

// worstUnsignedBody is the costliest request that passes every check made before the signature: a
// ModifySecurityGroupPolicy of MaxParams well-formed names whose values are long and percent-encoded
// (each needs decoding into fresh memory), filling the body limit, signed with a wrong key.
func worstUnsignedBody(t testing.TB, h *Handler, host string) string {
	t.Helper()
	p := url.Values{"Action": {ActModifyPolicy}, "sgId": {"sg-web"}, "SecretId": {secretID1}, "Region": {"ap-guangzhou"},
		"Timestamp": {strconv.FormatInt(testNow.Unix(), 10)}, "Nonce": {"1"}, "SignatureMethod": {"HmacSHA256"}}
	// Each value is the longest a desc may be sent as (50 four-byte characters, percent-encoded: 600
	// bytes on the wire); the names fill MaxParams, the values the body limit.
	n := h.opts.MaxParams - len(p) - 1
	per := int(h.opts.MaxBodyBytes)/n - 32
	val := strings.Repeat("\U0001F600", max(1, per/12))
	for i := range n {
		p.Set(fmt.Sprintf("ingress.%d.desc", i), val)
	}
	Sign(http.MethodPost, host, p, "not-the-key")
	body := p.Encode()
	require.LessOrEqual(t, int64(len(body)), h.opts.MaxBodyBytes)
	return body
}

// TestHostileInputBounded: each hostile shape is refused with 4000 naming what was wrong, before the
// signature is looked at and within its bound.
func TestHostileInputBounded(t *testing.T) {
	a := newTestAPI(t)
	long := func(n int) string { return strings.Repeat("x", n) }
	tests := []struct {
		name string
		body string
		msg  string
	}{
		{"524k segments in one name", deepNameBody(), "name segments, at most 4"},
		{"5 segments", "Action=" + ActModifyENISGs + "&networkInterfaceSet.0.sgIds.0.x=1", "5 name segments, at most 4"},
		{"name over 64 bytes", "Action=" + ActModifyPolicy + "&ingress." + long(60) + "=1", "name of 68 bytes, at most 64"},
		{"value over 4 KiB", "Action=" + ActModifyPolicy + "&sgId=" + long(4097), "value of 4097 bytes, at most 4096"},
		{"2001 parameters", strings.Repeat("x=1&", 2000) + "x=1", "2001 parameters, at most 2000"},
		{"unknown top-level name", "Action=" + ActModifyPolicy + "&bogus=1", `parameter "bogus" is not accepted`},
		{"Nonce zero", "Action=" + ActDeleteSG + "&Nonce=0&Timestamp=1", `parameter "Nonce"`},
		{"Nonce 2^63", "Action=" + ActDeleteSG + "&Nonce=9223372036854775808&Timestamp=1", "positive integer"},
		{"Nonce of 1 MB", "Action=" + ActDeleteSG + "&Timestamp=1&Nonce=" + strings.Repeat("9", 4000), "positive integer"},
		{"Nonce signed", "Action=" + ActDeleteSG + "&Nonce=-1&Timestamp=1", "positive integer"},
		{"Nonce leading zero", "Action=" + ActDeleteSG + "&Nonce=01&Timestamp=1", "positive integer"},
		{"Nonce as a list", "Action=" + ActDeleteSG + "&Nonce.0=1&Timestamp=1", `"Nonce" must be a single value`},
		{"Action twice", "Action=" + ActDeleteSG + "&Action=" + ActDeleteSG, `"Action" given 2 times`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := http.Post(a.srv.URL+TencentPath, "application/x-www-form-urlencoded", strings.NewReader(tt.body))
			require.NoError(t, err)
			defer resp.Body.Close()
			var out tcResp
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
			assert.Equal(t, model.CodeBadParameter, out.Code, out.Message)
			assert.Contains(t, out.Message, tt.msg)
			assert.LessOrEqual(t, len(out.Message), 300, "the message quotes no megabyte")
			assert.Equal(t, uint64(1), a.ctrl.View().Generation)
		})
	}
}

// TestUnsignedRequestAllocationBound: the costliest unsigned request allocates at most 3× its own size
// before it is refused with 4100 (its body is read once, its escapes decoded once, its pairs listed
// once); the 524k-segment name is refused at a fraction of that.
func TestUnsignedRequestAllocationBound(t *testing.T) {
	a := newTestAPI(t)
	host := "sgsim.test"
	worst := worstUnsignedBody(t, a.h, host)
	for _, tt := range []struct {
		name  string
		body  string
		code  int
		bound float64 // bytes allocated per request, per byte of body
	}{
		{"worst well-formed, bad signature", worst, model.CodeAuthFailed, 3},
		{"524k segments", deepNameBody(), model.CodeBadParameter, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			serve := func() {
				req := httptest.NewRequest(http.MethodPost, "http://"+host+TencentPath, strings.NewReader(tt.body))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				rec := httptest.NewRecorder()
				a.h.ServeHTTP(rec, req)
				var out tcResp
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
				require.Equal(t, tt.code, out.Code, out.Message)
			}
			serve()
			const runs = 8
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for range runs {
				serve()
			}
			runtime.ReadMemStats(&after)
			perReq := float64(after.TotalAlloc-before.TotalAlloc) / runs
			t.Logf("%s: body %d bytes, %.0f bytes allocated per request (%.2f× the body), %d allocations",
				tt.name, len(tt.body), perReq, perReq/float64(len(tt.body)), (after.Mallocs-before.Mallocs)/runs)
			assert.LessOrEqual(t, perReq, tt.bound*float64(len(tt.body)))
		})
	}
}

// floodResult is what one flood did to the daemon.
type floodResult struct {
	heapGrowth     int64         // peak heap in use above the heap before
	slowestHealthz time.Duration // the slowest /healthz answer during the flood
	refused        int64         // requests answered with a non-zero code
	took           time.Duration
}

// flood sends body from clients goroutines at once, rounds times each, to a's real listener, while it
// samples the heap and polls /healthz (every answer must be 200).
func flood(t testing.TB, a *testAPI, body []byte, clients, rounds int) floodResult {
	t.Helper()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak, slowest, refused atomic.Int64
	stop := make(chan struct{})
	var samplers sync.WaitGroup
	samplers.Go(func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if int64(ms.HeapInuse) > peak.Load() {
				peak.Store(int64(ms.HeapInuse))
			}
		}
	})
	samplers.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			start := time.Now()
			resp, err := http.Get(a.srv.URL + "/healthz")
			if assert.NoError(t, err) {
				assert.Equal(t, http.StatusOK, resp.StatusCode)
				resp.Body.Close()
			}
			if d := time.Since(start); int64(d) > slowest.Load() {
				slowest.Store(int64(d))
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range rounds {
				resp, err := http.Post(a.srv.URL+TencentPath, "application/x-www-form-urlencoded", bytes.NewReader(body))
				if !assert.NoError(t, err) {
					continue
				}
				var out tcResp
				if json.NewDecoder(resp.Body).Decode(&out) == nil && out.Code != 0 {
					refused.Add(1)
				}
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	close(stop)
	samplers.Wait()
	return floodResult{heapGrowth: peak.Load() - int64(base.HeapInuse), slowestHealthz: time.Duration(slowest.Load()),
		refused: refused.Load(), took: took}
}

// TestUnsignedFloodBounded: 48 of the costliest unsigned requests at once, twice over, through a
// real listener: each is refused, the heap grows by at most 48 × 3 MiB (each request's bound above,
// all at once), and /healthz answers every poll meanwhile. How fast it answers is a timing, measured
// by BenchmarkUnsignedFlood against a baseline of the same run.
func TestUnsignedFloodBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the handler")
	}
	const clients, rounds = 48, 2
	a := newTestAPI(t)
	host := strings.TrimPrefix(a.srv.URL, "http://")
	for _, tt := range []struct{ name, body string }{
		{"worst well-formed, bad signature", worstUnsignedBody(t, a.h, host)},
		{"524k segments", deepNameBody()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := flood(t, a, []byte(tt.body), clients, rounds)
			t.Logf("%s: %d requests of %d bytes in %s; heap +%d MiB at the peak; slowest /healthz %s",
				tt.name, clients*rounds, len(tt.body), r.took.Round(time.Millisecond), r.heapGrowth>>20, r.slowestHealthz.Round(time.Millisecond))
			assert.Equal(t, int64(clients*rounds), r.refused, "every request refused")
			assert.Less(t, r.heapGrowth, int64(clients*3<<20))
			assert.Equal(t, uint64(1), a.ctrl.View().Generation)
		})
	}
}

// BenchmarkUnsignedFlood reports, per flood of 48 clients sending two requests each, the peak heap
// growth and the slowest /healthz answer, and that answer's ratio to the slowest during a flood of
// trivial unsigned requests from as many clients in the same run.
func BenchmarkUnsignedFlood(b *testing.B) {
	a := newTestAPI(b)
	host := strings.TrimPrefix(a.srv.URL, "http://")
	baseline := flood(b, a, []byte("Action="+ActDescribePolicy), 48, 2)
	for _, bb := range []struct{ name, body string }{
		{"worst-wellformed", worstUnsignedBody(b, a.h, host)},
		{"deep-name", deepNameBody()},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			var heap int64
			var slowest time.Duration
			for range b.N {
				r := flood(b, a, []byte(bb.body), 48, 2)
				heap, slowest = max(heap, r.heapGrowth), max(slowest, r.slowestHealthz)
			}
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
			b.ReportMetric(float64(slowest)/float64(time.Millisecond), "healthz-max-ms")
			b.ReportMetric(float64(slowest)/float64(max(baseline.slowestHealthz, time.Millisecond)), "healthz/baseline")
		})
	}
}

// TestLegalExtremesWithinBounds: the bounds leave room for the largest legal calls: a 100-rule policy
// in each direction whose every field is as long as it may be, and an SG of the longest name and remark.
func TestLegalExtremesWithinBounds(t *testing.T) {
	a := newTestAPI(t)
	desc := strings.Repeat("\U0001F600", 50)
	kv := []string{"Action", ActModifyPolicy, "sgId", "sg-web"}
	for _, dir := range []string{"ingress", "egress"} {
		for i := range 100 {
			p := fmt.Sprintf("%s.%d.", dir, i)
			kv = append(kv, p+"ipProtocol", "tcp", p+"cidrIp", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
				p+"portRange", "65534-65535", p+"action", "ACCEPT", p+"desc", desc)
		}
	}
	r := a.tc(kv...)
	require.Equal(t, 0, r.Code, r.Message)
	assert.Len(t, a.sg("sg-web").Egress, 100)

	r = a.tc("Action", ActCreateSG, "sgName", strings.Repeat("\U0001F600", 60), "sgRemark", strings.Repeat("\U0001F600", 100),
		"Token", strings.Repeat("t", maxValueBytes), "RequestClient", "SDK_GO_1.3.211: "+strings.Repeat("r", 128))
	require.Equal(t, 0, r.Code, r.Message)
}
