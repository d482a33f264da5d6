package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const demoTopology = "../../testdata/demo.json"

// runCore runs the sgsim root command with args and returns what it printed.
func runCore(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, _, err := runReplayCLI(t, args...)
	return out, err
}

func checkArgs(eni, dir, proto, remote string, extra ...string) []string {
	return append([]string{"check", "--topology", demoTopology, "--eni", eni, "--direction", dir, "--protocol", proto, "--remote", remote}, extra...)
}

func TestCheckJSON(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want map[string]any
	}{
		{name: "accept by rule", args: checkArgs("eni-web1", "ingress", "tcp", "203.0.113.7", "--port", "80", "--json"),
			want: map[string]any{"verdict": "ACCEPT", "eni": "eni-web1", "direction": "ingress", "sgId": "sg-web", "ruleIndex": 1.0, "reason": "rule",
				"rule": map[string]any{"ipProtocol": "tcp", "cidrIp": "0.0.0.0/0", "portRange": "80", "action": "ACCEPT", "desc": "http"}}},
		{name: "drop by rule index 0", args: checkArgs("eni-web1", "ingress", "tcp", "198.18.66.9", "--port", "80", "--json"),
			want: map[string]any{"verdict": "DROP", "eni": "eni-web1", "direction": "ingress", "sgId": "sg-web", "ruleIndex": 0.0, "reason": "rule",
				"rule": map[string]any{"ipProtocol": "tcp", "cidrIp": "198.18.66.0/24", "portRange": "80-443", "action": "DROP",
					"desc": "blocklisted net, before the allow"}}},
		{name: "lockdown SG first", args: checkArgs("eni-web2", "ingress", "TCP", "198.18.5.1", "--port", "22", "--json"),
			want: map[string]any{"verdict": "DROP", "eni": "eni-web2", "direction": "ingress", "sgId": "sg-lockdown", "ruleIndex": 0.0, "reason": "rule",
				"rule": map[string]any{"ipProtocol": "tcp", "portRange": "22", "action": "DROP", "desc": "no ssh during an incident"}}},
		{name: "default drop", args: checkArgs("eni-db1", "ingress", "tcp", "198.18.3.10", "--port", "5432", "--json"),
			want: map[string]any{"verdict": "DROP", "eni": "eni-db1", "direction": "ingress", "reason": "default-drop"}},
		{name: "egress drop rule", args: checkArgs("eni-db1", "egress", "udp", "198.18.1.10", "--port", "53", "--json"),
			want: map[string]any{"verdict": "DROP", "eni": "eni-db1", "direction": "egress", "sgId": "sg-db", "ruleIndex": 1.0, "reason": "rule",
				"rule": map[string]any{"action": "DROP", "desc": "nothing else leaves the db tier"}}},
		{name: "no sg", args: checkArgs("eni-spare", "ingress", "icmp", "198.18.1.10", "--json"),
			want: map[string]any{"verdict": "DROP", "eni": "eni-spare", "direction": "ingress", "reason": "no-sg"}},
		{name: "the v4 address of a member", args: checkArgs("eni-db1", "ingress", "tcp", "198.18.1.11", "--port", "5432", "--json"),
			want: map[string]any{"verdict": "ACCEPT", "eni": "eni-db1", "direction": "ingress", "sgId": "sg-db", "ruleIndex": 0.0, "reason": "rule",
				"rule": map[string]any{"ipProtocol": "tcp", "sgId": "sg-web", "portRange": "5432", "action": "ACCEPT", "desc": "postgres from the web tier"}}},
		// An IPv4-mapped IPv6 address is an IPv6 packet's on the wire: no IPv4 rule (nor member address)
		// matches it (SPEC §1), as replay decides the same packet as a frame.
		{name: "a v4-mapped remote is IPv6", args: checkArgs("eni-db1", "ingress", "tcp", "::ffff:198.18.1.11", "--port", "5432", "--json"),
			want: map[string]any{"verdict": "DROP", "eni": "eni-db1", "direction": "ingress", "reason": "default-drop"}},
		{name: "a v4-mapped remote takes no icmp rule", args: checkArgs("eni-web1", "ingress", "icmp", "::ffff:203.0.113.7", "--json"),
			want: map[string]any{"verdict": "DROP", "eni": "eni-web1", "direction": "ingress", "reason": "default-drop"}},
		{name: "protocol number", args: checkArgs("eni-other", "Ingress", "47", "198.18.1.10", "--json"),
			want: map[string]any{"verdict": "ACCEPT", "eni": "eni-other", "direction": "ingress", "sgId": "sg-other", "ruleIndex": 0.0, "reason": "rule",
				"rule": map[string]any{"action": "ACCEPT"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCore(t, tc.args...)
			require.NoError(t, err, "any verdict exits 0")
			var got map[string]any
			require.NoError(t, json.Unmarshal([]byte(out), &got), "output: %s", out)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestCheckText(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{args: checkArgs("eni-web1", "ingress", "tcp", "198.18.5.1", "--port", "22"),
			want: []string{"ACCEPT eni-web1 ingress tcp remote 198.18.5.1 port 22", "decided by sg-ssh ingress[0]", `"ssh from the lab"`}},
		{args: checkArgs("eni-db1", "ingress", "tcp", "198.18.3.10", "--port", "5432"),
			want: []string{"DROP   eni-db1 ingress", "default-drop: no rule of eni-db1 matched (3 rules checked)"}},
		{args: checkArgs("eni-spare", "ingress", "icmp", "198.18.1.10"),
			want: []string{"DROP   eni-spare ingress icmp remote 198.18.1.10", "no-sg: eni-spare has no security groups"}},
	}
	for _, tc := range tests {
		out, err := runCore(t, tc.args...)
		require.NoError(t, err)
		for _, w := range tc.want {
			assert.Contains(t, out, w)
		}
	}
}

func TestCheckBadInput(t *testing.T) {
	dir := t.TempDir()
	badTopo := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(badTopo, []byte(`{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","ingress":[{"action":"MAYBE"}]}]}`), 0o600))
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"bad direction", checkArgs("eni-web1", "sideways", "tcp", "198.18.0.1"), []string{"direction", `"sideways"`}},
		{"bad remote", checkArgs("eni-web1", "ingress", "tcp", "198.18.0.300"), []string{"--remote", `"198.18.0.300"`}},
		{"remote is a CIDR", checkArgs("eni-web1", "ingress", "tcp", "198.18.0.0/24"), []string{"--remote"}},
		{"bad protocol", checkArgs("eni-web1", "ingress", "sctp", "198.18.0.1"), []string{"--protocol", `"sctp"`}},
		{"protocol number too big", checkArgs("eni-web1", "ingress", "256", "198.18.0.1"), []string{"--protocol", `"256"`}},
		{"port with icmp", checkArgs("eni-web1", "ingress", "icmp", "198.18.0.1", "--port", "80"), []string{"--port 80", "tcp and udp"}},
		{"port too big", checkArgs("eni-web1", "ingress", "tcp", "198.18.0.1", "--port", "65536"), []string{"--port 65536", "out of range"}},
		{"port negative", checkArgs("eni-web1", "ingress", "tcp", "198.18.0.1", "--port", "-1"), []string{"--port -1"}},
		{"port not a number", checkArgs("eni-web1", "ingress", "tcp", "198.18.0.1", "--port", "http"), []string{"port", "http"}},
		{"unknown eni", checkArgs("eni-nope", "ingress", "tcp", "198.18.0.1"), []string{"--eni", `"eni-nope"`, demoTopology}},
		{"missing flag", []string{"check", "--topology", demoTopology, "--eni", "eni-web1"}, []string{"required flag", "direction", "protocol", "remote"}},
		{"missing topology file", []string{"check", "--topology", filepath.Join(dir, "none.json"), "--eni", "e", "--direction", "ingress", "--protocol", "tcp", "--remote", "198.18.0.1"},
			[]string{"none.json"}},
		{"bad topology file", []string{"check", "--topology", badTopo, "--eni", "e", "--direction", "ingress", "--protocol", "tcp", "--remote", "198.18.0.1"},
			[]string{badTopo, "securityGroups[0].ingress[0].action", `"MAYBE"`}},
		{"stray argument", append(checkArgs("eni-web1", "ingress", "tcp", "198.18.0.1"), "extra"), []string{"extra"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := runCoreFails(t, tc.args, tc.want)
			assert.Equal(t, 2, exitCode(err), "input errors exit 2")
		})
	}
}

func TestCompileJSON(t *testing.T) {
	out, err := runCore(t, "compile", "--topology", demoTopology, "--json")
	require.NoError(t, err)
	var got []struct {
		ENI     string           `json:"eni"`
		SgIDs   []string         `json:"sgIds"`
		Ingress []map[string]any `json:"ingress"`
		Egress  []map[string]any `json:"egress"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	var enis []string
	for _, g := range got {
		enis = append(enis, g.ENI)
		// Every table ends in the one implicit DROP.
		for _, tab := range [][]map[string]any{g.Ingress, g.Egress} {
			require.NotEmpty(t, tab)
			last := tab[len(tab)-1]
			assert.Equal(t, map[string]any{"index": float64(len(tab) - 1), "action": "DROP", "protocol": "all", "remotes": []any{"any"},
				"ports": "all", "implicit": true}, last)
		}
	}
	assert.Equal(t, []string{"eni-web1", "eni-web2", "eni-db1", "b9ac5247-c4ca-4c9b-b8fa-7d19132e560a", "eni-spare", "eni-other"}, enis)

	web2 := got[1]
	assert.Equal(t, []string{"sg-web", "sg-lockdown", "sg-ssh"}, web2.SgIDs)
	require.Len(t, web2.Ingress, 5+1+1+1)
	assert.Equal(t, map[string]any{"index": 5.0, "sgId": "sg-lockdown", "ruleIndex": 0.0, "action": "DROP", "protocol": "tcp",
		"remotes": []any{"any"}, "ports": "22",
		"rule": map[string]any{"ipProtocol": "tcp", "portRange": "22", "action": "DROP", "desc": "no ssh during an incident"}}, web2.Ingress[5])

	// The sgId rule of eni-db1 lists the current members of sg-web, v4 and v6.
	db1 := got[2]
	assert.Equal(t, []any{"198.18.1.10/32", "198.18.1.11/32", "2001:db8:1::10/128"}, db1.Ingress[0]["remotes"])
	assert.Equal(t, "sg-web", db1.Ingress[0]["rule"].(map[string]any)["sgId"])
}

func TestCompileText(t *testing.T) {
	out, err := runCore(t, "compile", "--topology", demoTopology, "--eni", "eni-spare")
	require.NoError(t, err)
	assert.Contains(t, out, "eni-spare  ips 198.18.3.10  sgs [none: drops everything]")
	assert.NotContains(t, out, "eni-web1")

	out, err = runCore(t, "compile", "--topology", demoTopology, "--eni", "eni-db1")
	require.NoError(t, err)
	assert.Contains(t, out, "sg:sg-web = {198.18.1.10/32,198.18.1.11/32,2001:db8:1::10/128}")
	assert.Contains(t, out, "ingress:")
	assert.Contains(t, out, "egress:")
}

func TestCompileBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown eni", []string{"compile", "--topology", demoTopology, "--eni", "eni-nope"}, []string{"--eni", `"eni-nope"`}},
		{"no topology", []string{"compile"}, []string{"required flag", "topology"}},
		{"unknown flag", []string{"compile", "--topology", demoTopology, "--frobnicate"}, []string{"frobnicate"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runCoreFails(t, tc.args, tc.want)
		})
	}
}

func TestCoreCommandsRegistered(t *testing.T) {
	var names []string
	for _, c := range newRootCmd().Commands() {
		names = append(names, c.Name())
	}
	assert.True(t, slices.Contains(names, "check") && slices.Contains(names, "compile"), "commands: %v", names)
}

// runCoreFails runs sgsim with args, which must fail with an error containing every one of want, and
// returns that error.
func runCoreFails(t *testing.T, args, want []string) error {
	t.Helper()
	_, err := runCore(t, args...)
	require.Error(t, err)
	for _, w := range want {
		assert.Contains(t, err.Error(), w)
	}
	return err
}

// TestENIPutFileRefusals: `eni put --file` reads its file as strictly as the server reads the body and
// says at which line:column the file went wrong, before it sends anything (no server listens here).
func TestENIPutFileRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{name: "a number for an address", doc: "{\"appId\": \"A\",\n \"privateIpAddresses\": [\"198.18.1.30\", 7]}",
			want: "line 2:40: privateIpAddresses[1]: expected a string, got a number"},
		{name: "an unknown field", doc: `{"appId": "A", "sgs": []}`, want: `line 1:16: unknown field "sgs"`},
		{name: "a key in another case", doc: `{"APPID": "A"}`, want: `line 1:2: key "APPID": must be written "appId"`},
		{name: "two objects", doc: `{} {}`, want: "line 1:4: trailing data after the JSON value"},
		{name: "another ID", doc: `{"networkInterfaceId": "eni-y", "appId": "A"}`, want: `networkInterfaceId "eni-y" is not the "eni-x" given`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "eni.json")
			require.NoError(t, os.WriteFile(file, []byte(tc.doc), 0o600))
			runCoreFails(t, []string{"eni", "put", "eni-x", "--endpoint", "http://127.0.0.1:1", "--token", "t", "--file", file},
				[]string{"--file " + file + ": " + tc.want})
		})
	}
	file := filepath.Join(t.TempDir(), "eni.json")
	require.NoError(t, os.WriteFile(file, []byte(`{"appId": "A"}`), 0o600))
	runCoreFails(t, []string{"eni", "put", "eni-x", "--endpoint", "http://127.0.0.1:1", "--token", "t", "--file", file, "--ip", "198.18.0.1"},
		[]string{"--file " + file + " and --ip: the file gives the whole ENI"})
}

// TestDiffRefusesAFailedHuaweiCall: a what-if whose Huawei call failed for its ports (HTTP 200, every
// port in fail) is an error, not "no flow changes its verdict".
func TestDiffRefusesAFailedHuaweiCall(t *testing.T) {
	runCoreFails(t, []string{"diff", "--topology", demoTopology, "--pcap", "../../testdata/pcaps/demo.pcap", "--apply", "huawei:sg-web:add:eni-nope"},
		[]string{"--apply huawei:sg-web:add:eni-nope", "1 of 1 ports failed", "VPC.0608"})
}
