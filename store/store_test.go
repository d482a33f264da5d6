package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/nonce"
	"github.com/sgsim/sgsim/store/storetest"
)

func TestStores(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	b, err := OpenBolt(path)
	require.NoError(t, err)
	for name, st := range map[string]Store{"memory": NewMemory(), "bolt": b} {
		t.Run(name, func(t *testing.T) {
			s, gen, err := st.Load(ctx)
			require.NoError(t, err)
			assert.Nil(t, s, "empty store")
			assert.Zero(t, gen)
			require.NoError(t, st.Commit(ctx, storetest.Demo(t), 7))
			s, gen, err = st.Load(ctx)
			require.NoError(t, err)
			assert.Equal(t, uint64(7), gen)
			assert.Equal(t, storetest.Demo(t).Topology(), s.Topology())
			assert.Error(t, st.Commit(ctx, nil, 8))
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			assert.ErrorIs(t, st.Commit(cancelled, storetest.Demo(t), 9), context.Canceled)
		})
	}
	require.NoError(t, b.Close())

	// Reopened, the bolt file still holds the last commit.
	b = openBolt(t, path)
	s, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(7), gen)
	assert.Equal(t, storetest.Demo(t).Topology(), s.Topology())

	// A second opener fails instead of hanging.
	_, err = OpenBolt(path)
	assert.ErrorContains(t, err, path)
}

func TestBoltNonces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.db")
	b, err := OpenBolt(path)
	require.NoError(t, err)
	t0 := time.Unix(1_700_000_000, 0)
	const w = 2 * time.Hour
	use := func(b *Bolt, k nonce.Key, at time.Time) error { return b.UseNonce(k, at, w) }
	n1 := nonce.KeyOf("id", t0.Unix(), "1")
	n2 := nonce.KeyOf("id", t0.Unix()+60, "2")
	require.NoError(t, use(b, n1, t0))
	b.flushNonces() // n1 on disk; the later writes' pruning follows the callers' clock, not the host's
	assert.ErrorIs(t, use(b, n1, t0.Add(time.Minute)), nonce.ErrReplay, "replay within the window")
	require.NoError(t, use(b, nonce.KeyOf("id", t0.Unix()+1, "1"), t0), "same Nonce, another Timestamp")
	require.NoError(t, use(b, nonce.KeyOf("other", t0.Unix(), "1"), t0), "same Nonce, another SecretId")
	require.NoError(t, use(b, n2, t0.Add(time.Minute)))
	require.NoError(t, b.Close(), "a clean stop writes the pending Nonces")

	// Survives a reopen (a restart of the daemon).
	b = openBolt(t, path)
	assert.ErrorIs(t, use(b, n1, t0.Add(time.Hour)), nonce.ErrReplay)
	// Once its Timestamp is out of the window a triple is forgotten (the Timestamp check refuses it).
	require.NoError(t, use(b, n1, t0.Add(w+30*time.Second)))
	assert.ErrorIs(t, use(b, n2, t0.Add(w+30*time.Second)), nonce.ErrReplay, "n2's Timestamp is a minute later")
}

// A Commit writes every Nonce used before it in its own transaction; a read's Nonce is written by a
// batched flush without any Commit.
func TestCommitRecordsNonces(t *testing.T) {
	ctx := context.Background()
	b := openBolt(t, filepath.Join(t.TempDir(), "n.db"))
	now := time.Now()
	const w = time.Hour
	change := nonce.KeyOf("id", now.Unix(), "1")
	require.NoError(t, b.UseNonce(change, now, w))
	require.NoError(t, b.Commit(ctx, storetest.Demo(t), 1))
	durable, err := b.DurableNonces(ctx, now, w)
	require.NoError(t, err)
	assert.Equal(t, []nonce.Key{change}, durable, "written with the change")

	read := nonce.KeyOf("id", now.Unix(), "2")
	require.NoError(t, b.UseNonce(read, now, w))
	require.Eventually(t, func() bool {
		durable, err := b.DurableNonces(ctx, now, w)
		require.NoError(t, err)
		return len(durable) == 2
	}, 5*time.Second, 10*time.Millisecond, "flushed on its own")
	require.NoError(t, b.Health())

	durable, err = b.DurableNonces(ctx, now.Add(w+2*time.Second), w)
	require.NoError(t, err)
	assert.Empty(t, durable, "outside the window")
}

// A refused commit loses no Nonce: the next commit writes it.
func TestRefusedCommitKeepsNonces(t *testing.T) {
	ctx := context.Background()
	b := openBolt(t, filepath.Join(t.TempDir(), "n.db"))
	now := time.Now()
	k := nonce.KeyOf("id", now.Unix(), "7")
	require.NoError(t, b.Commit(ctx, storetest.Demo(t), 3))
	require.NoError(t, b.UseNonce(k, now, time.Hour))
	require.ErrorIs(t, b.Commit(ctx, storetest.Demo(t), 2), ErrConflict)
	require.NoError(t, b.Commit(ctx, storetest.Revisions(t)[1], 4))
	durable, err := b.DurableNonces(ctx, now, time.Hour)
	require.NoError(t, err)
	assert.Equal(t, []nonce.Key{k}, durable)
}

// A read's Nonce costs no write of its own: a hundred of them leave the file untouched until the next
// Commit, which makes them all durable in its one transaction.
func TestNoncesNeedNoWriteOfTheirOwn(t *testing.T) {
	ctx := context.Background()
	b := openBolt(t, filepath.Join(t.TempDir(), "n.db"))
	b.nonceFlushDelay = time.Hour
	require.NoError(t, b.Commit(ctx, storetest.Demo(t), 1))
	stats := b.db.Stats()
	writes := stats.TxStats.GetWrite()
	now := time.Now()
	for i := range 100 {
		require.NoError(t, b.UseNonce(nonce.KeyOf("id", now.Unix(), strconv.Itoa(i)), now, time.Hour))
	}
	stats = b.db.Stats()
	assert.Equal(t, writes, stats.TxStats.GetWrite(), "no write")
	durable, err := b.DurableNonces(ctx, now, time.Hour)
	require.NoError(t, err)
	assert.Empty(t, durable)
	require.NoError(t, b.Commit(ctx, storetest.Revisions(t)[1], 2))
	stats = b.db.Stats()
	assert.Greater(t, stats.TxStats.GetWrite(), writes, "the commit wrote")
	durable, err = b.DurableNonces(ctx, now, time.Hour)
	require.NoError(t, err)
	assert.Len(t, durable, 100)
}

// Health reports the last failed write and clears once one succeeds; meanwhile Nonces are still
// accepted and refused from memory (a read keeps working when the disk does not).
func TestBoltHealth(t *testing.T) {
	ctx := context.Background()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "h.db"))
	require.NoError(t, err)
	require.NoError(t, b.Commit(ctx, storetest.Demo(t), 1))
	now := time.Now()
	require.NoError(t, b.UseNonce(nonce.KeyOf("id", now.Unix(), "0"), now, time.Hour)) // the record is loaded
	b.flushNonces()
	require.NoError(t, b.Health())
	require.NoError(t, b.db.Close()) // the file can no longer be written
	err = b.Commit(ctx, storetest.Revisions(t)[1], 2)
	require.Error(t, err)
	assert.Equal(t, err, b.Health())
	assert.ErrorContains(t, b.Health(), "commit generation 2")
	k := nonce.KeyOf("id", now.Unix(), "1")
	require.NoError(t, b.UseNonce(k, now, time.Hour))
	assert.ErrorIs(t, b.UseNonce(k, now, time.Hour), nonce.ErrReplay)
	got, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), gen, "the failed commit changed nothing")
	sameState(t, storetest.Demo(t), got, "state in force")
	assert.Error(t, b.Close(), "the pending Nonce could not be written")
}

// forEachStore runs test as a subtest on a fresh store of each kind.
func forEachStore(t *testing.T, test func(t *testing.T, st Store)) {
	t.Run("memory", func(t *testing.T) { test(t, NewMemory()) })
	t.Run("bolt", func(t *testing.T) { test(t, openBolt(t, filepath.Join(t.TempDir(), "store.db"))) })
}

// Every revision can be loaded back as committed, listing order included; each commit's Change holds
// only the records it changed, and applying the Changes in order rebuilds every state.
func TestRecordsHistoryAndWatch(t *testing.T) {
	ctx := context.Background()
	revs := storetest.Revisions(t)
	forEachStore(t, func(t *testing.T, st Store) {
		for i, s := range revs {
			require.NoError(t, st.Commit(ctx, s, uint64(i+1)))
		}
		got, gen, err := st.Load(ctx)
		require.NoError(t, err)
		assert.Equal(t, uint64(len(revs)), gen)
		sameState(t, revs[len(revs)-1], got, "latest")
		for i, s := range revs {
			at, err := st.LoadAt(ctx, uint64(i+1))
			require.NoError(t, err, "revision %d", i+1)
			sameState(t, s, at, "revision %d", i+1)
		}

		var changes []Change
		var agent *model.State
		wctx, cancel := context.WithCancel(ctx)
		err = st.Watch(wctx, 0, func(c Change) error {
			changes = append(changes, c)
			agent, err = c.Apply(agent)
			require.NoError(t, err)
			sameState(t, revs[c.Revision-1], agent, "watched revision %d", c.Revision)
			if c.Revision == uint64(len(revs)) {
				cancel()
			}
			return nil
		})
		require.ErrorIs(t, err, context.Canceled)
		require.Len(t, changes, len(revs))
		assert.Len(t, changes[0].Puts, len(revs[0].AppIDs())+len(revs[0].SGIDs())+len(revs[0].ENIIDs())+1, "and the admin tokens")
		assert.Equal(t, []Key{{KindSG, "sg-web"}}, keysOf(changes[1].Puts), "a rule change writes one record")
		assert.Equal(t, []Key{{KindSG, "sg-new"}}, keysOf(changes[2].Puts))
		assert.Equal(t, []Key{{KindENI, "eni-spare"}}, keysOf(changes[3].Puts))
		assert.Equal(t, []Key{{KindSG, "sg-new"}}, changes[5].Deletes)
		assert.Empty(t, changes[5].Puts)
	})
}

// sameState compares two states by their topology documents (a short diff when they differ).
func sameState(t *testing.T, want, got *model.State, msgAndArgs ...any) {
	t.Helper()
	w, err := json.Marshal(want.Topology())
	require.NoError(t, err)
	g, err := json.Marshal(got.Topology())
	require.NoError(t, err)
	assert.Equal(t, string(w), string(g), msgAndArgs...)
}

func keysOf(rs []Record) []Key {
	var out []Key
	for _, r := range rs {
		out = append(out, r.Key)
	}
	return out
}

// A watcher started before a commit sees it as it happens; one that starts from a revision sees only
// what came after.
func TestWatchDeliversLiveChanges(t *testing.T) {
	ctx := context.Background()
	revs := storetest.Revisions(t)
	forEachStore(t, func(t *testing.T, st Store) {
		require.NoError(t, st.Commit(ctx, revs[0], 1))
		require.NoError(t, st.Commit(ctx, revs[1], 2))
		got := make(chan uint64, 10)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		wg.Go(func() {
			_ = st.Watch(wctx, 1, func(c Change) error { got <- c.Revision; return nil })
		})
		assert.Equal(t, uint64(2), <-got)
		require.NoError(t, st.Commit(ctx, revs[2], 3))
		assert.Equal(t, uint64(3), <-got)
		cancel()
		wg.Wait()
	})
}

func TestCommitConflict(t *testing.T) {
	ctx := context.Background()
	forEachStore(t, func(t *testing.T, st Store) {
		require.NoError(t, st.Commit(ctx, storetest.Demo(t), 5))
		require.ErrorIs(t, st.Commit(ctx, storetest.Demo(t), 5), ErrConflict)
		require.ErrorIs(t, st.Commit(ctx, storetest.Demo(t), 4), ErrConflict)
		_, gen, err := st.Load(ctx)
		require.NoError(t, err)
		assert.Equal(t, uint64(5), gen)
	})
}

// Compaction keeps the history to its length: older revisions are refused by name, the ones kept still
// load exactly, and the file holds no more than the current records plus the kept revisions' changes.
func TestBoltCompaction(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	b, err := OpenBolt(path)
	require.NoError(t, err)
	b.history = 3
	revs := storetest.Revisions(t)
	for i, s := range revs {
		require.NoError(t, b.Commit(ctx, s, uint64(i+1)))
	}
	n := uint64(len(revs))
	_, err = b.LoadAt(ctx, n-3)
	require.ErrorIs(t, err, ErrCompacted)
	require.ErrorIs(t, b.Watch(ctx, n-3, func(Change) error { return nil }), ErrCompacted)
	for r := n - 2; r <= n; r++ {
		at, err := b.LoadAt(ctx, r)
		require.NoError(t, err)
		sameState(t, revs[r-1], at, "revision %d", r)
	}
	entries := 0
	require.NoError(t, b.db.View(func(tx *bolt.Tx) error {
		entries = tx.Bucket(bucketHistory).Stats().KeyN
		return nil
	}))
	objects := len(revs[n-1].AppIDs()) + len(revs[n-1].SGIDs()) + len(revs[n-1].ENIIDs())
	// The last revision rewrote everything (its order changed): only its records remain live, and the
	// two before it (each one record) are kept.
	assert.LessOrEqual(t, entries, 2*objects+4)
	require.NoError(t, b.Close())

	b = openBolt(t, path)
	s, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, n, gen)
	sameState(t, revs[n-1], s, "reopened")
}

// A file written by the one-document layout (topology + generation) is migrated on open: the same
// state at the same generation, then ordinary commits, and it stays migrated after a reopen.
func TestBoltMigratesLegacyFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	s := storetest.Demo(t)
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	topo, err := json.Marshal(s.Topology())
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucket(legacyBucket)
		require.NoError(t, err)
		require.NoError(t, bk.Put(legacyTopology, topo))
		return bk.Put(legacyGeneration, []byte("42"))
	}))
	require.NoError(t, db.Close())

	b, err := OpenBolt(path)
	require.NoError(t, err)
	got, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(42), gen)
	sameState(t, s, got, "migrated")
	next := storetest.Revisions(t)[1]
	require.NoError(t, b.Commit(ctx, next, 43))
	require.NoError(t, b.db.View(func(tx *bolt.Tx) error {
		assert.Nil(t, tx.Bucket(legacyBucket), "the old document is gone")
		return nil
	}))
	require.NoError(t, b.Close())

	b = openBolt(t, path)
	got, gen, err = b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(43), gen)
	sameState(t, next, got, "after migration")
	at, err := b.LoadAt(ctx, 42)
	require.NoError(t, err)
	sameState(t, s, at, "migrated revision")
}

// A legacy file whose topology does not parse is refused at open, naming the file, and left as it was.
func TestBoltLegacyFileBadTopology(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.db")
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucket(legacyBucket)
		require.NoError(t, err)
		require.NoError(t, bk.Put(legacyTopology, []byte(`{"accounts":[`)))
		return bk.Put(legacyGeneration, []byte("3"))
	}))
	require.NoError(t, db.Close())
	_, err = OpenBolt(path)
	require.ErrorContains(t, err, path)
	require.ErrorContains(t, err, "migrate")
}

// The one-document layout's Nonce buckets (keyed without the Timestamp) are dropped on open.
func TestBoltDropsLegacyNonces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		for _, name := range legacyNonceBuckets {
			bk, err := tx.CreateBucket(name)
			require.NoError(t, err)
			require.NoError(t, bk.Put([]byte("id\x00n1"), []byte("1700000000000000000")))
		}
		return nil
	}))
	require.NoError(t, db.Close())
	b := openBolt(t, path)
	require.NoError(t, b.db.View(func(tx *bolt.Tx) error {
		for _, name := range legacyNonceBuckets {
			assert.Nil(t, tx.Bucket(name), string(name))
		}
		return nil
	}))
}

// FuzzRecords: whatever bytes a history entry or a record holds, decoding and rebuilding a state from
// them answers an error or a valid state, never a panic.
func FuzzRecords(f *testing.F) {
	sg, err := json.Marshal(model.SecurityGroup{SgID: "sg-1", AppID: "A"})
	require.NoError(f, err)
	f.Add([]byte("P"), []byte(`{"appId":"A"}`), sg)
	f.Add([]byte("D12345678abcdefgh"), []byte(`{}`), []byte(`{"sgId":"sg-1","appId":"B","ingress":[{"action":"x"}]}`))
	f.Fuzz(func(t *testing.T, entry, account, group []byte) {
		if r, _, _, err := decodeHistory(7, []byte("ssg-1"), entry); err == nil {
			require.Equal(t, uint64(7), r.Revision)
		}
		s, err := stateOf([]Record{
			{Key: Key{KindAccount, "A"}, Seq: 1, Value: account},
			{Key: Key{KindSG, "sg-1"}, Seq: 2, Value: group},
		})
		if err == nil {
			require.NotNil(t, s)
		}
	})
}

// TestEncodeSGIsJSONMarshal: the persisted bytes of every SG are exactly encoding/json's, whatever the
// rules hold (omitted fields, escapes, non-ASCII, empty lists).
func TestEncodeSGIsJSONMarshal(t *testing.T) {
	s := storetest.Demo(t)
	e := s.Edit()
	g, ok := s.SG("sg-web")
	require.True(t, ok)
	ng := *g
	ng.SgRemark = `remark "quoted" <b>&amp;</b> é`
	ng.Ingress = []model.Rule{
		{Action: "accept"},
		{IPProtocol: "TCP", CidrIP: "10.0.0.0/8", PortRange: "80-90", Action: "ACCEPT", Desc: `a "b" \ <c> & d`},
		{IPProtocol: "udp", SgID: "sg-ssh", PortRange: "53", Action: "DROP", Desc: "日本語 \u2028 \t tab"},
		{CidrIP: "2001:db8::/32", Action: "DROP", Desc: "\x7f del"},
	}
	ng.Egress = nil
	require.NoError(t, e.PutSG(ng))
	for name, st := range map[string]*model.State{"demo": s, "edited": e.State()} {
		t.Run(name, func(t *testing.T) {
			for _, id := range st.SGIDs() {
				g, _ := st.SG(id)
				want, err := json.Marshal(g)
				require.NoError(t, err)
				got, err := appendSG(nil, g)
				require.NoError(t, err)
				require.Equal(t, string(want), string(got))
				// Appended into a used, bigger buffer (a Bolt's, from its last commit): the same bytes.
				used := append(make([]byte, 0, 2*len(got)+4096), got...)
				used = append(used, `{"stale":"bytes"}`...)
				again, err := appendSG(used, g)
				require.NoError(t, err)
				require.Equal(t, string(want), string(again))
				require.Same(t, &used[0], &again[0], "written in place")
			}
		})
	}
}

// TestAppendRulesCoversEveryField fails when model.Rule gains a field appendRules does not write.
func TestAppendRulesCoversEveryField(t *testing.T) {
	var r model.Rule
	v := reflect.ValueOf(&r).Elem()
	for i := range v.NumField() {
		require.Equal(t, reflect.String, v.Field(i).Kind(), "field %s", v.Type().Field(i).Name)
		v.Field(i).SetString("x" + v.Type().Field(i).Name)
	}
	for _, rules := range [][]model.Rule{nil, {}, {r}, {r, {Action: "DROP"}}} {
		want, err := json.Marshal(rules)
		require.NoError(t, err)
		require.Equal(t, string(want), string(appendRules(nil, rules)))
	}
}

// openBolt opens the bolt store at path for the rest of the test.
func openBolt(t *testing.T, path string) *Bolt {
	t.Helper()
	b, err := OpenBolt(path)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

// scriptedStore is a Store whose Commit returns what the test says, after the test lets it.
type scriptedStore struct {
	Memory
	mu      sync.Mutex
	result  error
	release chan struct{} // nil = commit at once
}

func (s *scriptedStore) Commit(ctx context.Context, st *model.State, gen uint64) error {
	s.mu.Lock()
	res, rel := s.result, s.release
	s.mu.Unlock()
	if rel != nil {
		<-rel
	}
	if res != nil {
		return res
	}
	return s.Memory.Commit(ctx, st, gen)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestMonitoredHealth(t *testing.T) {
	ctx := context.Background()
	enospc := fmt.Errorf("store: commit generation 3 to /d/sgsim.db: write /d/sgsim.db: %w", syscall.ENOSPC)
	for _, tc := range []struct {
		name   string
		result error
		want   string // "" = healthy after the commit
	}{
		{"a commit succeeds", nil, ""},
		{"a full disk", enospc, "the last commit failed 0s ago: " + enospc.Error()},
		{"an I/O error", errors.New("store: commit: input/output error"), "the last commit failed 0s ago: store: commit: input/output error"},
		{"a conflicting commit is another writer, not the disk", fmt.Errorf("commit generation 3: %w", ErrConflict), ""},
		{"a client that hung up", fmt.Errorf("store: %w", context.Canceled), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1e9, 0)}
			inner := &scriptedStore{result: tc.result}
			m := NewMonitored(inner, MonitorOptions{Now: clock.now})
			require.NoError(t, m.Health(), "healthy before any commit")
			assert.Equal(t, tc.result, m.Commit(ctx, storetest.Demo(t), 1), "the store's own answer is passed on")
			if tc.want == "" {
				assert.NoError(t, m.Health())
				return
			}
			assert.EqualError(t, m.Health(), tc.want)
			inner.result = nil
			require.NoError(t, m.Commit(ctx, storetest.Demo(t), 1))
			assert.NoError(t, m.Health(), "a commit that works clears it")
		})
	}
}

func TestMonitoredReportsAStalledCommit(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	inner := &scriptedStore{release: make(chan struct{})}
	m := NewMonitored(inner, MonitorOptions{StallAfter: 3 * time.Second, Now: clock.now})
	done := make(chan error)
	go func() { done <- m.Commit(context.Background(), storetest.Demo(t), 1) }()
	require.Eventually(t, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.inflight) == 1 },
		5*time.Second, time.Millisecond)
	clock.add(2 * time.Second)
	assert.NoError(t, m.Health(), "in progress, within the threshold")
	clock.add(1500 * time.Millisecond)
	assert.EqualError(t, m.Health(), "a commit has been in progress for 3.5s (more than 3s): the disk is frozen or failing")
	close(inner.release)
	require.NoError(t, <-done)
	assert.NoError(t, m.Health())
}

func TestMonitoredProbesAfterAFailure(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	probeDir := filepath.Join(t.TempDir(), "not-yet")
	inner := &scriptedStore{result: errors.New("no space left on device")}
	m := NewMonitored(inner, MonitorOptions{ProbeDir: probeDir, Now: clock.now})
	require.Error(t, m.Commit(context.Background(), storetest.Demo(t), 1))
	require.Error(t, m.Health()) // starts the first probe, which fails: its directory is missing
	require.Eventually(t, func() bool {
		err := m.Health()
		return err != nil && assert.ObjectsAreEqual(
			"the last commit failed 0s ago: no space left on device; a probe write still fails: open "+
				filepath.Join(probeDir, ".sgsim-probe")+": no such file or directory", err.Error())
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, os.Mkdir(probeDir, 0o700))
	assert.Error(t, m.Health(), "the next probe waits a second")
	clock.add(time.Second)
	require.Eventually(t, func() bool { return m.Health() == nil }, 5*time.Second, time.Millisecond,
		"a probe write that works makes it ready again")
	entries, err := os.ReadDir(probeDir)
	require.NoError(t, err)
	assert.Empty(t, entries, "the probe file is removed")
}
