package bpf

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
)

// Interface bindings live in ifaces (ifindex → slot, a hash map: any ifindex) and, for an ifindex below
// ifslotsSize, in ifslots too (slot + 1, 0 unbound), an array the program reads instead: its lookup is
// inlined where a hash lookup is a call per packet. ifslots only ever holds bindings ifaces holds: a
// binding goes into ifaces first and out of ifslots first, and Load copies ifaces into ifslots (an
// older build's pins have no ifslots; a daemon stopped between the two writes left one behind).
const ifslotsSize = uint32(sgSgConstSG_IFSLOTS)

// putBinding binds ifindex to slot.
func (d *Dataplane) putBinding(ifindex, slot uint32) error {
	if err := d.objs.Ifaces.Put(ifindex, &sgIfcfg{Slot: slot}); err != nil {
		return err
	}
	if ifindex < ifslotsSize {
		return d.objs.Ifslots.Put(ifindex, slot+1)
	}
	return nil
}

// EarlierInterfaces lists the interfaces (by ifindex) an earlier process left a program on or bound
// to a slot, as Load found them (its pinned links and interface bindings): what a follower starting
// over must attach anew, guard or detach, whatever this process has removed since.
func (d *Dataplane) EarlierInterfaces() []int { return slices.Clone(d.earlier) }

// earlierInterfaces reads what EarlierInterfaces returns: the bound ifindexes and those of the pinned
// links (link-IFINDEX-HOOK).
func (d *Dataplane) earlierInterfaces() ([]int, error) {
	seen := map[int]bool{}
	var (
		k   uint32
		cfg sgIfcfg
	)
	it := d.objs.Ifaces.Iterate()
	for it.Next(&k, &cfg) {
		seen[int(k)] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read interface bindings: %w", err)
	}
	if d.pinPath != "" {
		pins, err := filepath.Glob(filepath.Join(d.pinPath, "link-*-*"))
		if err != nil {
			return nil, fmt.Errorf("list pinned links: %w", err)
		}
		for _, p := range pins {
			var ifindex int
			var hook string
			if _, err := fmt.Sscanf(filepath.Base(p), "link-%d-%s", &ifindex, &hook); err == nil {
				seen[ifindex] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// deleteBinding unbinds ifindex (nothing when it is not bound).
func (d *Dataplane) deleteBinding(ifindex uint32) error {
	if ifindex < ifslotsSize {
		if err := d.objs.Ifslots.Put(ifindex, uint32(0)); err != nil {
			return err
		}
	}
	if err := d.objs.Ifaces.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// syncIfslots makes ifslots hold exactly the bindings of ifaces below ifslotsSize: copied in, and any
// other entry cleared (one left by a build that unbound in ifaces alone, a downgrade then an upgrade,
// would filter a reused ifindex with another ENI's slot).
func (d *Dataplane) syncIfslots() error {
	want := make([]uint32, ifslotsSize)
	var (
		k   uint32
		cfg sgIfcfg
	)
	it := d.objs.Ifaces.Iterate()
	for it.Next(&k, &cfg) {
		if k < ifslotsSize {
			want[k] = cfg.Slot + 1
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read interface bindings: %w", err)
	}
	have, err := arrayValues[uint32](d.objs.Ifslots, int(ifslotsSize))
	if err != nil {
		return fmt.Errorf("read interface slots: %w", err)
	}
	var fix []uint32
	for k, v := range have {
		if v != want[k] {
			fix = append(fix, uint32(k))
		}
	}
	for _, k := range fix {
		if err := d.objs.Ifslots.Put(k, want[k]); err != nil {
			return fmt.Errorf("set the binding of ifindex %d: %w", k, err)
		}
	}
	return nil
}

// arrayValues reads the n entries of array map m in one batch lookup: entry by entry, a lookup per
// entry (and for ifslots as many next-key calls) was most of a replay's start. Every kernel the program
// loads on has batch operations on arrays (Linux 5.6; the ring buffer alone needs 5.8).
func arrayValues[V any](m *ebpf.Map, n int) ([]V, error) {
	keys, vals := make([]uint32, n), make([]V, n)
	var cursor ebpf.MapBatchCursor
	got, err := m.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) { // ErrKeyNotExist: the end was reached
		return nil, err
	}
	if got != n {
		return nil, fmt.Errorf("batch lookup read %d of %d entries", got, n)
	}
	for i, k := range keys {
		if k != uint32(i) {
			return nil, fmt.Errorf("batch lookup put key %d at %d", k, i)
		}
	}
	return vals, nil
}
