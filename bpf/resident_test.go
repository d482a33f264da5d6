package bpf

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// TestFreedSlotsAreRewrittenInPlace: ENIs deleted and created over and over, each new one landing in
// a freed slot whose inner maps stayed installed (no map-in-map update), decide every random packet as
// the reference does — none sees a table of the ENI that held the slot before — and a deleted ENI
// decides nothing.
func TestFreedSlotsAreRewrittenInPlace(t *testing.T) {
	d := loadOrSkip(t)
	ctx := context.Background()
	s := demoState(t)
	ref := newRefModel()
	gen := uint64(1)
	tables := compiler.New(s).CompileAll()
	require.NoError(t, d.Publish(ctx, gen, tables, nil))
	ref.publish(gen, tables)
	sgLists := [][]string{{"sg-web"}, {"sg-db"}, {"sg-ssh", "sg-web"}, {}, {"sg-lockdown", "sg-ssh"}}
	rng := rand.New(rand.NewPCG(3, 4))
	freedSlot := uint32(0)
	var recent []frame
	for round := range 12 {
		id := fmt.Sprintf("eni-r%d", round)
		b := s.Edit()
		require.NoError(t, b.PutENI(model.NetworkInterface{NetworkInterfaceID: id, AppID: "1250000001",
			PrivateIPAddresses: []string{"198.18.77.1"}, SgIDs: sgLists[round%len(sgLists)]}))
		s = b.State()
		gen++
		tt, err := compiler.New(s).Compile(id)
		require.NoError(t, err)
		require.NoError(t, d.Publish(ctx, gen, map[string]*compiler.Tables{id: tt}, nil))
		ref.publish(gen, map[string]*compiler.Tables{id: tt})
		d.mu.Lock()
		slot, resident := d.slots[id], len(d.resident)
		d.mu.Unlock()
		if round > 0 {
			require.Equal(t, freedSlot, slot, "round %d: the freed slot is taken again", round)
			require.Zero(t, resident, "its installed maps were taken")
		}
		freedSlot = slot
		e, _ := s.ENI(id)
		// No flush between rounds, and the same address: the replies to the flows the last ENI in this
		// slot left must not be taken for established.
		for n := range 300 {
			f := randomFrame(rng, e.Addrs())
			if len(recent) > 0 && rng.IntN(3) == 0 {
				f = recent[rng.IntN(len(recent))].reverse()
			}
			dir := model.Ingress
			if f.src == e.Addrs()[0] {
				dir = model.Egress
			}
			want := ref.decide(id, dir, f)
			got, err := d.Run(f.build(), id, dir)
			require.NoError(t, err)
			require.Equal(t, want, got, "round %d packet %d %s %+v", round, n, dir, f)
			if got.Accept {
				recent = append(recent, f)
			}
		}
		// Delete it: its slot is freed with its maps left installed.
		b = s.Edit()
		require.NoError(t, b.DeleteENI(id))
		s = b.State()
		gen++
		require.NoError(t, d.Publish(ctx, gen, nil, []string{id}))
		f := randomFrame(rng, e.Addrs())
		_, err = d.Run(f.build(), id, model.Ingress)
		require.Error(t, err, "a deleted ENI decides nothing")
		d.mu.Lock()
		resident = len(d.resident)
		d.mu.Unlock()
		require.Equal(t, 1, resident, "its slot keeps its maps installed")
	}
}
