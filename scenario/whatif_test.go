package scenario_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/scenario"
)

func TestParseCall(t *testing.T) {
	tests := []struct{ in, err string }{
		{"tencent:ModifySecurityGroupPolicy?sgId=sg-web&ingress.0.action=ACCEPT", ""},
		{"huawei:sg-web:add:eni-a,eni-b", ""},
		{"tencent:?x=1", "no Action"},
		{"tencent:A?x=1&x=2", "2 times"},
		{"huawei:sg-web:add", "want huawei"},
		{"aws:Foo", "unknown dialect"},
		{"nothing", "want tencent"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			s, err := scenario.ParseCall(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.True(t, s.Tencent != nil || s.Huawei != nil)
		})
	}
}

func TestDiffDemo(t *testing.T) {
	calls := []string{
		"tencent:ModifySecurityGroupsOfNetworkInterface?networkInterfaceSet.0.networkInterfaceId=eni-web2&networkInterfaceSet.0.sgIds.0=sg-web&networkInterfaceSet.0.sgIds.1=sg-ssh",
		"tencent:ModifySecurityGroupPolicy?sgId=sg-web&ingress.0.ipProtocol=tcp&ingress.0.portRange=443&ingress.0.action=ACCEPT&egress.0.action=ACCEPT",
	}
	var steps []scenario.Step
	for _, c := range calls {
		s, err := scenario.ParseCall(c)
		require.NoError(t, err)
		steps = append(steps, s)
	}
	changes, err := scenario.Diff(context.Background(), filepath.Join("..", "testdata", "demo.json"),
		[]string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")}, steps, false, &strings.Builder{})
	require.NoError(t, err)
	got := map[string]string{}
	for _, c := range changes {
		got[c.Flow] = c.Before.String() + " (" + c.BeforeBy + ") -> " + c.After.String() + " (" + c.AfterBy + ")"
	}
	assert.Equal(t, map[string]string{
		"tcp 198.19.5.7:40000 > 198.18.1.10:80":            "ACCEPT (eni-web1 ingress ACCEPT sg-web rule 1) -> DROP (eni-web1 ingress DROP default-drop)",
		"tcp 198.19.5.7:40400 > 198.18.1.11:22":            "DROP (eni-web2 ingress DROP sg-lockdown rule 0) -> ACCEPT (eni-web2 ingress ACCEPT sg-ssh rule 0)",
		"icmp 198.19.5.7 > 198.18.1.10 type 8 code 0":      "ACCEPT (eni-web1 ingress ACCEPT sg-web rule 4) -> DROP (eni-web1 ingress DROP default-drop)",
		"tcp [2001:db8:ff::7]:40600 > [2001:db8:1::10]:80": "ACCEPT (eni-web1 ingress ACCEPT sg-web rule 3) -> DROP (eni-web1 ingress DROP default-drop)",
	}, got)

	bad, err := scenario.ParseCall("tencent:ModifySecurityGroupPolicy?sgId=sg-nope")
	require.NoError(t, err)
	_, err = scenario.Diff(context.Background(), filepath.Join("..", "testdata", "demo.json"),
		[]string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")}, []scenario.Step{bad}, false, &strings.Builder{})
	require.ErrorContains(t, err, "want code 0")
}
