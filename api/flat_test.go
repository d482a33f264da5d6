package api

import (
	"maps"
	"net/url"
	"slices"
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
