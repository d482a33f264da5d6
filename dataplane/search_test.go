package dataplane

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// lastAtMostRef is lastAtMost by a linear scan.
func lastAtMostRef[T uint16 | uint32](s []T, x T) int {
	i := 0
	for j, v := range s {
		if v <= x {
			i = j
		}
	}
	return i
}

// TestLastAtMost: the branch-free search agrees with a linear scan on sorted slices with repeats, at
// both ends of each type's range, for every length up to 70.
func TestLastAtMost(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := 1; n <= 70; n++ {
		s32 := make([]uint32, n)
		s16 := make([]uint16, n)
		for i := range n {
			s32[i] = uint32(rng.IntN(40)) * (math.MaxUint32 / 40)
			s16[i] = uint16(rng.IntN(40)) * (math.MaxUint16 / 40)
		}
		s32[0], s16[0] = 0, 0
		slices.Sort(s32)
		slices.Sort(s16)
		probes32 := []uint32{0, 1, math.MaxUint32, s32[n-1], s32[n/2], s32[n/2] - 1}
		probes16 := []uint16{0, 1, math.MaxUint16, s16[n-1], s16[n/2], s16[n/2] - 1}
		for range 20 {
			probes32 = append(probes32, rng.Uint32())
			probes16 = append(probes16, uint16(rng.Uint32()))
		}
		for _, x := range probes32 {
			require.Equal(t, lastAtMostRef(s32, x), lastAtMost(s32, x), "uint32 %v, x %d", s32, x)
		}
		for _, x := range probes16 {
			require.Equal(t, lastAtMostRef(s16, x), lastAtMost(s16, x), "uint16 %v, x %d", s16, x)
		}
	}
}
