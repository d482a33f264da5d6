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

// TestConntrackTimeouts ages tracked flows by rewriting their last-seen time (the kernel clock cannot be
// moved) and checks SPEC §3's timeouts: a reply just inside the timeout is established, just outside
// it is judged by the rules.
func TestConntrackTimeouts(t *testing.T) {
	d := loadOrSkip(t)
	s := demoState(t)
	require.NoError(t, d.Publish(context.Background(), 1, compiler.New(s).CompileAll(), nil))
	web, peer := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("203.0.113.7")
	now := func() uint64 {
		var ts unix.Timespec
		require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts))
		return uint64(ts.Nano())
	}
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
				v.Last = now() - uint64(age.Nanoseconds())
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
