package deploy

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
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
