package bpf

import (
	"context"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/netns"
)

// TestClsactAttach enforces through the clsact + cls_bpf attachment (what kernels without TCX get),
// forced with Options.Clsact on this TCX-capable kernel: it filters, survives the loader's exit, is
// taken over by a new loader, and Detach removes its filters.
func TestClsactAttach(t *testing.T) {
	first := loadOrSkip(t)
	first.Close()
	if _, err := exec.LookPath("tc"); err != nil {
		t.Fatalf("the clsact attachment needs tc(8) (iproute2): %v", err)
	}
	lab := newSrvCliLab(t)
	pin := testPinPath(t, "clsact")
	ctx := context.Background()

	_, err := Load(t.Context(), Options{Clsact: true})
	require.ErrorContains(t, err, "needs a pin path")

	inHost := func(fn func() error) {
		t.Helper()
		_, err := netns.Do(lab.Host, func() (struct{}, error) { return struct{}{}, fn() })
		require.NoError(t, err)
	}
	filters := func(ifname, dir string) string {
		out, err := exec.Command("ip", "netns", "exec", lab.Host, "tc", "filter", "show", "dev", ifname, dir).CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}
	attach := func(d *Dataplane) {
		for eni, ifn := range map[string]string{"eni-srv": "sgth1", "eni-cli": "sgth2"} {
			inHost(func() error { return d.Attach(ctx, ifn, eni) })
		}
	}
	dial := srvPorts(t, lab, "8080", "9090")

	d1, err := Load(t.Context(), Options{PinPath: pin, Clsact: true})
	require.NoError(t, err)
	require.NoError(t, d1.Publish(ctx, 1, labTables(t, ""), nil))
	attach(d1)
	for _, dir := range []string{"ingress", "egress"} {
		require.Contains(t, filters("sgth1", dir), "direct-action", "a cls_bpf filter on sgth1 %s", dir)
	}
	require.NoError(t, dial("8080"))
	require.Error(t, dial("9090"))

	require.NoError(t, d1.Close())
	require.Error(t, dial("9090"), "the tc filters keep enforcing with no process holding the program")

	d2, err := Load(t.Context(), Options{PinPath: pin, Clsact: true})
	require.NoError(t, err)
	defer d2.Close()
	attach(d2)
	require.NoError(t, d2.Publish(ctx, 2, labTables(t, `, {"ipProtocol": "tcp", "portRange": "9090", "action": "ACCEPT"}`), nil))
	require.NoError(t, dial("9090"), "the new loader's filters apply its tables")
	require.NoError(t, d2.Publish(ctx, 3, labTables(t, ""), nil))
	require.Error(t, dial("9090"))

	for _, ifn := range []string{"sgth1", "sgth2"} {
		inHost(func() error { return d2.Detach(ifn) })
	}
	for _, dir := range []string{"ingress", "egress"} {
		require.NotContains(t, filters("sgth1", dir), "bpf", "Detach removed the filter on sgth1 %s", dir)
	}
	require.NoError(t, dial("9090"), "nothing filters after Detach")
}
