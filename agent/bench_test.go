package agent

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/etcdstore"
)

// fleetOf is one ENI per host h0000…, all in sg-all, whose rule names sg-all (so every ENI's table
// holds every address), plus sg-spare that nothing names.
func fleetOf(b testing.TB, hosts int) *model.State {
	topo := model.Topology{Accounts: []model.Account{{AppID: "1250000001"}},
		SecurityGroups: []model.SecurityGroup{
			{SgID: "sg-all", AppID: "1250000001", Ingress: []model.Rule{{IPProtocol: "tcp", SgID: "sg-all", PortRange: "22", Action: "ACCEPT"}}},
			{SgID: "sg-spare", AppID: "1250000001"},
		}}
	for i := range hosts {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{
			NetworkInterfaceID: fmt.Sprintf("eni-%04d", i), AppID: "1250000001", SgIDs: []string{"sg-all"},
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)}, Host: fmt.Sprintf("h%04d", i)})
	}
	s, err := model.NewState(topo)
	require.NoError(b, err)
	return s
}

// BenchmarkChangeEnforced: a commit through the store to every affected agent (goroutines with the Go
// engine, each with its own etcd client) having acknowledged it, on an embedded etcd on this machine.
// "all" changes sg-all's rules (every host affected); "one" changes one ENI's SG list to add an SG
// nothing names (one host affected) and reports the feed events all agents received per change.
func BenchmarkChangeEnforced(b *testing.B) {
	// Not 1,000: here every host's table holds every host's address (sg-all names itself), so each change
	// costs every agent a share of 1,000 members; on this 2-core machine that starves the agents' lease
	// keepalives and they fall down and re-register.
	for _, hosts := range []int{10, 100} {
		b.Run(fmt.Sprintf("hosts=%d", hosts), func(b *testing.B) {
			endpoint := startEtcd(b)
			ctx := context.Background()
			st, err := etcdstore.Open(ctx, client(b, endpoint), prefix)
			require.NoError(b, err)
			r := &replica{t: b, st: st}
			agents := make([]*Agent, hosts)
			for i := range agents {
				agents[i], _ = runAgent(b, endpoint, fmt.Sprintf("h%04d", i))
			}
			rev, all := r.commit(fleetOf(b, hosts))
			require.Eventually(b, func() bool { p, d := r.wait(rev, all, 5*time.Second); return len(p)+len(d) == 0 },
				60*time.Second, 50*time.Millisecond)
			for _, kind := range []string{"all", "one"} {
				b.Run(kind, func(b *testing.B) {
					var lat []time.Duration
					var events uint64
					count := func() (n uint64) {
						for _, a := range agents {
							n += a.Stats().FeedEvents
						}
						return n
					}
					b.ReportAllocs()
					for i := 0; b.Loop(); i++ {
						next := r.edit(func(bld *model.Builder) {
							if kind == "all" {
								g, _ := r.cur.SG("sg-all")
								ng := *g
								ng.Ingress = []model.Rule{{IPProtocol: "tcp", SgID: "sg-all", PortRange: fmt.Sprint(1000 + i%2), Action: "ACCEPT"}}
								require.NoError(b, bld.PutSG(ng))
								return
							}
							sgs := []string{"sg-all"}
							if i%2 == 0 {
								sgs = append(sgs, "sg-spare")
							}
							require.NoError(b, bld.SetENISGs("eni-0000", sgs))
						})
						before := count()
						start := time.Now()
						rev, hosts := r.commit(next)
						pending, down := r.wait(rev, hosts, 10*time.Second)
						lat = append(lat, time.Since(start))
						require.Empty(b, pending)
						require.Empty(b, down)
						if kind == "one" {
							require.Equal(b, []string{"h0000"}, hosts)
							require.Eventually(b, func() bool { return count() > before }, time.Second, time.Millisecond)
							events += count() - before
						}
					}
					slices.Sort(lat)
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
					if kind == "one" {
						b.ReportMetric(float64(events)/float64(len(lat)), "watch-events/change")
					}
				})
			}
		})
	}
}

// BenchmarkAgentRestart: a host with 100 ENIs whose agent starts from nothing: registered, share read
// at one revision, compiled and in force in the Go engine, acknowledged.
func BenchmarkAgentRestart(b *testing.B) {
	endpoint := startEtcd(b)
	ctx := context.Background()
	st, err := etcdstore.Open(ctx, client(b, endpoint), prefix)
	require.NoError(b, err)
	r := &replica{t: b, st: st}
	s := fleetOf(b, 100)
	bld := s.Edit()
	for _, id := range s.ENIIDs() {
		n, _ := s.ENI(id)
		nn := *n
		nn.Host = "h0000"
		require.NoError(b, bld.PutENI(nn))
	}
	rev, _ := r.commit(bld.State())
	cli := client(b, endpoint)
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		actx, cancel := context.WithCancel(ctx)
		a, err := New(actx, Config{Client: cli, Prefix: prefix, Host: "h0000"})
		require.NoError(b, err)
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(actx) }()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		for a.Revision() != rev && wctx.Err() == nil {
			pending, _, err := st.WaitEnforced(wctx, rev, []string{"h0000"})
			require.NoError(b, err)
			if len(pending) == 0 && a.Revision() == rev {
				break
			}
		}
		wcancel()
		lat = append(lat, time.Since(start))
		require.Len(b, a.Applier().View().Tables, 100)
		cancel()
		<-done
		// The next iteration's agent must acknowledge anew.
		require.NoError(b, st.Ack(ctx, "h0000", 0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}
