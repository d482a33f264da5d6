package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/nonce"
)

// The bbolt layout (format 3; format 2 files, which have no buckets in history, are read as they are):
//
//	meta     format "3"; revision, first, oldest: 8-byte big-endian revisions; seq: the next creation sequence
//	objects  kind byte + id → 8-byte creation sequence + 8-byte revision of its current record
//	history  8-byte revision + kind byte + id → 'P' or 'D' (put, delete), 8-byte sequence, 8-byte revision
//	         of the key's previous record, then for a put the object's JSON; an entry of ownBucketEntry
//	         bytes or more is instead the only value (key entryKey) of a bucket of its own at that key
//
// A record is stored once, in history; objects points at the current one. Compaction keeps, for every
// key, its last record at or before the oldest revision still served, and everything after.
var (
	bucketMeta    = []byte("meta")
	bucketObjects = []byte("objects")
	bucketHistory = []byte("history")

	metaFormat   = []byte("format")
	metaRevision = []byte("revision")
	metaFirst    = []byte("first")
	metaOldest   = []byte("oldest")
	metaSeq      = []byte("seq")
	formatV2     = []byte("2") // every history entry a value of the history bucket; read as format 3
	formatV3     = []byte("3")

	// The layout before records: the whole state as one topology document.
	legacyBucket     = []byte("sgsim")
	legacyTopology   = []byte("topology")
	legacyGeneration = []byte("generation")
)

// Bolt is a Store in one bbolt file.
type Bolt struct {
	db      *bolt.DB
	path    string
	history uint64

	mu     sync.Mutex // serialises writes to the file (commits, Nonce flushes); guards the fields to errMu
	rs     RecordSet
	loaded bool // rs follows the file
	rev    uint64
	first  uint64 // the first revision ever committed
	oldest uint64 // the oldest revision LoadAt and Watch serve
	wake   chan struct{}

	errMu   sync.Mutex // guards lastErr alone, so Health never waits for a disk write
	lastErr error

	nmu         sync.Mutex    // guards the Nonce fields below; never held across a disk write
	nonces      *nonce.Record // nil until the first UseNonce
	nonceLimits nonce.Limits
	nonceWindow time.Duration
	nonceNow    time.Time // the latest clock reading UseNonce was given: expiry follows the caller's clock
	// nonceFlushDelay is NonceFlushDelay; tests stretch it to see what a call alone writes.
	nonceFlushDelay time.Duration
	flushTimer      *time.Timer
	closed          bool
}

// OpenBolt opens (creating if needed) the bbolt file at path, migrating a file of the one-document
// layout to records in place. It fails after a second instead of waiting forever when another process
// holds the file.
func OpenBolt(path string) (*Bolt, error) {
	if err := CheckFile(path); err != nil { // bbolt would misread, panic on or re-initialise a bad file
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	b := &Bolt{db: db, path: path, history: DefaultHistory, wake: make(chan struct{}), nonceLimits: nonce.DefaultLimits(), nonceFlushDelay: NonceFlushDelay}
	if err := b.open(); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return b, nil
}

// open migrates a legacy file and reads the meta bucket.
func (b *Bolt) open() error {
	var legacy, legacyNonces bool
	err := b.db.View(func(tx *bolt.Tx) error {
		lb := tx.Bucket(legacyBucket)
		legacy = tx.Bucket(bucketMeta) == nil && lb != nil && lb.Get(legacyTopology) != nil
		for _, name := range legacyNonceBuckets {
			legacyNonces = legacyNonces || tx.Bucket(name) != nil
		}
		return nil
	})
	if err != nil {
		return err
	}
	if legacy {
		if err := b.db.Update(b.migrate); err != nil {
			return fmt.Errorf("migrate to records: %w", err)
		}
	}
	if legacyNonces {
		if err := b.db.Update(dropLegacyNonces); err != nil {
			return fmt.Errorf("drop the old nonce record: %w", err)
		}
	}
	return b.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return nil
		}
		if f := m.Get(metaFormat); !bytes.Equal(f, formatV3) && !bytes.Equal(f, formatV2) {
			return fmt.Errorf("unknown store format %q", f)
		}
		b.rev, b.first, b.oldest = getUint(m, metaRevision), getUint(m, metaFirst), getUint(m, metaOldest)
		return nil
	})
}

// migrate rewrites the one-document layout (topology + generation) as records at that generation.
func (b *Bolt) migrate(tx *bolt.Tx) error {
	lb := tx.Bucket(legacyBucket)
	genb := lb.Get(legacyGeneration)
	gen, err := strconv.ParseUint(string(genb), 10, 64)
	if err != nil {
		return fmt.Errorf("bad generation %q: %w", genb, err)
	}
	// What an older build stored is restored, not admitted: its JSON came from encoding/json, and
	// checks added since for new ENIs would refuse what it accepted (model.RestoreState).
	var t model.Topology
	if err := json.Unmarshal(lb.Get(legacyTopology), &t); err != nil {
		return fmt.Errorf("%s: the stored topology: %w", b.path, err)
	}
	s, err := model.RestoreState(t)
	if err != nil {
		return fmt.Errorf("%s: %w", b.path, err)
	}
	var rs RecordSet
	d, err := rs.Diff(s, gen)
	if err != nil {
		return err
	}
	if err := writeRevision(tx, gen, d.Puts, nil, d.NextSeq, gen); err != nil {
		return err
	}
	return tx.DeleteBucket(legacyBucket)
}

// Load implements Store.
func (b *Bolt) Load(ctx context.Context) (*model.State, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.loaded && b.rs.Last() != nil {
		// This process holds the file's lock, so what it last committed or read is the file's state; the
		// same object keeps its objects shared with the states the caller derives from it.
		return b.rs.Last(), b.rev, nil
	}
	return b.load()
}

// load reads the current state and makes rs follow it. Caller holds b.mu.
func (b *Bolt) load() (*model.State, uint64, error) {
	var records []Record
	err := b.db.View(func(tx *bolt.Tx) error {
		objs, hist := tx.Bucket(bucketObjects), tx.Bucket(bucketHistory)
		if objs == nil || hist == nil {
			return nil
		}
		return objs.ForEach(func(k, v []byte) error {
			if len(v) != 16 || len(k) < 2 {
				return fmt.Errorf("bad object entry %q", k)
			}
			rev := binary.BigEndian.Uint64(v[8:])
			hk := historyKey(rev, k)
			r, deleted, _, err := decodeHistory(rev, k, historyEntry(hist, hk, hist.Get(hk)))
			if err != nil {
				return err
			}
			if deleted {
				return fmt.Errorf("%s: current record is a deletion", r.Key)
			}
			records = append(records, r)
			return nil
		})
	})
	if err != nil {
		return nil, 0, fmt.Errorf("store: read %s: %w", b.path, err)
	}
	if len(records) == 0 {
		b.rs, b.loaded = RecordSet{}, true
		return nil, 0, nil
	}
	s, err := stateOf(records)
	if err != nil {
		return nil, 0, fmt.Errorf("store: %s: %w", b.path, err)
	}
	b.rs = RecordSet{}
	b.rs.Reset(s, records, 0)
	b.loaded = true
	return s, b.rev, nil
}

// Commit implements Store: one transaction writing the changed records, fsynced by bbolt before Update
// returns.
func (b *Bolt) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if err := commitable(ctx, s); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.loaded {
		if _, _, err := b.load(); err != nil {
			return err
		}
	}
	if b.rev != 0 && gen <= b.rev {
		return fmt.Errorf("%w: revision %d, %s is at %d", ErrConflict, gen, b.path, b.rev)
	}
	d, err := b.rs.Diff(s, gen)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	first, oldest := b.first, b.oldest
	if first == 0 {
		first, oldest = gen, gen
	}
	if gen >= b.history && gen+1-b.history > oldest {
		oldest = gen + 1 - b.history
	}
	// Every Nonce used so far goes into this transaction: the call committing this change used its own
	// before, so it is durable exactly when the change is (see nonces.go).
	rec, nonceNow, window := b.nonceState()
	var keys []nonce.Key
	if rec != nil {
		keys = rec.TakePending()
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		if err := writeNonces(tx, keys, nonceNow, window); err != nil {
			return err
		}
		if err := writeRevision(tx, gen, d.Puts, d.Dels, d.NextSeq, first); err != nil {
			return err
		}
		return compact(tx, b.oldest, oldest)
	})
	if err != nil {
		if rec != nil {
			rec.Requeue(keys)
		}
		err = fmt.Errorf("store: commit generation %d to %s: %w", gen, b.path, err)
		b.setHealth(err)
		return err
	}
	b.rs.Advance(s, d)
	b.rev, b.first, b.oldest = gen, first, oldest
	b.setHealth(nil)
	close(b.wake)
	b.wake = make(chan struct{})
	return nil
}

// Health returns the error of the last commit, nil once one succeeds again: whether the store can
// currently commit, for a readiness check. It never touches the disk.
func (b *Bolt) Health() error {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	return b.lastErr
}

func (b *Bolt) setHealth(err error) {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	b.lastErr = err
}

// writeRevision writes the records of one revision and the meta bucket.
func writeRevision(tx *bolt.Tx, rev uint64, puts []Record, dels []Key, nextSeq, first uint64) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	objs, err := tx.CreateBucketIfNotExists(bucketObjects)
	if err != nil {
		return err
	}
	hist, err := tx.CreateBucketIfNotExists(bucketHistory)
	if err != nil {
		return err
	}
	for _, r := range puts {
		ok := objectKey(r.Key)
		prev := uint64(0)
		if v := objs.Get(ok); len(v) == 16 {
			prev = binary.BigEndian.Uint64(v[8:])
		}
		if err := putHistory(hist, historyKey(rev, ok), encodeHistory('P', r.Seq, prev, r.Value)); err != nil {
			return err
		}
		if err := objs.Put(ok, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, r.Seq), rev)); err != nil {
			return err
		}
	}
	for _, k := range dels {
		ok := objectKey(k)
		v := objs.Get(ok)
		if len(v) != 16 {
			return fmt.Errorf("delete %s: no such record", k)
		}
		if err := hist.Put(historyKey(rev, ok), encodeHistory('D', binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), nil)); err != nil {
			return err
		}
		if err := objs.Delete(ok); err != nil {
			return err
		}
	}
	for _, kv := range []struct {
		k []byte
		v uint64
	}{{metaRevision, rev}, {metaSeq, nextSeq}, {metaFirst, first}} {
		if err := meta.Put(kv.k, binary.BigEndian.AppendUint64(nil, kv.v)); err != nil {
			return err
		}
	}
	if meta.Get(metaOldest) == nil {
		if err := meta.Put(metaOldest, binary.BigEndian.AppendUint64(nil, rev)); err != nil {
			return err
		}
	}
	return meta.Put(metaFormat, formatV3)
}

// compact moves the oldest revision served from `from` to `to`: every record superseded at or before
// `to` is deleted, and so is every deletion at or before it. Each commit compacts about one revision.
func compact(tx *bolt.Tx, from, to uint64) error {
	if to <= from {
		return nil
	}
	hist, meta := tx.Bucket(bucketHistory), tx.Bucket(bucketMeta)
	var drop [][]byte
	c := hist.Cursor()
	for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, from+1)); len(k) > 8 && binary.BigEndian.Uint64(k) <= to; k, v = c.Next() {
		v = historyEntry(hist, k, v)
		if len(v) < 17 {
			return fmt.Errorf("bad history entry %x", k)
		}
		if prev := binary.BigEndian.Uint64(v[9:17]); prev != 0 {
			drop = append(drop, historyKey(prev, k[8:]))
		}
		if v[0] == 'D' {
			drop = append(drop, bytes.Clone(k))
		}
	}
	for _, k := range drop {
		if err := deleteHistory(hist, k); err != nil {
			return err
		}
	}
	return meta.Put(metaOldest, binary.BigEndian.AppendUint64(nil, to))
}

// LoadAt implements Store.
func (b *Bolt) LoadAt(ctx context.Context, rev uint64) (*model.State, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	first, oldest, cur := b.first, b.oldest, b.rev
	b.mu.Unlock()
	switch {
	case rev > cur:
		return nil, fmt.Errorf("store: %s: revision %d is ahead of the latest, %d", b.path, rev, cur)
	case rev < oldest || rev < first:
		return nil, fmt.Errorf("%w: %s keeps revisions %d to %d, not %d", ErrCompacted, b.path, oldest, cur, rev)
	}
	latest := map[string]Record{}
	err := b.db.View(func(tx *bolt.Tx) error {
		hist := tx.Bucket(bucketHistory)
		if hist == nil {
			return nil
		}
		c := hist.Cursor()
		for k, v := c.First(); len(k) > 8 && binary.BigEndian.Uint64(k) <= rev; k, v = c.Next() {
			r, deleted, _, err := decodeHistory(binary.BigEndian.Uint64(k), k[8:], historyEntry(hist, k, v))
			if err != nil {
				return err
			}
			if deleted {
				delete(latest, string(k[8:]))
			} else {
				latest[string(k[8:])] = r
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: read %s: %w", b.path, err)
	}
	records := make([]Record, 0, len(latest))
	for _, r := range latest {
		records = append(records, r)
	}
	s, err := stateOf(records)
	if err != nil {
		return nil, fmt.Errorf("store: %s at revision %d: %w", b.path, rev, err)
	}
	return s, nil
}

// Watch implements Store.
func (b *Bolt) Watch(ctx context.Context, from uint64, fn func(Change) error) error {
	return watch(ctx, from, fn, func(from uint64) ([]Change, <-chan struct{}, error) {
		b.mu.Lock()
		wake, first, oldest := b.wake, b.first, b.oldest
		b.mu.Unlock()
		if oldest > first && from < oldest {
			return nil, nil, fmt.Errorf("%w: %s keeps changes after revision %d, not after %d", ErrCompacted, b.path, oldest, from)
		}
		var out []Change
		err := b.db.View(func(tx *bolt.Tx) error {
			hist := tx.Bucket(bucketHistory)
			if hist == nil {
				return nil
			}
			c := hist.Cursor()
			for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, from+1)); len(k) > 8; k, v = c.Next() {
				rev := binary.BigEndian.Uint64(k)
				r, deleted, _, err := decodeHistory(rev, k[8:], historyEntry(hist, k, v))
				if err != nil {
					return err
				}
				if len(out) == 0 || out[len(out)-1].Revision != rev {
					out = append(out, Change{Revision: rev})
				}
				ch := &out[len(out)-1]
				if deleted {
					ch.Deletes = append(ch.Deletes, r.Key)
				} else {
					ch.Puts = append(ch.Puts, r)
				}
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("store: read %s: %w", b.path, err)
		}
		return out, wake, nil
	})
}

// Close implements Store: the pending Nonces are written first, so a clean stop forgets none.
func (b *Bolt) Close() error {
	b.nmu.Lock()
	b.closed = true
	if b.flushTimer != nil {
		b.flushTimer.Stop()
		b.flushTimer = nil
	}
	b.nmu.Unlock()
	b.flushNonces()
	if err := b.Health(); err != nil {
		return errors.Join(err, b.db.Close())
	}
	return b.db.Close()
}

func objectKey(k Key) []byte { return append([]byte{byte(k.Kind)}, k.ID...) }

func historyKey(rev uint64, objectKey []byte) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(objectKey)), rev), objectKey...)
}

// ownBucketEntry is the size from which a history entry is the one value of a bucket of its own (or a
// quarter of the page size, if that is more: bbolt keeps a bucket smaller than that inline in its
// parent's leaf). bbolt never splits a leaf of four entries or fewer, so the entries of a big record's
// successive revisions, side by side in key order, shared leaves, and each commit wrote the leaf's
// other copies of the record again with the new one (several times the record's size per commit for
// a 10k-rule SG). In a bucket of its own an entry is written once, when it is made.
const ownBucketEntry = 4096

// entryKey is the key of the entry in a bucket of its own.
var entryKey = []byte{0}

// putHistory stores entry at k in hist.
func putHistory(hist *bolt.Bucket, k, entry []byte) error {
	if len(entry) < max(ownBucketEntry, hist.Tx().DB().Info().PageSize/4) {
		return hist.Put(k, entry)
	}
	b, err := hist.CreateBucket(k)
	if err != nil {
		return err
	}
	return b.Put(entryKey, entry)
}

// historyEntry returns the entry at k of hist, given v, what Get or a cursor found there: v itself, or,
// for a bucket of its own (where they find nil), the bucket's entry.
func historyEntry(hist *bolt.Bucket, k, v []byte) []byte {
	if v != nil {
		return v
	}
	if b := hist.Bucket(k); b != nil {
		return b.Get(entryKey)
	}
	return nil
}

// deleteHistory removes the entry at k of hist, a value or a bucket of its own.
func deleteHistory(hist *bolt.Bucket, k []byte) error {
	if hist.Bucket(k) != nil {
		return hist.DeleteBucket(k)
	}
	return hist.Delete(k)
}

func encodeHistory(tag byte, seq, prev uint64, value []byte) []byte {
	out := make([]byte, 0, 17+len(value))
	out = append(out, tag)
	out = binary.BigEndian.AppendUint64(out, seq)
	out = binary.BigEndian.AppendUint64(out, prev)
	return append(out, value...)
}

// decodeHistory parses the history entry of objectKey at rev; the Record's Value is a copy.
func decodeHistory(rev uint64, objectKey, v []byte) (r Record, deleted bool, prev uint64, err error) {
	r.Key = Key{Kind: Kind(objectKey[0]), ID: string(objectKey[1:])}
	if len(v) < 17 || (v[0] != 'P' && v[0] != 'D') {
		return r, false, 0, fmt.Errorf("%s: bad history entry at revision %d", r.Key, rev)
	}
	r.Seq, r.Revision = binary.BigEndian.Uint64(v[1:9]), rev
	r.Value = bytes.Clone(v[17:])
	return r, v[0] == 'D', binary.BigEndian.Uint64(v[9:17]), nil
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}
