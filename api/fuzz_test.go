package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
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
		// A refusal is a Tencent error that names the parameter at fault (or says how many were sent).
		if te := admissible(f, 2000); te != nil {
			require.Equal(t, model.CodeBadParameter, te.Code, te.Msg)
			requireNamesParameter(t, f, 2000, te)
			return
		}
		c, err := decodeCall(f)
		if err != nil {
			var te *tencentError
			require.ErrorAs(t, err, &te)
			requireNamesParameter(t, f, 2000, te)
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

// requireNamesParameter: te, a refusal of the parameters f, is a 4000 or (a rule's) 9003 whose
// message says how many parameters were sent when they are too many, and otherwise starts with
// `parameter "NAME"` where NAME is what was at fault as it was sent: a parameter's name or a list,
// object or rule of the tree of names (a name cut short after 64 characters is followed by "…"), or,
// for one that is required, a name with no value.
func requireNamesParameter(t *testing.T, f *form, maxParams int, te *tencentError) {
	t.Helper()
	require.Contains(t, []int{model.CodeBadParameter, model.CodeBadRuleFormat}, te.Code, te.Msg)
	require.Equal(t, fmt.Sprintf("%d: %s", te.Code, te.Msg), te.Error())
	require.True(t, utf8.ValidString(te.Msg), te.Msg)
	if m := regexp.MustCompile(`^(\d+) parameters, at most (\d+) allowed$`).FindStringSubmatch(te.Msg); m != nil {
		require.Equal(t, strconv.Itoa(len(f.keys)), m[1])
		require.Equal(t, strconv.Itoa(maxParams), m[2])
		return
	}
	rest, ok := strings.CutPrefix(te.Msg, "parameter ")
	require.True(t, ok, "%q names no parameter", te.Msg)
	q, err := strconv.QuotedPrefix(rest)
	require.NoError(t, err, te.Msg)
	name, err := strconv.Unquote(q)
	require.NoError(t, err)
	switch rest = rest[len(q):]; {
	case rest == " is required":
		require.Empty(t, f.get(name), te.Msg)
	case strings.HasPrefix(rest, "…"):
		require.True(t, slices.ContainsFunc(f.names, func(k string) bool { return strings.HasPrefix(k, name) }), te.Msg)
	default:
		require.True(t, slices.ContainsFunc(f.names, func(k string) bool { return k == name || strings.HasPrefix(k, name+".") }), te.Msg)
	}
	if te.Code == model.CodeBadRuleFormat {
		require.True(t, strings.HasPrefix(name, "ingress.") || strings.HasPrefix(name, "egress."), te.Msg)
	}
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

// fuzzHandler is a handler over a fresh controller of st, for targets that serve requests in process
// and need to start again from st once one changed it.
func fuzzHandler(tb testing.TB, st *model.State) (*Handler, *control.Controller) {
	tb.Helper()
	ctrl, err := control.New(context.Background(), store.NewMemory(), st, control.Options{})
	require.NoError(tb, err)
	return NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, AdminTokens: []string{adminToken}}), ctrl
}

// topKeys returns the keys of body's top-level object in their order, repeats included; false when
// body is not one JSON value that is an object.
func topKeys(body []byte) ([]string, bool) {
	if !json.Valid(body) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return nil, false
	}
	var keys []string
	for dec.More() {
		tok, _ := dec.Token()
		k, _ := tok.(string)
		keys = append(keys, k)
		var skip json.RawMessage
		_ = dec.Decode(&skip)
	}
	return keys, true
}

// isObjectOf tells whether body is one JSON object and nothing else, whose keys are among names, each
// spelt as there and given once: what a strict decoder of that object may accept.
func isObjectOf(body []byte, names ...string) bool {
	keys, ok := topKeys(body)
	seen := map[string]bool{}
	for _, k := range keys {
		if seen[k] || !slices.Contains(names, k) {
			return false
		}
		seen[k] = true
	}
	return ok
}

// requireBodyRefusal: msg, the refusal of body, which is no strict JSON object of names or has a value
// of the wrong type (unmarshal tells), starts with prefix and says where the body went wrong: its
// first value's syntax error by byte, that value being no object, a key at fault or the field of a
// wrongly typed value, or else the byte where more follows a whole object.
func requireBodyRefusal(t *testing.T, msg, prefix string, body []byte, names []string, unmarshal func([]byte) error) {
	t.Helper()
	rest, ok := strings.CutPrefix(msg, prefix)
	require.True(t, ok, "%q does not start with %q", msg, prefix)
	if len(bytes.Trim(body, " \t\r\n")) == 0 {
		require.Equal(t, "the body is empty", rest)
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var first json.RawMessage
	var syntax *json.SyntaxError
	switch err := dec.Decode(&first); {
	case errors.Is(err, io.ErrUnexpectedEOF):
		require.Equal(t, fmt.Sprintf("unexpected end of JSON input after byte %d", len(body)), rest)
		return
	case errors.As(err, &syntax):
		require.True(t, strings.HasPrefix(rest, fmt.Sprintf("byte %d: ", syntax.Offset)), "%q: want the byte of %v", msg, err)
		return
	case err != nil:
		t.Fatalf("%q: %v", body, err)
	}
	if unmarshal(first) == nil && isObjectOf(first, names...) {
		more := int(dec.InputOffset())
		for more < len(body) && strings.IndexByte(" \t\r\n", body[more]) >= 0 {
			more++
		}
		require.Less(t, more, len(body), "%q refused, though nothing follows the object", body)
		require.Equal(t, fmt.Sprintf("byte %d: one JSON object expected, more follows", more+1), rest) // counted from 1
		return
	}
	keys, isObject := topKeys(first)
	if !isObject {
		start := len(body) - len(bytes.TrimLeft(body, " \t\r\n")) + 1 // counted from 1
		require.Regexp(t, fmt.Sprintf(`^byte %d: (null is not a JSON object|expected an object, got [a-z ]+)$`, start), rest)
		return
	}
	// One of the faults, by its byte (counted from 1) and path: a key no field has, spelt in another
	// case than its field's, or repeated; or a value of the wrong type, under a key as spelt.
	m := regexp.MustCompile(`^byte (\d+): (.+)$`).FindStringSubmatch(rest)
	require.NotNil(t, m, "%q does not say at which byte", msg)
	at, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	require.True(t, at >= 1 && at <= len(body), "%q: byte %d is outside the body", msg, at)
	if v := regexp.MustCompile(`^(\w+)[^ ]*: (expected |-?\d+ is out of range|the number )`).FindStringSubmatch(m[2]); v != nil {
		require.Contains(t, keys, v[1], "%q: no key %q", msg, v[1])
		require.Contains(t, "\"{[tfn-0123456789", string(body[at-1]), "%q: byte %d begins no value", msg, at)
		return
	}
	require.Equal(t, byte('"'), body[at-1], "%q: byte %d begins no key", msg, at)
	var named []string
	seen := map[string]bool{}
	for _, k := range keys {
		if seen[k] || !slices.Contains(names, k) {
			named = append(named, strconv.Quote(k))
		}
		seen[k] = true
	}
	require.True(t, slices.ContainsFunc(named, func(q string) bool { return strings.Contains(rest, q) }), "%q names none of the keys at fault %v", msg, named)
}

// checkFault is how the refusal of a /check body with these (well-typed) fields starts: the first
// field at fault in the order they are read, with its value as sent; "" when all are valid.
func checkFault(r CheckRequest) string {
	if l := strings.ToLower(r.Direction); l != "ingress" && l != "egress" {
		return fmt.Sprintf("direction: %q: ", r.Direction)
	}
	if a, err := netip.ParseAddr(r.Remote); err != nil || a.Zone() != "" {
		return fmt.Sprintf("remote %q: ", r.Remote)
	}
	proto, ok := protocolOf(r.Protocol)
	if !ok {
		return fmt.Sprintf("protocol: %q: ", r.Protocol)
	}
	if r.Port != nil && (proto != model.IPProtoTCP && proto != model.IPProtoUDP || *r.Port < 0 || *r.Port > 65535) {
		return fmt.Sprintf("port %d: ", *r.Port)
	}
	return ""
}

// protocolOf reads a protocol as the check body documents it: a name in any case or a number 0-255.
func protocolOf(s string) (uint8, bool) {
	if n, ok := map[string]uint8{"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}[strings.ToLower(s)]; ok {
		return n, true
	}
	n, err := strconv.ParseUint(s, 10, 8)
	return uint8(n), err == nil
}

// FuzzParseCheck: a POST /sgsim/v1/check body is accepted exactly when it is one strict JSON object
// whose fields are all valid. A refusal names where the body went wrong, or the first field at fault
// (direction, remote, protocol, port) with its value as sent. What is accepted is the packet of those
// fields, and its canonical body reads back as the same packet.
func FuzzParseCheck(f *testing.F) {
	for _, s := range []string{
		`{"eni":"eni-web1","direction":"ingress","protocol":"tcp","remote":"198.18.66.9","port":80}`,
		`{"eni":"eni-web1","direction":"EGRESS","protocol":"17","remote":"::ffff:198.18.0.1","port":0}`,
		`{"eni":"e","direction":"ingress","protocol":"icmpv6","remote":"2001:db8::1"}`,
		`{"eni":"e","direction":"ingress","protocol":"icmp","remote":"198.18.0.1","port":5}`,
		`{"eni":"e","direction":"ingress","protocol":"tcp","remote":"198.18.0.1","port":70000}`,
		`{"eni":"e","direction":"ingress","protocol":"tcp","remote":"fe80::1%eth0"}`,
		`{"eni":"e","direction":"sideways","protocol":"gre","remote":"x"}`,
		`{"eni":"e","direction":"ingress","protocol":"256","remote":"1.2.3.4"}`,
		`{"eni":"e","direction":"ingress","protocol":"tcp","remote":"1.2.3.4","port":"80"}`,
		`{"ENI":"e","direction":"ingress","protocol":"tcp","remote":"1.2.3.4"}`,
		`{"eni":"a","eni":"b","direction":"ingress","protocol":"tcp","remote":"1.2.3.4"}`,
		`{"eni":"e","direction":"ingress","protocol":"tcp","remote":"1.2.3.4"} x`,
		`{"eni":"e","direction":"ingress","protocol":"tcp","remote":"1.2.3.4"}}`,
		`{"eni":"e","verdict":"ACCEPT"}`, `{"eni":`, `[1,2]`, `null`, `null x`, `000`, ``, " \n",
	} {
		f.Add([]byte(s))
	}
	names := []string{"eni", "direction", "protocol", "remote", "port"}
	f.Fuzz(func(t *testing.T, body []byte) {
		d, p, req, err := parseCheck(body)
		var sent CheckRequest
		if typeErr := json.Unmarshal(body, &sent); typeErr != nil || !isObjectOf(body, names...) {
			require.Error(t, err, "%q accepted", body)
			requireBodyRefusal(t, err.Error(), `body: want {"eni","direction","protocol","remote","port"}: `, body, names,
				func(b []byte) error { return json.Unmarshal(b, new(CheckRequest)) })
			return
		}
		if fault := checkFault(sent); fault != "" {
			require.Error(t, err, "%q accepted", body)
			require.True(t, strings.HasPrefix(err.Error(), fault), "%q: want %q first", err, fault)
			return
		}
		require.NoError(t, err, "%q", body)
		require.Equal(t, sent, req)
		require.Equal(t, strings.ToLower(sent.Direction), d.String())
		require.Equal(t, netip.MustParseAddr(sent.Remote), p.Remote)
		proto, _ := protocolOf(sent.Protocol)
		require.Equal(t, proto, p.Proto)
		require.Equal(t, sent.Port != nil, p.HasPort)
		if p.HasPort {
			require.Equal(t, *sent.Port, int(p.Port))
		} else {
			require.Zero(t, p.Port)
		}
		canon, err := json.Marshal(CheckRequest{ENI: req.ENI, Direction: d.String(), Protocol: model.IPProtocolName(p.Proto), Remote: p.Remote.String(), Port: req.Port})
		require.NoError(t, err)
		d2, p2, req2, err := parseCheck(canon)
		require.NoError(t, err, "%s", canon)
		require.Equal(t, d, d2)
		require.Equal(t, p, p2)
		require.Equal(t, req.ENI, req2.ENI)
	})
}

// eniFields are the keys of an ENI object (SPEC §7).
func eniFields() []string {
	return []string{"networkInterfaceId", "appId", "macAddress", "privateIpAddresses", "sgIds", "hostInterface", "host"}
}

// exported is n without its parsed forms, to compare ENIs by what they say.
func exported(n *model.NetworkInterface) model.NetworkInterface {
	return model.NetworkInterface{NetworkInterfaceID: n.NetworkInterfaceID, AppID: n.AppID, MacAddress: n.MacAddress,
		PrivateIPAddresses: n.PrivateIPAddresses, SgIDs: n.SgIDs, HostInterface: n.HostInterface, Host: n.Host}
}

// otherENI tells whether an ENI of st other than id satisfies pred.
func otherENI(st *model.State, id string, pred func(*model.NetworkInterface) bool) bool {
	for _, o := range st.ENIIDs() {
		if n, _ := st.ENI(o); o != id && pred(n) {
			return true
		}
	}
	return false
}

// indexOf reads path as field[i] with i an index of a list of n; false when it is not.
func indexOf(path, field string, n int) (int, bool) {
	s, ok := strings.CutPrefix(path, field+"[")
	s, closed := strings.CutSuffix(s, "]")
	if !ok || !closed {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	return i, err == nil && i >= 0 && i < n
}

// requireValidENI: n, stored in st, satisfies SPEC §7 and §8: a valid ID, a known account, at least
// one unzoned address, a 6-byte MAC if any, at most lim's SGs, each its account's and listed once, and
// no address or host interface another ENI holds.
func requireValidENI(t *testing.T, st *model.State, lim control.Limits, n *model.NetworkInterface) {
	t.Helper()
	require.True(t, model.ValidID(n.NetworkInterfaceID), n.NetworkInterfaceID)
	_, ok := st.Account(n.AppID)
	require.True(t, ok, n.AppID)
	if n.MacAddress != "" {
		mac, err := net.ParseMAC(n.MacAddress)
		require.NoError(t, err)
		require.Len(t, mac, 6)
	}
	require.NotEmpty(t, n.PrivateIPAddresses)
	for _, s := range n.PrivateIPAddresses {
		a, err := netip.ParseAddr(s)
		require.NoError(t, err)
		require.Empty(t, a.Zone())
		require.False(t, otherENI(st, n.NetworkInterfaceID, func(o *model.NetworkInterface) bool { return slices.Contains(o.Addrs(), a.Unmap()) }), s)
	}
	require.LessOrEqual(t, len(n.SgIDs), lim.SGsPerENI)
	for i, id := range n.SgIDs {
		g, ok := st.SG(id)
		require.True(t, ok, id)
		require.Equal(t, n.AppID, g.AppID)
		require.NotContains(t, n.SgIDs[:i], id)
	}
	if n.HostInterface != "" {
		require.False(t, otherENI(st, n.NetworkInterfaceID, func(o *model.NetworkInterface) bool {
			return o.HostInterface == n.HostInterface && o.Host == n.Host
		}))
	}
}

// requireENIRefusal: msg, the refusal with status of body PUT at id onto st, names where the body went
// wrong, or the field at fault with its value as sent, and that value is indeed at fault.
func requireENIRefusal(t *testing.T, st *model.State, lim control.Limits, id string, body []byte, status int, msg string) {
	t.Helper()
	var sent model.NetworkInterface
	if typeErr := json.Unmarshal(body, &sent); typeErr != nil || !isObjectOf(body, eniFields()...) {
		require.Equal(t, http.StatusBadRequest, status, msg)
		requireBodyRefusal(t, msg, "body: want a topology network interface object (SPEC §7): ", body, eniFields(),
			func(b []byte) error { return json.Unmarshal(b, new(model.NetworkInterface)) })
		return
	}
	if sent.NetworkInterfaceID != "" && sent.NetworkInterfaceID != id {
		require.Equal(t, http.StatusBadRequest, status, msg)
		require.Equal(t, fmt.Sprintf("networkInterfaceId: %q is not the %q of the path", sent.NetworkInterfaceID, id), msg)
		return
	}
	sent.NetworkInterfaceID = id
	path, rest, ok := strings.Cut(msg, ": ")
	require.True(t, ok, "%q names no field", msg)
	value, quoted := "", strings.HasPrefix(rest, `"`)
	if quoted {
		q, err := strconv.QuotedPrefix(rest)
		require.NoError(t, err, msg)
		value, _ = strconv.Unquote(q)
	}
	// Unquoted, value stays "": only an empty value may go unshown (control's apiErr), which each
	// field's check below holds to.
	if status == http.StatusConflict {
		require.Contains(t, msg, "already", "only a value another ENI holds is a conflict")
	} else {
		require.Equal(t, http.StatusBadRequest, status, msg)
	}
	if i, ok := indexOf(path, "privateIpAddresses", len(sent.PrivateIPAddresses)); ok {
		require.Equal(t, sent.PrivateIPAddresses[i], value, msg)
		a, err := netip.ParseAddr(value)
		if status == http.StatusBadRequest {
			require.True(t, err != nil || a.Zone() != "", msg)
		} else {
			require.NoError(t, err)
			require.True(t, otherENI(st, id, func(o *model.NetworkInterface) bool { return slices.Contains(o.Addrs(), a.Unmap()) }), msg)
		}
		return
	}
	if i, ok := indexOf(path, "sgIds", len(sent.SgIDs)); ok {
		require.Equal(t, sent.SgIDs[i], value, msg)
		g, known := st.SG(value)
		require.True(t, !known || g.AppID != sent.AppID || slices.Contains(sent.SgIDs[:i], value), msg)
		return
	}
	switch path {
	case "networkInterfaceId":
		require.Equal(t, id, value, msg)
		require.False(t, model.ValidID(id), msg)
	case "appId":
		require.Equal(t, sent.AppID, value, msg)
		_, known := st.Account(value)
		old, existed := st.ENI(id)
		require.True(t, !known || existed && old.AppID != value, msg)
	case "macAddress":
		require.Equal(t, sent.MacAddress, value, msg)
		mac, err := net.ParseMAC(value)
		require.True(t, err != nil || len(mac) != 6, msg)
	case "privateIpAddresses":
		require.Empty(t, sent.PrivateIPAddresses, msg)
	case "sgIds":
		require.Greater(t, len(sent.SgIDs), lim.SGsPerENI, msg)
	case "hostInterface":
		require.Equal(t, sent.HostInterface, value, msg)
		require.Equal(t, http.StatusConflict, status, msg)
		require.True(t, otherENI(st, id, func(o *model.NetworkInterface) bool { return o.HostInterface == value && o.Host == sent.Host }), msg)
	default:
		t.Fatalf("%q names no field of the ENI", msg)
	}
}

// FuzzPutENI sends arbitrary bodies to PUT /sgsim/v1/enis/{id} as the admin. A refusal is a 400 or a
// 409 whose error names where the body went wrong or the field at fault, with its value as sent, and
// changes nothing. What is accepted is a strict ENI object, stored as sent and valid, and answered with
// what was stored.
func FuzzPutENI(f *testing.F) {
	const ok3 = `"appId":"1250000001","privateIpAddresses":["198.18.1.30"]`
	for _, s := range []struct{ id, body string }{
		{"eni-web3", web3},
		{"eni-web3", `{"networkInterfaceId":"eni-web3","appId":"1250000001","macAddress":"02:00:00:00:01:03","privateIpAddresses":["198.18.1.30","2001:db8:1::30"],"sgIds":["sg-web","sg-ssh"],"hostInterface":"sgweb3","host":"h1"}`},
		{"eni-web1", `{"appId":"1250000001","macAddress":"02:00:00:00:01:01","privateIpAddresses":["198.18.1.10","2001:db8:1::10"],"sgIds":["sg-web","sg-ssh"],"hostInterface":"sgweb1"}`},
		{"eni-web1", `{"appId":"1250000001","privateIpAddresses":["198.18.1.12"],"sgIds":["sg-db"]}`},
		{"eni-other", `{` + ok3 + `}`},
		{"eni-web3", `{"networkInterfaceId":"eni-x",` + ok3 + `}`},
		{"eni_3", `{` + ok3 + `}`},
		{"eni-web3", `{"appId":"9","privateIpAddresses":["198.18.1.30"]}`},
		{"eni-web3", `{"macAddress":"02:00:00:00:00",` + ok3 + `}`},
		{"eni-web3", `{"appId":"1250000001","privateIpAddresses":[]}`},
		{"eni-web3", `{"appId":"1250000001","privateIpAddresses":["198.18.1.30","fe80::1%eth0"]}`},
		{"eni-web3", `{"appId":"1250000001","privateIpAddresses":["::ffff:198.18.1.10"]}`},
		{"eni-web3", `{"hostInterface":"sgweb1",` + ok3 + `}`},
		{"eni-web3", `{"sgIds":["sg-web","sg-web"],` + ok3 + `}`},
		{"eni-web3", `{"sgIds":["sg-other"],` + ok3 + `}`},
		{"eni-web3", `{"sgIds":["sg-web","sg-db","sg-ssh","sg-lockdown","sg-preset","sg-x"],` + ok3 + `}`},
		{"eni-web3", web3 + "}"}, {"eni-web3", web3 + "]"}, {"eni-web3", web3 + web3},
		{"eni-web3", `{"APPID":"1250000001","privateIpAddresses":["198.18.1.30"]}`},
		{"eni-web3", `{"appId":"1250000002",` + ok3 + `}`},
		{"eni-web3", `{"appId":1250000001,"privateIpAddresses":["198.18.1.30"]}`},
		{"eni-web3", `{"appId":"1250000001","privateIpAddresses":"198.18.1.30"}`},
		{"eni-web3", `{"sgs":[],` + ok3 + `}`},
		{"eni-web3", `null`}, {"eni-web3", ``}, {"eni-web3", `{"appId":`}, {"eni-web3", `[]`}, {"eni-web3", "{\"appId\":\"\xff\"}"},
	} {
		f.Add(s.id, []byte(s.body))
	}
	st := demoState(f)
	h, ctrl := fuzzHandler(f, st)
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		if id == "" || id == "." || id == ".." || strings.Contains(id, "/") {
			return // no ENI's path: the mux answers (404, or a redirect to the cleaned path)
		}
		before := ctrl.View()
		req := httptest.NewRequest(http.MethodPut, "http://sgsim.test/sgsim/v1/enis/"+url.PathEscape(id), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		if rec.Code != http.StatusOK {
			var out map[string]string
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out), rec.Body.String())
			require.Len(t, out, 1, rec.Body.String())
			require.Contains(t, out, "error")
			require.Same(t, before, ctrl.View(), "a refused PUT changes nothing")
			requireENIRefusal(t, before.State, ctrl.Limits(), id, body, rec.Code, out["error"])
			return
		}
		require.True(t, isObjectOf(body, eniFields()...), "%q accepted", body)
		var sent model.NetworkInterface
		require.NoError(t, json.Unmarshal(body, &sent))
		require.Contains(t, []string{"", id}, sent.NetworkInterfaceID)
		sent.NetworkInterfaceID = id
		if sent.SgIDs == nil {
			sent.SgIDs = []string{}
		}
		view := ctrl.View()
		stored, ok := view.State.ENI(id)
		require.True(t, ok)
		require.Equal(t, exported(&sent), exported(stored))
		requireValidENI(t, view.State, ctrl.Limits(), stored)
		var resp ENIResponse
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &resp))
		require.Equal(t, exported(stored), exported(&resp.NetworkInterface))
		require.Equal(t, view.Generation, resp.Generation)
		if old, existed := before.State.ENI(id); existed && reflect.DeepEqual(exported(old), exported(stored)) {
			require.Same(t, before, view, "the same ENI again changes nothing")
			return
		}
		require.Greater(t, view.Generation, before.Generation)
		h, ctrl = fuzzHandler(t, st) // the next input starts from st again
	})
}

// isFormMediaType tells whether a Content-Type names a form: its media type, before any parameter,
// in any case and without the whitespace around it, is application/x-www-form-urlencoded (RFC 9110
// §8.3.1); none at all is taken for one.
func isFormMediaType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return ct == "" || strings.ToLower(strings.Trim(mt, " \t")) == "application/x-www-form-urlencoded"
}

// otherCharset is the first charset parameter of ct that names neither utf-8 nor us-ascii, if any.
func otherCharset(ct string) (string, bool) {
	_, params, _ := strings.Cut(ct, ";")
	for _, p := range strings.Split(params, ";") {
		if name, v, _ := strings.Cut(p, "="); strings.ToLower(strings.Trim(name, " \t")) == "charset" {
			v = strings.Trim(strings.Trim(v, " \t"), `"`)
			if l := strings.ToLower(v); l != "utf-8" && l != "us-ascii" {
				return v, true
			}
		}
	}
	return "", false
}

// tencentWhere matches how a Tencent refusal starts when it names what was at fault: a parameter, the
// content type, the query string or the form body, the count of parameters, the replay parameters, or
// the path of a field (`ingress[0].cidrIp: …`, `networkInterfaceSet.0.sgIds: …`).
var tencentWhere = regexp.MustCompile(`^(parameter "|content type "|query string: |form body: |read body: |\d+ parameters, at most \d+ allowed$|Timestamp -?\d+ |Nonce \d+ |SecretId |authentication failed: |[A-Za-z][A-Za-z0-9]*(\[\d+\]|\.[A-Za-z0-9]+)*: )`)

// requireTencentEnvelope: body is a Tencent envelope as SPEC §4 has it, and returns its code and
// message: an integer code, a message, codeDesc repeating a non-zero code, nothing but the known keys.
func requireTencentEnvelope(t *testing.T, body []byte) (int, string) {
	t.Helper()
	var env map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(body, &env), "%s", body)
	for k := range env {
		require.Contains(t, []string{"code", "message", "codeDesc", "totalCount", "data", "enforcement"}, k)
	}
	var code int
	var msg, desc string
	require.NoError(t, json.Unmarshal(env["code"], &code), "%s", body)
	require.NoError(t, json.Unmarshal(env["message"], &msg), "%s", body)
	if code == 0 {
		require.NotContains(t, env, "codeDesc")
	} else {
		require.NoError(t, json.Unmarshal(env["codeDesc"], &desc), "%s", body)
		require.Equal(t, strconv.Itoa(code), desc)
	}
	return code, msg
}

// FuzzTencentPost sends POSTs with arbitrary content types, queries and form bodies through the whole
// handler, either as they are or (sign) with the body's parameters signed by account 1 and a fresh
// Nonce. Every answer is HTTP 200 with a well-formed envelope; a content type that is no form's is
// refused, naming it; a refusal names what was at fault and changes nothing; only a signed call succeeds.
func FuzzTencentPost(f *testing.F) {
	for _, s := range []struct {
		ct, query, body string
		sign            bool
	}{
		{"application/x-www-form-urlencoded", "", "Action=DescribeSecurityGroupPolicy&sgId=sg-web", true},
		{"application/x-www-form-urlencoded; charset=latin1", "", "Action=DescribeSecurityGroupPolicy&sgId=sg-web", true},
		{"application/x-www-form-urlencoded; charset=utf-8", "", "Action=ModifySecurityGroupPolicy&sgId=sg-web&ingress.0.action=ACCEPT&ingress.0.cidrIp=10.0.0.0/8&ingress.0.ipProtocol=tcp&ingress.0.portRange=22", true},
		{"Application/X-WWW-Form-Urlencoded", "", "Action=ModifySecurityGroupPolicy&sgId=sg-web&ingress.0.action=NOPE", true},
		{"", "", "Action=CreateSecurityGroup&sgName=fuzz&projectId=3", true},
		{"", "", "Action=DeleteSecurityGroup&sgId=sg-ssh", true},
		{"", "", "Action=ModifySecurityGroupsOfNetworkInterface&networkInterfaceSet.0.networkInterfaceId=eni-web1&networkInterfaceSet.0.sgIds.0=sg-db", true},
		{"", "", "Action=DescribeNetworkInterfaces&limit=51", true},
		{"", "", "Action=DescribeSecurityGroupEx&offset=-1", true},
		{"", "", "Action=ModifySecurityGroupPolicy&sgId=sg-web&ingress.1.action=ACCEPT", true},
		{"", "", "Action=ModifySecurityGroupPolicy&sgId=sg-other&egress.0.action=DROP", true},
		{"application/json", "", `{"Action":"DeleteSecurityGroup"}`, false},
		{"application/x-www-form-urlencodedx", "", "Action=DeleteSecurityGroup&sgId=sg-ssh", true},
		{" application/x-www-form-urlencoded ;", "", "Action=DeleteSecurityGroup&sgId=sg-ssh", false},
		{"text/plain", "Action=DeleteSecurityGroup", "", false},
		{"", "Action=DeleteSecurityGroup&sgId=sg-ssh", "Action=DeleteSecurityGroup&Nonce=1&Timestamp=1700000000", false},
		{"", "%zz", "a;b", false},
		{"", "", "Action=DeleteSecurityGroup&sgId=sg-ssh&Nonce=1&Timestamp=1700000000&SecretId=" + secretID1 + "&Signature=x", false},
	} {
		f.Add(s.ct, s.query, s.body, s.sign)
	}
	st := demoState(f)
	h, ctrl := fuzzHandler(f, st)
	nonce := 0
	const host = "sgsim.test"
	f.Fuzz(func(t *testing.T, ct, query, body string, sign bool) {
		if nonce >= 1<<16 {
			h, ctrl = fuzzHandler(t, st) // Nonces unspent, far below the record's bound per SecretId
			nonce = 0
		}
		if p, err := url.ParseQuery(body); sign && err == nil {
			nonce++
			p.Set("SecretId", secretID1)
			p.Set("Timestamp", strconv.FormatInt(testNow.Unix(), 10))
			p.Set("Nonce", strconv.Itoa(nonce))
			p.Set("SignatureMethod", "HmacSHA256")
			Sign(http.MethodPost, host, p, secretKey1)
			query, body = "", p.Encode()
		} else {
			sign = false
		}
		before := ctrl.View()
		req := httptest.NewRequest(http.MethodPost, "http://"+host+TencentPath, strings.NewReader(body))
		req.URL.RawQuery = query
		req.Header.Set("Content-Type", ct)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		code, msg := requireTencentEnvelope(t, rec.Body.Bytes())
		if !isFormMediaType(ct) {
			require.Equal(t, model.CodeBadParameter, code)
			require.Equal(t, fmt.Sprintf("content type %q: want application/x-www-form-urlencoded", ct), msg)
		} else if cs, other := otherCharset(ct); other {
			require.Equal(t, model.CodeBadParameter, code)
			require.Equal(t, fmt.Sprintf("content type %q: charset %q: a form is read as utf-8", ct, cs), msg)
		}
		if code != 0 {
			require.Same(t, before, ctrl.View(), "a refused call changes nothing")
			require.NotEqual(t, model.CodeInternal, code, msg)
			require.Regexp(t, tencentWhere, msg)
			return
		}
		require.True(t, sign, "unsigned %q succeeded", body)
		if ctrl.View() != before {
			h, ctrl = fuzzHandler(t, st) // the next input starts from st again
			nonce = 0
		}
	})
}
