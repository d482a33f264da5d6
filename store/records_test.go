package store

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/sgsim/sgsim/model"
)

// revisions returns the demo state followed by edits of each kind: a rule change, a new SG, an ENI
// re-listed, the new SG deleted, and a state rebuilt from a reordered topology (sharing nothing).
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

func stores(t *testing.T) map[string]func() Store {
	dir := t.TempDir()
	n := 0
	return map[string]func() Store{
		"memory": func() Store { return NewMemory() },
		"bolt": func() Store {
			n++
			b, err := OpenBolt(filepath.Join(dir, fmt.Sprintf("%d.db", n)))
			require.NoError(t, err)
			t.Cleanup(func() { b.Close() })
			return b
		},
	}
}

// Every revision can be loaded back as committed, listing order included; each commit's Change holds
// only the records it changed, and applying the Changes in order rebuilds every state.
func TestRecordsHistoryAndWatch(t *testing.T) {
	ctx := context.Background()
	revs := revisions(t)
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			st := open()
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
	revs := revisions(t)
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			st := open()
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
}

func TestCommitConflict(t *testing.T) {
	ctx := context.Background()
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			st := open()
			require.NoError(t, st.Commit(ctx, demo(t), 5))
			require.ErrorIs(t, st.Commit(ctx, demo(t), 5), ErrConflict)
			require.ErrorIs(t, st.Commit(ctx, demo(t), 4), ErrConflict)
			_, gen, err := st.Load(ctx)
			require.NoError(t, err)
			assert.Equal(t, uint64(5), gen)
		})
	}
}

// Compaction keeps the history to its length: older revisions are refused by name, the ones kept still
// load exactly, and the file holds no more than the current records plus the kept revisions' changes.
func TestBoltCompaction(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	b, err := OpenBolt(path)
	require.NoError(t, err)
	b.history = 3
	revs := revisions(t)
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

	b, err = OpenBolt(path)
	require.NoError(t, err)
	defer b.Close()
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
	s := demo(t)
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
	next := revisions(t)[1]
	require.NoError(t, b.Commit(ctx, next, 43))
	require.NoError(t, b.db.View(func(tx *bolt.Tx) error {
		assert.Nil(t, tx.Bucket(legacyBucket), "the old document is gone")
		return nil
	}))
	require.NoError(t, b.Close())

	b, err = OpenBolt(path)
	require.NoError(t, err)
	defer b.Close()
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
	b, err := OpenBolt(path)
	require.NoError(t, err)
	defer b.Close()
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
