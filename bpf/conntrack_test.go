package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

	now := func() uint64 { return clockTicks(t) }
	past := ticks(uint64(200*time.Second), d.hz) // beyond UDP's 180 s with a reply seen
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

// TestConntrackTimeouts ages tracked flows by rewriting their last-seen time (in ticks of the kernel's
// clock, which cannot be moved) and checks SPEC §3's timeouts: a reply just inside the timeout is established, just outside
// it is judged by the rules.
func TestConntrackTimeouts(t *testing.T) {
	d := loadOrSkip(t)
	s := demoState(t)
	require.NoError(t, d.Publish(context.Background(), 1, compiler.New(s).CompileAll(), nil))
	web, peer := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("203.0.113.7")
	now := func() uint64 { return clockTicks(t) }
	cases := []struct {
		name    string
		out     frame // sent by eni-web1 (egress accepts everything), tracked
		reply   bool  // a reply was seen before aging (udp: both directions)
		timeout time.Duration
	}{
		{"tcp established", frame{src: web, dst: peer, proto: 6, sport: 41000, dport: 9999, tcpFlags: 0x02}, false, 600 * time.Second},
		{"tcp closing", frame{src: web, dst: peer, proto: 6, sport: 41001, dport: 9999, tcpFlags: 0x11}, false, 30 * time.Second},
		{"icmp", frame{src: web, dst: peer, proto: 1, icmpType: 8, icmpID: 7}, false, 30 * time.Second},
		{"udp one way", frame{src: web, dst: peer, proto: 17, sport: 41002, dport: 9999}, false, 30 * time.Second},
		{"udp both ways", frame{src: web, dst: peer, proto: 17, sport: 41003, dport: 9999}, true, 180 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, inside := range []bool{true, false} {
				require.NoError(t, d.FlushConntrack())
				r, err := d.Run(tc.out.build(), "eni-web1", model.Egress)
				require.NoError(t, err)
				require.True(t, r.Accept)
				reply := tc.out.reverse()
				if tc.reply {
					r, err = d.Run(reply.build(), "eni-web1", model.Ingress)
					require.NoError(t, err)
					require.Equal(t, dataplane.ReasonEstablished, r.Reason)
				}
				keys, err := d.ctEntries()
				require.NoError(t, err)
				require.Len(t, keys, 1)
				var v sgCtVal
				require.NoError(t, keys[0].m.Lookup(keys[0].key, &v))
				age := tc.timeout - 2*time.Second
				if !inside {
					age = tc.timeout + 2*time.Second
				}
				v.Last = now() - ticks(uint64(age.Nanoseconds()), d.hz)
				require.NoError(t, keys[0].m.Put(keys[0].key, &v))
				r, err = d.Run(reply.build(), "eni-web1", model.Ingress)
				require.NoError(t, err)
				if inside {
					require.Equal(t, dataplane.ReasonEstablished, r.Reason, "inside the timeout")
				} else {
					require.NotEqual(t, dataplane.ReasonEstablished, r.Reason, "past the timeout")
				}
			}
		})
	}
}

// clockTicks reads the conntrack clock (jiffies) as the program does.
func clockTicks(t *testing.T) uint64 {
	t.Helper()
	c, err := newKernelClock()
	skipIfNotSupported(t, err)
	defer c.Close()
	j, _, err := c.read()
	require.NoError(t, err)
	return j
}

// TestTrackedFlowTakesItsEntry: packets of a tracked flow's own direction take the entry that accepted
// the flow while its table is in force (counted on it as the rules' decisions are), and the rules decide
// again once the table changed: a DROP put in front drops the next one, and without it the flow is
// accepted by its entry again (decide_fast: TCP, and ICMP echo, which parse decodes).
func TestTrackedFlowTakesItsEntry(t *testing.T) {
	const (
		icmpAccept = `{"ipProtocol": "icmp", "cidrIp": "198.18.200.2/32", "action": "ACCEPT"},`
		frontDrop  = `{"ipProtocol": "tcp", "portRange": "8080", "cidrIp": "198.18.200.2/32", "action": "DROP"},
		              {"ipProtocol": "icmp", "cidrIp": "198.18.200.2/32", "action": "DROP"},`
	)
	tablesWith := func(rules string) map[string]*compiler.Tables {
		topo := strings.Replace(labTopology, `"ingress": [
       {"ipProtocol": "tcp", "portRange": "8080"`, `"ingress": [`+rules+`
       {"ipProtocol": "tcp", "portRange": "8080"`, 1)
		s, err := model.ParseTopology("lab.json", fmt.Appendf(nil, topo, ""))
		require.NoError(t, err)
		return compiler.New(s).CompileAll()
	}
	cli, srv := netip.MustParseAddr("198.18.200.2"), netip.MustParseAddr("198.18.200.1")
	for _, tc := range []struct {
		name string
		in   frame
		drop int // frontDrop's entry that drops it
	}{
		{"tcp", frame{src: cli, dst: srv, proto: 6, sport: 40000, dport: 8080, tcpFlags: 0x10}, 0},
		{"icmp echo", frame{src: cli, dst: srv, proto: 1, icmpType: 8, icmpID: 7}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := loadOrSkip(t)
			ctx := context.Background()
			run := func() Result {
				t.Helper()
				r, err := d.Run(tc.in.build(), "eni-srv", model.Ingress)
				require.NoError(t, err)
				return r
			}
			hits := func() map[int]uint64 {
				t.Helper()
				hs, err := d.Hits()
				require.NoError(t, err)
				out := map[int]uint64{}
				for _, h := range hs {
					if h.ENI == "eni-srv" && h.Direction == model.Ingress {
						out[h.Entry] = h.Packets
					}
				}
				return out
			}

			require.NoError(t, d.Publish(ctx, 1, tablesWith(icmpAccept), nil))
			first := run()
			require.True(t, first.Accept)
			require.Equal(t, dataplane.ReasonRule, first.Reason)
			for range 3 {
				require.Equal(t, first, run(), "the tracked flow's own packets take its entry")
			}
			assert.Equal(t, map[int]uint64{first.Entry: 4}, hits(), "each counted on the entry")

			require.NoError(t, d.Publish(ctx, 2, tablesWith(frontDrop+icmpAccept), nil))
			r := run()
			assert.False(t, r.Accept, "the new table's DROP decides")
			assert.Equal(t, dataplane.ReasonRule, r.Reason)

			require.NoError(t, d.Publish(ctx, 3, tablesWith(icmpAccept), nil))
			for range 2 {
				assert.Equal(t, first, run(), "accepted by its entry again")
			}
			assert.Equal(t, map[int]uint64{first.Entry: 2}, hits(), "counted in the table in force")

			// The store started again (the pins kept): its generations repeat, with other rules. The flow
			// tracked at generation 3 is not taken for current under another generation 3, nor under an
			// earlier one.
			for _, gen := range []uint64{3, 2} {
				require.NoError(t, d.Publish(ctx, gen, tablesWith(frontDrop+icmpAccept), nil))
				r = run()
				assert.False(t, r.Accept, "generation %d's DROP decides", gen)
				assert.Equal(t, dataplane.ReasonRule, r.Reason)
				assert.Equal(t, tc.drop, r.Entry, "the DROP in front")
				require.NoError(t, d.Publish(ctx, gen, tablesWith(icmpAccept), nil))
				require.Equal(t, first, run(), "accepted again at generation %d", gen)
			}
		})
	}
}
