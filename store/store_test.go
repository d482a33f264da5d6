package store

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/nonce"
)

func demo(t *testing.T) *model.State {
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	return s
}

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
			require.NoError(t, st.Commit(ctx, demo(t), 7))
			s, gen, err = st.Load(ctx)
			require.NoError(t, err)
			assert.Equal(t, uint64(7), gen)
			assert.Equal(t, demo(t).Topology(), s.Topology())
			assert.Error(t, st.Commit(ctx, nil, 8))
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			assert.ErrorIs(t, st.Commit(cancelled, demo(t), 9), context.Canceled)
		})
	}
	require.NoError(t, b.Close())

	// Reopened, the bolt file still holds the last commit.
	b, err = OpenBolt(path)
	require.NoError(t, err)
	defer b.Close()
	s, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(7), gen)
	assert.Equal(t, demo(t).Topology(), s.Topology())

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
	b, err = OpenBolt(path)
	require.NoError(t, err)
	defer b.Close()
	assert.ErrorIs(t, use(b, n1, t0.Add(time.Hour)), nonce.ErrReplay)
	// Once its Timestamp is out of the window a triple is forgotten (the Timestamp check refuses it).
	require.NoError(t, use(b, n1, t0.Add(w+30*time.Second)))
	assert.ErrorIs(t, use(b, n2, t0.Add(w+30*time.Second)), nonce.ErrReplay, "n2's Timestamp is a minute later")
}

// A Commit writes every Nonce used before it in its own transaction; a read's Nonce is written by a
// batched flush without any Commit.
func TestCommitRecordsNonces(t *testing.T) {
	ctx := context.Background()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "n.db"))
	require.NoError(t, err)
	defer b.Close()
	now := time.Now()
	const w = time.Hour
	change := nonce.KeyOf("id", now.Unix(), "1")
	require.NoError(t, b.UseNonce(change, now, w))
	require.NoError(t, b.Commit(ctx, demo(t), 1))
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
	b, err := OpenBolt(filepath.Join(t.TempDir(), "n.db"))
	require.NoError(t, err)
	defer b.Close()
	now := time.Now()
	k := nonce.KeyOf("id", now.Unix(), "7")
	require.NoError(t, b.Commit(ctx, demo(t), 3))
	require.NoError(t, b.UseNonce(k, now, time.Hour))
	require.ErrorIs(t, b.Commit(ctx, demo(t), 2), ErrConflict)
	require.NoError(t, b.Commit(ctx, revisions(t)[1], 4))
	durable, err := b.DurableNonces(ctx, now, time.Hour)
	require.NoError(t, err)
	assert.Equal(t, []nonce.Key{k}, durable)
}

// A read's Nonce costs no write of its own: a hundred of them leave the file untouched until the next
// Commit, which makes them all durable in its one transaction.
func TestNoncesNeedNoWriteOfTheirOwn(t *testing.T) {
	ctx := context.Background()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "n.db"))
	require.NoError(t, err)
	defer b.Close()
	b.nonceFlushDelay = time.Hour
	require.NoError(t, b.Commit(ctx, demo(t), 1))
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
	require.NoError(t, b.Commit(ctx, revisions(t)[1], 2))
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
	require.NoError(t, b.Commit(ctx, demo(t), 1))
	now := time.Now()
	require.NoError(t, b.UseNonce(nonce.KeyOf("id", now.Unix(), "0"), now, time.Hour)) // the record is loaded
	b.flushNonces()
	require.NoError(t, b.Health())
	require.NoError(t, b.db.Close()) // the file can no longer be written
	err = b.Commit(ctx, revisions(t)[1], 2)
	require.Error(t, err)
	assert.Equal(t, err, b.Health())
	assert.ErrorContains(t, b.Health(), "commit generation 2")
	k := nonce.KeyOf("id", now.Unix(), "1")
	require.NoError(t, b.UseNonce(k, now, time.Hour))
	assert.ErrorIs(t, b.UseNonce(k, now, time.Hour), nonce.ErrReplay)
	got, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), gen, "the failed commit changed nothing")
	sameState(t, demo(t), got, "state in force")
	assert.Error(t, b.Close(), "the pending Nonce could not be written")
}
