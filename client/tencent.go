package client

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"maps"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TencentPath is the path of the Tencent v2 endpoint; it is part of the signed string.
const TencentPath = "/v2/index.php"

// Signature methods (SPEC §4: anything but HmacSHA256 is HmacSHA1).
const (
	HmacSHA256 = "HmacSHA256"
	HmacSHA1   = "HmacSHA1"
)

// StringToSign builds SPEC §4's string to sign: METHOD + host + path + "?" + every parameter but
// Signature as name=value, sorted by name in byte order, raw values, "_" in names read as ".".
func StringToSign(method, host string, params url.Values) string {
	var b strings.Builder
	b.WriteString(strings.ToUpper(method))
	b.WriteString(host)
	b.WriteString(TencentPath)
	b.WriteByte('?')
	first := true
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if k == "Signature" {
			continue
		}
		name := strings.ReplaceAll(k, "_", ".")
		for _, v := range params[k] {
			if !first {
				b.WriteByte('&')
			}
			first = false
			b.WriteString(name)
			b.WriteByte('=')
			b.WriteString(v)
		}
	}
	return b.String()
}

// SignString returns base64(HMAC(key, s)): SHA-256 when method is HmacSHA256, SHA-1 otherwise.
func SignString(s, secretKey, method string) string {
	var hf func() hash.Hash = sha1.New
	if method == HmacSHA256 {
		hf = sha256.New
	}
	m := hmac.New(hf, []byte(secretKey))
	m.Write([]byte(s))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Sign sets params' Signature for a request with that method to host, by params' SignatureMethod.
// Everything else present is signed: callers set SecretId, Nonce, Timestamp and SignatureMethod first.
func Sign(method, host string, params url.Values, secretKey string) {
	params.Del("Signature")
	params.Set("Signature", SignString(StringToSign(method, host, params), secretKey, params.Get("SignatureMethod")))
}

// Tencent is a client of the Tencent v2 dialect, signing each call with one account's key.
type Tencent struct {
	// Endpoint is the daemon's base URL ("http://127.0.0.1:8080"); its host is the signed host.
	Endpoint            string
	SecretID, SecretKey string
	// Method is GET or POST (default POST); SignatureMethod HmacSHA256 (default) or HmacSHA1.
	Method, SignatureMethod string
	// Region is sent when the call's parameters have none ("" = none sent).
	Region string
	// HTTP sends the calls (nil = DefaultHTTP()).
	HTTP *http.Client
	// Now gives Timestamps (nil = time.Now); Nonce gives Nonces (nil = a random positive 31-bit one).
	Now   func() time.Time
	Nonce func() (int64, error)
}

// SignedCall is a Tencent call signed ahead of sending; its Nonce is spent once it is sent.
type SignedCall struct {
	Action string
	Method string
	URL    string // with the query for GET
	Host   string
	Body   string // the form for POST
	// Params is what was signed, Signature included.
	Params url.Values
}

// Sign prepares action with params (not modified) for sending: public parameters, Nonce, Timestamp and
// Signature are added.
func (c *Tencent) Sign(action string, params url.Values) (*SignedCall, error) {
	if c.SecretID == "" || c.SecretKey == "" {
		return nil, errors.New("tencent: no SecretId or SecretKey")
	}
	if action == "" && params.Get("Action") == "" {
		return nil, errors.New("tencent: no Action")
	}
	base, err := url.Parse(c.Endpoint)
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("endpoint %q: not an http URL", c.Endpoint)
	}
	method := strings.ToUpper(c.Method)
	switch method {
	case "":
		method = http.MethodPost
	case http.MethodGet, http.MethodPost:
	default:
		return nil, fmt.Errorf("method %q: want GET or POST", c.Method)
	}
	nonce, err := c.nonce()
	if err != nil {
		return nil, err
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	sigMethod := c.SignatureMethod
	if sigMethod == "" {
		sigMethod = HmacSHA256
	}
	p := make(url.Values, len(params)+8)
	for k, v := range params {
		p[k] = slices.Clone(v)
	}
	if action != "" {
		p.Set("Action", action)
	}
	if c.Region != "" && p.Get("Region") == "" {
		p.Set("Region", c.Region)
	}
	p.Set("Nonce", strconv.FormatInt(nonce, 10))
	p.Set("Timestamp", strconv.FormatInt(now().Unix(), 10))
	p.Set("SecretId", c.SecretID)
	p.Set("SignatureMethod", sigMethod)
	Sign(method, base.Host, p, c.SecretKey)
	u := *base
	u.Path = TencentPath
	sc := &SignedCall{Action: p.Get("Action"), Method: method, Host: base.Host, Params: p}
	if method == http.MethodGet {
		u.RawQuery = p.Encode()
	} else {
		sc.Body = p.Encode()
	}
	sc.URL = u.String()
	return sc, nil
}

func (c *Tencent) nonce() (int64, error) {
	if c.Nonce != nil {
		n, err := c.Nonce()
		if err != nil {
			return 0, fmt.Errorf("nonce: %w", err)
		}
		return n, nil
	}
	n, err := rand.Int(rand.Reader, big.NewInt(1<<31))
	if err != nil {
		return 0, fmt.Errorf("nonce: %w", err)
	}
	return n.Int64() + 1, nil // SPEC §4: positive
}

// Request builds the HTTP request of the call.
func (sc *SignedCall) Request(ctx context.Context) (*http.Request, error) {
	var body *strings.Reader
	if sc.Method == http.MethodPost {
		body = strings.NewReader(sc.Body)
	}
	var req *http.Request
	var err error
	if body != nil {
		req, err = http.NewRequestWithContext(ctx, sc.Method, sc.URL, body)
	} else {
		req, err = http.NewRequestWithContext(ctx, sc.Method, sc.URL, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("tencent %s: request: %w", sc.Action, err)
	}
	req.Host = sc.Host
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return req, nil
}

// TencentResponse is a Tencent answer: the envelope's code and message, and the whole body.
type TencentResponse struct {
	Status  int
	Body    []byte
	Code    int
	Message string
}

// OK tells whether the call succeeded (code 0).
func (r *TencentResponse) OK() bool { return r.Code == 0 }

// Err is nil for code 0, else an error naming the code and message.
func (r *TencentResponse) Err() error {
	if r.Code == 0 {
		return nil
	}
	return fmt.Errorf("code %d: %s", r.Code, r.Message)
}

// Send sends a signed call. An answer that is not a Tencent envelope is an error (its body quoted);
// an envelope with a non-zero code is not: the caller reads Code.
func (c *Tencent) Send(ctx context.Context, sc *SignedCall) (*TencentResponse, error) {
	req, err := sc.Request(ctx)
	if err != nil {
		return nil, err
	}
	status, body, err := do(ctx, c.HTTP, req)
	if err != nil {
		return nil, err
	}
	return parseTencent(sc.Action, status, body)
}

// ErrNotEnvelope is wrapped by errors for answers that are not a Tencent {"code","message"} object.
var ErrNotEnvelope = errors.New("response is not a Tencent envelope")

func parseTencent(action string, status int, body []byte) (*TencentResponse, error) {
	var env struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	resp := &TencentResponse{Status: status, Body: body}
	if err := json.Unmarshal(body, &env); err != nil || env.Code == nil {
		return resp, fmt.Errorf("tencent %s: %w: %.200s", action, ErrNotEnvelope, body)
	}
	resp.Code, resp.Message = *env.Code, env.Message
	return resp, nil
}

// Call signs and sends one call.
func (c *Tencent) Call(ctx context.Context, action string, params url.Values) (*TencentResponse, error) {
	sc, err := c.Sign(action, params)
	if err != nil {
		return nil, err
	}
	return c.Send(ctx, sc)
}
