package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
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
//     run a flow of its own (another source port), so each is one test run, as are the floor and the
//     lookup it is quoted against;
//   - established-iface: the reply on the ENI's host interface (a veth of a namespace of its own), which
//     the program looks up as for real traffic (test runs on loopback carry their slot instead).
//
// Each iteration runs the three programs back to back, so they share the machine's load; the program
// is quoted in ns and in hash lookups above the floor.
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
		for _, flow := range []string{"established", "original", "new", "established-iface"} {
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
				case "new":
					reportNewFlowCost(b, base, d, firstFrame, slot)
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

// reportNewFlowCost runs the ENI-ingress program on first packets of new flows (frame with another
// source port each time: the rules accept each and conntrack inserts it), one test run each, beside one
// test run each of the floor and the hash lookup.
func reportNewFlowCost(b *testing.B, base *costBaselines, d *Dataplane, frame []byte, slot uint32) {
	const flowsPerIteration = 100
	frame = bytes.Clone(frame)
	var floorNS, hashNS, progNS float64
	port := 0
	b.ReportAllocs()
	for b.Loop() {
		for range flowsPerIteration {
			port++
			if port == 50000 {
				b.StopTimer()
				require.NoError(b, d.FlushConntrack())
				b.StartTimer()
				port = 1
			}
			binary.BigEndian.PutUint16(frame[14+20:], uint16(10000+port)) // TCP source port (IPv4, no options)
			for _, r := range []struct {
				p   *ebpf.Program
				sum *float64
			}{{base.floor, &floorNS}, {base.hash, &hashNS}, {d.objs.SgHostEgress, &progNS}} {
				ns, err := testRunNS(r.p, frame, slot, 1)
				if err != nil {
					b.Fatal(err)
				}
				*r.sum += float64(ns)
			}
		}
	}
	reportAboveFloor(b, floorNS, hashNS, progNS, float64(b.N*flowsPerIteration))
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
