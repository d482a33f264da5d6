package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
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
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "n.db")
	b, err := OpenBolt(path)
	require.NoError(t, err)
	t0 := time.Unix(1_700_000_000, 0)
	const w = 2 * time.Hour
	use := func(key string, at time.Time) bool {
		fresh, err := b.UseNonce(ctx, key, at, w)
		require.NoError(t, err)
		return fresh
	}
	assert.True(t, use("id\x00n1", t0))
	assert.False(t, use("id\x00n1", t0.Add(time.Minute)), "replay within the window")
	assert.True(t, use("id\x00n2", t0.Add(time.Minute)))
	require.NoError(t, b.Close())

	// Survives a reopen (a restart of the daemon).
	b, err = OpenBolt(path)
	require.NoError(t, err)
	defer b.Close()
	assert.False(t, use("id\x00n1", t0.Add(time.Hour)))
	// After the window the nonce is forgotten (pruned) and may be used again; n2, used later, is kept.
	assert.True(t, use("id\x00n1", t0.Add(w+30*time.Second)))
	assert.False(t, use("id\x00n2", t0.Add(w+30*time.Second)))
	assert.False(t, use("id\x00n1", t0.Add(w+40*time.Second)), "re-used key is remembered at its new time")
	// Prune n1's old index entry must not forget its new use.
	assert.False(t, use("id\x00n1", t0.Add(2*w)))
}

// A Commit on a context carrying a NonceUse records the Nonce in the same transaction; a used Nonce
// makes the Commit fail and change nothing.
func TestCommitRecordsNonce(t *testing.T) {
	ctx := context.Background()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "n.db"))
	require.NoError(t, err)
	defer b.Close()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	t0 := time.Unix(1_700_000_000, 0)
	const w = time.Hour

	u := &NonceUse{In: b, Key: "id\x00n1", At: t0, Window: w}
	withU := WithNonce(ctx, u)
	require.NoError(t, b.Commit(withU, s, 1))
	assert.True(t, u.Recorded())
	recent, err := b.RecentNonces(ctx, t0.Add(time.Minute), w)
	require.NoError(t, err)
	assert.Equal(t, map[string]time.Time{"id\x00n1": time.Unix(0, t0.UnixNano())}, recent)
	fresh, err := b.UseNonce(ctx, "id\x00n1", t0.Add(time.Minute), w)
	require.NoError(t, err)
	assert.False(t, fresh)
	// The same call committing again (one call, one Nonce) does not trip over its own record.
	require.NoError(t, b.Commit(withU, s, 2))

	again := &NonceUse{In: b, Key: "id\x00n1", At: t0.Add(2 * time.Minute), Window: w}
	err = b.Commit(WithNonce(ctx, again), s, 3)
	require.ErrorIs(t, err, ErrNonceUsed)
	assert.False(t, again.Recorded())
	_, gen, err := b.Load(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), gen, "the refused commit changed nothing")

	// A Nonce meant for another store's record is not written into this one.
	other := &NonceUse{In: &Bolt{}, Key: "id\x00n9", At: t0, Window: w}
	require.NoError(t, b.Commit(WithNonce(ctx, other), s, 4))
	assert.False(t, other.Recorded())

	recent, err = b.RecentNonces(ctx, t0.Add(w+time.Minute), w)
	require.NoError(t, err)
	assert.Empty(t, recent, "outside the window")
}
