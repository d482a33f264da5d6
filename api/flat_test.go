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
