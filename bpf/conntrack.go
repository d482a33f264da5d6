package bpf

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// ctEntry is one tracked endpoint pair: the conntrack map holding it (conntrack for IPv6, conntrack4 for
// IPv4: their keys differ, their values do not), its key in that map's layout, and its value.
type ctEntry struct {
	m   *ebpf.Map
	key []byte
	val sgCtVal
}

// ctEntries reads every entry of both conntrack maps.
func (d *Dataplane) ctEntries() ([]ctEntry, error) {
	var out []ctEntry
	for _, m := range []*ebpf.Map{d.objs.Conntrack, d.objs.Conntrack4} {
		key := make([]byte, m.KeySize())
		var v sgCtVal
		it := m.Iterate()
		for it.Next(key, &v) {
			out = append(out, ctEntry{m: m, key: bytes.Clone(key), val: v})
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("read conntrack: %w", err)
		}
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
