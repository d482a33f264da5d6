package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// DropEvent is one packet the program dropped (rate-limited per CPU; Suppressed counts the ones not
// reported just before it).
type DropEvent struct {
	KernelNS   uint64           `json:"kernelNs"` // bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC_COARSE)
	ENI        string           `json:"eni"`
	Ifindex    uint32           `json:"ifindex"`
	Direction  model.Direction  `json:"direction"`
	Reason     dataplane.Reason `json:"reason"`
	Proto      uint8            `json:"proto,omitempty"`
	Src        netip.Addr       `json:"src,omitzero"`
	Dst        netip.Addr       `json:"dst,omitzero"`
	Sport      uint16           `json:"sport,omitempty"`
	Dport      uint16           `json:"dport,omitempty"`
	SgID       string           `json:"sgId,omitempty"`
	RuleIndex  *int             `json:"ruleIndex,omitempty"`
	Entry      int              `json:"entry"`
	Generation uint64           `json:"generation"`
	Suppressed uint32           `json:"suppressed,omitempty"`
}

// decodeDrop parses one ring buffer record; names resolves ENI slots.
func decodeDrop(raw []byte, names func(slot uint32) string) (DropEvent, error) {
	var ev sgDropEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &ev); err != nil {
		return DropEvent{}, fmt.Errorf("decode drop event of %d bytes: %w", len(raw), err)
	}
	out := DropEvent{KernelNS: ev.Ts, ENI: names(ev.Slot), Ifindex: ev.Ifindex, Direction: model.Direction(ev.Dir & 1),
		Reason: dataplane.Reason(ev.Reason), Proto: ev.Proto, Sport: ev.Sport, Dport: ev.Dport,
		Entry: int(ev.Entry), Generation: ev.Gen, Suppressed: ev.Suppressed}
	switch ev.Fam {
	case 4:
		out.Src = netip.AddrFrom4([4]byte(ev.Src[:4]))
		out.Dst = netip.AddrFrom4([4]byte(ev.Dst[:4]))
	case 6:
		out.Src = netip.AddrFrom16(ev.Src)
		out.Dst = netip.AddrFrom16(ev.Dst)
	}
	if out.Reason == dataplane.ReasonRule {
		out.SgID = cString(ev.Sg[:])
		ri := int(ev.RuleIndex)
		out.RuleIndex = &ri
	}
	return out, nil
}

// String is a one-line human form of the event.
func (e DropEvent) String() string {
	what := e.Reason.String()
	if e.RuleIndex != nil {
		what = fmt.Sprintf("%s rule %d", e.SgID, *e.RuleIndex)
	}
	eni := e.ENI
	if eni == "" {
		eni = fmt.Sprintf("ifindex %d", e.Ifindex) // a guarded interface: no ENI claims it
	}
	if !e.Src.IsValid() {
		return fmt.Sprintf("DROP %s %s: %s", eni, e.Direction, what)
	}
	return fmt.Sprintf("DROP %s %s proto %d %s:%d → %s:%d: %s", eni, e.Direction, e.Proto, e.Src, e.Sport, e.Dst, e.Dport, what)
}

// DropReader reads drop events from the pinned maps of a running dataplane.
type DropReader struct {
	rd    *ringbuf.Reader
	drops *ebpf.Map
	names *ebpf.Map
}

// OpenDropReader opens the drop ring buffer pinned under pinPath.
func OpenDropReader(pinPath string) (*DropReader, error) {
	drops, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, "drops"), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no sgsim dataplane pinned under %s (is sgsim serve running with the ebpf dataplane?): %w", pinPath, err)
		}
		return nil, fmt.Errorf("open %s/drops: %w", pinPath, err)
	}
	names, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, "eni_names"), nil)
	if err != nil {
		drops.Close()
		return nil, fmt.Errorf("open %s/eni_names: %w", pinPath, err)
	}
	return newDropReader(drops, names)
}

func newDropReader(drops, names *ebpf.Map) (*DropReader, error) {
	rd, err := ringbuf.NewReader(drops)
	if err != nil {
		drops.Close()
		names.Close()
		return nil, fmt.Errorf("open drop ring buffer: %w", err)
	}
	return &DropReader{rd: rd, drops: drops, names: names}, nil
}

// DropReader reads this dataplane's drop events (it must be the only reader).
func (d *Dataplane) DropReader() (*DropReader, error) {
	drops, err := d.objs.Drops.Clone()
	if err != nil {
		return nil, fmt.Errorf("drop reader: %w", err)
	}
	names, err := d.objs.EniNames.Clone()
	if err != nil {
		drops.Close()
		return nil, fmt.Errorf("drop reader: %w", err)
	}
	return newDropReader(drops, names)
}

func (r *DropReader) name(slot uint32) string {
	var n sgEniname
	if err := r.names.Lookup(slot, &n); err != nil {
		return fmt.Sprintf("slot-%d", slot)
	}
	if s := cString(n.Name[:]); s != "" {
		return s
	}
	return fmt.Sprintf("slot-%d", slot)
}

// Read blocks for the next event until ctx is done.
func (r *DropReader) Read(ctx context.Context) (DropEvent, error) {
	stop := context.AfterFunc(ctx, func() { r.rd.Close() }) // unblocks Read
	defer stop()
	rec, err := r.rd.Read()
	if err != nil {
		if ctx.Err() != nil {
			return DropEvent{}, ctx.Err()
		}
		return DropEvent{}, fmt.Errorf("read drop event: %w", err)
	}
	return decodeDrop(rec.RawSample, r.name)
}

// Close releases the reader.
func (r *DropReader) Close() error {
	return errors.Join(r.rd.Close(), r.drops.Close(), r.names.Close())
}

// Hit is the packet count of one table entry at one generation. Decision says which rule (or default)
// that entry is, when the table version is the one this process published last (nil for counters of
// tables adopted from a previous process and not republished yet).
type Hit struct {
	ENI        string               `json:"eni"`
	Direction  model.Direction      `json:"direction"`
	Generation uint64               `json:"generation"`
	Entry      int                  `json:"entry"`
	Packets    uint64               `json:"packets"`
	Decision   *dataplane.Explained `json:"decision,omitempty"`
}

// Hits returns the counter of every entry that counted a packet, in every table in force. The counters
// live in the tables (layout.go), so a replaced table version's counts go with it.
func (d *Dataplane) Hits() ([]Hit, error) {
	d.mu.Lock()
	slots := maps.Clone(d.slots)
	live := maps.Clone(d.live)
	d.mu.Unlock()
	var hits []Hit
	for _, eni := range slices.Sorted(maps.Keys(slots)) {
		slot := slots[eni]
		for dir := range model.Direction(2) {
			gen, counts, err := d.tableCounts(slot*2 + uint32(dir))
			if err != nil {
				return nil, fmt.Errorf("read hit counters of %s/%s: %w", eni, dir, err)
			}
			t := live[slot].tables[dir]
			known := t != nil && live[slot].gens[dir] == gen
			for e, n := range counts {
				if n == 0 {
					continue
				}
				h := Hit{ENI: eni, Direction: dir, Generation: gen, Entry: e, Packets: n}
				if known && e < len(t.Entries) {
					x := dataplane.VerdictOf(t, e).Explain(eni, dir, t)
					h.Decision = &x
				}
				hits = append(hits, h)
			}
		}
	}
	return hits, nil
}

// tableCounts reads the generation and the per-entry counters of the table in force at ti (none when
// there is no table, or it was written by a build without counters).
func (d *Dataplane) tableCounts(ti uint32) (uint64, []uint64, error) {
	var m *ebpf.Map
	if err := d.objs.Tables.Lookup(ti, &m); errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, nil, nil
	} else if err != nil {
		return 0, nil, err
	}
	defer m.Close()
	chunk := make([]byte, chunkSize)
	cur := uint32(0)
	if err := m.Lookup(cur, chunk); err != nil {
		return 0, nil, fmt.Errorf("read table header: %w", err)
	}
	h := regionOf[sgHdr](chunk, 0, 1)[0]
	if h.OffCounts == 0 {
		return h.Gen, nil, nil
	}
	counts := make([]uint64, h.N_entries)
	for i := range counts {
		off := h.OffCounts + uint32(i)*8
		if c := off >> chunkShift; c != cur {
			if err := m.Lookup(c, chunk); err != nil {
				return 0, nil, fmt.Errorf("read table chunk %d: %w", c, err)
			}
			cur = c
		}
		counts[i] = regionOf[uint64](chunk, off&uint32(chunkSize-1), 1)[0]
	}
	return h.Gen, counts, nil
}
