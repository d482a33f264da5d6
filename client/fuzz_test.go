package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/model"
)

// envelopeCode reads body as encoding/json reads a Tencent envelope into {code *int, message string}:
// a JSON object whose last member named "code" in any case holds an integer, and whose members named
// "message" hold strings (or null). false when it is no envelope.
func envelopeCode(body []byte) (int, bool) {
	if !json.Valid(body) {
		return 0, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return 0, false
	}
	var code *int
	for dec.More() {
		tok, _ := dec.Token()
		k, _ := tok.(string)
		var raw json.RawMessage
		if dec.Decode(&raw) != nil {
			return 0, false
		}
		switch {
		case strings.EqualFold(k, "code") && string(raw) == "null":
			code = nil
		case strings.EqualFold(k, "code"):
			n, err := strconv.Atoi(string(raw))
			if err != nil {
				return 0, false
			}
			code = &n
		case strings.EqualFold(k, "message") && raw[0] != '"' && string(raw) != "null":
			return 0, false
		}
	}
	if code == nil {
		return 0, false
	}
	return *code, true
}

// runePrefix is s up to its n-th rune, an invalid byte counting as one (as %.ns cuts).
func runePrefix(s []byte, n int) []byte {
	i := 0
	for ; n > 0 && i < len(s); n-- {
		_, size := utf8.DecodeRune(s[i:])
		i += size
	}
	return s[:i]
}

// tencentEnvelope is the server's v2 envelope as it writes it (api's tencentResponse, unexported).
type tencentEnvelope struct {
	Code       int    `json:"code"`
	Message    string `json:"message"`
	CodeDesc   string `json:"codeDesc,omitempty"`
	TotalCount *int   `json:"totalCount,omitempty"`
	Data       any    `json:"data,omitempty"`
}

// FuzzParseTencent: an answer is read as an envelope exactly when it is a JSON object with an integer
// "code" (and a string "message", if any): the code is that integer, the body and status kept as they
// came. Anything else is ErrNotEnvelope, naming the action and quoting the body's first 200
// characters. An envelope the server encodes from any code and message reads back as those.
func FuzzParseTencent(f *testing.F) {
	for _, s := range []struct {
		action  string
		status  int
		body    string
		code    int
		message string
	}{
		{"DescribeSecurityGroupPolicy", 200, `{"code":0,"message":"","data":{"ingress":[],"egress":[]}}` + "\n", 0, ""},
		{"ModifySecurityGroupPolicy", 200, `{"code":4000,"message":"parameter \"sgId\" is required","codeDesc":"4000"}`, 4000, `parameter "sgId" is required`},
		{"X", 418, "teapot\n", 9003, "parameter \"ingress.0\" must be a rule (ingress.0.action, …)"},
		{"X", 200, `{"code":null,"message":"x"}`, -1, "\xff<&>"},
		{"X", 200, `{"code":1.5}`, 1 << 40, ""},
		{"X", 200, `{"code":1,"message":5}`, 0, ""},
		{"X", 200, `{"CODE":7,"Message":"m"}`, 0, ""},
		{"X", 200, `{"code":1,"code":2}`, 0, ""},
		{"X", 200, `{"code":1} trailing`, 0, ""},
		{"X", 502, `[{"code":0}]`, 0, ""}, {"X", 0, ``, 0, ""}, {"X", 200, `null`, 0, ""},
		{"X", 500, strings.Repeat("é", 300), 0, ""},
	} {
		f.Add(s.action, s.status, []byte(s.body), s.code, s.message)
	}
	f.Fuzz(func(t *testing.T, action string, status int, body []byte, code int, message string) {
		resp, err := parseTencent(action, status, body)
		require.NotNil(t, resp)
		require.Equal(t, status, resp.Status)
		require.Equal(t, body, resp.Body)
		want, isEnvelope := envelopeCode(body)
		if err != nil {
			require.ErrorIs(t, err, ErrNotEnvelope)
			require.False(t, isEnvelope, "%q is an envelope", body)
			require.EqualError(t, err, fmt.Sprintf("tencent %s: %v: %s", action, ErrNotEnvelope, runePrefix(body, 200)))
			return
		}
		require.True(t, isEnvelope, "%q read as an envelope", body)
		require.Equal(t, want, resp.Code)
		require.Equal(t, resp.Code == 0, resp.OK())
		if resp.OK() {
			require.NoError(t, resp.Err())
		} else {
			require.EqualError(t, resp.Err(), fmt.Sprintf("code %d: %s", resp.Code, resp.Message))
		}

		// What the server writes (writeJSON: json.Encoder, one line) reads back as it was sent, a
		// message's invalid UTF-8 as the encoder replaces it.
		env := tencentEnvelope{Code: code, Message: message}
		if code != 0 {
			env.CodeDesc = strconv.Itoa(code)
		}
		var buf bytes.Buffer
		require.NoError(t, json.NewEncoder(&buf).Encode(env))
		resp, err = parseTencent(action, status, buf.Bytes())
		require.NoError(t, err, "%s", buf.Bytes())
		require.Equal(t, code, resp.Code)
		require.Equal(t, string([]rune(message)), resp.Message)
		require.Equal(t, buf.Bytes(), resp.Body)
	})
}

// FuzzDecodeENI: an answer that is no JSON object of the ENI's shape is an error that says it was the
// ENI's decoding and why (the field whose value has the wrong type); what decodes re-encodes to itself;
// an ENIResponse the server encodes from any fields reads back as those fields. An error of the call
// itself comes back as it is.
func FuzzDecodeENI(f *testing.F) {
	for _, s := range []struct {
		raw                                  string
		id, app, mac, ips, sgs, ifname, host string
		attached                             bool
		ifindex                              int
		tableGeneration                      uint64
	}{
		{`{"networkInterfaceId":"eni-web3","appId":"1250000001","privateIpAddresses":["198.18.1.30"],"sgIds":["sg-web"],"hostInterface":"sgweb3","attached":true,"ifindex":7,"generation":2,"tableGeneration":2}`,
			"eni-web3", "1250000001", "02:00:00:00:01:03", "198.18.1.30,2001:db8::30", "sg-web,sg-ssh", "sgweb3", "h1", true, 7, 2},
		{`{"networkInterfaceId":1}`, "", "", "", "", "", "", "", false, 0, 0},
		{`{"privateIpAddresses":"198.18.1.30"}`, "\xff", "<&>", "", ",", "", "", "", false, -1, 1 << 63},
		{`{"attached":"yes"}`, "", "", "", "", "", "", "", false, 0, 0},
		{`{"sgIds":null,"ifindex":1e3}`, "", "", "", "", "", "", "", false, 0, 0},
		{`[]`, "", "", "", "", "", "", "", false, 0, 0}, {`null`, "", "", "", "", "", "", "", false, 0, 0},
		{`{"appId":`, "", "", "", "", "", "", "", false, 0, 0}, {``, "", "", "", "", "", "", "", false, 0, 0},
		{`{"APPID":"x","unknown":[1,{}]}`, "", "", "", "", "", "", "", false, 0, 0},
	} {
		f.Add([]byte(s.raw), s.id, s.app, s.mac, s.ips, s.sgs, s.ifname, s.host, s.attached, s.ifindex, s.tableGeneration)
	}
	callErr := errors.New("GET /sgsim/v1/enis/x: HTTP 404: no such network interface")
	f.Fuzz(func(t *testing.T, raw []byte, id, app, mac, ips, sgs, ifname, host string, attached bool, ifindex int, tableGeneration uint64) {
		e, err := decodeENI(raw, callErr)
		require.Nil(t, e)
		require.Same(t, callErr, err)

		e, err = decodeENI(raw, nil)
		if err != nil {
			require.Nil(t, e)
			var syntax *json.SyntaxError
			var typeErr *json.UnmarshalTypeError
			switch {
			case errors.As(err, &syntax):
				require.False(t, json.Valid(raw))
				require.EqualError(t, err, "decode ENI: "+syntax.Error())
			case errors.As(err, &typeErr):
				require.True(t, json.Valid(raw))
				require.EqualError(t, err, "decode ENI: "+typeErr.Error())
				if typeErr.Field != "" {
					require.Contains(t, err.Error(), "."+typeErr.Field+" of type")
				}
			default:
				t.Fatalf("%q: %v is no JSON error", raw, err)
			}
			return
		}
		require.True(t, json.Valid(raw))
		again, err := json.Marshal(e)
		require.NoError(t, err)
		e2, err := decodeENI(again, nil)
		require.NoError(t, err, "%s", again)
		require.Equal(t, e, e2)

		list := func(s string) []string {
			if s == "" {
				return []string{}
			}
			return strings.Split(s, ",")
		}
		sent := api.ENIResponse{NetworkInterface: model.NetworkInterface{NetworkInterfaceID: id, AppID: app, MacAddress: mac,
			PrivateIPAddresses: list(ips), SgIDs: list(sgs), HostInterface: ifname, Host: host},
			Attached: &attached, Ifindex: ifindex, Generation: tableGeneration + 1, TableGeneration: tableGeneration}
		var buf bytes.Buffer
		require.NoError(t, json.NewEncoder(&buf).Encode(sent)) // as the server's writeJSON
		got, err := decodeENI(buf.Bytes(), nil)
		require.NoError(t, err, "%s", buf.Bytes())
		valid := func(s string) string { return string([]rune(s)) } // the encoder's replacement of invalid UTF-8
		validList := func(l []string) []string {
			out := make([]string, len(l))
			for i, s := range l {
				out[i] = valid(s)
			}
			return out
		}
		require.Equal(t, ENI{ENISpec: ENISpec{NetworkInterfaceID: valid(id), AppID: valid(app), MacAddress: valid(mac),
			PrivateIPAddresses: validList(list(ips)), SgIDs: validList(list(sgs)), HostInterface: valid(ifname), Host: valid(host)},
			Attached: &attached, Ifindex: ifindex, TableGeneration: tableGeneration}, *got)
	})
}
