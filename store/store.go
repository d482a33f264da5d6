// Package store keeps the control plane's durable state: the current model.State and its generation.
// A Commit that returns nil survives a crash of the process (bbolt fsyncs before returning).
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sgsim/sgsim/model"
)

// Store persists whole states. Load returns a nil State and generation 0 when nothing was ever committed.
// Kept this small so a distributed backend (etcd, raft) can implement it later.
type Store interface {
	Load(ctx context.Context) (*model.State, uint64, error)
	Commit(ctx context.Context, s *model.State, generation uint64) error
	Close() error
}

// Memory is a Store that forgets everything when the process ends: for tests and scenarios.
type Memory struct {
	mu    sync.Mutex
	state *model.State
	gen   uint64
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{} }

// Load implements Store.
func (m *Memory) Load(ctx context.Context) (*model.State, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state, m.gen, nil
}

// Commit implements Store. States are immutable, so keeping the pointer is enough.
func (m *Memory) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s == nil {
		return errors.New("store: commit of a nil state")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state, m.gen = s, gen
	return nil
}

// Close implements Store.
func (m *Memory) Close() error { return nil }

var (
	bucket        = []byte("sgsim")
	keyTopology   = []byte("topology")
	keyGeneration = []byte("generation")
)

// Bolt is a Store in one bbolt file.
type Bolt struct {
	db   *bolt.DB
	path string

	encMu  sync.Mutex // one Commit encodes at a time into encBuf
	encBuf []byte
}

// OpenBolt opens (creating if needed) the bbolt file at path. It fails after a second instead of
// waiting forever when another process holds the file.
func OpenBolt(path string) (*Bolt, error) {
	if err := CheckFile(path); err != nil { // bbolt would misread, panic on or re-initialise a bad file
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return &Bolt{db: db, path: path}, nil
}

// Load implements Store.
func (b *Bolt) Load(ctx context.Context) (*model.State, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	var topo, genb []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucket)
		if bk == nil {
			return nil
		}
		// Copy: bbolt's slices are only valid inside the transaction.
		topo = append([]byte(nil), bk.Get(keyTopology)...)
		genb = append([]byte(nil), bk.Get(keyGeneration)...)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("store: read %s: %w", b.path, err)
	}
	if len(topo) == 0 {
		return nil, 0, nil
	}
	gen, err := strconv.ParseUint(string(genb), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("store: %s: bad generation %q: %w", b.path, genb, err)
	}
	s, err := model.ParseTopology(b.path, topo)
	if err != nil {
		return nil, 0, fmt.Errorf("store: %w", err)
	}
	return s, gen, nil
}

// Commit implements Store: one transaction, fsynced by bbolt before Update returns.
func (b *Bolt) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s == nil {
		return errors.New("store: commit of a nil state")
	}
	b.encMu.Lock()
	defer b.encMu.Unlock()
	data, err := appendTopology(b.encBuf, s)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	b.encBuf = data // bbolt copies it into its pages during the commit; free again after Update
	nonce, _ := ctx.Value(nonceKey{}).(*NonceUse)
	if nonce != nil && (nonce.In != b || nonce.recorded.Load()) {
		nonce = nil
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		if nonce != nil {
			fresh, err := useNonce(tx, nonce.Key, nonce.At, nonce.Window)
			if err != nil {
				return err
			}
			if !fresh {
				return fmt.Errorf("%w: %q", ErrNonceUsed, nonce.Key)
			}
		}
		bk, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		if err := bk.Put(keyTopology, data); err != nil {
			return err
		}
		return bk.Put(keyGeneration, []byte(strconv.FormatUint(gen, 10)))
	})
	if err != nil {
		return fmt.Errorf("store: commit generation %d to %s: %w", gen, b.path, err)
	}
	if nonce != nil {
		nonce.recorded.Store(true)
	}
	return nil
}

// NonceUse is a Nonce to record in the same transaction as the state change its call makes, so the
// replay guard costs the call no write of its own and becomes durable exactly when the change does.
type NonceUse struct {
	In     *Bolt  // the Nonce record it belongs in: only a Commit to that store records it
	Key    string // SecretId and Nonce
	At     time.Time
	Window time.Duration

	recorded atomic.Bool
}

// Recorded tells whether a Commit has recorded u.
func (u *NonceUse) Recorded() bool { return u.recorded.Load() }

type nonceKey struct{}

// WithNonce returns ctx carrying u: the first Commit to u.In made on it records u in the same transaction,
// and fails with ErrNonceUsed, committing nothing, if u's key was used within its window.
func WithNonce(ctx context.Context, u *NonceUse) context.Context {
	return context.WithValue(ctx, nonceKey{}, u)
}

// ErrNonceUsed is a Commit's error when its NonceUse was used before.
var ErrNonceUsed = errors.New("nonce already used")

// Close implements Store.
func (b *Bolt) Close() error { return b.db.Close() }

var (
	bucketNonces     = []byte("nonces")      // key → time used (Unix ns, decimal)
	bucketNonceTimes = []byte("nonce-times") // 8-byte big-endian Unix ns + key → nothing, oldest first
)

// UseNonce records key (a SecretId and Nonce) durably and reports whether it was unused within window
// of now. Expired entries are pruned oldest first through a time-ordered index, so the buckets hold
// about one window of traffic. It is the Tencent replay guard that survives a restart.
func (b *Bolt) UseNonce(ctx context.Context, key string, now time.Time, window time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	var fresh bool
	err := b.db.Update(func(tx *bolt.Tx) (err error) {
		fresh, err = useNonce(tx, key, now, window)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: record nonce in %s: %w", b.path, err)
	}
	return fresh, nil
}

// useNonce is UseNonce inside tx.
func useNonce(tx *bolt.Tx, key string, now time.Time, window time.Duration) (bool, error) {
	nk, err := tx.CreateBucketIfNotExists(bucketNonces)
	if err != nil {
		return false, err
	}
	tk, err := tx.CreateBucketIfNotExists(bucketNonceTimes)
	if err != nil {
		return false, err
	}
	cutoff := now.Add(-window).UnixNano()
	c := tk.Cursor()
	for k, _ := c.First(); len(k) >= 8 && int64(binary.BigEndian.Uint64(k)) < cutoff; k, _ = c.First() {
		// The key may have been used again since: only drop it when this index entry is its latest.
		if v := nk.Get(k[8:]); string(v) == strconv.FormatInt(int64(binary.BigEndian.Uint64(k)), 10) {
			if err := nk.Delete(k[8:]); err != nil {
				return false, err
			}
		}
		if err := c.Delete(); err != nil {
			return false, err
		}
	}
	if v := nk.Get([]byte(key)); v != nil {
		if t, err := strconv.ParseInt(string(v), 10, 64); err == nil && t >= cutoff {
			return false, nil
		}
	}
	ns := now.UnixNano()
	if err := nk.Put([]byte(key), []byte(strconv.FormatInt(ns, 10))); err != nil {
		return false, err
	}
	return true, tk.Put(append(binary.BigEndian.AppendUint64(nil, uint64(ns)), key...), []byte{1})
}

// RecentNonces returns every Nonce key recorded within window of now, with the time it was used: what a
// restarted daemon must refuse.
func (b *Bolt) RecentNonces(ctx context.Context, now time.Time, window time.Duration) (map[string]time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cutoff := now.Add(-window).UnixNano()
	out := map[string]time.Time{}
	err := b.db.View(func(tx *bolt.Tx) error {
		nk := tx.Bucket(bucketNonces)
		if nk == nil {
			return nil
		}
		return nk.ForEach(func(k, v []byte) error {
			if t, err := strconv.ParseInt(string(v), 10, 64); err == nil && t >= cutoff {
				out[string(k)] = time.Unix(0, t)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: read nonces in %s: %w", b.path, err)
	}
	return out, nil
}
