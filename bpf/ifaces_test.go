package bpf

import (
	"context"
	"net/netip"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
)

// TestBindingsByIfindex: an interface is unmanaged until bound to its ENI, enforced while bound and
// unmanaged again once forgotten, whether its ifindex is below SG_IFSLOTS (the program reads ifslots)
// or not (ifaces); a Load over pinned bindings reads them back into ifslots.
func TestBindingsByIfindex(t *testing.T) {
	d := loadOrSkip(t)
	require.NoError(t, d.Publish(context.Background(), 1, compiler.New(demoState(t)).CompileAll(), nil))
	lab := netlab.New(t, "sgifx")
	// Sent to eni-web2, whose sg-lockdown drops it.
	f := frame{src: netip.MustParseAddr("203.0.113.7"), dst: netip.MustParseAddr("198.18.1.11"), proto: 6,
		sport: 40000, dport: 22, tcpFlags: 0x02}
	pkt := f.build()
	verdict := func(ifindex uint32) uint32 {
		t.Helper()
		ret, err := netns.Do(lab.Host, func() (uint32, error) {
			// Not loopback: the program looks the interface up, as for real traffic (TC egress: ENI ingress).
			return d.objs.SgHostEgress.Run(&ebpf.RunOptions{Data: pkt, Context: skbCtx{Ifindex: ifindex}})
		})
		require.NoError(t, err)
		return ret
	}
	const pass, shot = 0, 2
	for _, tc := range []struct {
		name    string
		ifindex uint32
	}{{"ifslots", 5000}, {"ifaces", ifslotsSize + 4464}} {
		lab.IP("-n", lab.Host, "link", "add", "sgx-"+tc.name, "index", strconv.Itoa(int(tc.ifindex)), "type", "veth",
			"peer", "name", "sgy-"+tc.name)
		require.Equal(t, uint32(pass), verdict(tc.ifindex), "%s: not bound: unmanaged", tc.name)
		require.NoError(t, d.Bind(int(tc.ifindex), "eni-web2"))
		require.Equal(t, uint32(shot), verdict(tc.ifindex), "%s: bound to eni-web2", tc.name)
		require.NoError(t, d.Forget(int(tc.ifindex)))
		require.Equal(t, uint32(pass), verdict(tc.ifindex), "%s: forgotten", tc.name)
	}

	// The program reads ifslots for such an ifindex: a binding there alone is enforced.
	require.NoError(t, d.objs.Ifslots.Put(uint32(5000), d.slots["eni-web2"]+1))
	require.Equal(t, uint32(shot), verdict(5000), "bound in ifslots")
	require.NoError(t, d.objs.Ifslots.Put(uint32(5000), uint32(0)))

	// A binding in ifaces alone (as an older build, or a daemon stopped between the writes, leaves it)
	// is read back into ifslots by the next Load of the pins.
	pin := testPinPath(t, "ifslots")
	d1, err := Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err)
	require.NoError(t, d1.Publish(context.Background(), 1, compiler.New(demoState(t)).CompileAll(), nil))
	slot := d1.slots["eni-web2"]
	require.NoError(t, d1.objs.Ifaces.Put(uint32(5000), &sgIfcfg{Slot: slot}))
	// And a binding in ifslots alone (a build that unbound in ifaces only) is cleared by it.
	require.NoError(t, d1.objs.Ifslots.Put(uint32(5001), slot+1))
	require.NoError(t, d1.Close())
	d2, err := Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err)
	defer d2.Close()
	var got uint32
	require.NoError(t, d2.objs.Ifslots.Lookup(uint32(5000), &got))
	require.Equal(t, slot+1, got)
	require.NoError(t, d2.objs.Ifslots.Lookup(uint32(5001), &got))
	require.Equal(t, uint32(0), got, "a stale slot binding is cleared")
}
