package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// fleetState is n ENIs in sg-a spread over hosts h00…, with sg-b and sg-c unused.
func fleetState(t *testing.T, n, hosts int) *model.State {
	topo := model.Topology{Accounts: []model.Account{{AppID: "1250000001"}}}
	for _, id := range []string{"sg-a", "sg-b", "sg-c"} {
		topo.SecurityGroups = append(topo.SecurityGroups, model.SecurityGroup{SgID: id, AppID: "1250000001",
			Ingress: []model.Rule{{IPProtocol: "tcp", SgID: "sg-a", PortRange: "22", Action: "ACCEPT"}}})
	}
	for i := range n {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{
			NetworkInterfaceID: fmt.Sprintf("eni-%04d", i), AppID: "1250000001",
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)},
			SgIDs:              []string{"sg-a"}, Host: fmt.Sprintf("h%02d", i%hosts)})
	}
	s, err := model.NewState(topo)
	require.NoError(t, err)
	return s
}

// moveAll sets every ENI's SGs to sgs.
func moveAll(t *testing.T, s *model.State, sgs ...string) *model.State {
	b := s.Edit()
	for _, id := range s.ENIIDs() {
		require.NoError(t, b.SetENISGs(id, sgs))
	}
	return b.State()
}

func hostsOf(hosts int) []string {
	out := make([]string, hosts)
	for i := range out {
		out[i] = fmt.Sprintf("h%02d", i)
	}
	return out
}

func getIndex(t *testing.T, cli *clientv3.Client, key string) ([]json.RawMessage, bool) {
	resp, err := cli.Get(context.Background(), key)
	require.NoError(t, err)
	if len(resp.Kvs) == 0 {
		return nil, false
	}
	var entries []json.RawMessage
	require.NoError(t, json.Unmarshal(resp.Kvs[0].Value, &entries))
	return entries, true
}

// A 100-ENI ModifySecurityGroupsOfNetworkInterface is one transaction within etcd's default limits
// (128 operations, 1.5 MiB): 100 ENI records, 3 member lists, the generation and 10 feeds. Spread over
// 100 hosts, the feeds that do not fit follow the commit. 130 ENIs are refused, nothing written.
func TestHundredENIModifyFitsDefaultLimits(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	for _, hosts := range []int{10, 100} {
		t.Run(fmt.Sprintf("%d hosts", hosts), func(t *testing.T) {
			prefix := te.prefix()
			st := openStore(t, te, prefix)
			s0 := fleetState(t, 100, hosts)
			r0, err := st.CommitAffecting(ctx, s0, 1, hostsOf(hosts))
			require.NoError(t, err)
			next := moveAll(t, s0, "sg-b", "sg-c")
			rev, err := st.CommitAffecting(ctx, next, r0+1, hostsOf(hosts))
			require.NoError(t, err)

			got, gotRev, err := st.Load(ctx)
			require.NoError(t, err)
			assert.Equal(t, rev, gotRev)
			assert.Equal(t, next.Topology(), got.Topology())
			_, ok := getIndex(t, st.cli, prefix+"/index/members/sg-a")
			assert.False(t, ok, "sg-a has no members left")
			b, _ := getIndex(t, st.cli, prefix+"/index/members/sg-b")
			require.Len(t, b, 100)
			var m Member
			require.NoError(t, json.Unmarshal(b[0], &m))
			assert.Equal(t, Member{ID: "eni-0000", AppID: "1250000001", IPs: []string{"198.18.0.1"}}, m, "a member's addresses, for other hosts' sgId rules")
			h0, _ := getIndex(t, st.cli, prefix+"/index/host/h00")
			assert.Len(t, h0, 100/hosts)
			for _, h := range hostsOf(hosts) {
				resp, err := st.cli.Get(ctx, prefix+"/feed/"+h)
				require.NoError(t, err)
				require.Len(t, resp.Kvs, 1, h)
				if hosts == 10 {
					assert.Equal(t, int64(rev), resp.Kvs[0].ModRevision, "%s: in the commit's transaction", h)
				} else {
					assert.GreaterOrEqual(t, resp.Kvs[0].ModRevision, int64(rev), h)
				}
			}
			affected, err := st.ChangeHosts(ctx, rev)
			require.NoError(t, err)
			assert.Equal(t, hostsOf(hosts), affected)
		})
	}
	t.Run("130 ENIs", func(t *testing.T) {
		st := openStore(t, te, te.prefix())
		s0 := fleetState(t, 130, 1)
		r0, err := st.CommitAffecting(ctx, s0, 1, nil)
		require.NoError(t, err, "a seed is written in several transactions")
		wctx, stop := context.WithTimeout(ctx, 5*time.Second)
		defer stop()
		var changes []store.Change
		err = st.Watch(wctx, 0, func(c store.Change) error {
			changes = append(changes, c)
			stop()
			return nil
		})
		require.ErrorIs(t, err, context.Canceled)
		require.Len(t, changes, 1, "the seed is one change")
		assert.Equal(t, r0, changes[0].Revision)
		seeded, err := changes[0].Apply(nil)
		require.NoError(t, err)
		assert.Equal(t, s0.Topology(), seeded.Topology())

		_, err = st.CommitAffecting(ctx, moveAll(t, s0, "sg-b"), r0+1, nil)
		assert.ErrorIs(t, err, ErrTooLarge, "130 ENI records in one change")
		assert.ErrorContains(t, err, "etcd allows 128")
		got, rev, err := st.Load(ctx)
		require.NoError(t, err)
		assert.Equal(t, r0, rev, "nothing written")
		assert.Equal(t, s0.Topology(), got.Topology())
	})
}

// A change's feed reaches exactly the hosts it affects; Commit without hosts reaches every host.
func TestFeedsReachOnlyAffectedHosts(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	st := openStore(t, te, te.prefix())
	s0 := fleetState(t, 6, 3)
	r0, err := st.CommitAffecting(ctx, s0, 1, nil)
	require.NoError(t, err)

	var mu sync.Mutex
	heard := map[string][]uint64{}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, h := range hostsOf(3) {
		wg.Go(func() {
			err := st.WatchFeed(wctx, h, r0, func(rev uint64) error {
				mu.Lock()
				defer mu.Unlock()
				heard[h] = append(heard[h], rev)
				return nil
			})
			assert.ErrorIs(t, err, context.Canceled)
		})
	}
	b := s0.Edit()
	require.NoError(t, b.SetENISGs("eni-0001", []string{"sg-b"})) // on h01
	r1, err := st.CommitAffecting(ctx, b.State(), r0+1, []string{"h01"})
	require.NoError(t, err)
	s2 := moveAll(t, b.State(), "sg-c")
	require.NoError(t, st.Commit(ctx, s2, r1+1))
	_, r2, err := st.Load(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(heard["h00"]) == 1 && len(heard["h01"]) == 2 && len(heard["h02"]) == 1
	}, 5*time.Second, 10*time.Millisecond)
	stop()
	wg.Wait()
	assert.Equal(t, map[string][]uint64{"h00": {r2}, "h01": {r1, r2}, "h02": {r2}}, heard)
	hosts, err := st.ChangeHosts(ctx, r1)
	require.NoError(t, err)
	assert.Equal(t, []string{"h01"}, hosts)
	_, err = st.ChangeHosts(ctx, r1+1000)
	assert.Error(t, err)
}

// WaitEnforced: pending until a live host acks; a host never registered is down; a host whose agent
// stops keeping its lease alive is pending until the lease expires, then down.
func TestWaitEnforced(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	prefix := te.prefix()
	st := openStore(t, te, prefix)
	agent := openStore(t, te, prefix) // the agents' own client
	h1, err := agent.RegisterHost(ctx, "h1")
	require.NoError(t, err)
	defer h1.Close()
	h2, err := agent.RegisterHost(ctx, "h2")
	require.NoError(t, err)
	_, err = agent.RegisterHost(ctx, "bad/name")
	assert.ErrorContains(t, err, "bad/name")

	rev, err := st.CommitAffecting(ctx, demo(t), 1, []string{"h1", "h2", "h3"})
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	pending, down, err := st.WaitEnforced(short, rev, []string{"h1", "h2", "h3"})
	cancel()
	require.NoError(t, err)
	assert.Equal(t, []string{"h1", "h2"}, pending)
	assert.Equal(t, []string{"h3"}, down)

	require.NoError(t, agent.Ack(ctx, "h1", rev-1))
	go func() {
		time.Sleep(50 * time.Millisecond)
		assert.NoError(t, agent.Ack(ctx, "h1", rev))
		assert.NoError(t, agent.Ack(ctx, "h2", rev))
	}()
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	pending, down, err = st.WaitEnforced(wait, rev, []string{"h1", "h2", "h3"})
	cancel()
	require.NoError(t, err)
	assert.Empty(t, pending)
	assert.Equal(t, []string{"h3"}, down)

	// h2's agent dies (its lease is no longer kept alive): pending until it expires, then down.
	h2.sess.Orphan()
	r2, err := st.CommitAffecting(ctx, revisions(t)[1], rev+1, []string{"h1", "h2"})
	require.NoError(t, err)
	require.NoError(t, agent.Ack(ctx, "h1", r2))
	short, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
	pending, _, err = st.WaitEnforced(short, r2, []string{"h1", "h2"})
	cancel()
	require.NoError(t, err)
	assert.Equal(t, []string{"h2"}, pending, "lease not expired yet")
	start := time.Now()
	wait, cancel = context.WithTimeout(ctx, 3*HostTTL*time.Second)
	defer cancel()
	pending, down, err = st.WaitEnforced(wait, r2, []string{"h1", "h2"})
	require.NoError(t, err)
	assert.Empty(t, pending)
	assert.Equal(t, []string{"h2"}, down)
	assert.Less(t, time.Since(start), 2*HostTTL*time.Second)
	select {
	case <-h2.Lost():
	case <-time.After(time.Second):
		t.Error("the orphaned registration does not report its lease lost")
	}
}

// A feed watched from a compacted revision is ErrCompacted: the agent resyncs.
func TestWatchFeedCompacted(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	st := openStore(t, te, te.prefix())
	s0 := fleetState(t, 2, 1)
	r0, err := st.CommitAffecting(ctx, s0, 1, nil)
	require.NoError(t, err)
	r1, err := st.CommitAffecting(ctx, moveAll(t, s0, "sg-b"), r0+1, nil)
	require.NoError(t, err)
	_, err = st.cli.Compact(ctx, int64(r1))
	require.NoError(t, err)
	err = st.WatchFeed(ctx, "h00", r0-1, func(uint64) error { return nil })
	assert.ErrorIs(t, err, store.ErrCompacted)
}

// bigSG returns s with sg-big of n rules, about 100 bytes of JSON each.
func bigSG(t *testing.T, s *model.State, n int) *model.State {
	g := model.SecurityGroup{SgID: "sg-big", AppID: "1250000001"}
	for i := range n {
		g.Ingress = append(g.Ingress, model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("198.18.%d.%d/32", i/250%250, i%250),
			PortRange: "80", Action: "ACCEPT", Desc: "a rule long enough to weigh"})
	}
	b := s.Edit()
	require.NoError(t, b.PutSG(g))
	return b.State()
}

// etcd's 1.5 MiB request limit: a 1 MB SG commits; a 2 MB one is refused naming it, nothing written;
// a seed holding two 1 MB SGs is written in two transactions.
func TestRequestBytesWithinDefaultLimit(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	st := openStore(t, te, te.prefix())
	s0 := fleetState(t, 4, 2)
	r0, err := st.CommitAffecting(ctx, s0, 1, nil)
	require.NoError(t, err)
	mb := bigSG(t, s0, 10_000)
	r1, err := st.CommitAffecting(ctx, mb, r0+1, nil)
	require.NoError(t, err, "a 1 MB SG fits")

	_, err = st.CommitAffecting(ctx, bigSG(t, mb, 20_000), r1+1, nil)
	require.ErrorIs(t, err, ErrTooLarge)
	assert.ErrorContains(t, err, "security group sg-big is")
	got, rev, err := st.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, r1, rev, "nothing written")
	assert.Equal(t, mb.Topology(), got.Topology())

	seed := openStore(t, te, te.prefix())
	b := mb.Edit()
	g, _ := mb.SG("sg-big")
	g2 := *g
	g2.SgID = "sg-big2"
	require.NoError(t, b.PutSG(g2))
	two := b.State()
	_, err = seed.CommitAffecting(ctx, two, 1, nil)
	require.NoError(t, err, "a seed larger than one request")
	got, _, err = seed.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, two.Topology(), got.Topology())
}

func TestRegisterHostReturnsWhileEtcdIsAway(t *testing.T) {
	te := startEtcd(t)
	st := openStore(t, te, te.prefix())
	te.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := st.RegisterHost(ctx, "h1")
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.DeadlineExceeded, "the caller's context ends the attempt")
	case <-time.After(10 * time.Second):
		t.Fatal("RegisterHost waited for etcd past its context")
	}
}
