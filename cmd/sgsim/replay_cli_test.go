package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

const demoPcap = "../../testdata/pcaps/demo.pcap"

func TestReplayJSON(t *testing.T) {
	out, err := runCore(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--json")
	require.NoError(t, err)
	sc := bufio.NewScanner(strings.NewReader(out))
	n := 0
	for sc.Scan() {
		var obj struct {
			Index   int    `json:"index"`
			Verdict string `json:"verdict"`
			Checks  []map[string]any
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &obj), sc.Text())
		assert.Equal(t, n, obj.Index)
		assert.Contains(t, []string{"ACCEPT", "DROP", "UNMANAGED"}, obj.Verdict)
		n++
	}
	assert.Equal(t, 20, n)
}

func TestReplayExpectExitCode(t *testing.T) {
	_, err := runCore(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--expect", "../../testdata/pcaps/demo.expect.yaml")
	require.NoError(t, err)

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("- {index: 3, verdict: ACCEPT}\n"), 0o600))
	_, err = runCore(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--expect", bad)
	var ee *exitError
	require.True(t, errors.As(err, &ee), "%v", err)
	assert.Equal(t, 1, ee.code)
}

func TestReplayBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no state", []string{"replay", "--pcap", demoPcap}, "--topology"},
		{"both", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--data-dir", "x"}, "not both"},
		{"direction without eni", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--direction", "ingress"}, "--direction needs --eni"},
		{"bad direction", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--eni", "eni-web1", "--direction", "up"}, "--direction"},
		{"unknown eni", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--eni", "eni-x", "--direction", "ingress"}, "eni-x"},
		{"missing pcap", []string{"replay", "--pcap", "nope.pcap", "--topology", demoTopology}, "nope.pcap"},
		{"corrupt pcap", []string{"replay", "--pcap", demoTopology, "--topology", demoTopology}, "demo.json"},
		{"bad expect", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--expect", demoTopology}, "demo.json"},
		{"bad engine", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--engine", "gpu"}, `--engine "gpu": want go, ebpf or both`},
		{"stateless ebpf", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--engine", "ebpf", "--stateless"}, "--stateless works with --engine go only"},
		{"stateless both", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--engine", "both", "--stateless"}, "--stateless works with --engine go only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCore(t, tc.args...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestReplayDataDir(t *testing.T) {
	dir := t.TempDir()
	st, err := model.LoadTopologyFile(demoTopology)
	require.NoError(t, err)
	db, err := store.OpenBolt(filepath.Join(dir, store.DBFile))
	require.NoError(t, err)
	require.NoError(t, db.Commit(context.Background(), st, 3))
	require.NoError(t, db.Close())
	out, err := runCore(t, "replay", "--data-dir", dir, "--pcap", demoPcap)
	require.NoError(t, err)
	assert.Contains(t, out, "20 packets: 12 accepted, 7 dropped, 1 unmanaged")
}

func TestScenarioAndDiffCommands(t *testing.T) {
	out, err := runCore(t, "scenario", "../../testdata/scenarios/neutron-icmp-related.yaml")
	require.NoError(t, err)
	assert.Contains(t, out, ": ok")
	out, err = runCore(t, "diff", "--topology", demoTopology, "--pcap", demoPcap, "--apply", "huawei:sg-lockdown:remove:eni-web2")
	require.NoError(t, err)
	assert.Contains(t, out, "1 flow(s) change verdict")
	assert.Contains(t, out, "sg-lockdown rule 0")
	_, err = runCore(t, "diff", "--topology", demoTopology, "--pcap", demoPcap, "--apply", "bogus")
	require.ErrorContains(t, err, "--apply")
}

// TestScenarioEngines: sgsim scenario --engine prints the same narration under every engine (the
// kernel engines need root), and refuses an unknown one.
func TestScenarioEngines(t *testing.T) {
	const file = "../../testdata/scenarios/spec3-timeouts.yaml"
	goOut, err := runCore(t, "scenario", file)
	require.NoError(t, err)
	_, err = runCore(t, "scenario", "--engine", "bogus", file)
	require.ErrorContains(t, err, `--engine "bogus"`)
	kernelOrSkip(t)
	for _, engine := range []string{"ebpf", "both"} {
		out, err := runCore(t, "scenario", "--engine", engine, file)
		require.NoError(t, err, out)
		assert.Equal(t, goOut, out, engine)
	}
}
