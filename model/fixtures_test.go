package model_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

// TestTopologyFixtures loads the bad topology files of testdata/core: each error starts with the file
// name, names the entry and carries the API code.
func TestTopologyFixtures(t *testing.T) {
	tests := []struct {
		file string
		code int // 0: not a validation error (JSON decoding)
		want string
	}{
		{file: "bad-portrange.json", code: model.CodeBadRuleFormat, want: `securityGroups[1].ingress[0].portRange: "80-70": low port above high port`},
		{file: "unknown-field.json", want: `json: unknown field "cidr"`},
		{file: "syntax.json", want: "line 4:64: invalid character '}'"},
		{file: "sgref-other-project.json", code: model.CodeBadRuleFormat, want: `securityGroups[1].ingress[0].sgId: "sg-p1": security group is in project 1, not 0`},
		{file: "eni-other-account.json", code: model.CodeNotOwner, want: `networkInterfaces[0].sgIds[0]: "sg-b": security group belongs to another account`},
		{file: "eni-unknown-sg.json", code: model.CodeNotFound, want: `networkInterfaces[0].sgIds[0]: "sg-missing": no such security group`},
		{file: "desc-51.json", code: model.CodeBadRuleFormat, want: "securityGroups[0].ingress[1].desc: 51 characters, at most 50 allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("..", "testdata", "core", tc.file)
			_, err := model.LoadTopologyFile(path)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), path+": "), "error %q does not start with the file name", err)
			assert.Contains(t, err.Error(), tc.want)
			if tc.code != 0 {
				assert.Equal(t, tc.code, model.CodeOf(err))
			}
		})
	}
}

// FuzzParseTopology checks that any document either loads, and then survives the persisted round trip
// unchanged, or is refused with an error that names the file.
func FuzzParseTopology(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","ingress":[{"sgId":"sg-a","action":"ACCEPT"}],"egress":[{"ipProtocol":"tcp","cidrIp":"10.1.2.3/8","portRange":"80-81","action":"drop"}]}],"networkInterfaces":[{"networkInterfaceId":"eni-1","appId":"A","macAddress":"02:00:00:00:00:01","privateIpAddresses":["198.18.0.1","2001:db8::1"],"sgIds":["sg-a"]}]}`,
		`{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","projectId":"x"}]}`,
		`{"accounts":[{"appId":"A"}],"networkInterfaces":[{"networkInterfaceId":"e","appId":"A","privateIpAddresses":[]}]}`,
		"{\n\"accounts\": [,]}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := model.ParseTopology("fuzz.json", data)
		if err != nil {
			require.True(t, strings.HasPrefix(err.Error(), "fuzz.json: "), "error %q names no file", err)
			return
		}
		b, err := json.Marshal(s.Topology())
		require.NoError(t, err)
		again, err := model.ParseTopology("again.json", b)
		require.NoError(t, err, "persisted form %s of an accepted topology is refused", b)
		assert.Equal(t, s.Topology(), again.Topology())
	})
}

// FuzzParsePortRange checks the port parser against its definition: "N" or "N-M", decimal, 1 ≤ N ≤ M ≤ 65535.
func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"80", "1-65535", "0", "65536", "80-", "-80", " 80", "80-70", "00080", "+1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := model.ParsePortRange(s)
		if err != nil {
			assert.Equal(t, model.CodeBadRuleFormat, model.CodeOf(err))
			assert.Contains(t, err.Error(), "portRange")
			return
		}
		assert.True(t, r.Lo >= 1 && r.Lo <= r.Hi, "accepted %q as %+v", s, r)
		lo, hi, _ := strings.Cut(s, "-")
		for _, part := range []string{lo, hi} {
			assert.Equal(t, "", strings.Trim(part, "0123456789"), "accepted non-digits in %q", s)
		}
		again, err := model.ParsePortRange(r.String())
		require.NoError(t, err)
		assert.Equal(t, r, again)
	})
}

// FuzzParseCIDR checks that accepted CIDRs are masked and reparse to themselves.
func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.1.2.3/8", "10.0.0.1", "::1", "2001:db8::1/129", "10.0.0.0/33", "fe80::1%eth0", "::ffff:1.2.3.4/100"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := model.ParseCIDR(s)
		if err != nil {
			assert.Equal(t, model.CodeBadRuleFormat, model.CodeOf(err))
			assert.Contains(t, err.Error(), "cidrIp")
			return
		}
		assert.Equal(t, p.Masked(), p)
		assert.Empty(t, p.Addr().Zone())
		again, err := model.ParseCIDR(p.String())
		require.NoError(t, err)
		assert.Equal(t, p, again)
	})
}
