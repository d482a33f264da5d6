package bpf

import (
	"context"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/bench"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/model"
)

// costBaselines are the two reference programs the program's cost is quoted against: an empty SCHED_CLS
// program (the floor: what BPF_PROG_TEST_RUN costs per run whatever the program does) and one doing a
// single hash-map lookup (the unit: a helper call and return plus a hash, which is what the hot path's
// calls cost under the speculative-return mitigations of today's CPUs).
type costBaselines struct {
	floor, hash *ebpf.Program
	hashMap     *ebpf.Map
}

func loadBaselines(tb testing.TB) *costBaselines {
	tb.Helper()
	floor, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}})
	skipIfNotSupported(tb, err)
	hm, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1024})
	skipIfNotSupported(tb, err)
	require.NoError(tb, hm.Put(uint32(7), uint64(1)))
	hash, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.StoreImm(asm.R10, -8, 7, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -8),
		asm.LoadMapPtr(asm.R1, hm.FD()),
		asm.FnMapLookupElem.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}})
	skipIfNotSupported(tb, err)
	c := &costBaselines{floor: floor, hash: hash, hashMap: hm}
	tb.Cleanup(func() { floor.Close(); hash.Close(); hm.Close() })
	return c
}

// costFlows picks, from the corner packets of ingress table tab, a TCP packet the table accepts (the
// first packet of a new flow) and returns it with its reply (what conntrack answers as established).
func costFlows(tb testing.TB, tab *compiler.Table) (first, reply frame) {
	tb.Helper()
	cl := dataplane.NewClassifier(tab)
	for _, p := range bench.Packets(tab, 4096, 0, 9) {
		if !p.Remote.Is4() || p.Proto != model.IPProtoTCP || !p.HasPort {
			continue
		}
		if v := dataplane.VerdictOf(tab, cl.Lookup(&p)); v.Action == model.Accept && v.Reason == dataplane.ReasonRule {
			f := frameOf(p)
			f.tcpFlags = 0x02
			r := f.reverse()
			r.tcpFlags = 0x12
			return f, r
		}
	}
	tb.Skipf("table of %d entries accepts no IPv4 TCP corner packet", len(tab.Entries))
	return frame{}, frame{}
}

// BenchmarkPacketCost reports, in one run, the floor (an empty SCHED_CLS program), one hash-map lookup
// and the program per packet at 100, 10k and 100k rules, for three packets of an accepted TCP flow:
//   - established: a reply, which conntrack answers;
//   - original: a packet of the flow's own direction once the flow is tracked, which takes the entry
//     that accepted the flow while its table is in force (what "new" measured before: the same packet
//     repeated, classified by the rules every time);
//   - new: the first packet of a flow (conntrack misses, the rules decide, the flow is inserted), each
//     run a flow of its own behind flowBumper, with room in conntrack;
//   - new-full: the same with conntrack full, so that each new flow evicts one;
//   - established-iface: the reply on the ENI's host interface (a veth of a namespace of its own), which
//     the program looks up as for real traffic (test runs on loopback carry their slot instead).
//
// Each iteration runs the programs back to back, so they share the machine's load; the program is
// quoted in ns and in hash lookups above the floor.
func BenchmarkPacketCost(b *testing.B) {
	base := loadBaselines(b)
	iface := costInterface(b)
	for _, n := range []int{100, 10000, 100000} {
		d := loadOrSkip(b)
		tables, err := compiler.New(bigState(b, n)).Compile(bench.ENIID)
		require.NoError(b, err)
		require.NoError(b, d.Publish(context.Background(), 1, map[string]*compiler.Tables{bench.ENIID: tables}, nil))
		first, reply := costFlows(b, tables.Ingress)
		firstFrame, replyFrame := first.build(), reply.build()
		slot := d.slots[bench.ENIID]
		require.NoError(b, d.Bind(int(iface.index), bench.ENIID))
		nf := loadNewFlows(b, base, d)
		for _, flow := range []string{"established", "original", "new", "new-full", "established-iface"} {
			b.Run(fmt.Sprintf("rules=%d/flow=%s", n, flow), func(b *testing.B) {
				require.NoError(b, d.FlushConntrack())
				r, err := d.Run(firstFrame, bench.ENIID, model.Ingress)
				require.NoError(b, err)
				require.Equal(b, dataplane.ReasonRule, r.Reason)
				switch flow {
				case "established":
					r, err := d.Run(replyFrame, bench.ENIID, model.Egress)
					require.NoError(b, err)
					require.Equal(b, dataplane.ReasonEstablished, r.Reason)
					reportCost(b, base, d.objs.SgHostIngress, replyFrame, skbCtx{Mark: slot + 1})
				case "established-iface":
					r, err := d.Run(replyFrame, bench.ENIID, model.Egress)
					require.NoError(b, err)
					require.Equal(b, dataplane.ReasonEstablished, r.Reason)
					_, err = netns.Do(iface.ns, func() (struct{}, error) {
						reportCost(b, base, d.objs.SgHostIngress, replyFrame, skbCtx{Ifindex: iface.index})
						return struct{}{}, nil
					})
					require.NoError(b, err)
				case "original":
					again, err := d.Run(firstFrame, bench.ENIID, model.Ingress)
					require.NoError(b, err)
					require.Equal(b, r, again, "the tracked flow's own packet takes the entry that accepted it")
					reportCost(b, base, d.objs.SgHostEgress, firstFrame, skbCtx{Mark: slot + 1})
				case "new", "new-full":
					reportNewFlowCost(b, base, nf, d, firstFrame, slot, flow == "new-full")
				}
			})
		}
		d.Close()
	}
}

// costIface is the benchmark ENI's host interface: a veth in a namespace of its own (bound to the ENI in
// each dataplane).
type costIface struct {
	ns    string
	index uint32
}

func costInterface(b *testing.B) costIface {
	lab := netlab.New(b, "sgcost")
	const index = 7000 // below SG_IFSLOTS, as nearly every host's interfaces
	lab.IP("-n", lab.Host, "link", "add", "sgcost0", "index", strconv.Itoa(index), "type", "veth", "peer", "name", "sgcost1")
	return costIface{ns: lab.Host, index: index}
}

// reportCost runs floor, hash lookup and prog on frame (with skb context ctx) repeatedly in the kernel and
// reports each one's mean kernel time per run, and prog above the floor in hash lookups.
func reportCost(b *testing.B, base *costBaselines, prog *ebpf.Program, frame []byte, ctx skbCtx) {
	const repeat = 2000
	var floorNS, hashNS, progNS float64
	b.ReportAllocs()
	for b.Loop() {
		for _, r := range []struct {
			p   *ebpf.Program
			sum *float64
		}{{base.floor, &floorNS}, {base.hash, &hashNS}, {prog, &progNS}} {
			ns, err := testRunCtxNS(r.p, frame, ctx, repeat)
			if err != nil {
				b.Fatal(err)
			}
			*r.sum += float64(ns)
		}
	}
	reportAboveFloor(b, floorNS, hashNS, progNS, float64(b.N))
}

// newFlows is what the new-flow rows need: a bumper in front of the program and of the floor, the
// kernel's LRU-hash insert on its own, and one cold line of a table of ct4_sets' size.
type newFlows struct {
	prog, floor, insert, cold *ebpf.Program
	insertMap                 *ebpf.Map
}

// firstElement starts a test program: R6 keeps the context, R0 points at element 0 of array m, and the
// program jumps to "out" if the lookup fails.
func firstElement(m *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
	}
}

// frameBytes points R2 at the frame (the context in R6) and jumps to "out" unless it holds n bytes.
// It clobbers R3 and R4.
func frameBytes(n int32) asm.Instructions {
	const skbData, skbDataEnd = 76, 80 // offsetof(struct __sk_buff, data), data_end
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, n),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
	}
}

// flowBumper returns a SCHED_CLS program that gives each run of a repeated test run a flow of its own
// and then tail-calls target: it counts its runs (an array map, whose lookup the JIT inlines) and
// writes the count into the IPv4 TCP frame's source port and the low half of its destination address,
// so the kernel's loop runs target on first packets back to back, warm, as a busy host's TC hook
// does. A test run of one packet instead pays for the syscall's cold caches (a tracked flow's packet
// costs several times more in a run of one than in a repeated run). The bumper's own cost is measured
// in front of the empty program and subtracted.
func flowBumper(tb testing.TB, target *ebpf.Program) *ebpf.Program {
	tb.Helper()
	calls, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	require.NoError(tb, err)
	// Kept open until the end: the kernel empties a program array when its last user reference closes.
	tb.Cleanup(func() { calls.Close() })
	require.NoError(tb, calls.Put(uint32(0), uint32(target.FD())))
	count, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	require.NoError(tb, err)
	tb.Cleanup(func() { count.Close() })
	const (
		sport  = 14 + 20     // TCP source port (IPv4, no options)
		dstLow = 14 + 16 + 2 // the destination address's last two bytes
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: slices.Concat(
		firstElement(count),
		asm.Instructions{
			asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
			asm.Add.Imm(asm.R7, 1),
			asm.StoreMem(asm.R0, 0, asm.R7, asm.Word),
		},
		frameBytes(sport+2),
		asm.Instructions{
			// Source port 32768 + count mod 32768 (never 0), and count / 32768 into the address.
			asm.Mov.Reg(asm.R8, asm.R7),
			asm.And.Imm(asm.R8, 0x7fff),
			asm.Or.Imm(asm.R8, 0x8000),
			asm.HostTo(asm.BE, asm.R8, asm.Half),
			asm.StoreMem(asm.R2, sport, asm.R8, asm.Half),
			asm.RSh.Imm(asm.R7, 15),
			asm.StoreMem(asm.R2, dstLow, asm.R7, asm.Half),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, calls.FD()),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnTailCall.Call(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
			asm.Return(),
		},
	)})
	skipIfNotSupported(tb, err)
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// lruInsert returns a SCHED_CLS program that does what tracking a new IPv4 flow costs the kernel's
// LRU hash, and nothing else: it looks the frame's addresses and ports up in m (16-byte keys, as ct4's)
// and, missing, inserts them with a zero value.
func lruInsert(tb testing.TB, m *ebpf.Map) *ebpf.Program {
	tb.Helper()
	const (
		addrs      = 14 + 12 // IPv4 source and destination, then the ports
		key, value = -16, -64
	)
	ins := slices.Concat(asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}, frameBytes(addrs+12))
	for i := int16(0); i < 3; i++ {
		ins = append(ins, asm.LoadMem(asm.R4, asm.R2, addrs+4*i, asm.Word), asm.StoreMem(asm.R10, key+4*i, asm.R4, asm.Word))
	}
	ins = append(ins, asm.Mov.Imm(asm.R5, 0), asm.StoreMem(asm.R10, key+12, asm.R5, asm.Word))
	for off := int16(value); off < key; off += 8 {
		ins = append(ins, asm.StoreMem(asm.R10, off, asm.R5, asm.DWord))
	}
	ins = append(ins,
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, key),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "out"),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, key),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, value),
		asm.Mov.Imm(asm.R4, int32(ebpf.UpdateNoExist)),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: ins})
	skipIfNotSupported(tb, err)
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// coldLine returns a SCHED_CLS program that reads one word of a random element of an array of ct4_sets'
// geometry (ct4Sets elements of ct4SetSize bytes: the word a conntrack lookup reads first in its
// candidate set), the element chosen by a hash of the frame's TCP source port and destination address,
// which flowBumper changes each run. Each run's index also depends on the word the run before it read
// (always 0), so the kernel's test-run loop cannot overlap one run's miss with the next: a first
// packet's program does far more work after its miss than a CPU's reorder window holds. Behind the
// bumper it is the memory latency a first packet pays for the line its conntrack lookup reads first,
// which no packet before it brought in, whatever the program does (plus this program's few
// instructions and two inlined lookups).
func coldLine(tb testing.TB) *ebpf.Program {
	tb.Helper()
	table, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(ct4SetSize), MaxEntries: uint32(ct4Sets)})
	skipIfNotSupported(tb, err)
	tb.Cleanup(func() { table.Close() })
	carry, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	skipIfNotSupported(tb, err)
	tb.Cleanup(func() { carry.Close() })
	const (
		dst   = 14 + 16 // IPv4 destination address
		sport = 14 + 20 // TCP source port (IPv4, no options)
	)
	setBits := int32(bits.TrailingZeros(uint(ct4Sets)))
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: slices.Concat(
		firstElement(carry),
		asm.Instructions{
			asm.Mov.Reg(asm.R7, asm.R0),
			asm.LoadMem(asm.R8, asm.R7, 0, asm.DWord), // the word the run before read
		},
		frameBytes(sport+2),
		asm.Instructions{
			asm.LoadMem(asm.R4, asm.R2, sport, asm.Half),
			asm.LoadMem(asm.R5, asm.R2, dst, asm.Word),
			asm.LSh.Imm(asm.R5, 16),
			asm.Or.Reg(asm.R4, asm.R5),
			asm.Add.Reg(asm.R4, asm.R8),
			// A multiply-xorshift-multiply, so that successive runs' elements are in no stride a prefetcher
			// could follow.
			asm.LoadImm(asm.R5, -7046029254386353131, asm.DWord), // 0x9e3779b97f4a7c15
			asm.Mul.Reg(asm.R4, asm.R5),
			asm.Mov.Reg(asm.R5, asm.R4),
			asm.RSh.Imm(asm.R5, 29),
			asm.Xor.Reg(asm.R4, asm.R5),
			asm.LoadImm(asm.R5, -4658895280553007687, asm.DWord), // 0xbf58476d1ce4e5b9
			asm.Mul.Reg(asm.R4, asm.R5),
			asm.RSh.Imm(asm.R4, 64-setBits),
			asm.StoreMem(asm.R10, -8, asm.R4, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -8),
			asm.LoadMapPtr(asm.R1, table.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord), // the cold line
			asm.StoreMem(asm.R7, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
			asm.Return(),
		},
	)})
	skipIfNotSupported(tb, err)
	tb.Cleanup(func() { prog.Close() })
	return prog
}

func loadNewFlows(tb testing.TB, base *costBaselines, d *Dataplane) *newFlows {
	tb.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 48, MaxEntries: uint32(ct4Capacity)})
	skipIfNotSupported(tb, err)
	tb.Cleanup(func() { m.Close() })
	return &newFlows{
		prog:      flowBumper(tb, d.objs.SgHostEgress),
		floor:     flowBumper(tb, base.floor),
		insert:    flowBumper(tb, lruInsert(tb, m)),
		cold:      flowBumper(tb, coldLine(tb)),
		insertMap: m,
	}
}

// reportNewFlowCost runs the ENI-ingress program on first packets of new flows (frame, accepted by the
// rules, with another source port and destination each run: the rules decide and conntrack inserts),
// repeated in the kernel behind flowBumper, beside the floor and the hash lookup. With full, conntrack
// is filled first and stays full, so every new flow evicts one (a host that has seen more flows than
// conntrack holds); else it is emptied before each test run. It also reports, in lookups, the kernel's
// LRU-hash insert alone (what tracking the flow would cost with conntrack an LRU hash) and one cold line
// of a table of conntrack's size (coldLine: the memory latency of the line a lookup reads first).
func reportNewFlowCost(b *testing.B, base *costBaselines, nf *newFlows, d *Dataplane, frame []byte, slot uint32, full bool) {
	const repeat = 1000
	run := func(p *ebpf.Program, n uint32) float64 {
		ns, err := testRunNS(p, frame, slot, n)
		if err != nil {
			b.Fatal(err)
		}
		return float64(ns)
	}
	flush := func() {
		require.NoError(b, d.FlushConntrack())
		var keys [][16]byte
		var k [16]byte
		var v [48]byte
		for it := nf.insertMap.Iterate(); it.Next(&k, &v); {
			keys = append(keys, k)
		}
		for _, k := range keys {
			require.NoError(b, nf.insertMap.Delete(&k))
		}
	}
	flush()
	run(nf.prog, repeat)
	es, err := d.ctEntries()
	require.NoError(b, err)
	require.Len(b, es, repeat, "each run behind the bumper is a new flow the rules accept")
	if full {
		// Three times the capacity: with two candidate sets a table fills its last free ways only as
		// the flows that land on them come (one and a quarter times left ways of ct4_sets free).
		fill := uint32(ct4Capacity) * 3
		run(nf.prog, fill)
		run(nf.insert, fill)
	}
	var floorNS, hashNS, bumpNS, progNS, insertNS, coldNS float64
	b.ReportAllocs()
	for b.Loop() {
		if !full {
			b.StopTimer()
			flush()
			b.StartTimer()
		}
		floorNS += run(base.floor, repeat)
		hashNS += run(base.hash, repeat)
		bumpNS += run(nf.floor, repeat)
		progNS += run(nf.prog, repeat)
		insertNS += run(nf.insert, repeat)
		coldNS += run(nf.cold, repeat)
	}
	// The program as if run on its own: the floor plus what it adds behind the bumper.
	reportAboveFloor(b, floorNS, hashNS, floorNS+progNS-bumpNS, float64(b.N))
	if hashNS > floorNS {
		b.ReportMetric((insertNS-bumpNS)/(hashNS-floorNS), "lru-insert-lookups")
		b.ReportMetric((coldNS-bumpNS)/(hashNS-floorNS), "cold-line-lookups")
	}
	if full {
		es, err := d.ctEntries()
		require.NoError(b, err)
		b.ReportMetric(float64(len(es))/float64(ct4Capacity), "ct4-filled") // after the loop: ResetTimer drops metrics
	}
}

// reportAboveFloor reports the mean kernel ns per run of the floor, the lookup and the program over n
// runs each, and the program above the floor in hash lookups.
func reportAboveFloor(b *testing.B, floorNS, hashNS, progNS, n float64) {
	b.ReportMetric(floorNS/n, "floor-ns")
	b.ReportMetric((hashNS-floorNS)/n, "lookup-ns")
	b.ReportMetric(progNS/n, "kernel-ns/pkt")
	if hashNS > floorNS {
		b.ReportMetric((progNS-floorNS)/(hashNS-floorNS), "lookups-above-floor")
	}
}

// BenchmarkPacketCostByProtocol is BenchmarkPacketCost's established and original packets for the
// flows the IPv4 TCP benchmark does not take: IPv6 TCP (parse6 and decide_fast's ct6 copy) and IPv4
// ICMP echo (parse and decide_flow), on eni-web1 of the demo topology.
func BenchmarkPacketCostByProtocol(b *testing.B) {
	base := loadBaselines(b)
	d := loadOrSkip(b)
	require.NoError(b, d.Publish(context.Background(), 1, compiler.New(demoState(b)).CompileAll(), nil))
	slot := d.slots["eni-web1"]
	for _, tc := range []struct {
		name string
		in   frame // sent to eni-web1, which accepts it
	}{
		{"ipv4-tcp", frame{src: netip.MustParseAddr("203.0.113.7"), dst: netip.MustParseAddr("198.18.1.10"), proto: 6,
			sport: 40000, dport: 80, tcpFlags: 0x10}},
		{"ipv6-tcp", frame{src: netip.MustParseAddr("2001:db8:9::7"), dst: netip.MustParseAddr("2001:db8:1::10"), proto: 6,
			sport: 40000, dport: 80, tcpFlags: 0x10}},
		{"ipv4-icmp-echo", frame{src: netip.MustParseAddr("203.0.113.7"), dst: netip.MustParseAddr("198.18.1.10"), proto: 1,
			icmpType: 8, icmpID: 9}},
	} {
		reply := tc.in.reverse()
		in, out := tc.in.build(), reply.build()
		for _, flow := range []string{"established", "original"} {
			b.Run(tc.name+"/flow="+flow, func(b *testing.B) {
				require.NoError(b, d.FlushConntrack())
				r, err := d.Run(in, "eni-web1", model.Ingress)
				require.NoError(b, err)
				require.Equal(b, dataplane.ReasonRule, r.Reason)
				prog, frame := d.objs.SgHostEgress, in
				if flow == "established" {
					r, err := d.Run(out, "eni-web1", model.Egress)
					require.NoError(b, err)
					require.Equal(b, dataplane.ReasonEstablished, r.Reason)
					prog, frame = d.objs.SgHostIngress, out
				}
				reportCost(b, base, prog, frame, skbCtx{Mark: slot + 1})
			})
		}
	}
}
