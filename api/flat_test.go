package api

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFormMatchesURLValues: a form holds exactly what url.ParseQuery makes of the same pairs, whatever
// their order and repetitions, and signs the same string.
func TestFormMatchesURLValues(t *testing.T) {
	for _, q := range []string{
		"",
		"a=1",
		"a=1&b=2&c=3",
		"c=3&a=1&b=2",
		"b=2&a=1&b=1&a=3&a=2",
		"Signature=x&Action=A&Nonce=1&Signature=y",
		"ingress.10.action=ACCEPT&ingress.1.action=DROP&ingress.1=x&ingress.1.cidrIp=10.0.0.0%2F8",
		"x_y=1&x.y=2&x=0",
		"a+b=c+d&%41=%42&sp=%20+x",
	} {
		t.Run(q, func(t *testing.T) {
			want, err := url.ParseQuery(q)
			require.NoError(t, err)
			f := &form{}
			require.NoError(t, parseForm(q, f, 100))
			f.done()
			names := slices.Sorted(maps.Keys(want))
			require.Equal(t, len(names), len(f.names))
			for i, k := range names {
				require.Equal(t, k, f.names[i])
				require.Equal(t, want[k], f.values(i))
				require.Equal(t, want.Get(k), f.get(k))
			}
			require.Empty(t, f.get("absent"))
			require.Equal(t, StringToSign("GET", "h", want), stringToSign("GET", "h", f))
			for _, m := range []string{"HmacSHA256", "HmacSHA1"} {
				require.Equal(t, SignString(StringToSign("POST", "h", want), "key", m), signForm("POST", "h", f, "key", m))
			}
		})
	}
}

// TestParseFormErrors: bad escapes fail as url.ParseQuery fails; a semicolon names its pair.
func TestParseFormErrors(t *testing.T) {
	for _, q := range []string{"%zz=1", "a=%z", "a=1&b=%4"} {
		_, want := url.ParseQuery(q)
		require.Error(t, want)
		require.EqualError(t, parseForm(q, &form{}, 100), want.Error(), q)
	}
	require.EqualError(t, parseForm("a=1&b=2;c=3", &form{}, 100), `invalid semicolon separator in "b=2;c=3"`)
	require.EqualError(t, parseForm("a=1&b=2&c", &form{}, 2), "3 parameters, at most 2 allowed")
}

// TestDecodeModifyPolicyMatchesTree: the tree-less decoder takes well-formed ModifySecurityGroupPolicy
// calls, decoding them as the tree does, and leaves every other shape to the tree.
func TestDecodeModifyPolicyMatchesTree(t *testing.T) {
	const pub = "Action=ModifySecurityGroupPolicy&Timestamp=1&Nonce=2&SecretId=a&Signature=b&SignatureMethod=HmacSHA256&Region=r"
	for q, fast := range map[string]bool{
		pub + "&sgId=sg-1": true,
		pub + "&sgId=sg-1&Token=t&RequestClient=SDK_GO_1.3.211&Language=zh-CN&Version=2017-03-12":                   true,
		pub + "&sgId=sg-1&Token=&RequestClient=&Language=&Version=&ingress.0.action=ACCEPT":                         true,
		pub + "&sgId=sg-1&ingress.0.action=ACCEPT&ingress.1.cidrIp=10.0.0.0%2F8&ingress.1.desc=&egress.0.sgId=sg-2": true,
		pub + "&sgId=sg-1&" + rulesQuery("ingress", 12) + "&" + rulesQuery("egress", 101):                           true,
		strings.Replace(pub, "Region=r", "Region=", 1) + "&sgId=sg-1":                                               true,
		pub + "&sgId=sg-1&ingress.1.action=ACCEPT":                                                                  false, // not dense
		pub + "&sgId=sg-1&ingress.0.action=ACCEPT&ingress.00.action=DROP":                                           false, // not an index
		pub + "&sgId=sg-1&ingress.0.action=ACCEPT&ingress.0.action=DROP":                                            false, // twice
		pub + "&sgId=sg-1&ingress.0.bogus=1":                                                                        false,
		pub + "&sgId=sg-1&ingress.0=1":                                                                              false,
		pub + "&sgId=sg-1&ingress=1":                                                                                false,
		pub + "&sgId=sg-1&ingress.0.action.x=1":                                                                     false,
		pub + "&sgId=sg-1&other=1":                                                                                  false,
		pub + "&sgId=sg-1&networkInterfaceSet.0.sgIds.0=sg-1":                                                       false,
		pub + "&sgId=": false,
		pub:            false,
		"Action=ModifySecurityGroupPolicy&Timestamp=x&Nonce=2&sgId=sg-1": false,
		"Action=ModifySecurityGroupPolicy&Timestamp=1&sgId=sg-1":         false,
		"Action=DeleteSecurityGroup&Timestamp=1&Nonce=2&sgId=sg-1":       false,
	} {
		t.Run(q, func(t *testing.T) {
			params, err := url.ParseQuery(q)
			require.NoError(t, err)
			f := formOf(params)
			got, ok := decodeModifyPolicy(f)
			require.Equal(t, fast, ok)
			if ok {
				want, err := decodeTencentTree(f)
				require.NoError(t, err)
				require.Equal(t, want, got)
			}
		})
	}
}

// rulesQuery is n rules of list dir, each with every field.
func rulesQuery(dir string, n int) string {
	var b strings.Builder
	for i := range n {
		for _, f := range ruleFields {
			fmt.Fprintf(&b, "&%s.%d.%s=%s%d", dir, i, f, f, i)
		}
	}
	return b.String()[1:]
}
