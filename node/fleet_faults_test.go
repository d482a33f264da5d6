package node

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/agent"
	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// The etcd-restart test's load: writer g owns ENIs eg{g}a and eg{g}b, on two different hosts; its call
// i sets both to listOf(i) in one ModifySecurityGroupsOfNetworkInterface, so a call half applied would
// show the two apart. listOf is one SG of sg-p0..7 and one of sg-q0..7: 64 distinct lists.
const (
	loadWriters = 4
	loadCalls   = 64
)

func listOf(i int) []string { return []string{fmt.Sprintf("sg-p%d", i%8), fmt.Sprintf("sg-q%d", i/8)} }

// callOf is the call whose list l is: -1 for the seed's [sg-anchor], -2 for anything else.
func callOf(l []string) int {
	for i := range loadCalls {
		if slices.Equal(l, listOf(i)) {
			return i
		}
	}
	if slices.Equal(l, []string{"sg-anchor"}) {
		return -1
	}
	return -2
}

// loadTopology: sg-pK admits tcp/2000+K, sg-qK tcp/3000+K, sg-anchor tcp/22; each of h1..h3 holds an
// anchor ENI in sg-anchor, and the writers' ENIs start there too.
func loadTopology(t *testing.T) *model.State {
	topo := model.Topology{Accounts: []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret}}}
	sg := func(id string, port int) model.SecurityGroup {
		return model.SecurityGroup{SgID: id, AppID: fleetApp, SgName: id,
			Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: fmt.Sprint(port), Action: "ACCEPT"}}}
	}
	topo.SecurityGroups = append(topo.SecurityGroups, sg("sg-anchor", 22))
	for k := range 8 {
		topo.SecurityGroups = append(topo.SecurityGroups, sg(fmt.Sprintf("sg-p%d", k), 2000+k), sg(fmt.Sprintf("sg-q%d", k), 3000+k))
	}
	eni := func(id, host string, ip int) model.NetworkInterface {
		return model.NetworkInterface{NetworkInterfaceID: id, AppID: fleetApp, PrivateIPAddresses: []string{fmt.Sprintf("198.18.230.%d", ip)},
			SgIDs: []string{"sg-anchor"}, Host: host}
	}
	for h := 1; h <= 3; h++ {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, eni(fmt.Sprintf("anchor-h%d", h), fmt.Sprintf("h%d", h), h))
	}
	for g := range loadWriters {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces,
			eni(fmt.Sprintf("eg%da", g), fmt.Sprintf("h%d", g%3+1), 10+2*g), eni(fmt.Sprintf("eg%db", g), fmt.Sprintf("h%d", (g+1)%3+1), 11+2*g))
	}
	s, err := model.NewState(topo)
	require.NoError(t, err)
	return s
}

func setListParams(g, i int) url.Values {
	v := url.Values{}
	for n, suffix := range []string{"a", "b"} {
		v.Set(fmt.Sprintf("networkInterfaceSet.%d.networkInterfaceId", n), fmt.Sprintf("eg%d%s", g, suffix))
		for m, sg := range listOf(i) {
			v.Set(fmt.Sprintf("networkInterfaceSet.%d.sgIds.%d", n, m), sg)
		}
	}
	return v
}

// loadCall is one call of the load and how it was answered.
type loadCall struct {
	i        int
	ok       bool   // answered with success
	revision uint64 // its enforcement's revision, when ok
	after    bool   // sent after etcd was back
}

// requireAgentEnforces checks that a's tables are exactly what a fresh compile of host's share of s
// gives, and that its engine decides as they say.
func requireAgentEnforces(t *testing.T, a *fleetAgent, s *model.State, host string) {
	t.Helper()
	share, err := agent.Share(s, host)
	require.NoError(t, err)
	ap := a.Applier()
	require.NotNil(t, ap, "%s has a share in force", host)
	assert.Equal(t, compiler.New(share).CompileAll(), ap.View().Tables, "%s's tables are a fresh compile of its share", host)
	for _, id := range s.ENIIDs() {
		n, _ := s.ENI(id)
		if n.Host != host {
			continue
		}
		for _, sg := range s.SGIDs() {
			g, _ := s.SG(sg)
			var port uint16
			_, err := fmt.Sscan(g.Ingress[0].PortRange, &port)
			require.NoError(t, err)
			assert.Equal(t, slices.Contains(n.SgIDs, sg), accepts(a, id, port), "%s on %s: tcp/%d (%s)", id, host, port, sg)
		}
	}
}

// TestFleetEtcdRestartUnderLoad: two replicas take signed calls from four writers while the embedded
// etcd is stopped and started again. Every call answered with success is in etcd's history at its
// revision and in the final state unless a later call of the same writer replaced it; every commit of
// the run applied some call whole; each writer's commits follow its calls' order; and afterwards the
// three agents enforce the final state, acknowledged.
func TestFleetEtcdRestartUnderLoad(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	endpoint := etcd.Endpoint()
	replicas := []*Node{newReplica(t, endpoint, loadTopology(t), time.Second), newReplica(t, endpoint, nil, time.Second)}
	agents := map[string]*fleetAgent{}
	for _, h := range []string{"h1", "h2", "h3"} {
		agents[h] = startFleetAgent(t, endpoint, h)
	}
	enforcing(t, replicas[0], agents["h1"], agents["h2"], agents["h3"])
	startRev := replicas[0].Controller().View().Generation

	var (
		mu    sync.Mutex
		calls = make([][]loadCall, loadWriters)
		back  bool // etcd is back
	)
	count := func(pred func(c loadCall) bool) (least int) {
		mu.Lock()
		defer mu.Unlock()
		least = loadCalls
		for _, cs := range calls {
			n := 0
			for _, c := range cs {
				if pred(c) {
					n++
				}
			}
			least = min(least, n)
		}
		return least
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range loadWriters {
		wg.Go(func() {
			for i := 0; i < loadCalls; i++ {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				c := loadCall{i: i, after: back}
				mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				resp, err := tencentOf(replicas[(g+i)%2]).Call(ctx, "ModifySecurityGroupsOfNetworkInterface", setListParams(g, i))
				cancel()
				if err == nil && resp.Err() == nil {
					if e := enforcementOf(t, resp.Body); assert.NotNil(t, e, "%s", resp.Body) {
						c.ok, c.revision = true, e.Revision
					}
				}
				mu.Lock()
				calls[g] = append(calls[g], c)
				mu.Unlock()
			}
		})
	}
	require.Eventually(t, func() bool { return count(func(c loadCall) bool { return c.ok }) >= 2 }, 20*time.Second, 5*time.Millisecond,
		"every writer has calls answered before etcd stops")
	etcd.Stop()
	require.Eventually(t, func() bool { return count(func(c loadCall) bool { return !c.ok }) >= 1 }, 20*time.Second, 5*time.Millisecond,
		"every writer has a call fail while etcd is down")
	etcd.Resume()
	mu.Lock()
	back = true
	mu.Unlock()
	require.Eventually(t, func() bool { return count(func(c loadCall) bool { return c.ok && c.after }) >= 3 }, 30*time.Second, 5*time.Millisecond,
		"every writer has calls answered after etcd is back")
	close(stop)
	wg.Wait()

	// One more call touches every host, through a replica that waits long enough for any agent still
	// reconnecting: all three must have resynced.
	last := newReplica(t, endpoint, nil, 10*time.Second)
	ctx := context.Background()
	resp, err := tencentOf(last).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-anchor", 23))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e, "%s", resp.Body)
	assert.Equal(t, api.Enforcement{Revision: e.Revision, Hosts: 3, Pending: []string{}, Down: []string{}}, *e, "every agent acknowledged")
	final, finalRev, err := last.fleet.st.Load(ctx)
	require.NoError(t, err)
	require.Equal(t, e.Revision, finalRev)

	// etcd's history from before the load to the end: every commit applied one call whole.
	history := make([][]int, loadWriters) // per writer, the calls its commits applied, in revision order
	atRevision := map[uint64]*model.State{}
	cur, err := last.fleet.st.LoadAt(ctx, startRev)
	require.NoError(t, err)
	errDone := errors.New("at the end")
	err = last.fleet.st.Watch(ctx, startRev, func(ch store.Change) error {
		if cur, err = ch.Apply(cur); err != nil {
			return err
		}
		atRevision[ch.Revision] = cur
		for g := range loadWriters {
			a, _ := cur.ENI(fmt.Sprintf("eg%da", g))
			b, _ := cur.ENI(fmt.Sprintf("eg%db", g))
			require.Equal(t, a.SgIDs, b.SgIDs, "revision %d: writer %d's call applied to one ENI of two", ch.Revision, g)
			if h := history[g]; callOf(a.SgIDs) != -1 && (len(h) == 0 || h[len(h)-1] != callOf(a.SgIDs)) {
				history[g] = append(h, callOf(a.SgIDs))
			}
		}
		if ch.Revision >= finalRev {
			return errDone
		}
		return nil
	})
	require.ErrorIs(t, err, errDone)
	assert.Equal(t, final.Topology(), cur.Topology(), "the history ends in the final state")

	failed, landed := 0, 0
	for g, cs := range calls {
		issued := map[int]bool{}
		lastOK := -1
		for _, c := range cs {
			issued[c.i] = true
			if !c.ok {
				failed++
				if slices.Contains(history[g], c.i) {
					landed++ // committed, but its answer was lost with etcd: all of it, or none
				}
				continue
			}
			lastOK = c.i
			at := atRevision[c.revision]
			require.NotNil(t, at, "writer %d call %d: its revision %d is a commit of the run", g, c.i, c.revision)
			n, _ := at.ENI(fmt.Sprintf("eg%da", g))
			assert.Equal(t, listOf(c.i), n.SgIDs, "writer %d call %d: in force at its revision %d", g, c.i, c.revision)
			assert.Contains(t, history[g], c.i, "writer %d call %d answered, then lost", g, c.i)
		}
		assert.True(t, slices.IsSorted(history[g]) && len(slices.Compact(slices.Clone(history[g]))) == len(history[g]),
			"writer %d's commits follow its calls' order: %v", g, history[g])
		for _, i := range history[g] {
			assert.True(t, issued[i], "writer %d: commit of call %d, never sent", g, i)
		}
		n, _ := final.ENI(fmt.Sprintf("eg%da", g))
		end := callOf(n.SgIDs)
		assert.GreaterOrEqual(t, end, lastOK, "writer %d: the final state holds its last answered call %d or a later one, not %d", g, lastOK, end)
	}
	t.Logf("%d calls failed while etcd was away, %d of them committed all the same", failed, landed)
	require.Positive(t, failed)

	for h, a := range agents {
		assert.GreaterOrEqual(t, a.Revision(), finalRev, "%s has the last change in force", h)
		requireAgentEnforces(t, a, final, h)
	}
}
