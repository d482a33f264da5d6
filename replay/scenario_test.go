package replay_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/replay"
)

// TestScenarios runs every scenario in testdata/scenarios: each encodes a SPEC §2/§3 case or a case
// ported from OpenStack Neutron's security group tests.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "scenarios", "*.yaml"))
	require.NoError(t, err)
	jsonFiles, err := filepath.Glob(filepath.Join("..", "testdata", "scenarios", "*.json"))
	require.NoError(t, err)
	for _, f := range jsonFiles {
		if filepath.Base(f) != "lab.json" { // the shared topology, not a scenario
			files = append(files, f)
		}
	}
	require.GreaterOrEqual(t, len(files), 12)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var log strings.Builder
			fails, err := replay.RunScenario(context.Background(), f, &log)
			require.NoError(t, err, log.String())
			assert.Empty(t, fails, log.String())
		})
	}
}

func TestScenarioErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, body, want string }{
		{"no topology", "steps: []\n", "no topology"},
		{"unknown field", "topology: x.json\nbogus: 1\n", "bogus"},
		{"bad verdict", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - packets: [{proto: tcp, src: 198.19.0.1, dst: 198.18.1.10, expect: MAYBE}]\n", "MAYBE"},
		{"bad address", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - packets: [{proto: tcp, src: nope, dst: 198.18.1.10, expect: DROP}]\n", "src \"nope\""},
		{"empty step", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - name: x\n", "empty step"},
	}
	lab, err := filepath.Abs(filepath.Join("..", "testdata", "scenarios", "lab.json"))
	require.NoError(t, err)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "s.yaml")
			body := strings.ReplaceAll(tc.body, "../../main/testdata/scenarios/lab.json", lab)
			require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
			_, err := replay.RunScenario(context.Background(), p, &strings.Builder{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), p)
		})
	}
}

func TestScenarioReportsFailures(t *testing.T) {
	lab, err := filepath.Abs(filepath.Join("..", "testdata", "scenarios", "lab.json"))
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "s.yaml")
	require.NoError(t, os.WriteFile(p, []byte("topology: "+lab+`
steps:
  - packets: [{proto: tcp, src: 198.19.0.1, sport: 1, dst: 198.18.1.10, dport: 22, expect: ACCEPT}]
  - tencent: {action: ModifySecurityGroupPolicy, params: {sgId: sg-nope}}
`), 0o600))
	fails, err := replay.RunScenario(context.Background(), p, &strings.Builder{})
	require.NoError(t, err)
	require.Len(t, fails, 2)
	assert.Contains(t, fails[0], "want ACCEPT, got DROP")
	assert.Contains(t, fails[1], "want code 0")
}
