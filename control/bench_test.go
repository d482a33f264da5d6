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

// BenchmarkRefusalDuringCommits measures a refused call (7001, another account's SG) while another
// client keeps committing 10k-rule policies to bbolt: a refusal should not wait for those commits.
func BenchmarkRefusalDuringCommits(b *testing.B) {
	st, err := store.OpenBolt(filepath.Join(b.TempDir(), "b.db"))
	require.NoError(b, err)
	b.Cleanup(func() { st.Close() })
	ctx := context.Background()
	lim := DefaultLimits()
	lim.RulesPerDirection = 10_000
	c, err := New(ctx, st, besideState(b, 0), Options{Limits: &lim})
	require.NoError(b, err)
	var policies [2][]model.Rule
	for v := range policies {
		for r := range 10_000 {
			policies[v] = append(policies[v], model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("10.%d.%d.0/24", r/256, r%256), PortRange: strconv.Itoa(1000 + r + v), Action: "ACCEPT"})
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-web", policies[i%2], nil); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // the writer is under way
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		err := c.ModifySecurityGroupPolicy(ctx, "1250000002", "sg-web", nil, nil)
		lat = append(lat, time.Since(start))
		if model.CodeOf(err) != model.CodeNotOwner {
			b.Fatalf("want 7001, got %v", err)
		}
		time.Sleep(time.Millisecond) // spread the refusals over the writer's commits
	}
	b.StopTimer()
	close(stop)
	<-done
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
