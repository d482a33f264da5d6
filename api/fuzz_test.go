package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func FuzzDecodeTencent(f *testing.F) {
	for _, s := range []string{
		"Action=ModifySecurityGroupPolicy&sgId=sg-web&ingress.0.action=ACCEPT&ingress.0.cidrIp=10.0.0.0/8&Timestamp=1&Nonce=2",
		"Action=ModifySecurityGroupsOfNetworkInterface&networkInterfaceSet.0.networkInterfaceId=eni-1&networkInterfaceSet.0.sgIds.0=sg-1&Timestamp=1&Nonce=1",
		"Action=DescribeNetworkInterfaces&limit=50&offset=0&Timestamp=1&Nonce=1",
		"Action=CreateSecurityGroup&sgName=x&projectId=3&Timestamp=1&Nonce=1",
		"Action=ModifySecurityGroupPolicy&Region=r&SecretId=a&Signature=b&SignatureMethod=HmacSHA1&sgId=sg-1&ingress.0.action=ACCEPT&ingress.1.cidrIp=10.0.0.0/8&ingress.1.desc=d&egress.0.portRange=80&egress.0.ipProtocol=tcp&egress.1.sgId=sg-2&Timestamp=1&Nonce=2",
		"Action=DescribeSecurityGroupPolicy&sgId=sg-1&Token=&RequestClient=SDK_GO_1.3.211&Language=zh-CN&Version=&Region=&Timestamp=1&Nonce=9223372036854775807",
		"a.0=1&a.1.b=2", "ingress.1.action=x", "x..y=1", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		params, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		f := formOf(params)
		// The tree-less ModifySecurityGroupPolicy decoder accepts only what the tree decodes, identically.
		if fast, ok := decodeModifyPolicy(f); ok {
			tree, err := decodeTencentTree(f)
			require.NoError(t, err)
			require.Equal(t, tree, fast)
		}
		// As the handler does: the bounds before the signature, the decoding after it.
		if te := admissible(f, 2000); te != nil {
			require.NotEmpty(t, te.Error())
			return
		}
		c, err := decodeCall(f)
		if err != nil {
			require.NotEmpty(t, err.Error())
			return
		}
		// Whatever decodes names a known action and carries lists exactly as dense as they were sent.
		require.Contains(t, actionParams, c.Action)
		require.True(t, validNonce(c.Nonce), c.Nonce)
		n := 0
		for k := range params {
			if strings.HasPrefix(k, "ingress.") && strings.HasSuffix(k, ".action") {
				n++
			}
		}
		if c.Action == ActModifyPolicy {
			require.LessOrEqual(t, n, len(c.Ingress))
		}
		for _, e := range c.Set {
			require.NotEmpty(t, e.ENI)
		}
	})
}

func FuzzDecodeHuawei(f *testing.F) {
	for _, s := range []string{
		`{"ports":[{"id":"b9ac5247-c4ca-4c9b-b8fa-7d19132e560a"}],"action":"add"}`,
		`{"ports":[],"action":"remove"}`, `{"ports":null}`, `[]`, `{"ports":[{"ID":"a"}],"action":"add","Action":"remove"}`, `{"ports":[{"id":1}]}`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, add, herr := decodeHuawei(body)
		if herr != nil {
			require.Contains(t, []string{"VPC.0606", "VPC.0609"}, herr.Code)
			require.Equal(t, 400, herr.Status)
			require.True(t, utf8.ValidString(herr.Message) || !utf8.Valid(body))
			return
		}
		require.NotEmpty(t, req.Ports)
		require.LessOrEqual(t, len(req.Ports), MaxHuaweiPorts)
		require.Equal(t, add, strings.EqualFold(req.Action, "add"))
	})
}

// FuzzTencentHandler sends arbitrary queries through the whole handler: always HTTP 200 with a
// well-formed envelope, and nothing unauthenticated ever changes the state.
func FuzzTencentHandler(f *testing.F) {
	f.Add("Action=DeleteSecurityGroup&sgId=sg-ssh&Nonce=1&Timestamp=1700000000&SecretId=AKIDdemo0000000000000000000000000001&Signature=x")
	f.Add("Action=ModifySecurityGroupPolicy&sgId=sg-web&ingress.0.action=ACCEPT")
	f.Add("%%")
	a := newTestAPI(f)
	f.Fuzz(func(t *testing.T, q string) {
		req := httptest.NewRequest(http.MethodGet, "http://sgsim/v2/index.php", nil)
		req.URL.RawQuery = q
		rec := httptest.NewRecorder()
		a.h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code)
		var out tcResp
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
		require.NotZero(t, out.Code, "unsigned garbage never succeeds")
		require.NotEmpty(t, out.Message)
		require.Equal(t, uint64(1), a.ctrl.View().Generation)
	})
}

// FuzzParseForm: parseForm decodes exactly what url.ParseQuery decodes, and fails where it fails, with
// its error (a semicolon's message names the pair instead).
func FuzzParseForm(f *testing.F) {
	for _, s := range []string{"a=1&b=%2F&c=+x+", "%zz=1", "a=%4", "a=1;b=2", "ingress.0.cidrIp=10.0.0.0%2F8&a%2Bb=c%2bd", "&&=&a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		want, wantErr := url.ParseQuery(q)
		got := &form{}
		err := parseForm(q, got, 1000)
		if strings.Count(q, "&") >= 1000 {
			return
		}
		if wantErr != nil {
			require.Error(t, err)
			if !strings.Contains(q, ";") {
				require.EqualError(t, err, wantErr.Error())
			}
			return
		}
		require.NoError(t, err)
		got.done()
		require.Len(t, got.names, len(want))
		for i, k := range got.names {
			require.Equal(t, want[k], got.values(i))
		}
	})
}

// FuzzValidNonce: a Nonce is accepted exactly when it is the decimal form strconv writes of an int64
// above zero.
func FuzzValidNonce(f *testing.F) {
	for _, s := range []string{"1", "0", "01", "-1", "+1", "9223372036854775807", "9223372036854775808", "", "1 ", "١"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := strconv.ParseInt(s, 10, 64)
		want := err == nil && n > 0 && strconv.FormatInt(n, 10) == s
		require.Equal(t, want, validNonce(s), "%q", s)
	})
}
