package bpf

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Conntrack's clock is jiffies (sg.c: bpf_jiffies64 is inlined by the verifier, bpf_ktime_get_coarse_ns
// is a helper call per packet), so its timeouts are in ticks of the kernel's CONFIG_HZ, which the program
// is given at load (ct_hz) and the Go side converts durations with.

// kernelHZ returns the kernel's tick rate: CONFIG_HZ from its config when the host has one, else
// measured.
func kernelHZ() (uint32, error) {
	if hz, err := configHZ(); err == nil {
		return hz, nil
	}
	return measureHZ()
}

// configHZ reads CONFIG_HZ from the running kernel's config (/proc/config.gz or /boot/config-RELEASE).
func configHZ() (uint32, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return 0, fmt.Errorf("uname: %w", err)
	}
	release := string(bytes.TrimRight(uts.Release[:], "\x00"))
	for _, path := range []string{"/proc/config.gz", "/boot/config-" + release} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		hz, err := parseConfigHZ(f, strings.HasSuffix(path, ".gz"))
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		return hz, nil
	}
	return 0, errors.New("no kernel config (/proc/config.gz, /boot/config-RELEASE)")
}

// parseConfigHZ finds CONFIG_HZ=N in a kernel config.
func parseConfigHZ(r io.Reader, gzipped bool) (uint32, error) {
	if gzipped {
		z, err := gzip.NewReader(r)
		if err != nil {
			return 0, err
		}
		defer z.Close()
		r = z
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "CONFIG_HZ=")
		if !ok {
			continue
		}
		hz, err := strconv.ParseUint(v, 10, 32)
		if err != nil || hz == 0 {
			return 0, fmt.Errorf("CONFIG_HZ=%q is not a tick rate", v)
		}
		return uint32(hz), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CONFIG_HZ")
}

// kernelClock is a tiny program that reads the kernel's two clocks at once (jiffies and the coarse
// monotonic ns, into cb[0..3]) when test-run.
type kernelClock struct{ prog *ebpf.Program }

func newKernelClock() (*kernelClock, error) {
	const cb = 48 // offsetof(struct __sk_buff, cb)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnJiffies64.Call(),
		asm.StoreMem(asm.R6, cb, asm.R0, asm.Word),
		asm.RSh.Imm(asm.R0, 32),
		asm.StoreMem(asm.R6, cb+4, asm.R0, asm.Word),
		asm.FnKtimeGetCoarseNs.Call(),
		asm.StoreMem(asm.R6, cb+8, asm.R0, asm.Word),
		asm.RSh.Imm(asm.R0, 32),
		asm.StoreMem(asm.R6, cb+12, asm.R0, asm.Word),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}})
	if err != nil {
		return nil, fmt.Errorf("load clock program: %w", err)
	}
	return &kernelClock{prog: prog}, nil
}

func (c *kernelClock) Close() error { return c.prog.Close() }

// read returns jiffies and the coarse monotonic clock (ns), read together.
func (c *kernelClock) read() (jiffies, ns uint64, err error) {
	var out skbCtx
	if _, err := c.prog.Run(&ebpf.RunOptions{Data: make([]byte, 14), Context: skbCtx{}, ContextOut: &out}); err != nil {
		return 0, 0, fmt.Errorf("read kernel clocks: %w", err)
	}
	return uint64(out.Cb[0]) | uint64(out.Cb[1])<<32, uint64(out.Cb[2]) | uint64(out.Cb[3])<<32, nil
}

// measureHZ measures the tick rate: the coarse clock moves when jiffies does, so between two reads just
// after a tick, ns / ticks is the tick's length. It waits three ticks at most.
// measureTicks is how many ticks measureHZ times.
const measureTicks = 25

func measureHZ() (uint32, error) {
	c, err := newKernelClock()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	// nextTick reads until jiffies passes after (up to 100 ms of reads at the slowest rate, 100 Hz).
	nextTick := func(after uint64) (uint64, uint64, error) {
		for range 200_000 {
			j, ns, err := c.read()
			if err != nil || j > after {
				return j, ns, err
			}
		}
		return 0, 0, errors.New("measure HZ: jiffies do not move")
	}
	j0, _, err := c.read()
	if err != nil {
		return 0, err
	}
	j1, ns1, err := nextTick(j0)
	if err != nil {
		return 0, err
	}
	// Over many ticks: a tick the coarse clock takes late (a loaded machine, a skipped tick) moves the
	// rate by a part in measureTicks, which must stay well under the 18% between 250 and 300 Hz.
	var j2, ns2 uint64
	for j2 = j1; j2 < j1+measureTicks && err == nil; {
		j2, ns2, err = nextTick(j2)
	}
	if err != nil {
		return 0, err
	}
	if ns2 <= ns1 {
		return 0, fmt.Errorf("measure HZ: the coarse clock did not move over %d ticks", j2-j1)
	}
	return nearestHZ(float64(j2-j1) * 1e9 / float64(ns2-ns1)), nil
}

// nearestHZ rounds a measured tick rate to the nearest rate Linux is configured with.
func nearestHZ(measured float64) uint32 {
	best := uint32(100)
	for _, hz := range []uint32{100, 250, 300, 1000} {
		if math.Abs(measured-float64(hz)) < math.Abs(measured-float64(best)) {
			best = hz
		}
	}
	return best
}

// ticks converts a duration in ns to the conntrack clock's ticks, rounded up: a flow aged by more than
// its timeout (in ns) is then aged by more than its timeout in ticks.
func ticks(ns uint64, hz uint32) uint64 {
	return ns/1e9*uint64(hz) + (ns%1e9*uint64(hz)+1e9-1)/1e9
}

// oldConntrack is each conntrack map an older build pinned that this build moves into its own tables:
// those of builds before the tick clock (last seen in ns of the coarse monotonic clock: conntrack, IPv6
// and before it all flows; conntrack4, IPv4) and the LRU hash IPv4 flows had before ct4_sets (ct4, in
// ticks).
type oldConntrack struct {
	name    string
	to      ctMap
	keySize int
	nsClock bool
}

func (d *Dataplane) oldConntrack() []oldConntrack {
	return []oldConntrack{
		{"conntrack", d.objs.Ct6, int(d.objs.Ct6.KeySize()), true},
		{"conntrack4", d.ct4, ct4KeySize, true},
		{"ct4", d.ct4, ct4KeySize, false},
	}
}

// adoptOldConntrack moves the flows of an older build's pinned conntrack maps (same keys and values; and
// a ct4_sets of the ways layout, adoptCt4Ways) into this build's tables, last seen in ticks, and unpins
// the old maps: a daemon upgraded across the clock change or a table change keeps its tracked flows,
// and each program reads only its own tables (the old program, attached until Attach replaces it,
// keeps its maps).
func (d *Dataplane) adoptOldConntrack() error {
	for _, oc := range d.oldConntrack() {
		path := d.pinFile(oc.name)
		old, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("adopt the flows pinned at %s: %w", path, err)
		}
		err = d.copyFlows(old, oc)
		old.Close()
		if err != nil {
			return fmt.Errorf("adopt the flows pinned at %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("unpin %s: %w", path, err)
		}
	}
	return d.adoptCt4Ways()
}

// copyFlows copies every entry of from into oc.to, converting last-seen times from coarse-clock ns to
// ticks (oc.nsClock: each aged by as much as it had aged); entries already in oc.to stay as they are. A
// map of another layout is left alone (its flows are not adopted).
func (d *Dataplane) copyFlows(from *ebpf.Map, oc oldConntrack) error {
	if int(from.KeySize()) != oc.keySize || from.ValueSize() != uint32(unsafe.Sizeof(sgCtVal{})) {
		return nil
	}
	inTicks := func(t uint64) uint64 { return t }
	if oc.nsClock {
		clock, err := newKernelClock()
		if err != nil {
			return err
		}
		defer clock.Close()
		nowTicks, nowNS, err := clock.read()
		if err != nil {
			return err
		}
		inTicks = func(ns uint64) uint64 {
			if ns == 0 {
				return 0 // an unused half
			}
			if ns >= nowNS {
				return nowTicks
			}
			return nowTicks - min(ticks(nowNS-ns, d.hz), nowTicks-1) // saturates at 1, as AgeConntrack
		}
	}
	key := make([]byte, from.KeySize())
	var v sgCtVal
	it := from.Iterate()
	for it.Next(key, &v) {
		v.Last, v.Last2 = inTicks(v.Last), inTicks(v.Last2)
		if err := oc.to.Update(key, &v, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return err
		}
	}
	return it.Err()
}
