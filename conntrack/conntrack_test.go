package conntrack_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/conntrack"
	"github.com/sgsim/sgsim/packet"
)

const (
	in  conntrack.Direction = 0
	out conntrack.Direction = 1
)

var (
	eniIP = netip.MustParseAddr("198.18.1.10")
	peer  = netip.MustParseAddr("198.18.9.9")
)

func tuple(proto uint8, src, dst netip.Addr, sp, dp uint16) packet.Tuple {
	return packet.Tuple{Src: src, Dst: dst, SrcPort: sp, DstPort: dp, Proto: proto, HasPorts: true}
}

func TestTimeouts(t *testing.T) {
	tests := []struct {
		name      string
		proto     uint8
		flags     uint8 // on the first packet
		reply     bool  // a reply is seen right after the first packet
		alive     time.Duration
		deadAfter time.Duration
	}{
		{"tcp established", packet.ProtoTCP, packet.TCPSyn, true, 599 * time.Second, 601 * time.Second},
		{"tcp closing", packet.ProtoTCP, packet.TCPFin, true, 29 * time.Second, 31 * time.Second},
		{"tcp rst", packet.ProtoTCP, packet.TCPRst, false, 29 * time.Second, 31 * time.Second},
		{"icmp", packet.ProtoICMP, 0, true, 29 * time.Second, 31 * time.Second},
		{"udp one way", packet.ProtoUDP, 0, false, 29 * time.Second, 31 * time.Second},
		{"udp both ways", packet.ProtoUDP, 0, true, 179 * time.Second, 181 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, wait := range []time.Duration{tc.alive, tc.deadAfter} {
				ct := conntrack.New(0)
				orig := tuple(tc.proto, peer, eniIP, 40000, 80)
				ct.Track(conntrack.KeyOf(1, in, &orig), tc.flags, 0, 0)
				rep := orig.Reverse()
				if tc.reply {
					require.True(t, ct.Reply(conntrack.KeyOf(1, out, &rep), 0, time.Second, 0, nil))
				}
				start := time.Duration(0)
				if tc.reply {
					start = time.Second
				}
				got := ct.Reply(conntrack.KeyOf(1, out, &rep), 0, start+wait, 0, nil)
				assert.Equal(t, wait == tc.alive, got, "reply after %v", wait)
			}
		})
	}
}

func TestReplyIsScopedToZoneAndDirection(t *testing.T) {
	ct := conntrack.New(0)
	orig := tuple(packet.ProtoTCP, peer, eniIP, 40000, 22)
	ct.Track(conntrack.KeyOf(1, in, &orig), packet.TCPSyn, 0, 0)
	rep := orig.Reverse()
	assert.False(t, ct.Reply(conntrack.KeyOf(2, out, &rep), packet.TCPAck, time.Second, 0, nil), "other ENI")
	assert.False(t, ct.Reply(conntrack.KeyOf(1, in, &rep), packet.TCPAck, time.Second, 0, nil), "same direction")
	assert.False(t, ct.Reply(conntrack.KeyOf(1, in, &orig), packet.TCPAck, time.Second, 0, nil), "original direction is not a reply")
	assert.True(t, ct.Reply(conntrack.KeyOf(1, out, &rep), packet.TCPAck, time.Second, 0, nil))
}

func TestRelated(t *testing.T) {
	ct := conntrack.New(0)
	// The ENI sends UDP out; the peer's port-unreachable comes back in quoting it.
	orig := tuple(packet.ProtoUDP, eniIP, peer, 5000, 9999)
	ct.Track(conntrack.KeyOf(1, out, &orig), 0, 0, 0)
	assert.True(t, ct.Related(1, in, &orig, time.Second, 0, nil))
	other := tuple(packet.ProtoUDP, eniIP, peer, 5000, 9998)
	assert.False(t, ct.Related(1, in, &other, time.Second, 0, nil))
	// A flow admitted inbound: an error about the ENI's reply also relates.
	in1 := tuple(packet.ProtoTCP, peer, eniIP, 1234, 80)
	ct.Track(conntrack.KeyOf(1, in, &in1), packet.TCPSyn, 0, 0)
	rep := in1.Reverse()
	assert.True(t, ct.Related(1, in, &rep, time.Second, 0, nil))
	assert.Equal(t, uint64(2), ct.Stats().Related)
}

func TestRecheckCutsOnTableChange(t *testing.T) {
	ct := conntrack.New(0)
	orig := tuple(packet.ProtoTCP, peer, eniIP, 40000, 22)
	ct.Track(conntrack.KeyOf(1, in, &orig), packet.TCPSyn, 0, 1)
	rep := orig.Reverse()
	calls := 0
	allow := func(*conntrack.Key) bool { calls++; return true }
	deny := func(*conntrack.Key) bool { calls++; return false }
	assert.True(t, ct.Reply(conntrack.KeyOf(1, out, &rep), packet.TCPAck, time.Second, 1, deny), "same generation: no recheck")
	assert.Zero(t, calls)
	assert.True(t, ct.Reply(conntrack.KeyOf(1, out, &rep), packet.TCPAck, 2*time.Second, 2, allow))
	assert.True(t, ct.Reply(conntrack.KeyOf(1, out, &rep), packet.TCPAck, 3*time.Second, 2, allow))
	assert.Equal(t, 1, calls, "rechecked once per generation")
	assert.False(t, ct.Reply(conntrack.KeyOf(1, out, &rep), packet.TCPAck, 4*time.Second, 3, deny))
	assert.Zero(t, ct.Len())
	assert.Equal(t, uint64(1), ct.Stats().Cut)
}

func TestNewSYNReopensClosedTuple(t *testing.T) {
	ct := conntrack.New(0)
	orig := tuple(packet.ProtoTCP, peer, eniIP, 40000, 80)
	rep := orig.Reverse()
	k, rk := conntrack.KeyOf(1, in, &orig), conntrack.KeyOf(1, out, &rep)
	ct.Track(k, packet.TCPSyn, 0, 0)
	require.True(t, ct.Reply(rk, packet.TCPFin|packet.TCPAck, time.Second, 0, nil))
	ct.Track(k, packet.TCPSyn, 2*time.Second, 0) // the client reconnects with the same ports
	assert.True(t, ct.Reply(rk, packet.TCPAck, 2*time.Second+40*time.Second, 0, nil), "not closing any more: 600 s timeout")
}

func TestBoundedLRU(t *testing.T) {
	ct := conntrack.New(3)
	var keys []conntrack.Key
	for i := range 4 {
		tp := tuple(packet.ProtoUDP, peer, eniIP, uint16(1000+i), 53)
		keys = append(keys, conntrack.KeyOf(1, in, &tp))
	}
	ct.Track(keys[0], 0, 0, 0)
	ct.Track(keys[1], 0, 1, 0)
	ct.Track(keys[2], 0, 2, 0)
	ct.Track(keys[0], 0, 3, 0) // refresh: keys[1] is now the oldest
	ct.Track(keys[3], 0, 4, 0)
	assert.Equal(t, 3, ct.Len())
	assert.Equal(t, uint64(1), ct.Stats().Evicted)
	assert.True(t, ct.Cut(keys[0]))
	assert.False(t, ct.Cut(keys[1]), "evicted")
	assert.Equal(t, 2, ct.Expire(10*time.Hour))
	assert.Zero(t, ct.Len())
}

func TestSteadyStateAllocatesNothing(t *testing.T) {
	ct := conntrack.New(16)
	tps := make([]packet.Tuple, 64)
	for i := range tps {
		tps[i] = tuple(packet.ProtoUDP, peer, eniIP, uint16(i), 53)
	}
	now := time.Duration(0)
	for i := range tps { // warm up: fill the slice and the free list
		ct.Track(conntrack.KeyOf(1, in, &tps[i]), 0, now, 0)
	}
	allocs := testing.AllocsPerRun(100, func() {
		for i := range tps {
			now += time.Millisecond
			ct.Track(conntrack.KeyOf(1, in, &tps[i]), 0, now, 0)
			r := tps[i].Reverse()
			ct.Reply(conntrack.KeyOf(1, out, &r), 0, now, 0, nil)
		}
	})
	assert.Zero(t, allocs)
}

// BenchmarkReplyHit measures the established fast path: one reply lookup that hits.
func BenchmarkReplyHit(b *testing.B) {
	ct := conntrack.New(0)
	tps := make([]packet.Tuple, 4096)
	for i := range tps {
		tps[i] = tuple(packet.ProtoTCP, netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), eniIP, uint16(i), 80)
		ct.Track(conntrack.KeyOf(1, in, &tps[i]), packet.TCPSyn, 0, 0)
	}
	keys := make([]conntrack.Key, len(tps))
	for i := range tps {
		r := tps[i].Reverse()
		keys[i] = conntrack.KeyOf(1, out, &r)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if !ct.Reply(keys[i&4095], packet.TCPAck, time.Second, 0, nil) {
			b.Fatal("miss")
		}
		i++
	}
}
