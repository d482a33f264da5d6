package client_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/client"
)

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
