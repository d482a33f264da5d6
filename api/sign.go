package api

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"net/url"
	"strings"
)

// TencentPath is the path of the Tencent v2 endpoint; it is part of the signed string.
const TencentPath = "/v2/index.php"

// StringToSign builds SPEC §4's string to sign: METHOD + host + path + "?" + sorted name=value pairs
// (raw values, "_" in names read as "."), every parameter but Signature.
func StringToSign(method, host string, params url.Values) string {
	return stringToSign(method, host, formOf(params))
}

// stringToSign is StringToSign of a form (Signature among its names or not).
func stringToSign(method, host string, params *form) string {
	var b strings.Builder
	n := len(method) + len(host) + len(TencentPath) + 1
	for i, k := range params.keys {
		n += len(k) + len(params.vals[i]) + 2
	}
	b.Grow(n)
	emitStringToSign(method, host, params, func(p []byte) { b.Write(p) })
	return b.String()
}

// emitStringToSign hands the string to sign to emit in pieces of about 32 KiB (a big policy's is over a
// megabyte, and the MAC needs no copy of it whole).
func emitStringToSign(method, host string, params *form, emit func([]byte)) {
	const chunk = 32 << 10
	buf := make([]byte, 0, chunk+256)
	buf = append(buf, strings.ToUpper(method)...)
	buf = append(buf, host...)
	buf = append(buf, TencentPath...)
	buf = append(buf, '?')
	first := true
	for i, k := range params.keys {
		if k == "Signature" {
			continue
		}
		if !first {
			buf = append(buf, '&')
		}
		first = false
		if strings.IndexByte(k, '_') < 0 {
			buf = append(buf, k...)
		} else {
			buf = append(buf, strings.ReplaceAll(k, "_", ".")...)
		}
		buf = append(buf, '=')
		buf = append(buf, params.vals[i]...)
		if len(buf) >= chunk {
			emit(buf)
			buf = buf[:0]
		}
	}
	emit(buf)
}

// signForm is SignString(stringToSign(method, host, params), secretKey, signMethod), with the string
// streamed into the MAC rather than built.
func signForm(method, host string, params *form, secretKey, signMethod string) string {
	m := newMAC(secretKey, signMethod)
	emitStringToSign(method, host, params, func(p []byte) { m.Write(p) })
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// SignString returns base64(HMAC(key, s)), SHA-256 when method is HmacSHA256, SHA-1 otherwise.
func SignString(s, secretKey, method string) string {
	m := newMAC(secretKey, method)
	m.Write([]byte(s))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func newMAC(secretKey, method string) hash.Hash {
	var hf func() hash.Hash = sha1.New
	if method == "HmacSHA256" {
		hf = sha256.New
	}
	return hmac.New(hf, []byte(secretKey))
}

// Sign sets params' Signature for a request with that method to host. Callers set SecretId, Nonce,
// Timestamp and SignatureMethod first (everything present is signed).
func Sign(method, host string, params url.Values, secretKey string) {
	params.Del("Signature")
	params.Set("Signature", SignString(StringToSign(method, host, params), secretKey, params.Get("SignatureMethod")))
}
