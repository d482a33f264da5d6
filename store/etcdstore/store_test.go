package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/nonce"
)

// A Store is the API's Nonce record in fleet mode.
var _ api.NonceStore = (*Store)(nil)

func demo(t *testing.T) *model.State {
	s, err := model.LoadTopologyFile("../../testdata/demo.json")
	require.NoError(t, err)
	return s
}

// revisions is the demo state and edits of each kind (the same as store's own tests): a rule change,
// a new SG, an ENI re-listed twice, the SG deleted, and a reordered rebuild sharing nothing.
func revisions(t *testing.T) []*model.State {
	s := demo(t)
	out := []*model.State{s}
	edit := func(f func(b *model.Builder)) {
		b := out[len(out)-1].Edit()
		f(b)
		out = append(out, b.State())
	}
	edit(func(b *model.Builder) {
		g, _ := s.SG("sg-web")
		ng := *g
		ng.Ingress = []model.Rule{{IPProtocol: "tcp", PortRange: "8443", Action: "ACCEPT", Desc: "one rule"}}
		require.NoError(t, b.PutSG(ng))
	})
	edit(func(b *model.Builder) {
		require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-new", AppID: "1250000001", SgName: "new"}))
	})
	edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("eni-spare", []string{"sg-new"})) })
	edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("eni-spare", []string{})) })
	edit(func(b *model.Builder) { require.NoError(t, b.DeleteSG("sg-new")) })
	topo := out[len(out)-1].Topology()
	slices.Reverse(topo.SecurityGroups)
	rebuilt, err := model.NewState(topo)
	require.NoError(t, err)
	return append(out, rebuilt)
}

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
			assert.ErrorIs(t, st.Commit(cancelled, demo(t), 1), context.Canceled)

			var revs []uint64
			states := revisions(t)
			for _, s := range states {
				revs = append(revs, commitNext(t, st, s))
			}
			require.True(t, slices.IsSorted(revs))
			got, rev, err := st.Load(ctx)
			require.NoError(t, err)
			assert.Equal(t, revs[len(revs)-1], rev)
			assert.Equal(t, states[len(states)-1].Topology(), got.Topology())
			assert.ErrorIs(t, st.Commit(ctx, demo(t), rev), store.ErrConflict, "generation not above the store's")

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
	commitNext(t, a, demo(t))
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
	assert.Len(t, final.SGIDs(), len(demo(t).SGIDs())+2*perReplica)
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
	states := revisions(t)
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
	commitNext(t, st, demo(t))
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
	te.stop()
	stoppedAt := count()
	time.Sleep(300 * time.Millisecond)
	te.start()
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
	require.NoError(t, a.UseNonce(k, now, w))
	assert.ErrorIs(t, b.UseNonce(k, now.Add(time.Second), w), nonce.ErrReplay, "replayed to the other replica")
	assert.ErrorIs(t, a.UseNonce(k, now.Add(time.Second), w), nonce.ErrReplay, "replayed to the same one")
	require.NoError(t, b.UseNonce(nonce.KeyOf("AKIDx", now.Unix()+1, "11886"), now, w), "another Timestamp")
	require.NoError(t, b.UseNonce(nonce.KeyOf("AKIDy", now.Unix(), "11886"), now, w), "another SecretId")

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
	require.NoError(t, a.UseNonce(old, now, w))
}
