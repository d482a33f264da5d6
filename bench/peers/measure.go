package peers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"

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
)

// Load replaces the path's rules with tables' ingress table, enforced by fw, and returns how long the
// loader took: the update cost a control plane pays for pushing a whole new table (for sgsim, the table
// publish; the program is loaded and attached once, outside the timing).
func (p *Path) Load(ctx context.Context, fw Firewall, tables *compiler.Tables) (time.Duration, error) {
	if fw == SgsimTC {
		return p.loadSgsim(ctx, tables)
	}
	rules := RulesFromTable(tables.Ingress)
	var name string
	var args []string
	var script []byte
	switch fw {
	case None:
		return 0, nil
	case IptablesLegacy:
		name, args, script = "iptables-legacy-restore", nil, IptablesScript(p.FwIf, rules)
	case IptablesNft:
		name, args, script = "iptables-nft-restore", nil, IptablesScript(p.FwIf, rules)
	case Nftables:
		name, args, script = "nft", []string{"-f", "-"}, NftScript(p.FwIf, rules, false)
	case NftablesWithSet:
		name, args, script = "nft", []string{"-f", "-"}, NftScript(p.FwIf, rules, true)
	default:
		return 0, fmt.Errorf("unknown firewall %q", fw)
	}
	full := append([]string{"netns", "exec", p.FwNS, name}, args...)
	start := time.Now()
	if err := run(ctx, script, "ip", full...); err != nil {
		return 0, fmt.Errorf("load %s (%d rules): %w", fw, len(rules), err)
	}
	return time.Since(start), nil
}

func (p *Path) loadSgsim(ctx context.Context, tables *compiler.Tables) (time.Duration, error) {
	if p.sgsim == nil {
		d, err := bpf.Load(bpf.Options{})
		if err != nil {
			return 0, fmt.Errorf("load sgsim: %w", err)
		}
		if err := InNetns(p.GenNS, func() error { return d.Attach(ctx, p.GenIf, tables.ENI) }); err != nil {
			d.Close()
			return 0, fmt.Errorf("load sgsim: %w", err)
		}
		p.sgsim = d
	}
	p.sgsimGen++
	start := time.Now()
	if err := p.sgsim.Publish(ctx, p.sgsimGen, map[string]*compiler.Tables{tables.ENI: tables}, nil); err != nil {
		return 0, fmt.Errorf("load sgsim (%d rules): %w", len(tables.Ingress.Entries)-1, err)
	}
	return time.Since(start), nil
}

// Flush removes every rule a Load may have left on the path.
func (p *Path) Flush(ctx context.Context) error {
	var errs []error
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
	// CPUBusy is the busy time of all CPUs during the stream (generator, kernel path and sink together).
	CPUBusy time.Duration
}

// PPS is the rate of packets that passed the firewall and reached the sink.
func (r Result) PPS() float64 { return float64(r.Received) / r.Elapsed.Seconds() }

// CPUPerPacket is all-CPU busy time per delivered packet.
func (r Result) CPUPerPacket() time.Duration {
	if r.Received == 0 {
		return 0
	}
	return r.CPUBusy / time.Duration(r.Received)
}

// StreamUDP sends fixed-size UDP datagrams from the gen namespace to fw's dport for dur and counts
// what arrives. It stops by itself after dur (or when ctx ends).
func (p *Path) StreamUDP(ctx context.Context, dur time.Duration, payload int, dport uint16) (Result, error) {
	var sink, gen *net.UDPConn
	dst := netip.AddrPortFrom(netip.MustParseAddr(p.FwIP), dport)
	if err := InNetns(p.FwNS, func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(dst))
		sink = c
		return err
	}); err != nil {
		return Result{}, fmt.Errorf("sink socket: %w", err)
	}
	defer sink.Close()
	_ = sink.SetReadBuffer(8 << 20)
	if err := InNetns(p.GenNS, func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		gen = c
		return err
	}); err != nil {
		return Result{}, fmt.Errorf("generator socket: %w", err)
	}
	defer gen.Close()

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
	busy0, err := cpuBusy()
	if err != nil {
		return Result{}, err
	}
	out := ipv4.NewPacketConn(gen)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, payload)}
	}
	deadline := time.Now().Add(dur)
	start := time.Now()
	var sent uint64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for i := 0; i < 16; i++ {
			if n, err := out.WriteBatch(msgs, 0); err == nil {
				sent += uint64(n)
			}
		}
	}
	elapsed := time.Since(start)
	busy1, err := cpuBusy()
	if err != nil {
		return Result{}, err
	}
	// Let in-flight packets land, then stop the sink.
	time.Sleep(50 * time.Millisecond)
	_ = sink.SetReadDeadline(time.Now())
	<-done
	return Result{Sent: sent, Received: received.Load(), Elapsed: elapsed, CPUBusy: busy1 - busy0}, nil
}

// cpuBusy reads the machine's total non-idle CPU time from /proc/stat.
func cpuBusy() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("cpu time: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, fmt.Errorf("cpu time: /proc/stat is empty")
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0, fmt.Errorf("cpu time: unexpected /proc/stat line %q", sc.Text())
	}
	var busy uint64
	for i, f := range fields[1:min(len(fields), 9)] { // user..steal; guest time is already in user
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu time: %w", err)
		}
		busy += v
	}
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(busy) * time.Second / clkTck, nil
}
