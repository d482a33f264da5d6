package api

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/nonce"
)

// signedAt is testAPI.signed with the given Timestamp and Nonce.
func (a *testAPI) signedAt(ts int64, nonce string, kv ...string) url.Values {
	p := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	p.Set("SecretId", secretID1)
	p.Set("Region", "ap-guangzhou")
	p.Set("Timestamp", strconv.FormatInt(ts, 10))
	p.Set("Nonce", nonce)
	p.Set("SignatureMethod", "HmacSHA256")
	Sign(http.MethodPost, strings.TrimPrefix(a.srv.URL, "http://"), p, secretKey1)
	return p
}

// serve runs one request through the handler in process (no socket: 3,000 calls stay fast).
func (a *testAPI) serve(p url.Values) tcResp {
	a.t.Helper()
	req := httptest.NewRequest(http.MethodPost, a.srv.URL+TencentPath, strings.NewReader(p.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	a.srv.Config.Handler.ServeHTTP(rec, req)
	var out tcResp
	require.NoError(a.t, json.Unmarshal(rec.Body.Bytes(), &out))
	return out
}

// The replay record keys on (SecretId, Timestamp, Nonce) as SPEC §4 says: a client drawing its Nonces
// from 0–65535 reuses some (about 66 in 3,000 draws), but never with the same Timestamp, and none of its
// calls is refused; the same request sent twice is. Both with the in-memory and the durable record.
func TestNonceKeyHasTimestamp(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "bolt"}[durable], func(t *testing.T) {
			a := newTestAPI(t)
			if durable {
				st, err := store.OpenBolt(filepath.Join(t.TempDir(), store.DBFile))
				require.NoError(t, err)
				t.Cleanup(func() { st.Close() })
				a.srv.Config.Handler = NewHandler(a.ctrl, Options{Now: func() time.Time { return testNow }, Nonces: st})
			}
			rng := rand.New(rand.NewPCG(1, 2))
			drawn := map[int]bool{}
			reused := 0
			for i := range 3000 {
				n := rng.IntN(65536)
				if drawn[n] {
					reused++
				}
				drawn[n] = true
				r := a.serve(a.signedAt(testNow.Unix()-int64(i), strconv.Itoa(n), "Action", ActDescribePolicy, "sgId", "sg-web"))
				require.Equal(t, 0, r.Code, "call %d, Nonce %d: %s", i, n, r.Message)
			}
			assert.Positive(t, reused, "the draw reused Nonces")

			twice := a.signedAt(testNow.Unix()-5000, "4242", "Action", ActDescribePolicy, "sgId", "sg-web")
			require.Equal(t, 0, a.serve(twice).Code)
			r := a.serve(twice)
			assert.Equal(t, 4500, r.Code)
			assert.Contains(t, r.Message, "4242")
		})
	}
}

// A flood of distinct Nonces from one SecretId stops at its bound with 4500, naming why, while every
// Nonce already taken stays refused as a replay and another account's calls go on.
func TestNonceFloodIsBounded(t *testing.T) {
	a := newTestAPI(t)
	a.srv.Config.Handler = NewHandler(a.ctrl, Options{Now: func() time.Time { return testNow },
		Nonces: nonce.New(nonce.Limits{PerSecret: 10, Total: 100})})
	var first url.Values
	for i := range 10 {
		p := a.signedAt(testNow.Unix(), strconv.Itoa(i+1), "Action", ActDescribePolicy, "sgId", "sg-web")
		require.Equal(t, 0, a.serve(p).Code, "call %d", i)
		if i == 0 {
			first = p
		}
	}
	r := a.serve(a.signedAt(testNow.Unix(), "11", "Action", ActDescribePolicy, "sgId", "sg-web"))
	assert.Equal(t, 4500, r.Code)
	assert.Contains(t, r.Message, "too many calls within the replay window")
	r = a.serve(first)
	assert.Equal(t, 4500, r.Code)
	assert.Contains(t, r.Message, "already used")

	other := a.signed(http.MethodPost, secretID2, secretKey2, "Action", ActDescribePolicy, "sgId", "sg-other")
	req := httptest.NewRequest(http.MethodPost, a.srv.URL+TencentPath, strings.NewReader(other.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	a.srv.Config.Handler.ServeHTTP(rec, req)
	var out tcResp
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
	assert.Equal(t, 0, out.Code, out.Message)
}
