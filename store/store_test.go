package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
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
	use := func(b *Bolt, k nonce.Key, at time.Time) error { return b.UseNonce(context.Background(), k, at, w) }
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
	require.NoError(t, b.UseNonce(context.Background(), change, now, w))
	require.NoError(t, b.Commit(ctx, storetest.Demo(t), 1))
	durable, err := b.DurableNonces(ctx, now, w)
	require.NoError(t, err)
	assert.Equal(t, []nonce.Key{change}, durable, "written with the change")

	read := nonce.KeyOf("id", now.Unix(), "2")
	require.NoError(t, b.UseNonce(context.Background(), read, now, w))
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
	require.NoError(t, b.UseNonce(context.Background(), k, now, time.Hour))
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
		require.NoError(t, b.UseNonce(context.Background(), nonce.KeyOf("id", now.Unix(), strconv.Itoa(i)), now, time.Hour))
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
	require.NoError(t, b.UseNonce(context.Background(), nonce.KeyOf("id", now.Unix(), "0"), now, time.Hour)) // the record is loaded
	b.flushNonces()
	require.NoError(t, b.Health())
	require.NoError(t, b.db.Close()) // the file can no longer be written
	err = b.Commit(ctx, storetest.Revisions(t)[1], 2)
	require.Error(t, err)
	assert.Equal(t, err, b.Health())
	assert.ErrorContains(t, b.Health(), "commit generation 2")
	k := nonce.KeyOf("id", now.Unix(), "1")
	require.NoError(t, b.UseNonce(context.Background(), k, now, time.Hour))
	assert.ErrorIs(t, b.UseNonce(context.Background(), k, now, time.Hour), nonce.ErrReplay)
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
	b := boltKeeping(t, path, 3)
	revs := storetest.Revisions(t)
	for i, s := range revs {
		require.NoError(t, b.Commit(ctx, s, uint64(i+1)))
	}
	n := uint64(len(revs))
	_, err := b.LoadAt(ctx, n-3)
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
	requireReopened(t, path, revs[n-1], n)
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

// fuzzBase is the records FuzzRecords puts its record among: one object of every kind, each needed by
// the next (the SG and the ENI belong to the account, the ENI is in the SG).
func fuzzBase(t testing.TB) []Record {
	t.Helper()
	var recs []Record
	for i, o := range []struct {
		key Key
		obj any
	}{
		{Key{KindAccount, "A"}, model.Account{AppID: "A", HuaweiTokens: []string{"t"}}},
		{Key{KindSG, "sg-1"}, model.SecurityGroup{SgID: "sg-1", AppID: "A",
			Ingress: []model.Rule{{IPProtocol: "tcp", SgID: "sg-1", PortRange: "22", Action: "ACCEPT"}}}},
		{Key{KindENI, "eni-1"}, model.NetworkInterface{NetworkInterfaceID: "eni-1", AppID: "A",
			PrivateIPAddresses: []string{"10.0.0.1"}, SgIDs: []string{"sg-1"}, Host: "h1", HostInterface: "if1"}},
		{Key{KindAdmin, adminTokensID}, []string{"tok"}},
	} {
		v, err := json.Marshal(o.obj)
		require.NoError(t, err)
		recs = append(recs, Record{Key: o.key, Seq: uint64(i + 1), Revision: 3, Value: v})
	}
	return recs
}

// intoTopology puts the object r documents into t, replacing the one of the same ID, and tells
// whether r documents one: its value is the JSON of its kind's model type, holding its key's ID (the
// admin tokens: a list of strings under the one ID adminTokens).
func intoTopology(t *model.Topology, r Record) bool {
	switch r.Kind {
	case KindAccount:
		return intoList(&t.Accounts, r, func(a model.Account) string { return a.AppID })
	case KindSG:
		return intoList(&t.SecurityGroups, r, func(g model.SecurityGroup) string { return g.SgID })
	case KindENI:
		return intoList(&t.NetworkInterfaces, r, func(n model.NetworkInterface) string { return n.NetworkInterfaceID })
	case KindAdmin:
		var tokens []string
		if r.ID != adminTokensID || json.Unmarshal(r.Value, &tokens) != nil {
			return false
		}
		t.AdminTokens = tokens
		return true
	}
	return false
}

func intoList[T any](list *[]T, r Record, id func(T) string) bool {
	var v T
	if json.Unmarshal(r.Value, &v) != nil || id(v) != r.ID {
		return false
	}
	if i := slices.IndexFunc(*list, func(x T) bool { return id(x) == r.ID }); i >= 0 {
		(*list)[i] = v
	} else {
		*list = append(*list, v)
	}
	return true
}

// mustState is the state of recs.
func mustState(t *testing.T, recs []Record) *model.State {
	t.Helper()
	s, err := stateOf(slices.Clone(recs))
	require.NoError(t, err)
	return s
}

// namesAnObject tells whether k can name an object: a known kind, and the admin tokens' one ID.
func namesAnObject(k Key) bool {
	return slices.Contains([]Kind{KindAccount, KindSG, KindENI}, k.Kind) || k == Key{KindAdmin, adminTokensID}
}

// requireNamesARecord requires err to name the key of one of recs.
func requireNamesARecord(t *testing.T, err error, recs []Record) {
	t.Helper()
	for _, r := range recs {
		if strings.Contains(err.Error(), r.Key.String()) {
			return
		}
	}
	require.Failf(t, "the error names no record", "%v (records %v)", err, keysOf(recs))
}

// FuzzRecords puts a record of any kind, ID and bytes among records of every kind, and loads them
// (stateOf, as a Bolt's Load and an etcd Store's do) and applies it to their state (Change.Apply, as a
// Watch follower does). Both agree. A record that is not the JSON of its kind's object holding its
// key's ID is refused with an error naming it; a well-formed object the state cannot hold (a bad rule,
// a reference to nothing), with an error naming a record. What is accepted is exactly what the record
// says, and a commit re-encodes it into records that load back as the same state, one per object. A
// deletion of the record's key removes its object or is refused naming a record (a key no object has:
// that key), changing nothing.
func FuzzRecords(f *testing.F) {
	sg := func(g model.SecurityGroup) []byte {
		b, err := json.Marshal(g)
		require.NoError(f, err)
		return b
	}
	for _, c := range []struct {
		kind  Kind
		id    string
		value []byte
	}{
		{KindAccount, "A", []byte(`{"appId":"A","secretId":"AKID","huaweiTokens":["x","y"]}`)},
		{KindAccount, "B", []byte(`{"appId":"B"}`)},
		{KindAccount, "A", []byte(`{"appId":"B"}`)},
		{KindAccount, "", []byte(`{"appId":""}`)},
		{KindSG, "sg-1", sg(model.SecurityGroup{SgID: "sg-1", AppID: "A", Egress: []model.Rule{{CidrIP: "10.0.0.0/8", Action: "drop", Desc: "é <&>"}}})},
		{KindSG, "sg-2", sg(model.SecurityGroup{SgID: "sg-2", AppID: "A", Ingress: []model.Rule{{SgID: "sg-1", Action: "ACCEPT"}}})},
		{KindSG, "sg-2", []byte(`{"sgId":"sg-2","appId":"A","ingress":[{"sgId":"sg-9","action":"ACCEPT"}]}`)},
		{KindSG, "sg-1", []byte(`{"sgId":"sg-1","appId":"B"}`)},
		{KindSG, "sg-1", []byte(`{"sgId":"sg-1","appId":"A","ingress":[{"cidrIp":"10.0.0.0/33","action":"ACCEPT"}]}`)},
		{KindSG, "sg-1", []byte(`{"sgId":`)},
		{KindENI, "eni-2", []byte(`{"networkInterfaceId":"eni-2","appId":"A","privateIpAddresses":["10.0.0.2"],"sgIds":["sg-1"],"host":"h2"}`)},
		{KindENI, "eni-2", []byte(`{"networkInterfaceId":"eni-2","appId":"A","privateIpAddresses":["10.0.0.1"],"sgIds":[]}`)},
		{KindENI, "eni-1", []byte(`{"networkInterfaceId":"eni-1","appId":"A","privateIpAddresses":["fd00::1"],"sgIds":null,"macAddress":"02:00:00:00:00:01"}`)},
		{KindENI, "eni-1", []byte(`{"networkInterfaceId":"eni-2"}`)},
		{KindAdmin, adminTokensID, []byte(`["a","b"]`)},
		{KindAdmin, adminTokensID, []byte(`["new"]`)},
		{KindAdmin, adminTokensID, []byte(`null`)},
		{KindAdmin, adminTokensID, []byte(`[]`)},
		{KindAdmin, adminTokensID, []byte(`[""]`)},
		{KindAdmin, "other", []byte(`["a"]`)},
		{Kind('x'), "A", []byte(`{"appId":"A"}`)},
	} {
		f.Add(byte(c.kind), c.id, c.value)
	}
	f.Fuzz(func(t *testing.T, kind byte, id string, value []byte) {
		base := fuzzBase(t)
		baseState := mustState(t, base)
		rec := Record{Key: Key{Kind(kind), id}, Seq: uint64(len(base) + 1), Revision: 5, Value: value}
		recs := slices.Clone(base)
		if i := slices.IndexFunc(recs, func(r Record) bool { return r.Key == rec.Key }); i >= 0 {
			rec.Seq = recs[i].Seq // in its place, as a commit that rewrites an object keeps it
			recs[i] = rec
		} else {
			recs = append(recs, rec)
		}
		want := baseState.Topology()
		documents := intoTopology(&want, rec)

		s, err := stateOf(slices.Clone(recs))
		applied, applyErr := Change{Revision: 5, Puts: []Record{rec}}.Apply(baseState)
		storetest.RequireSameTopology(t, mustState(t, base), baseState, "Apply leaves the state it applies to as it was")
		if err != nil {
			require.Error(t, applyErr, "a follower applies what a load refuses (%v)", err)
			require.ErrorContains(t, applyErr, "revision 5")
			if !documents {
				require.ErrorContains(t, err, rec.Key.String())
				require.ErrorContains(t, applyErr, rec.Key.String())
			} else {
				_, verr := model.RestoreState(want) // what a store loads by
				require.Error(t, verr, "refused a state the model accepts: %v", err)
				requireNamesARecord(t, err, recs)
				requireNamesARecord(t, applyErr, recs)
			}
		} else {
			require.NoError(t, applyErr, "a load accepts what a follower refuses")
			require.True(t, documents, "accepted %s holding %q", rec.Key, value)
			expected, err := model.RestoreState(want)
			require.NoError(t, err)
			storetest.RequireSameTopology(t, expected, s, "the state holds what the record says")
			storetest.RequireSameTopology(t, expected, applied, "applied")

			var rs RecordSet
			d, err := rs.Diff(s, 9)
			require.NoError(t, err)
			again, err := stateOf(slices.Clone(d.Puts))
			require.NoError(t, err)
			storetest.RequireSameTopology(t, s, again, "re-encoded, the records load back as the same state")
			wantKeys := keysOf(recs)
			if len(s.AdminTokens()) == 0 { // a list of no tokens is no admin record
				wantKeys = slices.DeleteFunc(wantKeys, func(k Key) bool { return k.Kind == KindAdmin })
			}
			require.ElementsMatch(t, wantKeys, keysOf(d.Puts), "one record per object")
		}

		// Deleting the key from the base state: its object goes (its dependents refuse it, naming
		// a record), the rest stays; an unknown kind is refused naming the key.
		next, err := Change{Revision: 6, Deletes: []Key{rec.Key}}.Apply(baseState)
		storetest.RequireSameTopology(t, mustState(t, base), baseState, "Apply leaves the state it applies to as it was")
		if err != nil {
			require.ErrorContains(t, err, "revision 6")
			if namesAnObject(rec.Key) {
				requireNamesARecord(t, err, base)
			} else {
				require.ErrorContains(t, err, rec.Key.String())
			}
			return
		}
		require.True(t, namesAnObject(rec.Key), "deleted %s", rec.Key)
		require.False(t, has(next, rec.Key), "%s deleted", rec.Key)
		rest := slices.DeleteFunc(slices.Clone(base), func(r Record) bool { return r.Key == rec.Key })
		restState, err := stateOf(rest)
		require.NoError(t, err)
		storetest.RequireSameTopology(t, restState, next, "the rest unchanged")
	})
}

// FuzzHistoryEntry: a history entry as a commit encodes it decodes to what was written; and any bytes
// decode to a record that re-encodes to those bytes exactly, with its value a copy (bbolt's memory is
// valid only in its transaction), or to an error naming the record's key and the revision.
func FuzzHistoryEntry(f *testing.F) {
	f.Add([]byte("ssg-1"), uint64(7), encodeHistory('P', 3, 2, []byte(`{"sgId":"sg-1"}`)), byte('P'), uint64(3), uint64(2), []byte(`{}`))
	f.Add([]byte("eeni-1"), uint64(1), encodeHistory('D', 1, 0, nil), byte('D'), uint64(1<<63), uint64(0), []byte{})
	f.Add([]byte("tadminTokens"), uint64(9), []byte("P12345678abcdefg"), byte('X'), uint64(0), uint64(9), []byte(`["t"]`))
	f.Add([]byte("x"), uint64(0), []byte("Q12345678abcdefgh"), byte(0), uint64(5), uint64(4), []byte(nil))
	f.Fuzz(func(t *testing.T, stored []byte, rev uint64, entry []byte, tag byte, seq, prev uint64, value []byte) {
		if len(stored) == 0 {
			return // every caller reads a key of a kind byte and an ID
		}
		key := Key{Kind: Kind(stored[0]), ID: string(stored[1:])}

		tag = []byte{'P', 'D'}[tag&1]
		r, deleted, gotPrev, err := decodeHistory(rev, stored, encodeHistory(tag, seq, prev, value))
		require.NoError(t, err)
		require.Equal(t, key, r.Key)
		require.Equal(t, []uint64{seq, rev, prev}, []uint64{r.Seq, r.Revision, gotPrev})
		require.Equal(t, tag == 'D', deleted)
		require.True(t, bytes.Equal(value, r.Value), "value %q decoded as %q", value, r.Value)

		orig := bytes.Clone(entry)
		r, deleted, gotPrev, err = decodeHistory(rev, stored, entry)
		if err != nil {
			require.True(t, len(entry) < 17 || (entry[0] != 'P' && entry[0] != 'D'), "refused %q: %v", entry, err)
			require.ErrorContains(t, err, key.String())
			require.ErrorContains(t, err, fmt.Sprintf("revision %d", rev))
			return
		}
		require.Equal(t, key, r.Key)
		require.Equal(t, rev, r.Revision)
		tag = 'P'
		if deleted {
			tag = 'D'
		}
		require.Equal(t, orig, encodeHistory(tag, r.Seq, gotPrev, r.Value), "re-encoded")
		clear(entry)
		require.Equal(t, orig[17:], r.Value, "the value is a copy")
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
// boltKeeping opens path keeping history revisions; the test closes it.
func boltKeeping(t *testing.T, path string, history uint64) *Bolt {
	t.Helper()
	b, err := OpenBolt(path)
	require.NoError(t, err)
	b.history = history
	return b
}

// requireReopened opens path again and requires it to load want at gen.
func requireReopened(t *testing.T, path string, want *model.State, gen uint64) {
	t.Helper()
	b := openBolt(t, path)
	s, got, err := b.Load(context.Background())
	require.NoError(t, err)
	assert.Equal(t, gen, got)
	sameState(t, want, s, "reopened")
}

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

// fixture writes a store that committed several generations and returns its bytes.
func fixture(t testing.TB) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), DBFile)
	b, err := OpenBolt(path)
	require.NoError(t, err)
	ctx := context.Background()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	for gen := uint64(1); gen <= 5; gen++ {
		require.NoError(t, b.Commit(ctx, s, gen))
	}
	require.NoError(t, b.UseNonce(context.Background(), nonce.KeyOf("AKID", time.Now().Unix(), "1"), time.Now(), time.Hour)) // written by Close
	require.NoError(t, b.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return data
}

// TestCheckFileReadsBboltLayout holds integrity.go's reading of bbolt's format against bbolt itself.
func TestCheckFileReadsBboltLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), DBFile)
	require.NoError(t, os.WriteFile(path, fixture(t), 0o600))
	fc, err := checkFile(path)
	require.NoError(t, err)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		assert.Equal(t, uint64(tx.ID()), fc.txid)
		return nil
	}))
	assert.True(t, fc.committed)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	m, bad := decodeMeta(data)
	require.Empty(t, bad)
	assert.Equal(t, db.Info().PageSize, int(m.pageSize))
}

// TestCheckFileRefusesDamagedStores: each way of damaging a good store file (truncation, its meta pages,
// its pages' contents, another kind of file) is refused; most of its length is that table of damages.
func TestCheckFileRefusesDamagedStores(t *testing.T) {
	good := fixture(t)
	ps := os.Getpagesize()
	m0, bad0 := decodeMeta(good)
	require.Empty(t, bad0)
	m1, bad1 := decodeMeta(good[ps:])
	require.Empty(t, bad1)
	newest := m0
	if m1.txid > m0.txid {
		newest = m1
	}
	le := binary.LittleEndian
	garbage := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	topology, err := os.ReadFile("../testdata/demo.json")
	require.NoError(t, err)
	sqlite := append([]byte("SQLite format 3\x00"), make([]byte, 8192)...)
	zero := func(b []byte, from, to int) []byte { clear(b[from:to]); return b }

	for _, tc := range []struct {
		name    string
		damage  func(b []byte) []byte
		problem string
	}{
		{"empty file", func([]byte) []byte { return nil },
			"the file is empty (0 bytes), so it holds no state; bbolt would initialise it as a new database and a seed would replace what was acknowledged"},
		{"shorter than a meta page", func(b []byte) []byte { return b[:40] },
			"truncated to 40 bytes, shorter than a bbolt meta page"},
		{"truncated to whole pages", func(b []byte) []byte { return b[:4*ps] },
			fmt.Sprintf("truncated: transaction %d uses %d pages (%d bytes) but the file has %d bytes",
				newest.txid, newest.hwm, int(newest.hwm)*ps, 4*ps)},
		{"truncated mid-page", func(b []byte) []byte { return b[:len(b)-100] },
			fmt.Sprintf("its size %d is not a whole number of %d-byte pages (truncated?)", len(good)-100, ps)},
		{"meta page 0 zeroed", func(b []byte) []byte { return zero(b, 0, ps) },
			fmt.Sprintf("meta page 0 is invalid (zeroed) while meta page 1 holds transaction %d; bbolt would silently serve that older transaction", m1.txid)},
		{"meta page 1 zeroed", func(b []byte) []byte { return zero(b, ps, 2*ps) },
			fmt.Sprintf("meta page 1 is invalid (zeroed) while meta page 0 holds transaction %d; bbolt would silently serve that older transaction if page 0 is the stale one", m0.txid)},
		{"both meta pages zeroed", func(b []byte) []byte { return zero(b, 0, 2*ps) },
			"not a bbolt database: meta page 0 zeroed, meta page 1 zeroed"},
		{"meta page 0 checksum", func(b []byte) []byte { b[16+48]++; return b }, // its txid
			fmt.Sprintf("meta page 0 is invalid (checksum mismatch (stored %016x, computed %016x)) while meta page 1 holds transaction %d; bbolt would silently serve that older transaction",
				le.Uint64(good[16+56:]), metaSum(good, 1), m1.txid)},
		{"meta page 1 wrong magic", func(b []byte) []byte { le.PutUint32(b[ps+16:], 0xdeadbeef); return b },
			fmt.Sprintf("meta page 1 is invalid (wrong magic 0xdeadbeef (want bbolt's 0xed0cdaed)) while meta page 0 holds transaction %d; bbolt would silently serve that older transaction if page 0 is the stale one", m0.txid)},
		{"bad freelist page", func(b []byte) []byte { le.PutUint16(b[int(newest.freelist)*ps+8:], flagLeaf); return b },
			fmt.Sprintf("page %d (the freelist) has page flags 0x2", newest.freelist)},
		{"keys out of order", func(b []byte) []byte {
			at := int(newest.root)*ps + 16 // the root page's first element: its key starts pos bytes on
			b[at+int(le.Uint32(b[at+4:]))] = 'z'
			return b
		}, fmt.Sprintf("page %d (the root bucket) element 1 is out of key order", newest.root)},
		{"freelist lists a live page", func(b []byte) []byte {
			require.Positive(t, le.Uint16(b[int(newest.freelist)*ps+10:]), "the fixture has free pages")
			le.PutUint64(b[int(newest.freelist)*ps+16:], newest.root)
			return b
		}, fmt.Sprintf("the freelist (page %d) lists page %d, which is in use", newest.freelist, newest.root)},
		{"root page names another page", func(b []byte) []byte { le.PutUint64(b[int(newest.root)*ps:], 999); return b },
			fmt.Sprintf("page %d (the root bucket) calls itself page 999", newest.root)},
		{"all zeros", func(b []byte) []byte { return make([]byte, len(b)) },
			fmt.Sprintf("all %d bytes are zero, no bbolt meta page", len(good))},
		{"random garbage", func([]byte) []byte { return garbage },
			fmt.Sprintf("not a bbolt database: meta page 0 not a meta page (page flags %#x), meta page 1 not a meta page (page flags %#x)",
				le.Uint16(garbage[8:]), le.Uint16(garbage[ps+8:]))},
		{"a topology file", func([]byte) []byte { return topology },
			fmt.Sprintf("not a bbolt database: meta page 0 not a meta page (page flags %#x), meta page 1 missing: the file ends at %d bytes",
				le.Uint16(topology[8:]), len(topology))},
		{"an SQLite file", func([]byte) []byte { return sqlite },
			fmt.Sprintf("not a bbolt database: meta page 0 not a meta page (page flags %#x), meta page 1 zeroed", le.Uint16(sqlite[8:]))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, DBFile)
			require.NoError(t, os.WriteFile(path, tc.damage(append([]byte(nil), good...)), 0o600))
			before := fileState(t, path)
			want := (&CorruptError{Path: path, Problem: tc.problem}).Error()

			err := CheckFile(path)
			require.Error(t, err)
			assert.Equal(t, want, err.Error())
			assert.ErrorIs(t, err, ErrCorrupt)
			assert.NotContains(t, err.Error(), "\n")

			_, err = OpenBolt(path)
			require.Error(t, err)
			assert.Equal(t, want, err.Error(), "OpenBolt refuses it before bbolt reads it")

			seed, err := SeedDecision(dir, true)
			require.Error(t, err)
			assert.Equal(t, want, err.Error())
			assert.False(t, seed, "a damaged store is never re-seeded")

			assert.Equal(t, before, fileState(t, path), "nothing was modified")
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Len(t, entries, 1, "nothing was created beside it")
		})
	}
}

// metaSum is the checksum of meta page 0 of b after adding delta to its txid's low byte.
func metaSum(b []byte, delta byte) uint64 {
	m := append([]byte(nil), b[16:16+metaSumOffset]...)
	m[48] += delta
	var h uint64 = 14695981039346656037
	for _, c := range m {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

type fileSnapshot struct {
	sum   [32]byte
	mtime time.Time
	size  int64
}

func fileState(t *testing.T, path string) fileSnapshot {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	info, err := os.Stat(path)
	require.NoError(t, err)
	return fileSnapshot{sha256.Sum256(data), info.ModTime(), info.Size()}
}

func TestSeedDecision(t *testing.T) {
	t.Run("no file: seed from the topology", func(t *testing.T) {
		seed, err := SeedDecision(t.TempDir(), true)
		require.NoError(t, err)
		assert.True(t, seed)
	})
	t.Run("no file and no topology", func(t *testing.T) {
		dir := t.TempDir()
		seed, err := SeedDecision(dir, false)
		assert.EqualError(t, err, "store: "+filepath.Join(dir, DBFile)+" holds no state yet: give --topology to seed it on first start")
		assert.False(t, seed)
	})
	t.Run("initialised, never committed: seed", func(t *testing.T) {
		dir := t.TempDir()
		b, err := OpenBolt(filepath.Join(dir, DBFile))
		require.NoError(t, err)
		require.NoError(t, b.Close())
		seed, err := SeedDecision(dir, true)
		require.NoError(t, err)
		assert.True(t, seed)
	})
	t.Run("committed: serve it, ignore the topology", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, DBFile), fixture(t), 0o600))
		for _, topo := range []bool{true, false} {
			seed, err := SeedDecision(dir, topo)
			require.NoError(t, err)
			assert.False(t, seed)
		}
	})
}

func TestOpenBoltSaysWhoHoldsTheLock(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, DBFile)
	b, err := OpenBolt(path)
	require.NoError(t, err)
	defer b.Close()
	want := "store: " + path + " is locked by another process (is a sgsim serve running on this data dir?)"
	_, err = OpenBolt(path)
	assert.EqualError(t, err, want)
	assert.ErrorIs(t, err, ErrLocked)
	_, err = SeedDecision(dir, true)
	assert.EqualError(t, err, want)
}

// BenchmarkCheckFile is the cost CheckFile adds to every open: a store with a 4 MiB state value and
// 100k Nonce-sized keys (a busy replay window) beside it.
func BenchmarkCheckFile(b *testing.B) {
	path := filepath.Join(b.TempDir(), DBFile)
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(b, err)
	require.NoError(b, db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucket([]byte("state"))
		if err != nil {
			return err
		}
		if err := bk.Put([]byte("topology"), make([]byte, 4<<20)); err != nil {
			return err
		}
		nk, err := tx.CreateBucket([]byte("nonces"))
		if err != nil {
			return err
		}
		for i := range 100_000 {
			if err := nk.Put(fmt.Appendf(nil, "AKID%036d\x00%d", i, i), []byte("1700000000000000000")); err != nil {
				return err
			}
		}
		return nil
	}))
	require.NoError(b, db.Close())
	info, err := os.Stat(path)
	require.NoError(b, err)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := CheckFile(path); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(info.Size())/(1<<20), "file-MiB")
}

// FuzzCheckFile: CheckFile never panics, its only errors are CorruptError, and whatever it accepts bbolt
// opens, reads through and commits to without a panic or a fault.
func FuzzCheckFile(f *testing.F) {
	good := fixture(f)
	f.Add(good)
	f.Add(good[:4*os.Getpagesize()])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), DBFile)
		require.NoError(t, os.WriteFile(path, data, 0o600))
		if err := CheckFile(path); err != nil {
			var ce *CorruptError
			require.ErrorAs(t, err, &ce)
			require.NotContains(t, err.Error(), "\n")
			return
		}
		bboltSurvives(t, path)
	})
}

// TestCheckFileAcceptsOnlyWhatBboltSurvives damages the pages below the meta pages of a real store at
// random (where FuzzCheckFile's mutator rarely gets, past the meta checksums): every file CheckFile
// accepts, bbolt opens, reads and commits to without a panic. Longer runs of it found keys out of order
// and a freelist listing live pages, which bbolt trusts (now cases of TestCheckFileRefusesDamagedStores).
func TestCheckFileAcceptsOnlyWhatBboltSurvives(t *testing.T) {
	good := fixture(t)
	ps := os.Getpagesize()
	rng := rand.New(rand.NewPCG(11, 12))
	path := filepath.Join(t.TempDir(), DBFile)
	accepted := 0
	for range 200 {
		b := append([]byte(nil), good...)
		for range 1 + rng.IntN(4) {
			off := 2*ps + rng.IntN(len(b)-2*ps)
			if rng.IntN(2) == 0 { // a page header or its first elements
				off = (2+rng.IntN(len(b)/ps-2))*ps + rng.IntN(64)
			}
			b[off] = byte(rng.Uint32())
		}
		require.NoError(t, os.WriteFile(path, b, 0o600))
		if CheckFile(path) != nil {
			continue
		}
		accepted++
		bboltSurvives(t, path)
	}
	t.Logf("%d of 200 damaged files accepted (damage to keys and values, which bbolt does not checksum)", accepted)
}

// bboltSurvives opens path with bbolt, reads every bucket, key and value, commits to it and reads it
// again; a panic or a memory fault fails the test.
func bboltSurvives(t *testing.T, path string) {
	t.Helper()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	require.NoError(t, err, "CheckFile accepted what bbolt refuses")
	defer db.Close()
	readEverything := func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return readAll(b) })
	}
	require.NoError(t, db.View(readEverything))
	for n := range 3 {
		require.NoError(t, db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("sgsim"))
			if err != nil {
				return err
			}
			return bk.Put([]byte("topology"), make([]byte, 10000+n))
		}))
	}
	require.NoError(t, db.View(readEverything))
}

// readAll reads every key and value of b and of the buckets in it.
func readAll(b *bolt.Bucket) error {
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			if sub := b.Bucket(k); sub != nil {
				return readAll(sub)
			}
		}
		return nil
	})
}

// bigSG is sg-web of s with n rules, their ports shifted by variant so that two variants differ in
// every rule.
func bigSG(t *testing.T, s *model.State, n, variant int) *model.State {
	t.Helper()
	g, ok := s.SG("sg-web")
	require.True(t, ok)
	ng := *g
	ng.Ingress = make([]model.Rule, n)
	for r := range ng.Ingress {
		ng.Ingress[r] = model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("10.%d.%d.0/24", r/256, r%256),
			PortRange: strconv.Itoa(1000 + r + variant), Action: "ACCEPT"}
	}
	b := s.Edit()
	require.NoError(t, b.PutSG(ng))
	return b.State()
}

// A big record is written once per commit that changes it, not again with every commit after it: each
// history entry of ownBucketEntry bytes or more is a bucket of its own. Every revision kept still loads,
// is watched and compacts as before.
func TestBoltBigRecordsWrittenOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "big.db")
	b := boltKeeping(t, path, 3)
	revs := []*model.State{storetest.Demo(t)}
	for i := range 8 {
		revs = append(revs, bigSG(t, revs[0], 3000, i))
	}
	g, _ := revs[1].SG("sg-web")
	record, err := appendSG(nil, g)
	require.NoError(t, err)
	require.Greater(t, len(record), 100_000, "a record many pages long")
	for i, s := range revs {
		stats := b.db.Stats()
		before := stats.TxStats.GetPageAlloc()
		require.NoError(t, b.Commit(ctx, s, uint64(i+1)))
		if i >= 1 {
			// The record, its bucket's page and the pages of the buckets above it; before, up to four
			// records' worth.
			stats = b.db.Stats()
			wrote := stats.TxStats.GetPageAlloc() - before
			assert.Less(t, wrote, int64(len(record))*5/4, "commit %d wrote %d bytes for a %d-byte record", i+1, wrote, len(record))
		}
	}
	n := uint64(len(revs))
	for r := n - 2; r <= n; r++ {
		at, err := b.LoadAt(ctx, r)
		require.NoError(t, err)
		sameState(t, revs[r-1], at, "revision %d", r)
	}
	_, err = b.LoadAt(ctx, n-3)
	require.ErrorIs(t, err, ErrCompacted)
	var watched []uint64
	wctx, cancel := context.WithCancel(ctx)
	err = b.Watch(wctx, n-2, func(c Change) error {
		watched = append(watched, c.Revision)
		require.Equal(t, []Key{{KindSG, "sg-web"}}, keysOf(c.Puts))
		if c.Revision == n {
			cancel()
		}
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, []uint64{n - 1, n}, watched)
	require.NoError(t, b.db.View(func(tx *bolt.Tx) error {
		// sg-web's records at n-2 (the oldest served), n-1 and n; the five before were compacted away.
		assert.Equal(t, 3, tx.Bucket(bucketHistory).Stats().BucketN-1, "buckets of their own left in history")
		return nil
	}))
	require.NoError(t, b.Close())
	requireReopened(t, path, revs[n-1], n)
}

// A format 2 file, whose big entries are values of the history bucket, is read as it is; the next
// commit marks it format 3, and compaction removes its old entries like the new ones.
func TestBoltReadsFormat2(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v2.db")
	b := boltKeeping(t, path, 2)
	big := bigSG(t, storetest.Demo(t), 3000, 0)
	require.NoError(t, b.Commit(ctx, big, 1))
	// What format 2 wrote: the entry inline.
	require.NoError(t, b.db.Update(func(tx *bolt.Tx) error {
		hist := tx.Bucket(bucketHistory)
		k := historyKey(1, objectKey(Key{KindSG, "sg-web"}))
		entry := bytes.Clone(historyEntry(hist, k, hist.Get(k)))
		require.NoError(t, hist.DeleteBucket(k))
		require.NoError(t, hist.Put(k, entry))
		return tx.Bucket(bucketMeta).Put(metaFormat, formatV2)
	}))
	require.NoError(t, b.Close())

	b = boltKeeping(t, path, 2)
	s, _, err := b.Load(ctx)
	require.NoError(t, err)
	sameState(t, big, s, "format 2 file")
	next := bigSG(t, storetest.Demo(t), 3000, 1)
	for rev := uint64(2); rev <= 4; rev++ {
		require.NoError(t, b.Commit(ctx, [](*model.State){next, big}[rev%2], rev))
	}
	require.NoError(t, b.db.View(func(tx *bolt.Tx) error {
		assert.Equal(t, formatV3, tx.Bucket(bucketMeta).Get(metaFormat))
		hist, k := tx.Bucket(bucketHistory), historyKey(1, objectKey(Key{KindSG, "sg-web"}))
		assert.Nil(t, historyEntry(hist, k, hist.Get(k)), "the inline entry compacted away")
		return nil
	}))
	at, err := b.LoadAt(ctx, 3)
	require.NoError(t, err)
	sameState(t, big, at, "revision 3")
	require.NoError(t, b.Close())
}

// A record that grows past ownBucketEntry, shrinks below it and is deleted keeps each revision in the
// form it was written in: every kept revision loads whatever the forms around it, and compaction past
// the deletion leaves nothing of the record, value or bucket.
func TestBoltRecordCrossingTheBucketSize(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cross.db")
	b := boltKeeping(t, path, 2)
	withBig := func(s *model.State, rules int) *model.State {
		g := model.SecurityGroup{SgID: "sg-big", AppID: "1250000001", SgName: "big"}
		for r := range rules {
			g.Ingress = append(g.Ingress, model.Rule{IPProtocol: "udp", CidrIP: fmt.Sprintf("10.9.%d.%d/32", r/256, r%256),
				PortRange: "53", Action: "ACCEPT"})
		}
		e := s.Edit()
		require.NoError(t, e.PutSG(g))
		return e.State()
	}
	demo := storetest.Demo(t)
	del := withBig(demo, 3000).Edit()
	require.NoError(t, del.DeleteSG("sg-big"))
	revs := []*model.State{demo, withBig(demo, 3000), withBig(demo, 1), withBig(demo, 2000), del.State(),
		bigSG(t, del.State(), 1, 0), bigSG(t, del.State(), 1, 1)}
	for i, s := range revs {
		rev := uint64(i + 1)
		require.NoError(t, b.Commit(ctx, s, rev))
		for r := max(rev, 2) - 1; r <= rev; r++ {
			at, err := b.LoadAt(ctx, r)
			require.NoError(t, err, "revision %d after committing %d", r, rev)
			sameState(t, revs[r-1], at, "revision %d after committing %d", r, rev)
		}
	}
	big := objectKey(Key{KindSG, "sg-big"})
	require.NoError(t, b.db.View(func(tx *bolt.Tx) error {
		hist := tx.Bucket(bucketHistory)
		assert.Equal(t, 0, hist.Stats().BucketN-1, "buckets of their own left in history")
		return hist.ForEach(func(k, _ []byte) error {
			assert.NotEqual(t, big, k[8:], "an entry of the deleted record at revision %d", binary.BigEndian.Uint64(k))
			return nil
		})
	}))
	require.NoError(t, b.Close())
	requireReopened(t, path, revs[len(revs)-1], uint64(len(revs)))
}

// TestStoredENIsOfOlderBuildsStillLoad: an ENI that checks added since for new input refuse (an
// address listed twice, a hostInterface no Linux interface can have, a host with '/') but that an
// older build accepted and stored loads again (model.RestoreState), so an upgrade does not stop the
// daemon; what comes in through the API or a topology file is still refused.
func TestStoredENIsOfOlderBuildsStillLoad(t *testing.T) {
	ctx := context.Background()
	topo := storetest.Demo(t).Topology()
	n := &topo.NetworkInterfaces[0]
	n.PrivateIPAddresses = append(slices.Clone(n.PrivateIPAddresses), n.PrivateIPAddresses[0])
	n.HostInterface, n.Host = "a-name-far-too-long-for-linux", "rack/1"
	_, err := model.NewState(topo)
	require.Error(t, err, "refused as new input")
	old, err := model.RestoreState(topo)
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), "old.db")
	b := openBolt(t, path)
	require.NoError(t, b.Commit(ctx, old, 1))
	require.NoError(t, b.Close())
	b = openBolt(t, path)
	got, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), gen)
	storetest.RequireSameTopology(t, old, got, "the stored state, as it was")
}
