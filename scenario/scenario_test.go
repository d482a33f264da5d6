package scenario_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/scenario"
)

// scenarioFiles lists every scenario in testdata/scenarios: each encodes a SPEC §2/§3 case or a case
// ported from OpenStack Neutron's security group tests.
func scenarioFiles(t *testing.T) []string {
	t.Helper()
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
	return files
}

// kernelOrSkip skips when this process cannot load BPF programs at all (not root, or a kernel without
// the feature), and fails under SGSIM_REQUIRE_KERNEL=1; any other load error, a verifier rejection
// included, fails.
func kernelOrSkip(t *testing.T) {
	t.Helper()
	d, err := bpf.Load(bpf.Options{})
	if err == nil {
		require.NoError(t, d.Close())
		return
	}
	if os.Geteuid() == 0 && !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("load the BPF program: %v", err)
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		t.Fatalf("load the BPF program: %v", err)
	}
	t.Skipf("cannot load the BPF program here: %v", err)
}

// TestScenarios runs every scenario under each engine: the Go classifier, the eBPF program alone, and
// both compared check by check (a disagreement fails the scenario).
func TestScenarios(t *testing.T) {
	files := scenarioFiles(t)
	for _, engine := range []string{"go", "ebpf", "both"} {
		t.Run(engine, func(t *testing.T) {
			if engine != "go" {
				kernelOrSkip(t)
			}
			for _, f := range files {
				t.Run(filepath.Base(f), func(t *testing.T) {
					var log strings.Builder
					fails, err := scenario.Run(context.Background(), f, &log, scenario.Options{Engine: engine})
					require.NoError(t, err, log.String())
					assert.Empty(t, fails, log.String())
				})
			}
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
			_, err := scenario.Run(context.Background(), p, &strings.Builder{}, scenario.Options{})
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
	fails, err := scenario.Run(context.Background(), p, &strings.Builder{}, scenario.Options{})
	require.NoError(t, err)
	require.Len(t, fails, 2)
	assert.Contains(t, fails[0], "want ACCEPT, got DROP")
	assert.Contains(t, fails[1], "want code 0")
}
