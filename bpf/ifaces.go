package bpf

import (
	"errors"
	"fmt"

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
	var v uint32
	sit := d.objs.Ifslots.Iterate()
	var fix []uint32
	for sit.Next(&k, &v) {
		if k < ifslotsSize && v != want[k] {
			fix = append(fix, k)
		}
	}
	if err := sit.Err(); err != nil {
		return fmt.Errorf("read interface slots: %w", err)
	}
	for _, k := range fix {
		if err := d.objs.Ifslots.Put(k, want[k]); err != nil {
			return fmt.Errorf("set the binding of ifindex %d: %w", k, err)
		}
	}
	return nil
}
