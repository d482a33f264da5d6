package bpf

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// TestConntrackBothOrientations: the two flows of one endpoint pair (A→B and B→A, both first seen leaving
// the ENI) share one conntrack entry, one per half; each answers its own replies and ages on its own, and
// the entry goes when both have.
func TestConntrackBothOrientations(t *testing.T) {
	d := loadOrSkip(t)
	require.NoError(t, d.Publish(context.Background(), 1, compiler.New(demoState(t)).CompileAll(), nil))
	require.NoError(t, d.FlushConntrack())
	web, peer := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.200.7")
	ab := frame{src: web, dst: peer, proto: 17, sport: 41010, dport: 9999}
	ba := ab.reverse()
	run := func(f frame, dir model.Direction) Result {
		t.Helper()
		r, err := d.Run(f.build(), "eni-web1", dir)
		require.NoError(t, err)
		return r
	}
	keys := func() []ctEntry {
		es, err := d.ctEntries()
		require.NoError(t, err)
		return es
	}
	// eni-web1's egress accepts everything: both orientations are tracked as flows of their own.
	require.True(t, run(ab, model.Egress).Accept)
	require.True(t, run(ba, model.Egress).Accept)
	require.Len(t, keys(), 1, "one entry per endpoint pair")
	require.Equal(t, dataplane.ReasonEstablished, run(ba, model.Ingress).Reason, "reply of A→B")
	require.Equal(t, dataplane.ReasonEstablished, run(ab, model.Ingress).Reason, "reply of B→A")

	now := func() uint64 {
		var ts unix.Timespec
		require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts))
		return uint64(ts.Nano())
	}
	past := uint64((200 * time.Second).Nanoseconds()) // beyond UDP's 180 s with a reply seen
	k := keys()[0]
	var v sgCtVal
	require.NoError(t, k.m.Lookup(k.key, &v))
	v.Last = now() - past // the first half: A→B, tracked first
	require.NoError(t, k.m.Put(k.key, &v))
	require.NotEqual(t, dataplane.ReasonEstablished, run(ba, model.Ingress).Reason, "A→B timed out")
	require.Equal(t, dataplane.ReasonEstablished, run(ab, model.Ingress).Reason, "B→A lives on")
	require.Len(t, keys(), 1)

	require.NoError(t, k.m.Lookup(k.key, &v))
	v.Last2 = now() - past
	require.NoError(t, k.m.Put(k.key, &v))
	r := run(ab, model.Ingress)
	require.NotEqual(t, dataplane.ReasonEstablished, r.Reason, "B→A timed out")
	require.False(t, r.Accept, "eni-web1's ingress does not take udp/9999, so nothing new is tracked")
	require.Empty(t, keys(), "the entry goes with its last flow")
}
