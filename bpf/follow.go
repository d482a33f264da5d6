package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/sgsim/sgsim/model"
)

// MaxENIs is how many ENIs one loaded program holds (its slots): the node refuses the next new ENI
// with a 409 before anything is committed.
const MaxENIs = int(maxSlots)

// guardSlot binds an interface to no ENI: the program drops every packet on it with reason no-eni
// (SPEC §8's guard).
const guardSlot = uint32(sgSgConstSG_GUARD_SLOT)

// GuardDrops counts the packets dropped on guarded interfaces in direction dir (egress: what the VMs
// behind them sent) since the program's maps were made.
func (d *Dataplane) GuardDrops(dir model.Direction) (uint64, error) {
	var n uint64
	if err := d.objs.GuardDrops.Lookup(uint32(dir), &n); err != nil {
		return 0, fmt.Errorf("read guard drops: %w", err)
	}
	return n, nil
}

// Guard puts the program on ifname bound to no ENI, so nothing crosses it until an ENI claims it; a
// later Attach replaces the binding in one map update.
func (d *Dataplane) Guard(ctx context.Context, ifname string) error {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("guard %s: %w", ifname, err)
	}
	if err := d.putBinding(uint32(ifc.Index), guardSlot); err != nil {
		return fmt.Errorf("guard %s: bind: %w", ifname, err)
	}
	if err := d.link(ctx, ifname, ifc.Index); err != nil {
		return fmt.Errorf("guard %s: %w", ifname, err)
	}
	return nil
}

// Forget releases what d holds for an interface that is gone: its links (the kernel dropped them with
// the device), their pins and its binding.
func (d *Dataplane) Forget(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, h := range hooks {
		key := fmt.Sprintf("%d-%s", ifindex, h.name)
		if l, ok := d.links[key]; ok {
			_ = l.Close() // the device and its link are gone already
			delete(d.links, key)
		}
		if d.pinPath != "" {
			if err := os.Remove(d.linkPin(ifindex, h)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := d.deleteBinding(uint32(ifindex)); err != nil {
		errs = append(errs, fmt.Errorf("unbind: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("forget ifindex %d: %w", ifindex, err)
	}
	return nil
}
