package dataplane_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/bench"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

const classbenchDir = "../../shared/data/classbench"

// classbenchFiles lists the shared ClassBench sets, skipping (or failing under CI) when they are absent.
func classbenchFiles(t testing.TB) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(classbenchDir, "*_*k"))
	if len(files) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no ClassBench sets in %s (CI=true: shared data is required)", classbenchDir)
		}
		t.Skipf("no ClassBench sets in %s", classbenchDir)
	}
	return files
}

// agree checks that the classifier and the reference give the same entry, hence the same explained verdict.
func agree(t *testing.T, tab *compiler.Table, pkts []dataplane.Packet) {
	t.Helper()
	c := dataplane.NewClassifier(tab)
	ref := dataplane.NewLinearTable(tab)
	bad := 0
	for i := range pkts {
		p := &pkts[i]
		want, got := ref.Lookup(p), c.Lookup(p)
		if want != got {
			bad++
			if bad <= 5 {
				t.Errorf("packet %d %+v: classifier entry %d (%+v), reference %d (%+v)", i, *p, got,
					dataplane.VerdictOf(tab, got), want, dataplane.VerdictOf(tab, want))
			}
			continue
		}
		vw, vg := dataplane.VerdictOf(tab, want), dataplane.VerdictOf(tab, got)
		if vw.Action != vg.Action || vw.SgID != vg.SgID || vw.RuleIndex != vg.RuleIndex {
			t.Fatalf("packet %d: same entry, different verdicts %+v %+v", i, vw, vg)
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d packets disagree", bad, len(pkts))
	}
}

func TestClassifierClassBench(t *testing.T) {
	for _, f := range classbenchFiles(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			st, err := bench.LoadClassBench(f, 0, 1)
			require.NoError(t, err)
			tab, err := bench.IngressTable(st)
			require.NoError(t, err)
			// 1k sets: every corner; 10k sets: bounded so the whole test stays fast under -race.
			maxCorner, nRandom := 0, 2000
			if strings.HasSuffix(f, "10k") {
				maxCorner, nRandom = 400, 100
			}
			agree(t, tab, bench.Packets(tab, maxCorner, nRandom, 1))
		})
	}
}

// TestClassifierSplitSGs checks provenance across several SGs: the same rules split over 4 SGs.
func TestClassifierSplitSGs(t *testing.T) {
	files := classbenchFiles(t)
	st, err := bench.LoadClassBench(files[0], 1000, 4)
	require.NoError(t, err)
	tab, err := bench.IngressTable(st)
	require.NoError(t, err)
	agree(t, tab, bench.Packets(tab, 0, 1000, 2))
}

// randomState builds a random mixed IPv4/IPv6 topology: nSG SGs with cidr, sgId and any-remote rules,
// and ENIs with v4 and v6 addresses in them, so sgId rows expand to member host prefixes.
func randomState(t testing.TB, rng *rand.Rand, nSG, rulesPer int) (*model.State, error) {
	t.Helper()
	topo := model.Topology{Accounts: []model.Account{{AppID: "1"}}}
	addr := func() string {
		if rng.IntN(2) == 0 {
			return netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(4)), byte(rng.IntN(8))}).String()
		}
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(8))}).String()
	}
	protos := []string{"", "tcp", "udp", "icmp", "icmpv6", "ALL"}
	for g := 0; g < nSG; g++ {
		sg := model.SecurityGroup{SgID: fmt.Sprintf("sg-%d", g), AppID: "1"}
		for d := 0; d < 2; d++ {
			var rules []model.Rule
			for i := 0; i < rulesPer; i++ {
				r := model.Rule{Action: []string{"ACCEPT", "DROP"}[rng.IntN(2)], IPProtocol: protos[rng.IntN(len(protos))]}
				switch rng.IntN(4) {
				case 0:
				case 1:
					r.SgID = fmt.Sprintf("sg-%d", rng.IntN(nSG))
				default:
					a := netip.MustParseAddr(addr())
					r.CidrIP = netip.PrefixFrom(a, rng.IntN(a.BitLen()+1)).Masked().String()
					if a.Is6() && rng.IntN(2) == 0 {
						r.CidrIP = netip.PrefixFrom(a, 120+rng.IntN(9)).Masked().String()
					}
				}
				if (r.IPProtocol == "tcp" || r.IPProtocol == "udp") && rng.IntN(2) == 0 {
					lo := 1 + rng.IntN(100)
					r.PortRange = fmt.Sprintf("%d-%d", lo, lo+rng.IntN(20))
				}
				rules = append(rules, r)
			}
			if d == 0 {
				sg.Ingress = rules
			} else {
				sg.Egress = rules
			}
		}
		topo.SecurityGroups = append(topo.SecurityGroups, sg)
	}
	taken := map[string]bool{} // a private IP is one ENI's (SPEC §8)
	unique := func() string {
		for {
			if a := addr(); !taken[a] {
				taken[a] = true
				return a
			}
		}
	}
	for n := 0; n < 4; n++ {
		eni := model.NetworkInterface{NetworkInterfaceID: fmt.Sprintf("eni-%d", n), AppID: "1",
			PrivateIPAddresses: []string{unique(), unique()}}
		for _, g := range rng.Perm(nSG)[:rng.IntN(nSG+1)] {
			eni.SgIDs = append(eni.SgIDs, fmt.Sprintf("sg-%d", g))
		}
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, eni)
	}
	return model.NewState(topo)
}

// randomPackets draws packets near the small address space randomState uses, plus fully random ones.
func randomPackets(rng *rand.Rand, n int) []dataplane.Packet {
	out := make([]dataplane.Packet, n)
	protos := []uint8{model.IPProtoTCP, model.IPProtoUDP, model.IPProtoICMP, model.IPProtoICMPv6, 47}
	for i := range out {
		var a netip.Addr
		switch rng.IntN(5) {
		case 0:
			a = netip.AddrFrom4([4]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), 0, 1})
		case 1:
			a = netip.AddrFrom16([16]byte{byte(rng.IntN(256)), 15: 1})
		case 2:
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(10))})
		default:
			a = netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(5)), byte(rng.IntN(10))})
		}
		out[i] = dataplane.Packet{Remote: a, Proto: protos[rng.IntN(len(protos))], Port: uint16(rng.IntN(130)), HasPort: rng.IntN(8) != 0}
	}
	return out
}

func TestClassifierRandomMixed(t *testing.T) {
	for seed := uint64(1); seed <= 40; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		st, err := randomState(t, rng, 1+rng.IntN(5), 1+rng.IntN(30))
		require.NoError(t, err, "seed %d", seed)
		for _, ts := range compiler.New(st).CompileAll() {
			for _, tab := range []*compiler.Table{ts.Ingress, ts.Egress} {
				pkts := append(randomPackets(rng, 500), bench.Packets(tab, 0, 0, seed)...)
				agree(t, tab, pkts)
			}
		}
	}
}

func TestClassifierEdgeAddresses(t *testing.T) {
	rules := []model.Rule{
		{IPProtocol: "tcp", CidrIP: "0.0.0.0/1", PortRange: "1-65535", Action: "DROP"},
		{IPProtocol: "udp", CidrIP: "255.255.255.255/32", Action: "ACCEPT"},
		{IPProtocol: "icmpv6", CidrIP: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", Action: "ACCEPT"},
		{IPProtocol: "icmp", CidrIP: "::/0", Action: "ACCEPT"},
		{IPProtocol: "icmpv6", Action: "DROP"},
		{Action: "ACCEPT"},
	}
	st, err := bench.StateFromRules(rules, 2)
	require.NoError(t, err)
	tab, err := bench.IngressTable(st)
	require.NoError(t, err)
	c := dataplane.NewClassifier(tab)
	tests := []struct {
		name string
		p    dataplane.Packet
		want int
	}{
		{"v4 zero tcp port", dataplane.Packet{Remote: netip.MustParseAddr("0.0.0.0"), Proto: 6, Port: 1, HasPort: true}, 0},
		{"v4 tcp no port skips port rule", dataplane.Packet{Remote: netip.MustParseAddr("0.0.0.0"), Proto: 6}, 5},
		{"v4 top udp", dataplane.Packet{Remote: netip.MustParseAddr("255.255.255.255"), Proto: 17}, 1},
		{"v6 top icmpv6", dataplane.Packet{Remote: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Proto: 58}, 2},
		{"icmp on v6 is not icmp", dataplane.Packet{Remote: netip.MustParseAddr("::1"), Proto: 1}, 5},
		{"icmpv6 anywhere v6", dataplane.Packet{Remote: netip.MustParseAddr("::1"), Proto: 58}, 4},
		{"icmpv6 proto on v4", dataplane.Packet{Remote: netip.MustParseAddr("1.2.3.4"), Proto: 58}, 5},
		{"zoned v6 in no prefix", dataplane.Packet{Remote: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%eth0"), Proto: 58}, 4},
		{"zero addr", dataplane.Packet{Proto: 17}, 5},
		{"v4-mapped v6 is v6", dataplane.Packet{Remote: netip.MustParseAddr("::ffff:1.2.3.4"), Proto: 6, Port: 5, HasPort: true}, 5},
	}
	ref := dataplane.NewLinearTable(tab)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, ref.Lookup(&tt.p), "reference")
			assert.Equal(t, tt.want, c.Lookup(&tt.p), "classifier")
		})
	}
}

func TestClassifierNoAllocs(t *testing.T) {
	tab := syntheticTable(t, 2000, 3, 1)
	c := dataplane.NewClassifier(tab)
	pkts := bench.Packets(tab, 1000, 1000, 3)
	i := 0
	allocs := testing.AllocsPerRun(5000, func() {
		c.Lookup(&pkts[i%len(pkts)])
		i++
	})
	assert.Zero(t, allocs)
}

func TestClassifierArraysInvariants(t *testing.T) {
	tab := syntheticTable(t, 3000, 4, 3)
	c := dataplane.NewClassifier(tab)
	a := c.Arrays()
	require.NotEmpty(t, a.V4Starts)
	assert.Zero(t, a.V4Starts[0])
	assert.Zero(t, a.V6Hi[0])
	assert.Zero(t, a.V6Lo[0])
	for i := 1; i < len(a.V4Starts); i++ {
		require.Less(t, a.V4Starts[i-1], a.V4Starts[i])
	}
	for i := 1; i < len(a.V6Hi); i++ {
		require.True(t, a.V6Hi[i-1] < a.V6Hi[i] || a.V6Hi[i-1] == a.V6Hi[i] && a.V6Lo[i-1] < a.V6Lo[i])
	}
	require.Len(t, a.V4Index, 1<<(32-a.V4Shift)+1)
	for j := 0; j+1 < len(a.V4Index); j++ {
		base := uint64(j) << a.V4Shift
		i := a.V4Index[j]
		require.LessOrEqual(t, uint64(a.V4Starts[i]), base, "slot %d", j)
		require.True(t, int(i)+1 == len(a.V4Starts) || uint64(a.V4Starts[i+1]) > base, "slot %d not the last start", j)
	}
	for _, ans := range a.Answers {
		for _, r := range [][2]uint32{{ans.TCPOff, ans.TCPLen}, {ans.UDPOff, ans.UDPLen}} {
			require.NotZero(t, r[1])
			assert.Zero(t, a.PortStart[r[0]])
		}
	}
	for _, e := range a.PortEntry {
		require.Less(t, int(e), a.Entries)
	}
	assert.Positive(t, c.SizeBytes())
}

// TestClassifierSwap: readers looking up through an Engine while a writer swaps between two tables only
// ever see a verdict one of the two tables gives for that packet.
func TestClassifierSwap(t *testing.T) {
	mk := func(action string) *compiler.Tables {
		rules := bench.Synthetic(300, 9, true)
		for i := range rules {
			rules[i].Action = action
		}
		st, err := bench.StateFromRules(rules, 2)
		require.NoError(t, err)
		ts, err := compiler.New(st).Compile(bench.ENIID)
		require.NoError(t, err)
		return ts
	}
	a, b := mk("ACCEPT"), mk("DROP")
	pkts := bench.Packets(a.Ingress, 500, 500, 9)
	allowed := make([][2]dataplane.Verdict, len(pkts))
	for i := range pkts {
		allowed[i] = [2]dataplane.Verdict{
			dataplane.VerdictOf(a.Ingress, dataplane.NewLinearTable(a.Ingress).Lookup(&pkts[i])),
			dataplane.VerdictOf(b.Ingress, dataplane.NewLinearTable(b.Ingress).Lookup(&pkts[i])),
		}
	}
	eng := dataplane.NewEngine(dataplane.ClassifierFactory)
	eng.Publish(1, map[string]*compiler.Tables{bench.ENIID: a}, nil)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				i := n % len(pkts)
				v, ok := eng.Match(bench.ENIID, model.Ingress, &pkts[i])
				if !ok || (v != allowed[i][0] && v != allowed[i][1]) {
					errs <- fmt.Sprintf("packet %d: verdict %+v (ok=%v) from neither table", i, v, ok)
					return
				}
			}
		}()
	}
	for gen := uint64(2); gen < 60; gen++ {
		next := a
		if gen%2 == 0 {
			next = b
		}
		eng.Publish(gen, map[string]*compiler.Tables{bench.ENIID: next}, nil)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// FuzzClassifier builds a random table and random packets from the fuzz input and compares with the
// reference.
func FuzzClassifier(f *testing.F) {
	f.Add(uint64(1), uint8(3), uint8(10), []byte{1, 2, 3})
	f.Add(uint64(42), uint8(1), uint8(40), []byte{0xff, 0, 0x80})
	f.Fuzz(func(t *testing.T, seed uint64, nSG, rulesPer uint8, data []byte) {
		rng := rand.New(rand.NewPCG(seed, uint64(len(data))))
		st, err := randomState(t, rng, 1+int(nSG%6), int(rulesPer%50))
		if err != nil {
			t.Fatalf("random state: %v", err)
		}
		pkts := randomPackets(rng, 200)
		// Packets straight from the input bytes too: address bytes, protocol, port.
		for len(data) >= 4 {
			a := netip.AddrFrom4([4]byte{198, 18, data[0] % 5, data[1] % 10})
			if data[2]&1 == 1 {
				a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: data[1] % 10})
			}
			pkts = append(pkts, dataplane.Packet{Remote: a, Proto: data[2] >> 1, Port: uint16(data[3]), HasPort: data[3] != 0})
			data = data[4:]
		}
		for _, ts := range compiler.New(st).CompileAll() {
			for _, tab := range []*compiler.Table{ts.Ingress, ts.Egress} {
				c := dataplane.NewClassifier(tab)
				ref := dataplane.NewLinearTable(tab)
				for i := range pkts {
					if w, g := ref.Lookup(&pkts[i]), c.Lookup(&pkts[i]); w != g {
						t.Fatalf("packet %+v: classifier %d, reference %d", pkts[i], g, w)
					}
				}
			}
		}
	})
}

// TestClassifierSyntheticMixed: a larger mixed IPv4/IPv6 synthetic table split over several SGs.
func TestClassifierSyntheticMixed(t *testing.T) {
	for _, seed := range []uint64{1, 2} {
		tab := syntheticTable(t, 3000, seed, 3)
		agree(t, tab, bench.Packets(tab, 1500, 500, seed))
	}
}

func TestReasonNames(t *testing.T) {
	names := map[dataplane.Reason]string{
		dataplane.ReasonRule: "rule", dataplane.ReasonDefaultDrop: "default-drop", dataplane.ReasonEstablished: "established",
		dataplane.ReasonNoSG: "no-sg", dataplane.ReasonARP: "arp", dataplane.ReasonND: "nd", dataplane.ReasonNotIP: "not-ip",
		dataplane.ReasonMalformed: "malformed", dataplane.Reason(200): "unknown",
	}
	for r, want := range names {
		assert.Equal(t, want, r.String())
	}
	b, err := json.Marshal(struct{ R dataplane.Reason }{dataplane.ReasonNoSG})
	require.NoError(t, err)
	assert.JSONEq(t, `{"R":"no-sg"}`, string(b))
}

func TestEntryMatches(t *testing.T) {
	p10 := netip.MustParsePrefix("10.0.0.0/8")
	tests := []struct {
		name  string
		entry compiler.Entry
		pkt   dataplane.Packet
		want  bool
	}{
		{"any matches v4", compiler.Entry{AnyRemote: true}, pkt("10.1.1.1", 47, 0), true},
		{"any matches v6", compiler.Entry{AnyRemote: true}, pkt("2001:db8::1", 58, 0), true},
		{"remote inside", compiler.Entry{Remotes: []netip.Prefix{p10}}, pkt("10.1.1.1", 6, 1), true},
		{"remote outside", compiler.Entry{Remotes: []netip.Prefix{p10}}, pkt("11.1.1.1", 6, 1), false},
		{"second remote", compiler.Entry{Remotes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), p10}}, pkt("10.1.1.1", 6, 1), true},
		{"no remotes match nothing", compiler.Entry{}, pkt("10.1.1.1", 6, 1), false},
		{"protocol mismatch", compiler.Entry{AnyRemote: true, Protocol: model.ProtoUDP}, pkt("10.1.1.1", 6, 1), false},
		{"port in range", compiler.Entry{AnyRemote: true, Protocol: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 81}}, pkt("10.1.1.1", 6, 81), true},
		{"port out of range", compiler.Entry{AnyRemote: true, Protocol: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 81}}, pkt("10.1.1.1", 6, 82), false},
		{"unknown port never matches a range", compiler.Entry{AnyRemote: true, Protocol: model.ProtoTCP, Ports: model.PortRange{Lo: 1, Hi: 65535}},
			dataplane.Packet{Remote: netip.MustParseAddr("10.1.1.1"), Proto: 6}, false},
		{"icmp not over v6", compiler.Entry{AnyRemote: true, Protocol: model.ProtoICMP}, pkt("2001:db8::1", 1, 0), false},
		{"icmpv6 over v6", compiler.Entry{AnyRemote: true, Protocol: model.ProtoICMPv6}, pkt("2001:db8::1", 58, 0), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, dataplane.EntryMatches(&tc.entry, &tc.pkt))
		})
	}
}

func TestExplainAndLinearTable(t *testing.T) {
	tabs := compileRules(t,
		model.Rule{IPProtocol: "tcp", PortRange: "22", Action: "DROP"},
		model.Rule{IPProtocol: "tcp", Action: "ACCEPT"})
	tab := tabs["eni-1"].Ingress
	lt := dataplane.NewLinearTable(tab)

	p := pkt("198.18.9.9", 6, 22)
	i := lt.Lookup(&p)
	assert.Equal(t, 0, i)
	assert.Equal(t, dataplane.Verdict{Action: model.Drop, Reason: dataplane.ReasonRule, SgID: "sg-x", RuleIndex: 0, Entry: 0}, dataplane.VerdictOf(tab, i))

	p = pkt("198.18.9.9", 6, 80)
	assert.Equal(t, dataplane.Verdict{Action: model.Accept, Reason: dataplane.ReasonRule, SgID: "sg-x", RuleIndex: 1, Entry: 1},
		dataplane.VerdictOf(tab, lt.Lookup(&p)))

	p = pkt("198.18.9.9", 17, 80)
	assert.Equal(t, dataplane.Verdict{Action: model.Drop, Reason: dataplane.ReasonDefaultDrop, RuleIndex: -1, Entry: 2},
		dataplane.VerdictOf(tab, lt.Lookup(&p)))

	noSG := &compiler.Table{ENI: "eni-z", NoSG: true, Entries: []compiler.Entry{{AnyRemote: true, RuleIndex: -1}}}
	assert.Equal(t, dataplane.Verdict{Action: model.Drop, Reason: dataplane.ReasonNoSG, RuleIndex: -1, Entry: 0},
		dataplane.VerdictOf(noSG, dataplane.NewLinearTable(noSG).Lookup(&p)))
}

// BenchmarkLinearLookup measures the reference matcher: a packet that matches no rule scans every entry.
func BenchmarkLinearLookup(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		rules := make([]model.Rule, n)
		for i := range rules {
			rules[i] = model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("198.19.%d.0/24", i%256), PortRange: fmt.Sprint(1 + i), Action: "ACCEPT"}
		}
		tab := compileRules(b, rules...)["eni-1"].Ingress
		lt := dataplane.NewLinearTable(tab)
		p := pkt("203.0.113.1", 6, 80)
		b.Run(fmt.Sprintf("rules=%d/miss", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if lt.Lookup(&p) != n {
					b.Fatal("expected the implicit drop")
				}
			}
		})
	}
}

// compileRules compiles two ENIs (eni-1, eni-2) that share one SG with the given ingress rules.
func compileRules(t testing.TB, ingress ...model.Rule) map[string]*compiler.Tables {
	t.Helper()
	s, err := model.NewState(model.Topology{
		Accounts:       []model.Account{{AppID: "A"}},
		SecurityGroups: []model.SecurityGroup{{SgID: "sg-x", AppID: "A", Ingress: ingress}},
		NetworkInterfaces: []model.NetworkInterface{
			{NetworkInterfaceID: "eni-1", AppID: "A", PrivateIPAddresses: []string{"198.18.0.1"}, SgIDs: []string{"sg-x"}},
			{NetworkInterfaceID: "eni-2", AppID: "A", PrivateIPAddresses: []string{"198.18.0.2"}, SgIDs: []string{"sg-x"}},
		},
	})
	require.NoError(t, err)
	return compiler.New(s).CompileAll()
}

func pkt(remote string, proto uint8, port uint16) dataplane.Packet {
	return dataplane.Packet{Remote: netip.MustParseAddr(remote), Proto: proto, Port: port, HasPort: proto == 6 || proto == 17}
}

// TestEngineReadersSeeOneTableOrTheOther: readers running while the engine swaps two tables back and
// forth always see one whole table or the other, both ENIs of a snapshot from one publish. It stays
// whole: the swapper and the readers run together.
func TestEngineReadersSeeOneTableOrTheOther(t *testing.T) {
	tabA := compileRules(t,
		model.Rule{IPProtocol: "tcp", CidrIP: "198.18.0.0/24", PortRange: "80", Action: "ACCEPT"},
		model.Rule{Action: "DROP"})
	tabB := compileRules(t,
		model.Rule{IPProtocol: "udp", Action: "DROP"},
		model.Rule{IPProtocol: "tcp", CidrIP: "198.18.0.0/16", PortRange: "80-81", Action: "ACCEPT"})
	packets := []dataplane.Packet{
		pkt("198.18.0.9", 6, 80),  // A: accept [0]; B: accept [1]
		pkt("198.18.1.9", 6, 80),  // A: drop [1];   B: accept [1]
		pkt("198.18.0.9", 17, 80), // A: drop [1];   B: drop [0]
		pkt("198.18.0.9", 6, 81),  // A: drop [1];   B: accept [1]
		pkt("198.18.0.9", 1, 0),   // A: drop [1];   B: default-drop
	}
	// The verdicts each table gives, from the reference matcher.
	wantA, wantB := make([]dataplane.Verdict, len(packets)), make([]dataplane.Verdict, len(packets))
	la, lb := dataplane.NewLinear(tabA), dataplane.NewLinear(tabB)
	for i := range packets {
		wantA[i], _ = la.Match("eni-1", model.Ingress, &packets[i])
		wantB[i], _ = lb.Match("eni-1", model.Ingress, &packets[i])
	}
	// Each packet must tell the tables apart, or a mix could go unseen.
	for i := range packets {
		require.NotEqual(t, wantA[i], wantB[i], "packet %d", i)
	}

	e := dataplane.NewEngine(dataplane.LinearFactory)
	e.Publish(1, tabA, nil)

	const publishes = 2000
	var done atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	var reads atomic.Int64
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := r; !done.Load(); i++ {
				k := i % len(packets)
				p := packets[k]
				v, ok := e.Match("eni-1", model.Ingress, &p)
				if !ok || (v != wantA[k] && v != wantB[k]) {
					bad.Add(1)
				}
				// Both ENIs of one snapshot come from the same Publish.
				snap := e.Snapshot()
				v1, ok1 := snap.Match("eni-1", model.Ingress, &p)
				v2, ok2 := snap.Match("eni-2", model.Ingress, &p)
				if !ok1 || !ok2 || v1 != v2 || (v1 != wantA[k] && v1 != wantB[k]) {
					bad.Add(1)
				}
				if want := map[bool][]dataplane.Verdict{true: wantA, false: wantB}[snap.Generation%2 == 1]; v1 != want[k] {
					bad.Add(1) // odd generations carry table A, even ones table B
				}
				reads.Add(1)
			}
		}()
	}
	// Publish only while readers run: wait for their first reads, and let them read between swaps, so the
	// test exercises swaps under concurrent lookups even when the scheduler favours the writer.
	waitReads := func(n int64) {
		for reads.Load() < n {
			runtime.Gosched()
		}
	}
	waitReads(1)
	for g := uint64(2); g < publishes+2; g++ {
		tabs := tabB
		if g%2 == 1 {
			tabs = tabA
		}
		e.Publish(g, tabs, nil)
		if g%100 == 0 {
			waitReads(reads.Load() + 1)
		}
	}
	done.Store(true)
	wg.Wait()
	assert.Zero(t, bad.Load(), "verdicts that neither table gives, out of %d reads", reads.Load())
	assert.Positive(t, reads.Load())
	assert.Equal(t, uint64(publishes+1), e.Snapshot().Generation)
}

func TestEnginePublishKeepsAndRemoves(t *testing.T) {
	tabA := compileRules(t, model.Rule{Action: "ACCEPT"})
	tabB := compileRules(t, model.Rule{Action: "DROP"})
	e := dataplane.NewEngine(dataplane.LinearFactory)
	p := pkt("198.18.0.9", 6, 80)

	_, ok := e.Match("eni-1", model.Ingress, &p)
	assert.False(t, ok, "empty engine holds no ENI")

	e.Publish(1, tabA, nil)
	v, ok := e.Match("eni-2", model.Ingress, &p)
	require.True(t, ok)
	assert.Equal(t, model.Accept, v.Action)

	// Only eni-1 changes; eni-2 keeps its generation-1 tables.
	e.Publish(2, map[string]*compiler.Tables{"eni-1": tabB["eni-1"]}, nil)
	v, _ = e.Match("eni-1", model.Ingress, &p)
	assert.Equal(t, model.Drop, v.Action)
	v, _ = e.Match("eni-2", model.Ingress, &p)
	assert.Equal(t, model.Accept, v.Action)
	t2, ok := e.Snapshot().ENI("eni-2")
	require.True(t, ok)
	assert.Equal(t, uint64(1), t2.Generation)

	old := e.Snapshot()
	e.Publish(3, nil, []string{"eni-2"})
	_, ok = e.Match("eni-2", model.Ingress, &p)
	assert.False(t, ok)
	// A snapshot taken before is untouched by later publishes.
	_, ok = old.Match("eni-2", model.Ingress, &p)
	assert.True(t, ok)
	assert.Len(t, e.Snapshot().ENIs(), 1)
	assert.Equal(t, uint64(3), e.Snapshot().Generation)
}

// syntheticTable is the ingress table of n synthetic mixed v4/v6 rules (bench.Synthetic) spread over
// sgs SGs.
func syntheticTable(t *testing.T, n int, seed uint64, sgs int) *compiler.Table {
	t.Helper()
	st, err := bench.StateFromRules(bench.Synthetic(n, seed, true), sgs)
	require.NoError(t, err)
	tab, err := bench.IngressTable(st)
	require.NoError(t, err)
	return tab
}
