package bpf

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/bench"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// maxSmallENIBytes is what the kernel tables of a 10-rule ENI may take, so that 4,096 such ENIs fit in
// 64 MiB.
const maxSmallENIBytes = 16 << 10

// eniState is bench.ENIID with n synthetic rules in each direction.
func eniState(t testing.TB, n int) *model.State {
	t.Helper()
	st := synthState(t, n, 11)
	sg, _ := st.SG("sg-bench-0")
	next := *sg
	next.Egress = sg.Ingress
	b := st.Edit()
	require.NoError(t, b.PutSG(next))
	return b.State()
}

// eniTableBytes publishes an ENI with n rules per direction and returns the kernel's own account
// (memlock) of its two tables' maps.
func eniTableBytes(t testing.TB, d *Dataplane, n int) uint64 {
	t.Helper()
	tables, err := compiler.New(eniState(t, n)).Compile(bench.ENIID)
	require.NoError(t, err)
	require.NoError(t, d.Publish(context.Background(), 1, map[string]*compiler.Tables{bench.ENIID: tables}, nil))
	d.mu.Lock()
	live := d.live[d.slots[bench.ENIID]]
	d.mu.Unlock()
	var sum uint64
	for _, m := range append(live.maps[:], live.spare[:]...) {
		if m == nil {
			continue
		}
		info, err := m.Info()
		require.NoError(t, err)
		b, ok := info.Memlock()
		require.True(t, ok, "the kernel reports no memlock for maps")
		sum += b
	}
	return sum
}

// A 10-rule ENI (10 rules each way) takes at most maxSmallENIBytes of kernel tables.
func TestSmallENITableMemory(t *testing.T) {
	d := loadOrSkip(t)
	got := eniTableBytes(t, d, 10)
	t.Logf("10-rule ENI: %d bytes of kernel tables", got)
	require.LessOrEqual(t, got, uint64(maxSmallENIBytes))
}

// BenchmarkTableMemory reports the kernel tables' bytes per ENI and per rule (both directions counted)
// at 10, 100, 1k and 10k rules per direction.
func BenchmarkTableMemory(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			d := loadOrSkip(b)
			var bytes uint64
			for b.Loop() {
				bytes = eniTableBytes(b, d, n)
			}
			b.ReportMetric(float64(bytes), "bytes/ENI")
			b.ReportMetric(float64(bytes)/float64(2*n), "bytes/rule")
		})
	}
}
