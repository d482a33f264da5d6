package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/nonce"
	"github.com/sgsim/sgsim/store/storetest"
)

// A Store is the API's Nonce record in fleet mode.
var _ api.NonceStore = (*Store)(nil)

// commitNext commits s on top of what st holds now and returns the revision it got.
func commitNext(t *testing.T, st store.Store, s *model.State) uint64 {
	ctx := context.Background()
	_, rev, err := st.Load(ctx)
	require.NoError(t, err)
	require.NoError(t, st.Commit(ctx, s, rev+1))
	_, got, err := st.Load(ctx)
	require.NoError(t, err)
	return got
}

// TestContract runs the behaviour both durable stores share against bbolt and etcd: an empty store,
// round trip and reload by another instance, stale generations refused, LoadAt of every revision, and
// Watch from the start and resumed, whose changes applied in order rebuild each revision. It stays one
// function because every step reads what the steps before it committed.
func TestContract(t *testing.T) {
	te := startEtcd(t)
	dir := t.TempDir()
	n := 0
	opens := map[string]func(t *testing.T, name string) store.Store{
		"bolt": func(t *testing.T, name string) store.Store {
			n++
			b, err := store.OpenBolt(filepath.Join(dir, name+".db"))
			require.NoError(t, err)
			return b
		},
		"etcd": func(t *testing.T, name string) store.Store { return openStore(t, te, "/"+name) },
	}
	for kind, open := range opens {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			st := open(t, "contract")
			s, rev, err := st.Load(ctx)
			require.NoError(t, err)
			assert.Nil(t, s, "empty store")
			assert.Zero(t, rev)
			assert.Error(t, st.Commit(ctx, nil, 1), "nil state")
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			assert.ErrorIs(t, st.Commit(cancelled, storetest.Demo(t), 1), context.Canceled)

			var revs []uint64
			states := storetest.Revisions(t)
			for _, s := range states {
				revs = append(revs, commitNext(t, st, s))
			}
			require.True(t, slices.IsSorted(revs))
			got, rev, err := st.Load(ctx)
			require.NoError(t, err)
			assert.Equal(t, revs[len(revs)-1], rev)
			assert.Equal(t, states[len(states)-1].Topology(), got.Topology())
			assert.ErrorIs(t, st.Commit(ctx, storetest.Demo(t), rev), store.ErrConflict, "generation not above the store's")

			for i, r := range revs {
				at, err := st.LoadAt(ctx, r)
				require.NoError(t, err, "revision %d", r)
				assert.Equal(t, states[i].Topology(), at.Topology(), "LoadAt(%d)", r)
			}

			// Watch from the start rebuilds every revision; resumed after the third, the rest.
			for _, start := range []int{-1, 2} {
				from := uint64(0)
				var s *model.State
				if start >= 0 {
					from, s = revs[start], states[start]
				}
				wctx, stop := context.WithTimeout(ctx, 10*time.Second)
				i := start + 1
				err := st.Watch(wctx, from, func(c store.Change) error {
					next, err := c.Apply(s)
					require.NoError(t, err)
					for revs[i] < c.Revision {
						i++ // a revision that changed no record (none here, but allowed)
					}
					require.Equal(t, revs[i], c.Revision)
					assert.Equal(t, states[i].Topology(), next.Topology(), "after revision %d", c.Revision)
					s = next
					if i++; i == len(revs) {
						stop()
					}
					return nil
				})
				stop()
				require.ErrorIs(t, err, context.Canceled)
				require.Equal(t, len(revs), i, "every change delivered from %d", from)
			}
			require.NoError(t, st.Close())

			// Another instance (bbolt: the file reopened; etcd: another client) reads the same.
			other := open(t, "contract")
			defer other.Close()
			got, rev2, err := other.Load(ctx)
			require.NoError(t, err)
			assert.Equal(t, rev, rev2)
			assert.Equal(t, states[len(states)-1].Topology(), got.Topology())
		})
	}
}

// addSG returns s with one more SG.
func addSG(t *testing.T, s *model.State, id string) *model.State {
	b := s.Edit()
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: id, AppID: "1250000001", SgName: id}))
	return b.State()
}

// Two replicas (two clients) commit conflicting changes concurrently, each retrying on ErrConflict
// from a fresh Load: every success is in the end state, nothing else is, and the history is a serial
// order of exactly those commits.
func TestConcurrentReplicas(t *testing.T) {
	te := startEtcd(t)
	prefix := te.prefix()
	ctx := context.Background()
	a, b := openStore(t, te, prefix), openStore(t, te, prefix)
	commitNext(t, a, storetest.Demo(t))
	_, first, err := a.Load(ctx)
	require.NoError(t, err)
	const perReplica = 15
	var mu sync.Mutex
	committed := map[uint64]string{} // revision → SG it added
	conflicts := 0
	var wg sync.WaitGroup
	for r, st := range []*Store{a, b} {
		wg.Go(func() {
			for i := range perReplica {
				id := fmt.Sprintf("sg-r%d-%d", r, i)
				for {
					s, rev, err := st.Load(ctx)
					require.NoError(t, err)
					got, err := st.CommitAffecting(ctx, addSG(t, s, id), rev+1, []string{})
					if errors.Is(err, store.ErrConflict) {
						mu.Lock()
						conflicts++
						mu.Unlock()
						continue
					}
					require.NoError(t, err)
					mu.Lock()
					committed[got] = id
					mu.Unlock()
					break
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d commits, %d conflicts retried", len(committed), conflicts)
	require.Len(t, committed, 2*perReplica)
	final, _, err := a.Load(ctx)
	require.NoError(t, err)
	for _, id := range committed {
		_, ok := final.SG(id)
		assert.True(t, ok, "%s committed, then lost", id)
	}
	assert.Len(t, final.SGIDs(), len(storetest.Demo(t).SGIDs())+2*perReplica)
	// The history is those commits one after another, each adding its own SG to the one before.
	s, err := a.LoadAt(ctx, first)
	require.NoError(t, err)
	wctx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	seen := 0
	err = a.Watch(wctx, first, func(c store.Change) error {
		id, ok := committed[c.Revision]
		require.True(t, ok, "revision %d was never answered", c.Revision)
		require.Len(t, c.Puts, 1)
		assert.Equal(t, store.Key{Kind: store.KindSG, ID: id}, c.Puts[0].Key)
		s, err = c.Apply(s)
		require.NoError(t, err)
		if seen++; seen == len(committed) {
			stop()
		}
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, final.Topology(), s.Topology())
}

// Compaction past a watcher's revision is ErrCompacted, for Watch and LoadAt alike.
func TestCompacted(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	cli := te.client(t)
	st, err := Open(ctx, cli, te.prefix())
	require.NoError(t, err)
	states := storetest.Revisions(t)
	r1 := commitNext(t, st, states[0])
	commitNext(t, st, states[1])
	r3 := commitNext(t, st, states[2])
	_, err = cli.Compact(ctx, int64(r3))
	require.NoError(t, err)
	err = st.Watch(ctx, r1, func(store.Change) error { return nil })
	assert.ErrorIs(t, err, store.ErrCompacted)
	_, err = st.LoadAt(ctx, r1)
	assert.ErrorIs(t, err, store.ErrCompacted)
	at, err := st.LoadAt(ctx, r3)
	require.NoError(t, err)
	assert.Equal(t, states[2].Topology(), at.Topology())
	_, err = st.LoadAt(ctx, r3+1000)
	assert.ErrorContains(t, err, "ahead of the latest")
}

// etcd stopped and restarted on its data directory under a stream of commits: every commit that
// returned nil is in the state afterwards.
func TestEtcdRestartLosesNoAcknowledgedCommit(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	st := openStore(t, te, te.prefix())
	commitNext(t, st, storetest.Demo(t))
	var mu sync.Mutex
	var acked []string
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; count() < 60 && i < 5000; i++ {
			id := fmt.Sprintf("sg-%d", i)
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			s, rev, err := st.Load(cctx)
			if err == nil {
				err = st.Commit(cctx, addSG(t, s, id), rev+1)
			}
			cancel()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			mu.Lock()
			acked = append(acked, id)
			mu.Unlock()
		}
	}()
	require.Eventually(t, func() bool { return count() >= 20 }, 10*time.Second, 5*time.Millisecond)
	te.Stop()
	stoppedAt := count()
	time.Sleep(300 * time.Millisecond)
	te.Resume()
	<-done
	require.Len(t, acked, 60, "commits resume after the restart")
	require.Less(t, stoppedAt, 60, "etcd stopped while commits were still coming")
	s, _, err := st.Load(ctx)
	require.NoError(t, err)
	for _, id := range acked {
		_, ok := s.SG(id)
		assert.True(t, ok, "%s acknowledged, then lost", id)
	}
}

// A Nonce used through one replica is refused by another; other triples pass; its key carries a lease.
func TestNonceReplayedToAnotherReplica(t *testing.T) {
	te := startEtcd(t)
	prefix := te.prefix()
	a, b := openStore(t, te, prefix), openStore(t, te, prefix)
	now := time.Now()
	const w = 2 * time.Hour
	k := nonce.KeyOf("AKIDx", now.Unix(), "11886")
	require.NoError(t, a.UseNonce(context.Background(), k, now, w))
	assert.ErrorIs(t, b.UseNonce(context.Background(), k, now.Add(time.Second), w), nonce.ErrReplay, "replayed to the other replica")
	assert.ErrorIs(t, a.UseNonce(context.Background(), k, now.Add(time.Second), w), nonce.ErrReplay, "replayed to the same one")
	require.NoError(t, b.UseNonce(context.Background(), nonce.KeyOf("AKIDx", now.Unix()+1, "11886"), now, w), "another Timestamp")
	require.NoError(t, b.UseNonce(context.Background(), nonce.KeyOf("AKIDy", now.Unix(), "11886"), now, w), "another SecretId")

	resp, err := a.cli.Get(context.Background(), prefix+"/nonces/", clientv3.WithPrefix())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 3)
	for _, kv := range resp.Kvs {
		ttl, err := a.cli.TimeToLive(context.Background(), clientv3.LeaseID(kv.Lease))
		require.NoError(t, err)
		assert.InDelta(t, w.Seconds(), float64(ttl.TTL), nonceLeaseBucket.Seconds()+5, "the lease ends with the window")
	}
	assert.Len(t, a.leases, 1, "triples of one minute share a lease")
	// A triple whose Timestamp already left the window is not recorded: the Timestamp check refuses it.
	old := nonce.KeyOf("AKIDx", now.Add(-3*time.Hour).Unix(), "1")
	require.NoError(t, a.UseNonce(context.Background(), old, now, w))
}

// testEtcd is an embedded etcd server whose tests each take a key prefix of their own.
type testEtcd struct {
	*etcdtest.Server
	prefixes atomic.Int64
}

func startEtcd(t *testing.T) *testEtcd { return &testEtcd{Server: etcdtest.Start(t)} }

// client returns a new client of its own, closed with the test.
func (te *testEtcd) client(t *testing.T) *clientv3.Client { return te.Client(t) }

// prefix returns a prefix no other test of this etcd uses.
func (te *testEtcd) prefix() string { return fmt.Sprintf("/t%d", te.prefixes.Add(1)) }

func openStore(t *testing.T, te *testEtcd, prefix string, opts ...Option) *Store {
	s, err := Open(context.Background(), te.client(t), prefix, opts...)
	require.NoError(t, err)
	return s
}

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
// 100 hosts, the feeds that do not fit follow the commit, owed by an intent in its transaction. 130
// ENIs are refused, nothing written.
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
			inTxn := 0
			for _, h := range hostsOf(hosts) {
				resp, err := st.cli.Get(ctx, prefix+"/feed/"+h)
				require.NoError(t, err)
				require.Len(t, resp.Kvs, 1, h)
				assert.GreaterOrEqual(t, resp.Kvs[0].ModRevision, int64(rev), h)
				if resp.Kvs[0].ModRevision == int64(rev) {
					inTxn++
				}
			}
			if hosts == 10 {
				assert.Equal(t, 10, inTxn, "every feed in the commit's transaction")
			} else {
				assert.Equal(t, 23, inTxn, "104 operations, 23 feeds and the intent owing the other 77")
			}
			assert.Empty(t, intents(t, st.cli, prefix), "the writer paid what it owed")
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

	rev, err := st.CommitAffecting(ctx, storetest.Demo(t), 1, []string{"h1", "h2", "h3"})
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
	r2, err := st.CommitAffecting(ctx, storetest.Revisions(t)[1], rev+1, []string{"h1", "h2"})
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
	te.Stop()
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

func TestUseNonceEndsWithTheCallWhileEtcdIsAway(t *testing.T) {
	te := startEtcd(t)
	st := openStore(t, te, te.prefix())
	te.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel) // the caller gives up: a cancel, not the store's own timeout
	now := time.Now()
	done := make(chan error, 1)
	go func() { done <- st.UseNonce(ctx, nonce.KeyOf("AKIDx", now.Unix(), "1"), now, time.Hour) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled, "the call's context ends the attempt")
	case <-time.After(10 * time.Second):
		t.Fatal("UseNonce waited for etcd past the call's context")
	}
}
