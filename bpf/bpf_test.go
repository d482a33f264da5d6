package bpf

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// loadOrSkip loads the program; it skips only as skipIfNotSupported does, so a verifier rejection fails.
func loadOrSkip(t testing.TB) *Dataplane {
	t.Helper()
	d, err := Load(t.Context(), Options{})
	skipIfNotSupported(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// skipIfNotSupported is the one place a kernel test may skip (as cilium/ebpf's testutils helper): when
// err says the kernel lacks a feature (ebpf.ErrNotSupported) or the test is not root. Any other error, a
// verifier rejection included, fails the test; SGSIM_REQUIRE_KERNEL=1 turns the skips into failures too.
func skipIfNotSupported(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	missing := errors.Is(err, ebpf.ErrNotSupported) || (os.Geteuid() != 0 && errors.Is(err, unix.EPERM))
	if !missing || os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		tb.Fatalf("load BPF: %v", err)
	}
	tb.Skipf("kernel lacks a feature these tests need: %v", err)
}

func demoState(t testing.TB) *model.State {
	t.Helper()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	return s
}

func TestSpecialFrames(t *testing.T) {
	d := loadOrSkip(t)
	s := demoState(t)
	require.NoError(t, d.Publish(context.Background(), 1, compiler.New(s).CompileAll(), nil))
	v4a, v4b := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("203.0.113.7")
	v6a, v6b := netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:9::1")
	cases := []struct {
		name   string
		frame  []byte
		accept bool
		reason dataplane.Reason
	}{
		{"arp", rawFrame(0x0806, 28), true, dataplane.ReasonARP},
		{"lldp", rawFrame(0x88cc, 40), false, dataplane.ReasonNotIP},
		{"mpls", rawFrame(0x8847, 40), false, dataplane.ReasonNotIP},
		// A datagram longer than its frame keeps what it has (as packet.Decode does for short captures).
		{"ipv4 longer than frame", func() []byte { b := rawFrame(0x0800, 46); b[14] = 0x45; b[16] = 1; return b }(), false, dataplane.ReasonDefaultDrop},
		{"ipv4 length below header", func() []byte { b := rawFrame(0x0800, 46); b[14] = 0x45; b[17] = 10; return b }(), false, dataplane.ReasonMalformed},
		{"ipv6 longer than frame", func() []byte { b := rawFrame(0x86dd, 46); b[14] = 0x60; b[18] = 1; return b }(), false, dataplane.ReasonMalformed},
		{"bad version", func() []byte { b := rawFrame(0x0800, 40); b[14] = 0x65; return b }(), false, dataplane.ReasonMalformed},
		{"nd solicit", (&frame{src: v6b, dst: v6a, proto: 58, icmpType: 135}).build(), true, dataplane.ReasonND},
		{"nd behind ext headers", (&frame{src: v6b, dst: v6a, proto: 58, icmpType: 136, extHdrs: 2}).build(), true, dataplane.ReasonND},
		{"nd in qinq", (&frame{vlans: 2, src: v6b, dst: v6a, proto: 58, icmpType: 134}).build(), true, dataplane.ReasonND},
		{"truncated tcp", (&frame{src: v4b, dst: v4a, proto: 6, sport: 1, dport: 80, truncL4: true}).build(), false, dataplane.ReasonMalformed},
		{"http rule", (&frame{src: v4b, dst: v4a, proto: 6, sport: 40000, dport: 80}).build(), true, dataplane.ReasonRule},
		{"http in vlan", (&frame{vlans: 1, src: v4b, dst: v4a, proto: 6, sport: 40000, dport: 80}).build(), true, dataplane.ReasonRule},
		{"default drop", (&frame{src: v4b, dst: v4a, proto: 17, sport: 1, dport: 53}).build(), false, dataplane.ReasonDefaultDrop},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, d.FlushConntrack())
			r, err := d.Run(tc.frame, "eni-web1", model.Ingress)
			require.NoError(t, err)
			assert.Equal(t, tc.accept, r.Accept)
			assert.Equal(t, tc.reason, r.Reason)
		})
	}
	r, err := d.Run((&frame{src: v4b, dst: netip.MustParseAddr("198.18.3.10"), proto: 6, dport: 80}).build(), "eni-spare", model.Ingress)
	require.NoError(t, err)
	assert.Equal(t, Result{Reason: dataplane.ReasonNoSG, Entry: 0}, r)
	_, err = d.Run(rawFrame(0x0806, 28), "eni-unknown", model.Ingress)
	require.ErrorContains(t, err, "eni-unknown")
}

// randomFrame draws a packet to or from one of the addresses the demo's rules care about.
func randomFrame(rng *rand.Rand, local []netip.Addr) frame {
	remotes4 := []string{"198.18.66.9", "203.0.113.7", "198.18.1.11", "198.18.2.10", "198.18.2.11", "198.18.5.1", "10.0.0.1", "0.0.0.0", "255.255.255.255", "198.19.255.255", "198.20.0.0"}
	remotes6 := []string{"2001:db8:9::1", "2001:db8:1::10", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1"}
	var l, r netip.Addr
	v6 := rng.IntN(3) == 0
	for _, a := range local {
		if a.Is6() == v6 {
			l = a
		}
	}
	if !l.IsValid() {
		l = local[0]
		v6 = l.Is6()
	}
	if v6 {
		r = netip.MustParseAddr(remotes6[rng.IntN(len(remotes6))])
	} else {
		r = netip.MustParseAddr(remotes4[rng.IntN(len(remotes4))])
	}
	ports := []uint16{0, 1, 22, 53, 79, 80, 81, 443, 444, 5432, 65535, uint16(rng.IntN(65536))}
	f := frame{src: r, dst: l, vlans: rng.IntN(3), sport: ports[rng.IntN(len(ports))], dport: ports[rng.IntN(len(ports))]}
	if rng.IntN(2) == 0 {
		f.src, f.dst = l, r
	}
	icmp := uint8(1)
	if v6 {
		icmp = 58
	}
	f.proto = []uint8{6, 6, 17, 17, icmp, 1, 58, 47}[rng.IntN(8)]
	if f.proto == icmp {
		f.icmpType = []uint8{8, 0, 128, 129, 3, 11, 1}[rng.IntN(7)]
		f.icmpID = uint16(rng.IntN(4))
	}
	if f.proto == 6 {
		f.tcpFlags = []uint8{0x02, 0x12, 0x10, 0x11, 0x04}[rng.IntN(5)]
	}
	switch rng.IntN(10) {
	case 0:
		f.fragOff = uint16(1 + rng.IntN(100))
		f.fragID = uint32(rng.IntN(3))
	case 1:
		f.mf = true // a first fragment: later ones (case 0, same id) take its verdict
		f.fragID = uint32(rng.IntN(3))
	}
	if v6 && rng.IntN(4) == 0 {
		f.extHdrs = 1 + rng.IntN(3)
	}
	if rng.IntN(30) == 0 {
		f.truncL4 = true
	}
	return f
}

// TestDifferential runs random packets, their replies and ICMP errors through the reference model and
// the BPF program with BPF_PROG_TEST_RUN, across table swaps, and requires identical decisions.
func TestDifferential(t *testing.T) {
	d := loadOrSkip(t)
	s := demoState(t)
	ref := newRefModel()
	gen := uint64(1)
	tables := compiler.New(s).CompileAll()
	require.NoError(t, d.Publish(context.Background(), gen, tables, nil))
	ref.publish(gen, tables)
	require.NoError(t, d.FlushConntrack())

	// Alternate SG lists of eni-web1: a lockdown first, then back, then without sg-web.
	swaps := [][]string{{"sg-lockdown", "sg-web", "sg-ssh"}, {"sg-web", "sg-ssh"}, {"sg-ssh"}, {"sg-db", "sg-web"}}
	rng := rand.New(rand.NewPCG(1, 2))
	enis := []string{"eni-web1", "eni-web2", "eni-db1"}
	var recent []frame
	n := 0
	for round := range 5 {
		for range 600 {
			eni := enis[rng.IntN(len(enis))]
			e, _ := s.ENI(eni)
			var f frame
			switch k := rng.IntN(10); {
			case k < 3 && len(recent) > 0:
				f = recent[rng.IntN(len(recent))].reverse()
			case k == 3 && len(recent) > 0:
				q := recent[rng.IntN(len(recent))]
				f = frame{src: q.dst, dst: q.src, proto: 1, icmpType: 3, quote: &q}
				if q.src.Is6() {
					f.proto, f.icmpType = 58, 1
				}
			case k == 4 && len(recent) > 0:
				// The flow's originator refusing a reply: the error quotes the reply and travels along the flow.
				q := recent[rng.IntN(len(recent))]
				r := q.reverse()
				f = frame{src: q.src, dst: q.dst, proto: 1, icmpType: 3, quote: &r}
				if q.src.Is6() {
					f.proto, f.icmpType = 58, 1
				}
			default:
				f = randomFrame(rng, e.Addrs())
			}
			dir := model.Ingress
			if f.src == e.Addrs()[0] || (len(e.Addrs()) > 1 && f.src == e.Addrs()[1]) {
				dir = model.Egress
			}
			want := ref.decide(eni, dir, f)
			got, err := d.Run(f.build(), eni, dir)
			require.NoError(t, err)
			require.Equal(t, want, got, "packet %d (round %d) %s %s %+v quote %+v", n, round, eni, dir, f, f.quote)
			if got.Accept {
				recent = append(recent, f)
				if len(recent) > 50 {
					recent = recent[1:]
				}
			}
			n++
		}
		// Table swap: change eni-web1's SG list, publish, and keep going on the tracked flows.
		b := s.Edit()
		require.NoError(t, b.SetENISGs("eni-web1", swaps[round%len(swaps)]))
		s = b.State()
		gen++
		changed := map[string]*compiler.Tables{}
		c := compiler.New(s)
		for _, id := range s.ENIIDs() {
			tt, err := c.Compile(id)
			require.NoError(t, err)
			changed[id] = tt
		}
		require.NoError(t, d.Publish(context.Background(), gen, changed, nil))
		ref.publish(gen, changed)
	}
	t.Logf("%d packets agreed", n)
}

// TestEstablishedCut: a flow accepted on ingress is answered from conntrack, survives an unrelated
// change, and is cut when its original packet is dropped by the new table.
func TestEstablishedCut(t *testing.T) {
	d := loadOrSkip(t)
	s := demoState(t)
	ctx := context.Background()
	require.NoError(t, d.Publish(ctx, 1, compiler.New(s).CompileAll(), nil))
	require.NoError(t, d.FlushConntrack())
	client, web := netip.MustParseAddr("198.18.5.1"), netip.MustParseAddr("198.18.1.11")
	syn := frame{src: client, dst: web, proto: 6, sport: 40000, dport: 22, tcpFlags: 0x02}
	r, err := d.Run(syn.build(), "eni-web2", model.Ingress)
	require.NoError(t, err)
	require.Equal(t, dataplane.ReasonRule, r.Reason)
	require.False(t, r.Accept, "sg-lockdown drops ssh on eni-web2")

	// Remove the lockdown: ssh is accepted, the reply is established.
	b := s.Edit()
	require.NoError(t, b.SetENISGs("eni-web2", []string{"sg-web", "sg-ssh"}))
	s = b.State()
	tt, err := compiler.New(s).Compile("eni-web2")
	require.NoError(t, err)
	require.NoError(t, d.Publish(ctx, 2, map[string]*compiler.Tables{"eni-web2": tt}, nil))
	r, err = d.Run(syn.build(), "eni-web2", model.Ingress)
	require.NoError(t, err)
	require.True(t, r.Accept)
	reply := syn.reverse()
	reply.tcpFlags = 0x12
	r, err = d.Run(reply.build(), "eni-web2", model.Egress)
	require.NoError(t, err)
	require.Equal(t, Result{Accept: true, Reason: dataplane.ReasonEstablished, Entry: -1}, r)

	// Unrelated change (same tables, new generation): the flow survives the re-check.
	require.NoError(t, d.Publish(ctx, 3, map[string]*compiler.Tables{"eni-web2": tt}, nil))
	r, err = d.Run(reply.build(), "eni-web2", model.Egress)
	require.NoError(t, err)
	require.Equal(t, dataplane.ReasonEstablished, r.Reason)

	// Lockdown back first: the re-check drops the original packet, the flow is cut; the reply is then
	// judged by the egress rules (sg-web accepts everything out), so look at conntrack via the next SYN-ACK
	// on an ENI whose egress drops: sg-db's egress only allows tcp to 198.18.0.0/15.
	b = s.Edit()
	require.NoError(t, b.SetENISGs("eni-web2", []string{"sg-lockdown", "sg-web", "sg-ssh"}))
	s = b.State()
	tt, err = compiler.New(s).Compile("eni-web2")
	require.NoError(t, err)
	require.NoError(t, d.Publish(ctx, 4, map[string]*compiler.Tables{"eni-web2": tt}, nil))
	r, err = d.Run(reply.build(), "eni-web2", model.Egress)
	require.NoError(t, err)
	assert.Equal(t, dataplane.ReasonRule, r.Reason, "the flow was cut, so rules decide the reply")
}

func TestSerialiseRejectsBadTables(t *testing.T) {
	_, err := serialise(&compiler.Table{ENI: "eni-x"}, 1, nil)
	require.ErrorContains(t, err, "eni-x")
	long := compiler.Table{ENI: "eni-y", Entries: []compiler.Entry{
		{AnyRemote: true, Action: model.Accept, SgID: fmt.Sprintf("sg-%070d", 1)},
		{AnyRemote: true, RuleIndex: -1},
	}}
	_, err = serialise(&long, 1, nil)
	require.ErrorContains(t, err, "longer than")
}

// TestDropEventsAndHits: a dropped packet produces an event naming the ENI, direction, 5-tuple and rule;
// accepted packets count on their entry.
func TestDropEventsAndHits(t *testing.T) {
	d := loadOrSkip(t)
	s := demoState(t)
	require.NoError(t, d.Publish(context.Background(), 7, compiler.New(s).CompileAll(), nil))
	rd, err := d.DropReader()
	require.NoError(t, err)
	defer rd.Close()
	src, dst := netip.MustParseAddr("198.18.66.9"), netip.MustParseAddr("198.18.1.10")
	f := frame{src: src, dst: dst, proto: 6, sport: 40001, dport: 80, tcpFlags: 0x02}
	r, err := d.Run(f.build(), "eni-web1", model.Ingress)
	require.NoError(t, err)
	require.False(t, r.Accept)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, err := rd.Read(ctx)
	require.NoError(t, err)
	require.NotNil(t, ev.RuleIndex)
	assert.Equal(t, DropEvent{KernelNS: ev.KernelNS, ENI: "eni-web1", Ifindex: ev.Ifindex, Direction: model.Ingress,
		Reason: dataplane.ReasonRule, Proto: 6, Src: src, Dst: dst, Sport: 40001, Dport: 80, SgID: "sg-web",
		RuleIndex: ev.RuleIndex, Entry: 0, Generation: 7}, ev)
	assert.Equal(t, 0, *ev.RuleIndex)
	assert.Contains(t, ev.String(), "sg-web rule 0")

	ok := frame{src: netip.MustParseAddr("203.0.113.9"), dst: dst, proto: 6, sport: 40002, dport: 443}
	for range 3 {
		_, err := d.Run(ok.build(), "eni-web1", model.Ingress)
		require.NoError(t, err)
	}
	hits, err := d.Hits()
	require.NoError(t, err)
	tab := compiler.New(s).CompileAll()["eni-web1"].Ingress
	web := dataplane.VerdictOf(tab, 2).Explain("eni-web1", model.Ingress, tab)
	require.Equal(t, model.Accept, web.Verdict)
	require.NotEmpty(t, web.SgID)
	assert.Contains(t, hits, Hit{ENI: "eni-web1", Direction: model.Ingress, Generation: 7, Entry: 2, Packets: 3, Decision: &web})
}

// The daemon publishes to the kernel dataplane through control.Dataplane.
var _ control.Dataplane = (*Dataplane)(nil)

// A change that leaves one direction's kernel table as it was (here only a description changes)
// switches the other direction alone: the unchanged one keeps its map, its generation and its hit
// counters, and takes the new provenance.
func TestUnchangedDirectionStays(t *testing.T) {
	d := loadOrSkip(t)
	ctx := context.Background()
	s := demoState(t)
	require.NoError(t, d.Publish(ctx, 7, compiler.New(s).CompileAll(), nil))
	ok := frame{src: netip.MustParseAddr("203.0.113.9"), dst: netip.MustParseAddr("198.18.1.10"), proto: 6, sport: 40002, dport: 443}
	for range 3 {
		r, err := d.Run(ok.build(), "eni-web1", model.Ingress)
		require.NoError(t, err)
		require.True(t, r.Accept)
	}
	d.mu.Lock()
	before := d.live[d.slots["eni-web1"]]
	d.mu.Unlock()

	// sg-web: the same ingress rules with new descriptions; egress gains a DROP first.
	g, _ := s.SG("sg-web")
	ng := *g
	ng.Ingress = slices.Clone(g.Ingress)
	for i := range ng.Ingress {
		ng.Ingress[i].Desc = "renamed"
	}
	ng.Egress = append([]model.Rule{{IPProtocol: "udp", CidrIP: "0.0.0.0/0", PortRange: "53", Action: "DROP"}}, g.Egress...)
	b := s.Edit()
	require.NoError(t, b.PutSG(ng))
	next := compiler.New(b.State()).CompileAll()
	require.NoError(t, d.Publish(ctx, 8, map[string]*compiler.Tables{"eni-web1": next["eni-web1"]}, nil))

	d.mu.Lock()
	after := d.live[d.slots["eni-web1"]]
	d.mu.Unlock()
	assert.Same(t, before.maps[0], after.maps[0], "ingress map kept")
	assert.Equal(t, [2]uint64{7, 8}, after.gens)
	assert.NotSame(t, before.maps[1], after.maps[1], "egress switched")
	assert.Same(t, next["eni-web1"].Ingress, after.tables[0], "provenance follows the new table")

	hits, err := d.Hits()
	require.NoError(t, err)
	tab := next["eni-web1"].Ingress
	web := dataplane.VerdictOf(tab, 2).Explain("eni-web1", model.Ingress, tab)
	require.NotNil(t, web.Rule)
	assert.Equal(t, "renamed", web.Rule.Desc)
	assert.Contains(t, hits, Hit{ENI: "eni-web1", Direction: model.Ingress, Generation: 7, Entry: 2, Packets: 3, Decision: &web},
		"the unchanged table's counters survive")

	dns := frame{src: netip.MustParseAddr("198.18.1.10"), dst: netip.MustParseAddr("198.18.9.9"), proto: 17, sport: 40003, dport: 53}
	r, err := d.Run(dns.build(), "eni-web1", model.Egress)
	require.NoError(t, err)
	assert.Equal(t, Result{Accept: false, Reason: dataplane.ReasonRule, Entry: 0}, r, "the new egress table is in force")
}

// One change is pending at a time: a second Stage waits until the first is switched, and then stages
// against what the first put in force. A staged change switches once.
func TestStagesQueue(t *testing.T) {
	d := loadOrSkip(t)
	ctx := context.Background()
	s := demoState(t)
	t0 := compiler.New(s).CompileAll()
	require.NoError(t, d.Publish(ctx, 1, t0, nil))
	// t1: eni-web1's ingress drops everything (sg-lockdown first).
	b := s.Edit()
	require.NoError(t, b.SetENISGs("eni-web1", []string{"sg-lockdown", "sg-web"}))
	t1 := compiler.New(b.State()).CompileAll()

	a, err := d.Stage(ctx, 2, map[string]*compiler.Tables{"eni-web1": t1["eni-web1"]}, nil)
	require.NoError(t, err)
	second := make(chan dataplane.Staged, 1)
	go func() {
		st, err := d.Stage(ctx, 3, map[string]*compiler.Tables{"eni-web1": t0["eni-web1"]}, nil)
		assert.NoError(t, err)
		second <- st
	}()
	select {
	case <-second:
		t.Fatal("a second Stage went ahead while the first was pending")
	case <-time.After(200 * time.Millisecond):
	}
	require.NoError(t, a.Switch())
	require.Error(t, a.Switch(), "a staged change switches once")
	bst := <-second
	require.NoError(t, bst.Switch())

	web := frame{src: netip.MustParseAddr("203.0.113.9"), dst: netip.MustParseAddr("198.18.1.10"), proto: 6, sport: 40002, dport: 443}
	r, err := d.Run(web.build(), "eni-web1", model.Ingress)
	require.NoError(t, err)
	assert.True(t, r.Accept, "the second change (back to t0) is in force")
	d.mu.Lock()
	live := d.live[d.slots["eni-web1"]]
	d.mu.Unlock()
	assert.Equal(t, uint64(3), live.gens[0])
	assert.Same(t, t0["eni-web1"].Ingress, live.tables[0])

	c, err := d.Stage(ctx, 4, map[string]*compiler.Tables{"eni-web1": t1["eni-web1"]}, nil)
	require.NoError(t, err)
	c.Discard()
	require.Error(t, c.Switch(), "a discarded change does not switch")
	r, err = d.Run(web.build(), "eni-web1", model.Ingress)
	require.NoError(t, err)
	assert.True(t, r.Accept, "the discarded change never took effect")
}

// TestDiscardGivesBackNewSlots: a discarded change (its commit failed) leaves no slot taken for the
// ENIs it would have added, in this process or in eni_names for the next one; an ID of the model's
// longest (64 bytes) takes a slot like any other.
func TestDiscardGivesBackNewSlots(t *testing.T) {
	d := loadOrSkip(t)
	ctx := context.Background()
	s := demoState(t)
	tables := compiler.New(s).CompileAll()
	require.NoError(t, d.Publish(ctx, 1, tables, nil))
	before := d.ENIs()
	long := strings.Repeat("e", 64)
	added := map[string]*compiler.Tables{"eni-new": tables["eni-web1"], long: tables["eni-web1"]}
	st, err := d.Stage(ctx, 2, added, nil)
	require.NoError(t, err)
	assert.Subset(t, d.ENIs(), []string{"eni-new", long}, "staged: slots taken")
	st.Discard()
	assert.Equal(t, before, d.ENIs(), "discarded: the new ENIs' slots given back")
	names, err := arrayValues[sgEniname](d.objs.EniNames, int(maxSlots))
	require.NoError(t, err)
	for _, n := range names {
		assert.NotContains(t, []string{"eni-new", long}, cString(n.Name[:]), "eni_names names no discarded ENI")
	}

	require.NoError(t, d.Publish(ctx, 3, added, nil))
	web := frame{src: netip.MustParseAddr("203.0.113.9"), dst: netip.MustParseAddr("198.18.1.10"), proto: 6, sport: 40002, dport: 443}
	r, err := d.Run(web.build(), long, model.Ingress)
	require.NoError(t, err)
	assert.True(t, r.Accept, "the 64-byte ID's tables are in force")
	d.mu.Lock()
	slot := d.slots[long]
	d.mu.Unlock()
	names, err = arrayValues[sgEniname](d.objs.EniNames, int(maxSlots))
	require.NoError(t, err)
	assert.Equal(t, long, cString(names[slot].Name[:]), "named in full, without a NUL")
}
