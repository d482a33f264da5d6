package bpf

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// ctEntry is one tracked endpoint pair: the conntrack table holding it (ct6 for IPv6, ct4 for
// IPv4: their keys differ, their values do not), its key in that table's layout, and its value.
type ctEntry struct {
	m   ctMap
	key []byte
	val sgCtVal
}

// ctEntries reads every entry of both conntrack tables.
func (d *Dataplane) ctEntries() ([]ctEntry, error) {
	var out []ctEntry
	key := make([]byte, d.objs.Ct6.KeySize())
	var v sgCtVal
	it := d.objs.Ct6.Iterate()
	for it.Next(key, &v) {
		out = append(out, ctEntry{m: d.objs.Ct6, key: bytes.Clone(key), val: v})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read conntrack: %w", err)
	}
	for _, e := range d.ct4.entries() {
		out = append(out, ctEntry{m: d.ct4, key: e.key, val: e.val})
	}
	return out, nil
}

// flushFlows deletes every conntrack entry.
func (d *Dataplane) flushFlows() error {
	es, err := d.ctEntries()
	if err != nil {
		return err
	}
	for _, e := range es {
		if err := e.m.Delete(e.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("flush conntrack: %w", err)
		}
	}
	return nil
}

// forgetFlows deletes the tracked flows and remembered fragment verdicts of the given slots, so an ENI
// that later takes one of them starts with none of its predecessor's (SPEC §8: a deleted ENI's flows
// are forgotten). Both key layouts start with the slot, little-endian (u32, or u16 for IPv4 flows).
func (d *Dataplane) forgetFlows(slots map[uint32]bool) error {
	if len(slots) == 0 {
		return nil
	}
	es, err := d.ctEntries()
	if err != nil {
		return err
	}
	for _, e := range es {
		slot := uint32(e.key[0]) | uint32(e.key[1])<<8
		if e.m != ctMap(d.ct4) {
			slot |= uint32(e.key[2])<<16 | uint32(e.key[3])<<24
		}
		if !slots[slot] {
			continue
		}
		if err := e.m.Delete(e.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget flows: %w", err)
		}
	}
	if err := d.deleteFrags(func(k *sgFragKey) bool { return slots[k.Slot] }); err != nil {
		return fmt.Errorf("forget fragments: %w", err)
	}
	return nil
}

// deleteFrags deletes the remembered fragment verdicts whose keys match.
func (d *Dataplane) deleteFrags(match func(*sgFragKey) bool) error {
	var fk sgFragKey
	var fv sgFragVal
	var fkeys []sgFragKey
	it := d.objs.Frags.Iterate()
	for it.Next(&fk, &fv) {
		if match(&fk) {
			fkeys = append(fkeys, fk)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for i := range fkeys {
		if err := d.objs.Frags.Delete(&fkeys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}
