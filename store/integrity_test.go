package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/nonce"
)

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
	require.NoError(t, b.UseNonce(nonce.KeyOf("AKID", time.Now().Unix(), "1"), time.Now(), time.Hour)) // written by Close
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
