package control

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// besideState is the demo state plus other SGs of 100 rules each, n rules in all, that no ENI uses:
// what a one-rule change is committed beside.
func besideState(b *testing.B, n int) *model.State {
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(b, err)
	e := s.Edit()
	for g := 0; g*100 < n; g++ {
		sg := model.SecurityGroup{SgID: fmt.Sprintf("sg-other%d", g), AppID: "1250000001"}
		for r := range min(100, n-g*100) {
			sg.Ingress = append(sg.Ingress, model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("10.%d.%d.0/24", g%256, r), PortRange: strconv.Itoa(1000 + r), Action: "ACCEPT"})
		}
		require.NoError(b, e.PutSG(sg))
	}
	return e.State()
}

// BenchmarkModifyBeside measures a one-rule ModifySecurityGroupPolicy committed to bbolt (fsync included)
// beside n other rules: the write cost should not grow with the rest of the state (issue 17 item 6).
func BenchmarkModifyBeside(b *testing.B) {
	for _, n := range []int{0, 10_000, 50_000, 200_000} {
		b.Run(fmt.Sprintf("others=%d", n), func(b *testing.B) {
			st, err := store.OpenBolt(filepath.Join(b.TempDir(), "b.db"))
			require.NoError(b, err)
			b.Cleanup(func() { st.Close() })
			ctx := context.Background()
			c, err := New(ctx, st, besideState(b, n), Options{})
			require.NoError(b, err)
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rule := []model.Rule{{IPProtocol: "tcp", PortRange: strconv.Itoa(1 + i%2), Action: "ACCEPT"}}
				start := time.Now()
				require.NoError(b, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-web", rule, nil))
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		})
	}
}
