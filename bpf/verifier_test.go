package bpf

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
)

// maxVerified bounds the verifier's work per program, a fifth of its limit (1M processed instructions):
// the count is deterministic for a given kernel, unlike load time, which BenchmarkLoad reports.
const maxVerified = 200_000

// loadEach loads each program of the object on its own, against maps created beforehand (so the time
// is the program's: BTF, relocation and verification, not the maps' allocation), and returns its load
// time and the verifier's count of processed instructions.
func loadEach(tb testing.TB) map[string]struct {
	took     time.Duration
	verified uint32
} {
	tb.Helper()
	spec, err := collectionSpec(false, 250)
	require.NoError(tb, err)
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	maps, err := ebpf.NewCollection(mapsOnly)
	skipIfNotSupported(tb, err)
	defer maps.Close()
	out := map[string]struct {
		took     time.Duration
		verified uint32
	}{}
	for name := range spec.Programs {
		one := spec.Copy()
		for other := range one.Programs {
			if other != name {
				delete(one.Programs, other)
			}
		}
		start := time.Now()
		coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: maps.Maps})
		took := time.Since(start)
		skipIfNotSupported(tb, err)
		info, err := coll.Programs[name].Info()
		require.NoError(tb, err)
		verified, ok := info.VerifiedInstructions()
		require.True(tb, ok, "the kernel reports no verified instruction count")
		coll.Close()
		out[name] = struct {
			took     time.Duration
			verified uint32
		}{took, verified}
	}
	return out
}

// TestVerifierBudget requires every program to verify well inside the verifier's limit.
func TestVerifierBudget(t *testing.T) {
	for name, r := range loadEach(t) {
		t.Logf("%s: %d instructions verified, loaded in %v", name, r.verified, r.took)
		require.Less(t, r.verified, uint32(maxVerified), "%s: verifier work", name)
	}
}

// BenchmarkLoad reports each program's load time and verified instructions.
func BenchmarkLoad(b *testing.B) {
	took, verified := map[string]time.Duration{}, map[string]uint32{}
	for b.Loop() {
		for name, r := range loadEach(b) {
			took[name] += r.took
			verified[name] = r.verified
		}
	}
	for name := range took {
		b.ReportMetric(float64(took[name].Microseconds())/1000/float64(b.N), name+"-load-ms")
		b.ReportMetric(float64(verified[name]), name+"-verified-insns")
	}
}
