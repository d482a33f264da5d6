package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/nonce"
)

// BenchmarkBoltCommit measures one durable Commit (encode, write, fsync) of the demo state with one SG of
// n rules, alternating between two versions of that SG so every commit writes a change.
func BenchmarkBoltCommit(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			s, err := model.LoadTopologyFile("../testdata/demo.json")
			require.NoError(b, err)
			g, ok := s.SG("sg-web")
			require.True(b, ok)
			var states [2]*model.State
			for v := range states {
				ng := *g
				ng.Ingress = nil
				for r := range n {
					ng.Ingress = append(ng.Ingress, model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("10.%d.%d.0/24", r/256, r%256), PortRange: strconv.Itoa(1000 + r + v), Action: "ACCEPT"})
				}
				e := s.Edit()
				require.NoError(b, e.PutSG(ng))
				states[v] = e.State()
			}
			st, err := OpenBolt(filepath.Join(b.TempDir(), "b.db"))
			require.NoError(b, err)
			b.Cleanup(func() { st.Close() })
			ctx := context.Background()
			require.NoError(b, st.Commit(ctx, s, 1))
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				require.NoError(b, st.Commit(ctx, states[i%2], uint64(i+2)))
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		})
	}
}

// BenchmarkNonceDisk reports the file bytes one recorded triple costs, written by batched flushes.
func BenchmarkNonceDisk(b *testing.B) {
	const n = 100_000
	for range b.N {
		path := filepath.Join(b.TempDir(), "n.db")
		st, err := OpenBolt(path)
		require.NoError(b, err)
		before := fileSize(b, path)
		now := time.Now()
		for i := range n {
			require.NoError(b, st.UseNonce(context.Background(), nonce.Key{Secret: 1, Timestamp: now.Unix(), Nonce: uint64(i)}, now, 2*time.Hour))
			if i%1000 == 999 {
				st.flushNonces()
			}
		}
		require.NoError(b, st.Close())
		b.ReportMetric(float64(fileSize(b, path)-before)/n, "bytes/triple")
	}
}

func fileSize(b *testing.B, path string) int64 {
	fi, err := os.Stat(path)
	require.NoError(b, err)
	return fi.Size()
}
