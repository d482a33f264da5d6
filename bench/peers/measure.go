package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/compiler"
)

// Firewall names a peer the harness can load.
type Firewall string

const (
	None            Firewall = "none"
	IptablesLegacy  Firewall = "iptables-legacy"
	IptablesNft     Firewall = "iptables-nft"
	Nftables        Firewall = "nftables"
	NftablesWithSet Firewall = "nftables-sets"
	// SgsimTC is sgsim's TC program on the generator's veth end: for the ENI behind the fw end that is the
	// host side, whose TC egress carries the ENI's ingress traffic (SPEC §2).
	SgsimTC Firewall = "sgsim-tc"
	// TCEmpty is an empty SCHED_CLS program (it accepts every packet) on the hooks SgsimTC takes, with
	// TCX: what any TC program costs the path before it does anything. It has no rules to load.
	TCEmpty Firewall = "tc-empty"
)

// Load replaces the path's rules with tables' ingress table, enforced by fw, and returns how long the
// loader took: the update cost a control plane pays for pushing a whole new table (for sgsim, the table
// publish; the program is loaded and attached once, outside the timing).
func (p *Path) Load(ctx context.Context, fw Firewall, tables *compiler.Tables) (time.Duration, error) {
	_, took, err := p.load(ctx, fw, tables)
	return took, err
}

// load is Load that also returns when (CLOCK_MONOTONIC) the timed part started.
func (p *Path) load(ctx context.Context, fw Firewall, tables *compiler.Tables) (start, took time.Duration, err error) {
	switch fw {
	case SgsimTC:
		return p.loadSgsim(ctx, tables)
	case TCEmpty:
		start = monotonic()
		err := p.attachEmpty()
		return start, monotonic() - start, err
	}
	rules := RulesFromTable(tables.Ingress)
	var name string
	var args []string
	var script []byte
	switch fw {
	case None:
		return monotonic(), 0, nil
	case IptablesLegacy:
		name, args, script = "iptables-legacy-restore", nil, IptablesScript(p.FwIf, rules)
	case IptablesNft:
		name, args, script = "iptables-nft-restore", nil, IptablesScript(p.FwIf, rules)
	case Nftables:
		name, args, script = "nft", []string{"-f", "-"}, NftScript(p.FwIf, rules, false)
	case NftablesWithSet:
		name, args, script = "nft", []string{"-f", "-"}, NftScript(p.FwIf, rules, true)
	default:
		return 0, 0, fmt.Errorf("unknown firewall %q", fw)
	}
	// The loader is forked from a thread inside the fw namespace (a child inherits its thread's
	// namespace), so the timing holds the loader alone: `ip netns exec` would add the setns and sysfs
	// remounting that a host agent does not pay.
	err = InNetns(p.FwNS, func() error {
		start = monotonic()
		err := run(ctx, script, name, args...)
		took = monotonic() - start
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("load %s (%d rules): %w", fw, len(rules), err)
	}
	return start, took, nil
}

func (p *Path) loadSgsim(ctx context.Context, tables *compiler.Tables) (start, took time.Duration, err error) {
	if p.sgsim == nil {
		d, err := bpf.Load(ctx, bpf.Options{})
		if err != nil {
			return 0, 0, fmt.Errorf("load sgsim: %w", err)
		}
		if err := InNetns(p.GenNS, func() error { return d.Attach(ctx, p.GenIf, tables.ENI) }); err != nil {
			d.Close()
			return 0, 0, fmt.Errorf("load sgsim: %w", err)
		}
		p.sgsim = d
	}
	p.sgsimGen++
	start = monotonic()
	if err := p.sgsim.Publish(ctx, p.sgsimGen, map[string]*compiler.Tables{tables.ENI: tables}, nil); err != nil {
		return 0, 0, fmt.Errorf("load sgsim (%d rules): %w", len(tables.Ingress.Entries)-1, err)
	}
	return start, monotonic() - start, nil
}

// attachEmpty puts an empty SCHED_CLS program on both TCX hooks of the generator's veth end, where
// Load(SgsimTC) puts sgsim's. The error wraps ebpf.ErrNotSupported on a kernel without TCX.
func (p *Path) attachEmpty() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 0), // TC_ACT_OK
		asm.Return(),
	}})
	if err != nil {
		return fmt.Errorf("load %s: %w", TCEmpty, err)
	}
	// The links hold the program; this reference is not needed past the attachments.
	defer prog.Close()
	return InNetns(p.GenNS, func() error {
		ifc, err := net.InterfaceByName(p.GenIf)
		if err != nil {
			return fmt.Errorf("load %s on %s in %s: %w", TCEmpty, p.GenIf, p.GenNS, err)
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: prog, Attach: at})
			if err != nil {
				return fmt.Errorf("load %s on %s in %s (%s): %w", TCEmpty, p.GenIf, p.GenNS, at, err)
			}
			p.empty = append(p.empty, l)
		}
		return nil
	})
}

// detachEmpty takes Load(TCEmpty)'s program off the path's hooks.
func (p *Path) detachEmpty() error {
	var errs []error
	for _, l := range p.empty {
		errs = append(errs, l.Close())
	}
	p.empty = nil
	return errors.Join(errs...)
}

// HookPrograms returns the programs on each TCX hook of the generator's veth end, where
// Load(SgsimTC) and Load(TCEmpty) attach. The error wraps ebpf.ErrNotSupported on a kernel without
// TCX.
func (p *Path) HookPrograms() (map[ebpf.AttachType][]ebpf.ProgramID, error) {
	ids := map[ebpf.AttachType][]ebpf.ProgramID{}
	err := InNetns(p.GenNS, func() error {
		ifc, err := net.InterfaceByName(p.GenIf)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", p.GenIf, p.GenNS, err)
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			q, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: at})
			if err != nil {
				return fmt.Errorf("query %s programs of %s in %s: %w", at, p.GenIf, p.GenNS, err)
			}
			for _, ap := range q.Programs {
				ids[at] = append(ids[at], ap.ID)
			}
		}
		return nil
	})
	return ids, err
}

// HookRunTime returns how many times the programs on the generator end's hooks (HookPrograms) have
// run and their run time in all, as the kernel counts them while its run-time statistics are on
// (ebpf.EnableStats): the programs' own cost on the real path, where BPF_PROG_TEST_RUN runs them on
// warm caches.
func (p *Path) HookRunTime() (runs uint64, took time.Duration, err error) {
	hooks, err := p.HookPrograms()
	if err != nil {
		return 0, 0, err
	}
	var ids []ebpf.ProgramID
	for _, list := range hooks {
		for _, id := range list {
			if !slices.Contains(ids, id) { // one program may sit on both hooks: its statistics are one
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			return 0, 0, fmt.Errorf("open program %d on %s: %w", id, p.GenIf, err)
		}
		st, err := prog.Stats()
		prog.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("run-time statistics of program %d on %s: %w", id, p.GenIf, err)
		}
		runs += st.RunCount
		took += st.Runtime
	}
	return runs, took, nil
}

// Flush removes every rule a Load may have left on the path.
func (p *Path) Flush(ctx context.Context) error {
	errs := []error{p.detachEmpty()}
	if p.sgsim != nil {
		// Closing the unpinned program detaches it.
		errs = append(errs, p.sgsim.Close())
		p.sgsim = nil
	}
	for _, cmd := range [][]string{
		{"iptables-legacy", "-F"}, {"iptables-legacy", "-X"}, {"iptables-nft", "-F"}, {"iptables-nft", "-X"},
		{"nft", "flush", "ruleset"},
	} {
		if err := run(ctx, nil, "ip", append([]string{"netns", "exec", p.FwNS}, cmd...)...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Result is one measured UDP stream.
type Result struct {
	Sent, Received uint64
	Elapsed        time.Duration
	// GenKernel is the generator thread's kernel time: its sendmmsg calls and everything the kernel does
	// in their context: UDP/IP output, sgsim's TC egress program, the veth hand-over and, as softirq run
	// when the send path re-enables bottom halves, the receive side (IP input, netfilter INPUT, UDP
	// delivery to the sink's socket). GenUser is the generator's own user time, left out of the path.
	GenKernel, GenUser time.Duration
	// Softirqd is the run time of the ksoftirqd threads: receive processing the kernel deferred there.
	Softirqd time.Duration
}

// PPS is the rate of packets that passed the firewall and reached the sink.
func (r Result) PPS() float64 { return float64(r.Received) / r.Elapsed.Seconds() }

// PathCPUPerPacket is the CPU time of the packet path (GenKernel + Softirqd) per delivered packet: no
// generator user time, no sink, no other process on the machine.
func (r Result) PathCPUPerPacket() time.Duration {
	if r.Received == 0 {
		return 0
	}
	return (r.GenKernel + r.Softirqd) / time.Duration(r.Received)
}

// udpPair opens a sink on fw's dport in the fw namespace and a generator connected to it in the gen
// namespace.
func (p *Path) udpPair(dport uint16) (sink, gen *net.UDPConn, err error) {
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(p.FwIP), dport))
	if err := InNetns(p.FwNS, func() (err error) {
		sink, err = net.ListenUDP("udp4", dst)
		return err
	}); err != nil {
		return nil, nil, fmt.Errorf("sink socket: %w", err)
	}
	if err := InNetns(p.GenNS, func() (err error) {
		gen, err = net.DialUDP("udp4", nil, dst)
		return err
	}); err != nil {
		sink.Close()
		return nil, nil, fmt.Errorf("generator socket: %w", err)
	}
	return sink, gen, nil
}

// StreamUDP sends fixed-size UDP datagrams from the gen namespace to fw's dport for dur and counts
// what arrives. It stops by itself after dur (or when ctx ends). It stays whole because the sender,
// the sink and the CPU accounting share one measurement window, opened and closed in one place.
func (p *Path) StreamUDP(ctx context.Context, dur time.Duration, payload int, dport uint16) (Result, error) {
	sink, gen, err := p.udpPair(dport)
	if err != nil {
		return Result{}, err
	}
	defer sink.Close()
	defer gen.Close()
	_ = sink.SetReadBuffer(8 << 20)

	// Batched syscalls (recvmmsg/sendmmsg) keep the generator and sink cheap, so the measured rate is
	// bounded by the firewall path rather than by one syscall per packet.
	const batch = 64
	var received atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		pc := ipv4.NewPacketConn(sink)
		msgs := make([]ipv4.Message, batch)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, 2048)}
		}
		for {
			n, err := pc.ReadBatch(msgs, 0)
			if err != nil {
				return // deadline or close ends the sink
			}
			received.Add(uint64(n))
		}
	}()
	softirqd, err := findKsoftirqd()
	if err != nil {
		return Result{}, err
	}
	soft0, err := runTime(softirqd)
	if err != nil {
		return Result{}, err
	}
	type genResult struct {
		sent         uint64
		elapsed      time.Duration
		kernel, user time.Duration
		err          error
	}
	genDone := make(chan genResult, 1)
	go func() {
		// One OS thread sends and nothing else runs on it, so its rusage is the generator's alone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var r genResult
		var ru0, ru1 unix.Rusage
		if r.err = unix.Getrusage(unix.RUSAGE_THREAD, &ru0); r.err != nil {
			genDone <- r
			return
		}
		out := ipv4.NewPacketConn(gen)
		msgs := make([]ipv4.Message, batch)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, payload)}
		}
		deadline := time.Now().Add(dur)
		start := time.Now()
		for time.Now().Before(deadline) && ctx.Err() == nil {
			for i := 0; i < 16; i++ {
				if n, err := out.WriteBatch(msgs, 0); err == nil {
					r.sent += uint64(n)
				}
			}
		}
		r.elapsed = time.Since(start)
		r.err = unix.Getrusage(unix.RUSAGE_THREAD, &ru1)
		r.kernel = time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano())
		r.user = time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano())
		genDone <- r
	}()
	g := <-genDone
	if g.err != nil {
		return Result{}, fmt.Errorf("generator rusage: %w", g.err)
	}
	soft1, err := runTime(softirqd)
	if err != nil {
		return Result{}, err
	}
	// Let in-flight packets land, then stop the sink.
	select {
	case <-ctx.Done():
	case <-time.After(50 * time.Millisecond):
	}
	_ = sink.SetReadDeadline(time.Now())
	<-done
	return Result{Sent: g.sent, Received: received.Load(), Elapsed: g.elapsed,
		GenKernel: g.kernel, GenUser: g.user, Softirqd: soft1 - soft0}, nil
}

// findKsoftirqd returns the pids of the ksoftirqd/N kernel threads.
func findKsoftirqd() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("find ksoftirqd: %w", err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err == nil && strings.HasPrefix(string(comm), "ksoftirqd/") {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, errors.New("find ksoftirqd: no ksoftirqd threads in /proc")
	}
	return pids, nil
}

// runTime sums the exact run time (ns, the first field of /proc/PID/schedstat) of pids.
func runTime(pids []int) (time.Duration, error) {
	var sum time.Duration
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			return 0, fmt.Errorf("run time of pid %d: %w", pid, err)
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			return 0, fmt.Errorf("run time of pid %d: empty schedstat", pid)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("run time of pid %d: %w", pid, err)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}
