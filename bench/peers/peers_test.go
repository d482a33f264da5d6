package peers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

const streamPort = 9999

// TestMain lets StartProbe run this test binary as its sender process.
func TestMain(m *testing.M) {
	ProbeSenderMain()
	os.Exit(m.Run())
}

// needNetns skips when the machine cannot build the path (not root, no iproute2), unless
// SGSIM_REQUIRE_KERNEL=1 makes that a failure.
func needNetns(t testing.TB, tools ...string) {
	t.Helper()
	missing := ""
	if os.Geteuid() != 0 {
		missing = "root"
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil && missing == "" {
			missing = tool
		}
	}
	if missing == "" {
		return
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		t.Fatalf("needs %s (SGSIM_REQUIRE_KERNEL=1)", missing)
	}
	t.Skipf("needs %s", missing)
}

func TestScripts(t *testing.T) {
	rules := []Rule{
		{Src: netip.MustParsePrefix("10.0.0.0/8"), Proto: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 90}, Accept: true},
		{Src: netip.MustParsePrefix("10.1.0.0/16"), Proto: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 90}, Accept: true},
		{Src: netip.MustParsePrefix("10.2.0.0/16"), Proto: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 90}, Accept: true},
		{Src: netip.MustParsePrefix("0.0.0.0/0"), Proto: model.ProtoICMP, Accept: false},
		{Src: netip.MustParsePrefix("192.0.2.0/24"), Proto: model.ProtoAll, Accept: true},
	}
	ipt := string(IptablesScript("fw0", rules))
	assert.Contains(t, ipt, "-A INPUT -i fw0 -j sgsim-sg\n")
	assert.Contains(t, ipt, "-A sgsim-sg -s 10.0.0.0/8 -p tcp --dport 80:90 -j ACCEPT\n")
	assert.Contains(t, ipt, "-A sgsim-sg -s 0.0.0.0/0 -p icmp -j DROP\n")
	assert.Contains(t, ipt, "-A sgsim-sg -s 192.0.2.0/24 -j ACCEPT\n")
	assert.True(t, strings.HasSuffix(ipt, "-A sgsim-sg -j DROP\nCOMMIT\n"), "chain must end in the implicit DROP")

	plain := string(NftScript("fw0", rules, false))
	assert.Equal(t, 6, strings.Count(plain, "    ip saddr")+strings.Count(plain, "    drop"), "one nft rule per rule, plus the final drop")
	sets := string(NftScript("fw0", rules, true))
	// The three tcp 80-90 accepts merge; 10.1/16 and 10.2/16 are inside 10/8 and drop out of the set.
	assert.Contains(t, sets, "ip saddr 10.0.0.0/8 tcp dport 80-90 accept\n")
	assert.NotContains(t, sets, "10.1.0.0/16")
	assert.Contains(t, sets, "ip saddr 0.0.0.0/0 ip protocol icmp drop\n")
}

func TestSyntheticTableEndsWithStreamRule(t *testing.T) {
	src := netip.MustParseAddr("198.18.100.1")
	ts, err := SyntheticTables(100, src, streamPort, 1)
	require.NoError(t, err)
	tab := ts.Ingress
	require.Len(t, tab.Entries, 101) // 100 rules + implicit drop
	rules := RulesFromTable(tab)
	last := rules[len(rules)-1]
	assert.Equal(t, netip.PrefixFrom(src, 32), last.Src)
	for _, r := range rules[:len(rules)-1] {
		assert.False(t, r.Src.Contains(src), "no earlier rule may decide the stream: %v", r.Src)
	}
}

// testPath builds the veth path for a test that needs tools; it is flushed and removed when the test
// ends, and the context it returns bounds the test's work on it.
func testPath(t *testing.T, tools ...string) (context.Context, *Path) {
	t.Helper()
	needNetns(t, tools...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	p, err := NewPath(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.Close()) })
	t.Cleanup(func() { assert.NoError(t, p.Flush(ctx)) }) // before Close: cleanups run last first
	return ctx, p
}

// streamTables returns synthetic tables of n rules from the path's generator whose stream rule (the
// last before the default) accepts, or with drop drops.
func streamTables(t *testing.T, p *Path, n int, drop bool) *compiler.Tables {
	t.Helper()
	tables, err := SyntheticTables(n, netip.MustParseAddr(p.GenAddr), streamPort, 7)
	require.NoError(t, err)
	if drop {
		last := &tables.Ingress.Entries[len(tables.Ingress.Entries)-2]
		last.Action, last.Rule.Action = model.Drop, model.Drop
	}
	return tables
}

// streamThrough loads fw with tables on p and returns what a short stream through it did.
func streamThrough(ctx context.Context, t *testing.T, p *Path, fw Firewall, tables *compiler.Tables) Result {
	t.Helper()
	_, err := p.Load(ctx, fw, tables)
	require.NoError(t, err)
	res, err := p.StreamUDP(ctx, 200*time.Millisecond, 64, streamPort)
	require.NoError(t, err)
	return res
}

// TestPeersEnforce loads each peer with the same table on a real veth path and checks that the stream is
// delivered when its rule says ACCEPT and not at all when it says DROP.
func TestPeersEnforce(t *testing.T) {
	ctx, p := testPath(t, "iptables-legacy-restore", "iptables-nft-restore", "nft")
	acceptTables, dropTables := streamTables(t, p, 200, false), streamTables(t, p, 200, true)

	for _, fw := range []Firewall{IptablesLegacy, IptablesNft, Nftables, NftablesWithSet, SgsimTC} {
		t.Run(string(fw), func(t *testing.T) {
			require.NoError(t, p.Flush(ctx))
			res := streamThrough(ctx, t, p, fw, acceptTables)
			assert.Greater(t, res.Received, uint64(0), "ACCEPT rule: the stream must pass")

			res = streamThrough(ctx, t, p, fw, dropTables)
			assert.Greater(t, res.Sent, uint64(0))
			assert.Zero(t, res.Received, "DROP rule: nothing may pass")
		})
	}
}

// skipIfNoTCX skips when err says the kernel has no TCX, unless SGSIM_REQUIRE_KERNEL=1.
func skipIfNoTCX(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		t.Fatalf("kernel lacks TCX (SGSIM_REQUIRE_KERNEL=1): %v", err)
	}
	t.Skipf("kernel lacks TCX: %v", err)
}

// TestEmptyTCProgram: Load(TCEmpty) puts one program on each TCX hook of the generator's end, which
// passes a stream whatever the rules; Flush takes both off, and sgsim's program enforces there after it.
func TestEmptyTCProgram(t *testing.T) {
	ctx, p := testPath(t, "iptables-legacy", "iptables-nft", "nft") // Flush runs them
	dropTables := streamTables(t, p, 20, true)
	attached := func() (n int) {
		hooks, err := p.HookPrograms()
		require.NoError(t, err)
		for _, ids := range hooks {
			n += len(ids)
		}
		return n
	}

	_, err := p.Load(ctx, TCEmpty, dropTables)
	skipIfNoTCX(t, err)
	require.NoError(t, err)
	assert.Equal(t, 2, attached(), "one program on each hook")
	res, err := p.StreamUDP(ctx, 200*time.Millisecond, 64, streamPort)
	require.NoError(t, err)
	assert.Greater(t, res.Received, uint64(0), "the empty program passes what the rules would drop")

	require.NoError(t, p.Flush(ctx))
	assert.Zero(t, attached(), "Flush detaches it")
	res = streamThrough(ctx, t, p, SgsimTC, dropTables)
	assert.Greater(t, res.Sent, uint64(0))
	assert.Zero(t, res.Received, "sgsim's DROP rule after the empty program is gone")
}

// benchPath builds the veth path for a benchmark that needs tools, removed when it ends.
func benchPath(ctx context.Context, b *testing.B, tools ...string) *Path {
	b.Helper()
	needNetns(b, tools...)
	p, err := NewPath(ctx)
	require.NoError(b, err)
	b.Cleanup(func() { assert.NoError(b, p.Close()) })
	return p
}

// BenchmarkPeerUDP measures delivered packets/s and CPU per packet of a 64-byte UDP stream through each
// peer at 100, 1k and 10k rules, plus the time to load the whole table. CPU is the packet path's
// (Result.PathCPUPerPacket); filter-cpu-ns/pkt subtracts the no-firewall path measured just before at the
// same rule count, leaving what the filter adds per packet. Run as root:
//
//	go test -run '^$' -bench PeerUDP -benchtime 1x ./bench/peers/
func BenchmarkPeerUDP(b *testing.B) {
	ctx := context.Background()
	p := benchPath(ctx, b, "iptables-legacy-restore", "nft")
	for _, n := range []int{100, 1000, 10000} {
		tables, err := SyntheticTables(n, netip.MustParseAddr(p.GenAddr), streamPort, 42)
		require.NoError(b, err)
		var baseline time.Duration // the path without a firewall, at this rule count
		for _, fw := range []Firewall{None, IptablesLegacy, IptablesNft, Nftables, NftablesWithSet, SgsimTC} {
			b.Run(fmt.Sprintf("%s/rules=%d", fw, n), func(b *testing.B) {
				require.NoError(b, p.Flush(ctx))
				var load time.Duration
				var res Result
				for i := 0; i < b.N; i++ {
					load, err = p.Load(ctx, fw, tables)
					require.NoError(b, err)
					res, err = p.StreamUDP(ctx, time.Second, 64, streamPort)
					require.NoError(b, err)
				}
				path := res.PathCPUPerPacket()
				if fw == None {
					baseline = path
				}
				b.ReportMetric(res.PPS(), "pkt/s")
				b.ReportMetric(float64(path.Nanoseconds()), "path-cpu-ns/pkt")
				b.ReportMetric(float64((path - baseline).Nanoseconds()), "filter-cpu-ns/pkt")
				b.ReportMetric(float64(load.Microseconds())/1000, "load-ms")
				b.ReportMetric(float64(res.Sent-res.Received)/float64(max(res.Sent, 1)), "loss")
			})
		}
	}
}

// BenchmarkPeerUDPRatio measures the veth path's rate at 10k rules with sgsim's TC program against no
// firewall, against an empty TC program on the same hooks (what any TC program costs the path before it
// does anything) and against iptables-legacy, in interleaved rounds, so that a drift of the machine's
// speed lands on all of them alike. No firewall, the empty program and sgsim, whose ratios are near 1
// and so the ones noise can flip, run next to each other in every round, in turns (none, empty, sgsim;
// then sgsim, empty, none), so that whatever a place in the order does to a stream falls on the ends
// equally (the empty program, always in the middle, keeps whatever the middle place does: its two
// ratios are the less exact); iptables-legacy, an order of magnitude slower, runs after them in every
// fourth round. On a kernel without TCX the empty program is left out (sgsim then attaches with
// clsact, another hook). It reports each ratio's median over the rounds, and the least of sgsim's.
// BenchmarkPeerUDP measures each firewall once, one after another.
func BenchmarkPeerUDPRatio(b *testing.B) {
	ctx := context.Background()
	p := benchPath(ctx, b, "iptables-legacy-restore", "nft")
	// Many short rounds rather than a few long ones: a stream's rate moves a lot from one stream to the
	// next whatever the firewall, so a median that holds from run to run wants many ratios.
	const rules, rounds, iptablesEvery, stream = 10000, 24, 4, 150 * time.Millisecond
	tables, err := SyntheticTables(rules, netip.MustParseAddr(p.GenAddr), streamPort, 42)
	require.NoError(b, err)
	middle := []Firewall{TCEmpty}
	if _, err := p.Load(ctx, TCEmpty, tables); errors.Is(err, ebpf.ErrNotSupported) {
		b.Logf("no empty-program baseline: %v", err)
		middle = nil
	} else {
		require.NoError(b, err)
	}
	b.Run(fmt.Sprintf("rules=%d", rules), func(b *testing.B) {
		var ofNone, ofEmpty, emptyOfNone, ofIptables, noneCPU []float64
		for i := 0; i < b.N; i++ {
			for round := range rounds {
				pps := map[Firewall]float64{}
				order := slices.Concat([]Firewall{None}, middle, []Firewall{SgsimTC})
				if round%2 == 1 {
					slices.Reverse(order)
				}
				if round%iptablesEvery == iptablesEvery-1 {
					order = append(order, IptablesLegacy)
				}
				for _, fw := range order {
					require.NoError(b, p.Flush(ctx))
					_, err := p.Load(ctx, fw, tables)
					require.NoError(b, err)
					res, err := p.StreamUDP(ctx, stream, 64, streamPort)
					require.NoError(b, err)
					require.Positive(b, res.PPS(), "%s delivered nothing", fw)
					pps[fw] = res.PPS()
					if fw == None {
						noneCPU = append(noneCPU, float64(res.PathCPUPerPacket().Nanoseconds()))
					}
				}
				ofNone = append(ofNone, pps[SgsimTC]/pps[None])
				if v, ok := pps[TCEmpty]; ok {
					ofEmpty = append(ofEmpty, pps[SgsimTC]/v)
					emptyOfNone = append(emptyOfNone, v/pps[None])
				}
				if v, ok := pps[IptablesLegacy]; ok {
					ofIptables = append(ofIptables, pps[SgsimTC]/v)
				}
			}
		}
		for _, r := range [][]float64{ofNone, ofEmpty, emptyOfNone, ofIptables, noneCPU} {
			slices.Sort(r)
		}
		if len(middle) > 0 {
			// What the programs themselves cost on the real path, beside the rates: the kernel's
			// run-time statistics, on for these two streams only (they add two clock reads to each run).
			emptyRun := hookRunNS(ctx, b, p, TCEmpty, tables, stream)
			sgsimRun := hookRunNS(ctx, b, p, SgsimTC, tables, stream)
			b.ReportMetric(emptyRun, "empty-run-ns/pkt")
			b.ReportMetric(sgsimRun, "sgsim-run-ns/pkt")
			b.ReportMetric(median(noneCPU), "none-path-cpu-ns/pkt")
			// The rate sgsim would keep of no firewall's where the path is bound by its CPU: no
			// firewall's path CPU per packet over that plus sgsim's run time.
			b.ReportMetric(median(noneCPU)/(median(noneCPU)+sgsimRun), "of-none-cpu")
		}
		require.NoError(b, p.Flush(ctx))
		b.ReportMetric(median(ofNone), "of-none-median")
		b.ReportMetric(ofNone[0], "of-none-least")
		if len(ofEmpty) > 0 {
			b.ReportMetric(median(ofEmpty), "of-empty-median")
			b.ReportMetric(median(emptyOfNone), "empty-of-none-median")
		}
		b.ReportMetric(median(ofIptables), "x-iptables-median")
		b.ReportMetric(ofIptables[0], "x-iptables-least")
	})
}

// hookRunNS loads fw, streams through it for dur with the kernel's run-time statistics on and returns
// the mean run time, in ns, of a run of the programs on the hooks fw attached to.
func hookRunNS(ctx context.Context, b *testing.B, p *Path, fw Firewall, tables *compiler.Tables, dur time.Duration) float64 {
	b.Helper()
	require.NoError(b, p.Flush(ctx))
	_, err := p.Load(ctx, fw, tables)
	require.NoError(b, err)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	require.NoError(b, err)
	defer stats.Close()
	runs0, took0, err := p.HookRunTime()
	require.NoError(b, err)
	res, err := p.StreamUDP(ctx, dur, 64, streamPort)
	require.NoError(b, err)
	require.Positive(b, res.Received, "%s delivered nothing", fw)
	runs1, took1, err := p.HookRunTime()
	require.NoError(b, err)
	require.Greater(b, runs1, runs0, "%s's programs ran", fw)
	return float64(took1-took0) / float64(runs1-runs0)
}

// median is the median of sorted (the mean of the middle two for an even count).
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func TestEnforcedAt(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	sent := ms(0, 1, 2, 3, 4, 5, 6)
	for _, tc := range []struct {
		name      string
		delivered []bool
		t0        time.Duration
		cut       bool
		at, res   time.Duration
		err       string
	}{
		{name: "cut", delivered: []bool{true, true, false, true, false, false, false}, t0: 2 * time.Millisecond, cut: true,
			at: 2 * time.Millisecond, res: time.Millisecond},
		{name: "cut at once", delivered: []bool{true, true, false, false, false, false, false}, t0: 2 * time.Millisecond, cut: true,
			res: time.Millisecond},
		{name: "cut before the change", delivered: []bool{true, false, false, false, false, false, false}, t0: 3 * time.Millisecond, cut: true,
			err: "before the change"},
		{name: "not cut yet", delivered: []bool{true, true, true, true, true, true, true}, cut: true, err: "not cut yet"},
		{name: "open", delivered: []bool{false, false, false, false, true, false, true}, t0: 2 * time.Millisecond,
			at: 2 * time.Millisecond, res: time.Millisecond},
		{name: "not open yet", delivered: make([]bool, 7), err: "not open yet"},
		{name: "open before the change", delivered: []bool{false, false, true, true, true, true, true}, t0: 3 * time.Millisecond,
			err: "before the change"},
		{name: "open from the start", delivered: []bool{true, true, true, true, true, true, true}, err: "open before the change"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at, res, err := enforcedAt(sent, tc.delivered, 0, tc.t0, tc.cut)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.at, at)
			assert.Equal(t, tc.res, res)
		})
	}
}

// updateChanger returns the rule change for fw on p: cut=true loads the rules with the stream's DROP
// inserted ahead of its ACCEPT, cut=false the original rules, each as a whole-table replace the way the
// tool does it (iptables-restore, nft -f, a table publish, a ModifySecurityGroupPolicy call). The table
// is loaded once before it returns; cleanup undoes what it set up.
func updateChanger(ctx context.Context, tb testing.TB, p *Path, fw Firewall, rules []model.Rule) (change func(cut bool) Change, cleanup func() error) {
	cutRules := WithStreamDrop(rules)
	if fw == SgsimAPI {
		d, err := p.StartDaemon(ctx, tb.TempDir(), rules, 2*len(rules)+1)
		require.NoError(tb, err)
		// Calls are signed ahead, in batches, and the collector run before the daemon is timed: see
		// Daemon.SignModify.
		var signed [2][]SignedModify
		return func(cut bool) Change {
			k, rs := 0, rules
			if cut {
				k, rs = 1, cutRules
			}
			if len(signed[k]) == 0 {
				for range updateSamples / 2 {
					signed[k] = append(signed[k], d.SignModify(rs))
				}
				runtime.GC()
			}
			call := signed[k][0]
			signed[k] = signed[k][1:]
			return func(ctx context.Context) (time.Duration, time.Duration, error) { return d.Send(ctx, call) }
		}, d.Close
	}
	open, err := CompileRules(rules)
	require.NoError(tb, err)
	closed, err := CompileRules(cutRules)
	require.NoError(tb, err)
	_, err = p.Load(ctx, fw, open)
	require.NoError(tb, err)
	return func(cut bool) Change {
		return func(ctx context.Context) (time.Duration, time.Duration, error) {
			if cut {
				return p.load(ctx, fw, closed)
			}
			return p.load(ctx, fw, open)
		}
	}, func() error { return p.Flush(ctx) }
}

// updateSamples is how many changes BenchmarkPeerUpdate times per peer and size.
const updateSamples = 20

const (
	probePort     = 9998
	probeInterval = 200 * time.Microsecond
	probeSettle   = 100 * time.Millisecond
)

// TestUpdateEnforced cuts and reopens the probe stream through each kind of update and checks that every
// reading is consistent: enforced no earlier than the change was made, within the timeout.
func TestUpdateEnforced(t *testing.T) {
	needNetns(t, "iptables-legacy-restore", "nft")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := NewPath(ctx)
	require.NoError(t, err)
	defer func() { assert.NoError(t, p.Close()) }()
	rules := SyntheticRules(50, netip.MustParseAddr(p.GenAddr), probePort, 3)
	for _, fw := range []Firewall{IptablesLegacy, Nftables, SgsimAPI} {
		t.Run(string(fw), func(t *testing.T) {
			change, cleanup := updateChanger(ctx, t, p, fw, rules)
			defer func() { assert.NoError(t, cleanup()) }()
			pr, err := p.StartProbe(ctx, probePort, probeInterval)
			require.NoError(t, err)
			defer func() { assert.NoError(t, pr.Stop()) }()
			require.NoError(t, pr.WaitOpen(ctx, probeSettle, 5*time.Second))
			for _, cut := range []bool{true, false} {
				r, err := pr.Measure(ctx, cut, probeSettle, 5*time.Second, change(cut))
				require.NoError(t, err, "cut=%v", cut)
				assert.Positive(t, r.Call)
				assert.Positive(t, r.Resolution)
				assert.Less(t, r.Enforced, 5*time.Second)
			}
		})
	}
}

// BenchmarkPeerUpdate measures a rule change end to end at 1k and 10k rules: the stream's DROP inserted
// ahead of its ACCEPT, then taken out again, each a whole-table replace the way each tool does it, while
// a paced probe stream (one datagram every 200 µs) runs through the path. call-ms is until the command or
// API call returned; enforce-ms until the first datagram with the new verdict was sent, an upper bound
// exact to within res-ms (the send gap around the switch). p50 and max over updateSamples changes. Run as
// root:
//
//	go test -run '^$' -bench PeerUpdate -benchtime 1x ./bench/peers/
func BenchmarkPeerUpdate(b *testing.B) {
	ctx := context.Background()
	p := benchPath(ctx, b, "iptables-legacy-restore", "iptables-nft-restore", "nft")
	for _, n := range []int{1000, 10000} {
		rules := SyntheticRules(n, netip.MustParseAddr(p.GenAddr), probePort, 42)
		for _, fw := range []Firewall{IptablesLegacy, IptablesNft, Nftables, NftablesWithSet, SgsimTC, SgsimAPI} {
			b.Run(fmt.Sprintf("%s/rules=%d", fw, n), func(b *testing.B) {
				change, cleanup := updateChanger(ctx, b, p, fw, rules)
				defer func() { require.NoError(b, cleanup()) }()
				pr, err := p.StartProbe(ctx, probePort, probeInterval)
				require.NoError(b, err)
				defer func() { require.NoError(b, pr.Stop()) }()
				require.NoError(b, pr.WaitOpen(ctx, probeSettle, 10*time.Second))
				var calls, enforced, res []time.Duration
				for i := 0; i < b.N; i++ {
					calls, enforced, res = nil, nil, nil
					for s := range updateSamples {
						cut := s%2 == 0
						r, err := pr.Measure(ctx, cut, probeSettle, 10*time.Second, change(cut))
						require.NoError(b, err, "sample %d (cut=%v)", s, cut)
						calls, enforced, res = append(calls, r.Call), append(enforced, r.Enforced), append(res, r.Resolution)
					}
				}
				ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
				for _, ds := range [][]time.Duration{calls, enforced, res} {
					slices.Sort(ds)
				}
				b.ReportMetric(ms(calls[len(calls)/2]), "call-p50-ms")
				b.ReportMetric(ms(calls[len(calls)-1]), "call-max-ms")
				b.ReportMetric(ms(enforced[len(enforced)/2]), "enforce-p50-ms")
				b.ReportMetric(ms(enforced[len(enforced)-1]), "enforce-max-ms")
				b.ReportMetric(ms(res[len(res)/2]), "res-p50-ms")
				b.ReportMetric(ms(res[len(res)-1]), "res-max-ms")
			})
		}
	}
}
