package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

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
