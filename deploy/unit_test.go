package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const unitFile = "sgsim.service"

// installedBinary is where the unit expects sgsim.
const installedBinary = "/usr/local/bin/sgsim"

// systemdAnalyze runs systemd-analyze (package systemd) and returns its combined output.
func systemdAnalyze(t *testing.T, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("systemd-analyze")
	require.NoError(t, err, "systemd-analyze is needed to check the unit: apt-get install systemd")
	out, err := exec.Command(path, args...).CombinedOutput()
	return string(out), err
}

// unitFor writes the unit into a fresh directory with ExecStart pointing at binary (systemd-analyze
// verify checks that the program exists) and returns its path.
func unitFor(t *testing.T, unit, binary string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), unitFile)
	require.NoError(t, os.WriteFile(p, []byte(strings.ReplaceAll(unit, installedBinary, binary)), 0o644))
	return p
}

// TestUnit: the unit passes systemd-analyze verify without a single warning, runs sgsim serve with the
// eBPF dataplane, state under /var/lib/sgsim, restart on failure and only the capabilities the program
// needs, with flags sgsim serve accepts; its sandboxing rates at most 3.0 in systemd-analyze security.
func TestUnit(t *testing.T) {
	raw, err := os.ReadFile(unitFile)
	require.NoError(t, err)
	unit := string(raw)

	for _, want := range []string{
		"ExecStart=" + installedBinary + " serve --dataplane ebpf ",
		" --data-dir /var/lib/sgsim ",
		"\nStateDirectory=sgsim\n",
		"\nRestart=on-failure\n",
		"\nCapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON\n",
		"\nNoNewPrivileges=yes\n",
	} {
		assert.Contains(t, unit, want)
	}
	assert.NotContains(t, unit, "CAP_SYS_ADMIN\n", "not needed: see the unit's comment")

	bin := buildSgsim(t)

	t.Run("verify", func(t *testing.T) {
		out, err := systemdAnalyze(t, "verify", unitFor(t, unit, bin))
		require.NoError(t, err, out)
		assert.Empty(t, strings.TrimSpace(out), "systemd-analyze verify warns")
	})
	t.Run("verify catches a mistake", func(t *testing.T) {
		out, _ := systemdAnalyze(t, "verify", unitFor(t, strings.Replace(unit, "Restart=", "Restrat=", 1), bin))
		assert.Contains(t, out, "Unknown key 'Restrat'")
	})
	t.Run("flags", func(t *testing.T) {
		line := regexp.MustCompile(`(?m)^ExecStart=(\S+) (.*)$`).FindStringSubmatch(unit)
		require.NotNil(t, line)
		cmd := exec.Command(bin, append(strings.Fields(line[2]), "--help")...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Run(), "sgsim refuses the unit's arguments: %s", stderr.String())
	})
	t.Run("security", func(t *testing.T) {
		out, err := systemdAnalyze(t, "security", "--offline=true", unitFor(t, unit, bin))
		require.NoError(t, err, out)
		m := regexp.MustCompile(`Overall exposure level for sgsim\.service: ([0-9.]+)`).FindStringSubmatch(out)
		require.NotNil(t, m, out)
		level, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		t.Logf("systemd-analyze security: exposure %.1f", level)
		assert.LessOrEqual(t, level, 3.0)
	})
}
