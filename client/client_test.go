package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// The SPEC §4 test vector.
const (
	vectorKey    = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA"
	vectorString = "GETcvm.api.qcloud.com/v2/index.php?Action=DescribeInstances&InstanceIds.0=ins-09dx96dg&Nonce=11886&Region=ap-guangzhou&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA&SignatureMethod=HmacSHA256&Timestamp=1465185768"
)

func vectorParams(method string) url.Values {
	return url.Values{"Action": {"DescribeInstances"}, "InstanceIds_0": {"ins-09dx96dg"}, "Nonce": {"11886"},
		"Region": {"ap-guangzhou"}, "SecretId": {"AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"}, "SignatureMethod": {method},
		"Timestamp": {"1465185768"}}
}

func TestSignSpecVectors(t *testing.T) {
	tests := []struct{ method, want string }{
		{client.HmacSHA256, "0EEm/HtGRr/VJXTAD9tYMth1Bzm3lLHz5RCDv1GdM8s="},
		{client.HmacSHA1, "nPVnY6njQmwQ8ciqbPl5Qe+Oru4="},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			p := vectorParams(tt.method)
			p.Set("Signature", "stale") // never signed itself
			s := client.StringToSign("get", "cvm.api.qcloud.com", p)
			assert.Equal(t, strings.Replace(vectorString, "HmacSHA256", tt.method, 1), s)
			client.Sign(http.MethodGet, "cvm.api.qcloud.com", p, vectorKey)
			assert.Equal(t, tt.want, p.Get("Signature"))
			// The server's own signer agrees.
			assert.Equal(t, api.StringToSign(http.MethodGet, "cvm.api.qcloud.com", p), s)
		})
	}
}

// daemon is the API handler over the lab topology in memory.
func daemon(t *testing.T, now time.Time) (http.Handler, *control.Controller, *model.Account) {
	t.Helper()
	st, err := model.LoadTopologyFile("../testdata/scenarios/lab.json")
	require.NoError(t, err)
	quiet := slog.New(slog.DiscardHandler)
	ctrl, err := control.New(context.Background(), store.NewMemory(), st, control.Options{Logger: quiet})
	require.NoError(t, err)
	a, ok := st.Account(st.AppIDs()[0])
	require.True(t, ok)
	return api.NewHandler(ctrl, api.Options{Now: func() time.Time { return now }, Logger: quiet, AdminTokens: []string{"admin"}}), ctrl, a
}

func TestTencentAgainstHandler(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	h, ctrl, a := daemon(t, now)
	nonce := int64(0)
	tests := []struct {
		name, method, sig, key string
		wantCode               int
	}{
		{"POST SHA256", http.MethodPost, client.HmacSHA256, a.SecretKey, 0},
		{"GET SHA256", http.MethodGet, client.HmacSHA256, a.SecretKey, 0},
		{"POST SHA1", http.MethodPost, client.HmacSHA1, a.SecretKey, 0},
		{"GET SHA1", http.MethodGet, client.HmacSHA1, a.SecretKey, 0},
		{"wrong key", http.MethodPost, client.HmacSHA256, "nope", 4100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &client.Tencent{Endpoint: "http://sgsim.test", SecretID: a.SecretID, SecretKey: tt.key, Method: tt.method,
				SignatureMethod: tt.sig, Region: "ap-guangzhou", HTTP: client.InProcess(h),
				Now: func() time.Time { return now }, Nonce: func() (int64, error) { nonce++; return nonce, nil }}
			resp, err := c.Call(context.Background(), "DescribeSecurityGroupPolicy", url.Values{"sgId": {"sg-client"}})
			require.NoError(t, err)
			assert.Equal(t, tt.wantCode, resp.Code, "%s", resp.Body)
			assert.Equal(t, http.StatusOK, resp.Status)
		})
	}
	t.Run("a change, then its replay", func(t *testing.T) {
		c := &client.Tencent{Endpoint: "http://sgsim.test", SecretID: a.SecretID, SecretKey: a.SecretKey,
			HTTP: client.InProcess(h), Now: func() time.Time { return now }, Nonce: func() (int64, error) { return 77, nil }}
		sc, err := c.Sign(api.ActModifyPolicy, url.Values{"sgId": {"sg-empty"}, "ingress.0.action": {"ACCEPT"}, "ingress.0.ipProtocol": {"tcp"}, "ingress.0.portRange": {"22"}})
		require.NoError(t, err)
		assert.Equal(t, "77", sc.Params.Get("Nonce"))
		assert.Equal(t, "1800000000", sc.Params.Get("Timestamp"))
		resp, err := c.Send(context.Background(), sc)
		require.NoError(t, err)
		require.True(t, resp.OK(), "%s", resp.Body)
		g, _ := ctrl.View().State.SG("sg-empty")
		require.Len(t, g.Ingress, 1)
		resp, err = c.Send(context.Background(), sc)
		require.NoError(t, err)
		assert.Equal(t, 4500, resp.Code)
		assert.ErrorContains(t, resp.Err(), "code 4500")
	})
}

func TestTencentSignErrors(t *testing.T) {
	tests := []struct {
		name string
		c    client.Tencent
		want string
	}{
		{"no key", client.Tencent{Endpoint: "http://x", SecretID: "id"}, "SecretKey"},
		{"bad endpoint", client.Tencent{Endpoint: "nope", SecretID: "id", SecretKey: "k"}, `endpoint "nope"`},
		{"bad method", client.Tencent{Endpoint: "http://x", SecretID: "id", SecretKey: "k", Method: "PUT"}, `method "PUT"`},
		{"nonce fails", client.Tencent{Endpoint: "http://x", SecretID: "id", SecretKey: "k",
			Nonce: func() (int64, error) { return 0, errors.New("no entropy") }}, "no entropy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.c.Sign("DescribeSecurityGroupEx", nil)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	_, err := (&client.Tencent{Endpoint: "http://x", SecretID: "id", SecretKey: "k"}).Sign("", nil)
	assert.ErrorContains(t, err, "no Action")
}

func TestTencentNotEnvelope(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "teapot", http.StatusTeapot) })
	c := &client.Tencent{Endpoint: "http://x", SecretID: "id", SecretKey: "k", HTTP: client.InProcess(h)}
	resp, err := c.Call(context.Background(), "DescribeSecurityGroupEx", nil)
	require.ErrorIs(t, err, client.ErrNotEnvelope)
	assert.Equal(t, http.StatusTeapot, resp.Status)
	assert.Contains(t, err.Error(), "teapot")
}

func TestHuaweiAgainstHandler(t *testing.T) {
	h, ctrl, a := daemon(t, time.Now())
	c := &client.Huawei{Endpoint: "http://sgsim.test", Token: a.HuaweiTokens[0], Project: a.HuaweiProjectID, HTTP: client.InProcess(h)}
	tests := []struct {
		name, version, action string
		ports                 []string
		status                int
		fails                 int
		contains              string
	}{
		{"add", "", "add", []string{"eni-cli"}, http.StatusOK, 0, `{"fail":[]}`},
		{"add v1, one unknown", "v1", "ADD", []string{"eni-cli2", "eni-nope"}, http.StatusOK, 1, "VPC.0608"},
		{"bad action", "", "move", []string{"eni-cli"}, http.StatusBadRequest, 0, "VPC.0606"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := *c
			c.APIVersion = tt.version
			resp, err := c.PortAction(context.Background(), "sg-out", tt.action, tt.ports)
			require.NoError(t, err)
			assert.Equal(t, tt.status, resp.Status)
			assert.Len(t, resp.Fail, tt.fails)
			assert.Contains(t, string(resp.Body), tt.contains)
		})
	}
	eni, _ := ctrl.View().State.ENI("eni-cli")
	assert.Equal(t, []string{"sg-client", "sg-out"}, eni.SgIDs)
	bad := *c
	bad.Token = "nope"
	resp, err := bad.PortAction(context.Background(), "sg-out", "add", []string{"eni-cli"})
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnauthorized, resp.Status)
}

func TestNative(t *testing.T) {
	h, _, _ := daemon(t, time.Now())
	var sawAuth string
	spy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth = r.Header.Get("Authorization")
		h.ServeHTTP(w, r)
	})
	c := &client.Native{Endpoint: "http://sgsim.test/", Token: "admin", HTTP: client.InProcess(spy)}
	port := 22
	raw, err := c.Check(context.Background(), client.CheckRequest{ENI: "eni-srv", Direction: "ingress", Protocol: "tcp", Remote: "198.18.1.20", Port: &port})
	require.NoError(t, err)
	assert.Equal(t, "Bearer admin", sawAuth)
	var v struct {
		Verdict string `json:"verdict"`
		Reason  string `json:"reason"`
	}
	require.NoError(t, json.Unmarshal(raw, &v), "%s", raw)
	assert.Equal(t, "DROP", v.Verdict)
	raw, err = c.Table(context.Background(), "eni-cli")
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"eni":"eni-cli"`)
	_, err = c.Table(context.Background(), "eni-nope")
	var se *client.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusNotFound, se.Status)

	c.Token = "not-admin"
	_, err = c.Table(context.Background(), "eni-cli")
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusUnauthorized, se.Status)
	assert.Contains(t, se.Message, "credential")
}

// TestNativeENIs: the ENI methods against the real handler (SPEC §8).
func TestNativeENIs(t *testing.T) {
	h, ctrl, _ := daemon(t, time.Now())
	c := &client.Native{Endpoint: "http://sgsim.test", Token: "admin", HTTP: client.InProcess(h)}
	ctx := context.Background()
	eni := ctrl.View().State.ENIIDs()[0]
	first, _ := ctrl.View().State.ENI(eni)
	got, err := c.PutENI(ctx, client.ENISpec{NetworkInterfaceID: "eni-new", AppID: first.AppID, PrivateIPAddresses: []string{"198.18.77.1"}, SgIDs: first.SgIDs})
	require.NoError(t, err)
	assert.Equal(t, "eni-new", got.NetworkInterfaceID)
	assert.Equal(t, first.SgIDs, got.SgIDs)
	list, err := c.ListENIs(ctx)
	require.NoError(t, err)
	assert.Equal(t, "eni-new", list[len(list)-1].NetworkInterfaceID)
	one, err := c.GetENI(ctx, "eni-new")
	require.NoError(t, err)
	assert.Equal(t, []string{"198.18.77.1"}, one.PrivateIPAddresses)
	require.NoError(t, c.DeleteENI(ctx, "eni-new"))
	_, err = c.GetENI(ctx, "eni-new")
	var se *client.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusNotFound, se.Status)
	_, err = c.PutENI(ctx, client.ENISpec{NetworkInterfaceID: "eni-x", AppID: first.AppID, PrivateIPAddresses: []string{first.PrivateIPAddresses[0]}})
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusConflict, se.Status)
}

// TestHandlerTransport: the handler sees a server-side request (Host, RequestURI, body) and the
// caller gets what it wrote (status, headers, body); a handler that writes nothing answers 200.
func TestHandlerTransport(t *testing.T) {
	tests := []struct {
		name   string
		h      http.HandlerFunc
		status int
		body   string
	}{
		{"echo", func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Seen", r.Host+" "+r.RequestURI)
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write(b)
		}, http.StatusAccepted, "ping"},
		{"silent", func(http.ResponseWriter, *http.Request) {}, http.StatusOK, ""},
		{"status once", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusTeapot)
			w.WriteHeader(http.StatusOK) // ignored, as net/http ignores it
		}, http.StatusTeapot, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://in.process/a/b?c=d", strings.NewReader("ping"))
			require.NoError(t, err)
			resp, err := client.InProcess(tt.h).Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tt.status, resp.StatusCode)
			assert.Equal(t, tt.body, string(b))
			if tt.name == "echo" {
				assert.Equal(t, "in.process /a/b?c=d", resp.Header.Get("X-Seen"))
			}
		})
	}
	_, err := (&http.Client{Transport: client.HandlerTransport{}}).Get("http://x/")
	assert.ErrorContains(t, err, "no handler")
}

// FuzzStringToSign is differential: the client's string to sign is the server's for any parameters.
func FuzzStringToSign(f *testing.F) {
	f.Add("GET", "cvm.api.qcloud.com", "Action=DescribeInstances&InstanceIds_0=ins-1&Nonce=1&Signature=x")
	f.Add("post", "127.0.0.1:8080", "ingress.0.cidrIp=10.0.0.0%2F8&a=1&a=2&b_c_d=&%C3%A9=%00")
	f.Fuzz(func(t *testing.T, method, host, query string) {
		params, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		if got, want := client.StringToSign(method, host, params), api.StringToSign(method, host, params); got != want {
			t.Fatalf("client %q, server %q", got, want)
		}
	})
}

// TestClientNeedsNoServer: the client package depends on no sgsim package at all, the server's
// least of all (its tests use the server to check against).
func TestClientNeedsNoServer(t *testing.T) {
	for _, dep := range testkit.Deps(t) {
		if strings.HasPrefix(dep, "github.com/sgsim/sgsim/") {
			assert.Equal(t, "github.com/sgsim/sgsim/client", dep)
		}
	}
}

// TestTokenNotCarriedOnRedirect: the default HTTP client follows no redirect, so a Huawei token is
// sent to the endpoint alone, never to a host a redirect names.
func TestTokenNotCarriedOnRedirect(t *testing.T) {
	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get("X-Auth-Token") != "")
	}))
	t.Cleanup(other.Close)
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirecting.Close)
	h := &client.Huawei{Endpoint: redirecting.URL, Token: "tok-secret", Project: "p"}
	res, _ := h.PortAction(context.Background(), "sg-1", "add", []string{"eni-1"})
	assert.False(t, leaked.Load(), "the token reached the host the redirect named")
	if res != nil {
		assert.Equal(t, http.StatusTemporaryRedirect, res.Status)
	}
}
