package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sgsim/sgsim/store/nonce"
)

// The replay record of a Bolt: nonce.Record in memory, made durable without an fsync of its own for
// any call that commits a change.
//
// Why the replay window survives a crash: UseNonce records a call's triple in memory before the call
// does anything, and every Commit writes all triples recorded so far in its own transaction. A change
// is acknowledged only after its Commit, so every acknowledged change's triple is on disk with the
// change, and a restarted daemon refuses it. Reads and refusals change nothing; their triples are
// written by the next Commit or by a batched flush at most NonceFlushDelay later (one fsync for all
// of them). A crash inside that delay forgets at most those last triples: a replay of such a call can
// again do what it did, answer a read or be refused, and still only within its Timestamp's window.
//
// On disk a triple is a 24-byte key (Timestamp biased to sort as unsigned, hashed SecretId, Nonce)
// with no value; the Timestamp first makes expiry a cursor walk from the start. Memory and disk hold
// at most nonce.Limits' Total triples, since only accepted triples are written and expired ones are
// pruned with every write (BenchmarkNonceDisk measures the file's bytes per triple).
var bucketNonces = []byte("nonces-v2")

// The buckets of the one-document layout's record, keyed without the Timestamp; dropped on open.
var legacyNonceBuckets = [][]byte{[]byte("nonces"), []byte("nonce-times")}

// NonceFlushDelay bounds how long the triple of a call that commits nothing stays in memory only.
const NonceFlushDelay = 100 * time.Millisecond

// UseNonce records k as used at now within window (nil when unused, nonce.ErrReplay, nonce.ErrFull).
// The first call loads the triples an earlier run recorded within window; later calls touch no disk
// (nor wait for anything: ctx is not consulted).
func (b *Bolt) UseNonce(_ context.Context, k nonce.Key, now time.Time, window time.Duration) error {
	rec, err := b.nonceRecord(now, window)
	if err != nil {
		return err
	}
	if err := rec.UseNonce(k, now, window); err != nil {
		return err
	}
	b.nmu.Lock()
	defer b.nmu.Unlock()
	if now.After(b.nonceNow) {
		b.nonceNow = now
	}
	if b.flushTimer == nil && !b.closed {
		b.flushTimer = time.AfterFunc(b.nonceFlushDelay, b.flushNonces)
	}
	return nil
}

// nonceRecord returns the record, loading it from the file on first use.
func (b *Bolt) nonceRecord(now time.Time, window time.Duration) (*nonce.Record, error) {
	b.nmu.Lock()
	defer b.nmu.Unlock()
	if b.nonces != nil {
		return b.nonces, nil
	}
	keys, err := b.durableNonces(now, window)
	if err != nil {
		return nil, err
	}
	b.nonces = nonce.NewDurable(b.nonceLimits)
	b.nonces.Load(keys)
	b.nonceWindow = window
	return b.nonces, nil
}

// DurableNonces returns the triples on disk that are not expired at now: what a restart would refuse.
func (b *Bolt) DurableNonces(ctx context.Context, now time.Time, window time.Duration) ([]nonce.Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return b.durableNonces(now, window)
}

func (b *Bolt) durableNonces(now time.Time, window time.Duration) ([]nonce.Key, error) {
	var out []nonce.Key
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketNonces)
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
		for k, _ := c.Seek(nonceDiskKey(nonce.Key{Timestamp: now.Unix() - int64(window/time.Second)})); k != nil; k, _ = c.Next() {
			if len(k) != 24 {
				return fmt.Errorf("bad nonce entry %x", k)
			}
			out = append(out, nonce.Key{Timestamp: int64(binary.BigEndian.Uint64(k) ^ 1<<63),
				Secret: binary.BigEndian.Uint64(k[8:]), Nonce: binary.BigEndian.Uint64(k[16:])})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: read nonces in %s: %w", b.path, err)
	}
	return out, nil
}

// flushNonces writes the pending triples in one transaction, when no Commit took them first. It holds
// b.mu, so a Commit never returns while triples it should have written are still in flight here.
func (b *Bolt) flushNonces() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nmu.Lock()
	b.flushTimer = nil
	b.nmu.Unlock()
	rec, now, window := b.nonceState()
	if rec == nil || !rec.HasPending() {
		return
	}
	keys := rec.TakePending()
	if err := b.db.Update(func(tx *bolt.Tx) error { return writeNonces(tx, keys, now, window) }); err != nil {
		rec.Requeue(keys)
		b.setHealth(fmt.Errorf("store: record nonces in %s: %w", b.path, err))
		b.nmu.Lock()
		if !b.closed && b.flushTimer == nil {
			b.flushTimer = time.AfterFunc(b.nonceFlushDelay, b.flushNonces)
		}
		b.nmu.Unlock()
		return
	}
	b.setHealth(nil)
}

// nonceState returns the record (nil before the first UseNonce) and the clock and window to prune by.
func (b *Bolt) nonceState() (*nonce.Record, time.Time, time.Duration) {
	b.nmu.Lock()
	defer b.nmu.Unlock()
	return b.nonces, b.nonceNow, b.nonceWindow
}

// writeNonces writes keys and prunes the triples expired at now.
func writeNonces(tx *bolt.Tx, keys []nonce.Key, now time.Time, window time.Duration) error {
	if len(keys) == 0 {
		return nil
	}
	bk, err := tx.CreateBucketIfNotExists(bucketNonces)
	if err != nil {
		return err
	}
	bk.FillPercent = 0.9 // keys arrive nearly in Timestamp order: full pages, not half-split ones
	cutoff := nonceDiskKey(nonce.Key{Timestamp: now.Unix() - int64(window/time.Second)})
	c := bk.Cursor()
	for k, _ := c.First(); k != nil && string(k) < string(cutoff); k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	for _, k := range keys {
		if err := bk.Put(nonceDiskKey(k), nil); err != nil {
			return err
		}
	}
	return nil
}

func nonceDiskKey(k nonce.Key) []byte {
	out := make([]byte, 0, 24)
	out = binary.BigEndian.AppendUint64(out, uint64(k.Timestamp)^1<<63)
	out = binary.BigEndian.AppendUint64(out, k.Secret)
	return binary.BigEndian.AppendUint64(out, k.Nonce)
}

// dropLegacyNonces deletes the one-document layout's Nonce record: its keys lack the Timestamp the
// record now keys on, so they cannot be carried over.
func dropLegacyNonces(tx *bolt.Tx) error {
	for _, name := range legacyNonceBuckets {
		if tx.Bucket(name) != nil {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
	}
	return nil
}
