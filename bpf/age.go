package bpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// AgeConntrack makes every tracked flow look by older, as if the kernel clock had moved on by that
// much: the program ages flows on that clock, which a caller cannot move, so scenarios that advance
// their own clock (SPEC §3's timeouts) age the kernel's flows with it.
func (d *Dataplane) AgeConntrack(by time.Duration) error {
	if by <= 0 {
		return nil
	}
	older := func(t uint64) uint64 {
		if t == 0 {
			return 0 // an unused half
		}
		return t - min(t-1, uint64(by)) // saturates at 1: "very old", never the unused 0
	}
	var k sgCtKey
	var v sgCtVal
	var keys []sgCtKey
	var vals []sgCtVal
	it := d.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		keys, vals = append(keys, k), append(vals, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("age conntrack: %w", err)
	}
	for i := range keys {
		vals[i].Last, vals[i].Last2 = older(vals[i].Last), older(vals[i].Last2)
		// UpdateExist: a flow that ended meanwhile stays ended.
		if err := d.objs.Conntrack.Update(&keys[i], &vals[i], ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("age conntrack: %w", err)
		}
	}
	return nil
}
