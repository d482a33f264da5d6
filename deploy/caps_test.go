package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/netlab"
)

// TestUnitCapabilities: sgsim serve --dataplane ebpf starts (loads, pins and attaches the TC program
// to a veth of a namespace the test creates) with exactly the unit's CapabilityBoundingSet, starts
// again adopting what it pinned, and fails to start without any one of them: the set is what it needs
// and no more.
func TestUnitCapabilities(t *testing.T) {
	fail := t.Skipf
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("loading the TC program needs root")
	}
	for _, tool := range []string{"ip", "nsenter", "setpriv"} {
		_, err := exec.LookPath(tool)
		require.NoError(t, err, "%s (iproute2, util-linux) is needed", tool)
	}
	raw, err := os.ReadFile(unitFile)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.*)$`).FindStringSubmatch(string(raw))
	require.NotNil(t, m)
	caps := strings.Fields(m[1])
	require.NotEmpty(t, caps)

	lab := netlab.New(t, "sgsdep")
	lab.AddVM("eni-1", "sgsd-h", "198.18.251.1")
	topo := filepath.Join(t.TempDir(), "topology.json")
	require.NoError(t, os.WriteFile(topo, []byte(`{"accounts":[{"appId":"1"}],
 "securityGroups":[{"sgId":"sg-1","appId":"1","ingress":[{"action":"ACCEPT"}],"egress":[]}],
 "networkInterfaces":[{"networkInterfaceId":"eni-1","appId":"1","privateIpAddresses":["198.18.251.1"],"sgIds":["sg-1"],"hostInterface":"sgsd-h"}]}`), 0o600))
	bin := buildSgsim(t)
	pin := fmt.Sprintf("/sys/fs/bpf/sgsim-deploy-test-%d", os.Getpid())
	t.Cleanup(func() { _ = os.RemoveAll(pin) })
	dataDir := t.TempDir()

	// serve runs the daemon with only the given capabilities; it reports whether it came to serve (and
	// then stops it with SIGTERM, as systemd does) and what it printed.
	serve := func(with []string) (bool, string) {
		set := "-all"
		for _, c := range with {
			set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+lab.Host, "setpriv", "--reuid=0",
			"--inh-caps="+set, "--ambient-caps="+set, "--bounding-set="+set,
			bin, "serve", "--dataplane", "ebpf", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--topology", topo, "--pin-path", pin)
		stderr, err := cmd.StderrPipe()
		require.NoError(t, err)
		cmd.Stdout = cmd.Stderr
		require.NoError(t, cmd.Start())
		var log strings.Builder
		served := false
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "INFO serving") {
				served = true
				require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			}
		}
		err = cmd.Wait()
		if served {
			assert.NoError(t, err, "stopped by SIGTERM: %s", log.String())
		}
		return served, log.String()
	}

	ok, out := serve(caps)
	require.True(t, ok, "with %v: %s", caps, out)
	ok, out = serve(caps)
	require.True(t, ok, "restart adopting the pins, with %v: %s", caps, out)
	for _, drop := range caps {
		t.Run("without "+drop, func(t *testing.T) {
			require.NoError(t, os.RemoveAll(pin))
			ok, out := serve(slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == drop }))
			assert.False(t, ok, "started without %s: it is not needed", drop)
			assert.Contains(t, out, "eBPF")
		})
	}
}

// buildSgsim builds the sgsim binary into a temporary directory.
func buildSgsim(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sgsim")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/sgsim").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

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
