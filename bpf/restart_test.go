package bpf

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/netns"
)

// TestRestartKeepsEnforcing: with pinned maps and links, closing the loader (a daemon exiting) leaves
// the interfaces filtered; a new loader adopts the pinned links and maps and takes over table updates.
func TestRestartKeepsEnforcing(t *testing.T) {
	first := loadOrSkip(t) // proves the kernel can load it; the pinned instances below do the work
	first.Close()
	lab := newSrvCliLab(t)
	pin := testPinPath(t, "restart")
	ctx := context.Background()

	d1, err := Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err)
	require.NoError(t, d1.Publish(ctx, 1, labTables(t, ""), nil))
	attach := func(d *Dataplane) {
		for eni, ifn := range map[string]string{"eni-srv": "sgth1", "eni-cli": "sgth2"} {
			_, err := netns.Do(lab.Host, func() (struct{}, error) { return struct{}{}, d.Attach(ctx, ifn, eni) })
			require.NoError(t, err)
		}
	}
	attach(d1)
	dial := srvPorts(t, lab, "8080", "9090")
	require.NoError(t, dial("8080"))
	require.Error(t, dial("9090"))

	// The daemon goes away: the pinned links keep the program attached with the last tables.
	require.NoError(t, d1.Close())
	require.NoError(t, dial("8080"), "still enforcing the last tables with no process holding them")
	require.Error(t, dial("9090"), "still filtering with no process holding the program")

	// A new daemon adopts everything and publishes a table that opens 9090.
	d2, err := Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err)
	defer d2.Close()
	attach(d2)
	require.NoError(t, d2.Publish(ctx, 2, labTables(t, `, {"ipProtocol": "tcp", "portRange": "9090", "action": "ACCEPT"}`), nil))
	require.NoError(t, dial("9090"), "the adopted dataplane applies new tables")
	for _, ifn := range []string{"sgth1", "sgth2"} {
		_, err := netns.Do(lab.Host, func() (struct{}, error) { return struct{}{}, d2.Detach(ifn) })
		require.NoError(t, err)
	}
}

// A pin directory left by a build whose maps have another layout is refused with an error that names
// the directory and how to upgrade, and the pinned map is left alone.
func TestLoadRefusesPinnedMapsOfAnotherLayout(t *testing.T) {
	loadOrSkip(t).Close()
	pin := pinStaleMap(t, "layout", &ebpf.MapSpec{Name: "ifaces", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16})

	_, err := Load(t.Context(), Options{PinPath: pin})
	require.ErrorIs(t, err, ebpf.ErrMapIncompatible)
	assert.ErrorContains(t, err, "maps pinned under "+pin+" were made by an sgsim build with another layout")
	assert.ErrorContains(t, err, "remove "+pin)
	_, err = os.Stat(filepath.Join(pin, "ifaces"))
	assert.NoError(t, err, "the old pin is still there")
}

// pinStaleMap pins a map made from spec, as an sgsim build of another layout would have left it, in a
// pin directory of its own (named after what) and returns the directory.
func pinStaleMap(t *testing.T, what string, spec *ebpf.MapSpec) string {
	t.Helper()
	pin := testPinPath(t, what)
	require.NoError(t, os.MkdirAll(pin, 0o700))
	old, err := ebpf.NewMap(spec)
	require.NoError(t, err)
	t.Cleanup(func() { old.Close() })
	require.NoError(t, old.Pin(filepath.Join(pin, spec.Name)))
	return pin
}

// TestPinPathHasOneWriter: while one dataplane holds a pin path, a second Load of it is refused with an
// error naming the path and the holder, and the first keeps working; once the first closes, the path
// can be loaded again.
func TestPinPathHasOneWriter(t *testing.T) {
	loadOrSkip(t).Close()
	pin := testPinPath(t, "onewriter")
	ctx := context.Background()
	tables := labTables(t, "")

	d1, err := Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err)
	require.NoError(t, d1.Publish(ctx, 1, tables, nil))

	d, err := Load(t.Context(), Options{PinPath: pin})
	if err == nil {
		d.Close()
	}
	require.ErrorIs(t, err, ErrPinPathInUse)
	assert.ErrorContains(t, err, pin)
	assert.ErrorContains(t, err, fmt.Sprintf("process %d", os.Getpid()), "names the holder")

	require.NoError(t, d1.Publish(ctx, 2, tables, nil), "the holder is untouched by the refusal")
	require.NoError(t, d1.Close())

	d2, err := Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err, "a closed dataplane lets the path go")
	require.NoError(t, d2.Publish(ctx, 3, tables, nil))
	require.NoError(t, d2.Close())
}

// pinHolderEnv names the pin path TestAnotherProcessHoldsThePinPath's child process loads and holds.
const pinHolderEnv = "SGSIM_TEST_PIN_HOLDER"

// TestAnotherProcessHoldsThePinPath: while another process holds a pin path, Load is refused with an
// error naming that process; once it is killed (kill -9, no Close), the path loads at once.
func TestAnotherProcessHoldsThePinPath(t *testing.T) {
	if pin := os.Getenv(pinHolderEnv); pin != "" {
		_, err := Load(t.Context(), Options{PinPath: pin})
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(os.Getenv(pinHolderEnv+"_READY"), nil, 0o600))
		select {} // held until killed
	}
	loadOrSkip(t).Close()
	pin := testPinPath(t, "holder")
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := startTestChild(t, pinHolderEnv+"="+pin, pinHolderEnv+"_READY="+ready)
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 30*time.Second,
		5*time.Millisecond, "the child loads the pin path")

	d, err := Load(t.Context(), Options{PinPath: pin})
	if err == nil {
		d.Close()
	}
	require.ErrorIs(t, err, ErrPinPathInUse)
	assert.ErrorContains(t, err, fmt.Sprintf("%s is held by process %d", pin, cmd.Process.Pid))

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	d, err = Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err, "the kernel dropped the killed holder's lock")
	require.NoError(t, d.Close())
}

// startTestChild runs the calling test again in a child process of this test binary, with env added to
// its environment (which tells it to play the child's part); the child is killed when the test ends.
func startTestChild(t *testing.T, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}
