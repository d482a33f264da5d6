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
	byTicks := ticks(uint64(by), d.hz) // the program's clock counts ticks (clock.go)
	older := func(t uint64) uint64 {
		if t == 0 {
			return 0 // an unused half
		}
		return t - min(t-1, byTicks) // saturates at 1: "very old", never the unused 0
	}
	es, err := d.ctEntries()
	if err != nil {
		return fmt.Errorf("age conntrack: %w", err)
	}
	for _, e := range es {
		e.val.Last, e.val.Last2 = older(e.val.Last), older(e.val.Last2)
		// UpdateExist: a flow that ended meanwhile stays ended.
		if err := e.m.Update(e.key, &e.val, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("age conntrack: %w", err)
		}
	}
	return nil
}
