// Package client speaks sgsim's HTTP dialects as a caller does: signed Tencent v2 calls (SPEC §4),
// Huawei port actions (SPEC §5) and the native /sgsim/v1 inspection endpoints. It is what `sgsim call`,
// scenarios, benchmarks and tests use; it does not depend on the server.
package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// maxResponseBytes bounds what a client reads of one answer (a DescribeSecurityGroupPolicy of a big SG
// is megabytes; nothing sgsim answers comes near this).
const maxResponseBytes = 64 << 20

// DefaultHTTP is the http.Client used when a client's HTTP is nil. It follows no redirect: Go's client
// would carry X-Auth-Token (and a signed GET's parameters) to whatever host a redirect names; the
// caller gets the 3xx answer instead.
func DefaultHTTP() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// InProcess returns an http.Client whose requests h serves directly, in this goroutine, without a
// listener: scenarios and tests drive the daemon's handlers through the same client code.
func InProcess(h http.Handler) *http.Client {
	return &http.Client{Transport: HandlerTransport{Handler: h}}
}

// HandlerTransport is an http.RoundTripper that serves each request with Handler.
type HandlerTransport struct {
	Handler http.Handler
}

// RoundTrip serves req with the handler and returns what it wrote.
func (t HandlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.Handler == nil {
		return nil, fmt.Errorf("in-process transport: no handler")
	}
	// A server request carries its Host in Host and its path in RequestURI; a client request need not.
	sreq := req.Clone(req.Context())
	if sreq.Host == "" {
		sreq.Host = req.URL.Host
	}
	sreq.RequestURI = req.URL.RequestURI()
	if sreq.Body == nil {
		sreq.Body = http.NoBody
	}
	w := &responseBuffer{header: http.Header{}}
	t.Handler.ServeHTTP(w, sreq)
	if req.Body != nil {
		_ = req.Body.Close() // a RoundTripper closes the request body; a handler error stays in the answer
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", w.status, http.StatusText(w.status)),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.header,
		Body:          io.NopCloser(bytes.NewReader(w.body.Bytes())),
		ContentLength: int64(w.body.Len()),
		Request:       req,
	}, nil
}

// responseBuffer is the http.ResponseWriter of HandlerTransport.
type responseBuffer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *responseBuffer) Header() http.Header { return w.header }

func (w *responseBuffer) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *responseBuffer) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// do sends req and reads the whole answer.
func do(ctx context.Context, hc *http.Client, req *http.Request) (status int, body []byte, err error) {
	if hc == nil {
		hc = DefaultHTTP()
	}
	resp, err := hc.Do(req.WithContext(ctx))
	if err != nil {
		return 0, nil, fmt.Errorf("call %s: %w", req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return 0, nil, fmt.Errorf("read response of %s: %w", req.URL.Redacted(), err)
	}
	return resp.StatusCode, body, nil
}
