// Package nonce is the Tencent replay record of SPEC §4: which (SecretId, Timestamp, Nonce) triples were
// used within the replay window. It lives in memory, bounded per SecretId and in total; a durable store
// (store.Bolt) persists what it hands out as pending.
package nonce

import (
	"errors"
	"hash/fnv"
	"strconv"
	"sync"
	"time"
)

// Key is one used triple in 24 bytes. The SecretId is hashed (64-bit FNV-1a: SecretIds are the
// operator's, not an attacker's, so collisions are not forced), the Nonce is SPEC §4's positive decimal
// ≤ 2^63−1 (see Number for anything else).
type Key struct {
	Secret    uint64
	Timestamp int64
	Nonce     uint64
}

// KeyOf returns the Key of a call's SecretId, Timestamp and Nonce (see Number).
func KeyOf(secretID string, timestamp int64, nonce string) Key {
	return Key{Secret: hash(secretID), Timestamp: timestamp, Nonce: Number(nonce)}
}

// Number is nonce as a number: its value when it is a decimal ≤ 2^63−1, otherwise a 64-bit hash of it
// with the top bit set, so it cannot collide with a decimal Nonce.
func Number(nonce string) uint64 {
	if v, err := strconv.ParseUint(nonce, 10, 63); err == nil {
		return v
	}
	return hash(nonce) | 1<<63
}

func hash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// Expired tells whether k can no longer be replayed at now: its Timestamp is more than window old, so
// the Timestamp check refuses it before the Nonce is looked at. A key needs keeping only until then.
func (k Key) Expired(now time.Time, window time.Duration) bool {
	return now.Unix()-k.Timestamp > int64(window/time.Second)
}

// Limits bound the record. At a bound a new triple is refused (ErrFull), never an old one forgotten,
// so replay protection holds under a flood; the flood's own SecretId is refused first.
type Limits struct {
	PerSecret int // triples live at once per SecretId
	Total     int // triples live at once over all SecretIds
}

// DefaultLimits allow a SecretId 36 calls a second sustained over a two-hour window and the record about
// 1M triples: BenchmarkRecordMemory measures the memory that takes.
func DefaultLimits() Limits { return Limits{PerSecret: 1 << 18, Total: 1 << 20} }

var (
	// ErrReplay is Use's error for a triple already used within the window.
	ErrReplay = errors.New("nonce already used")
	// ErrFull is Use's error when a bound of Limits is reached; nothing was recorded.
	ErrFull = errors.New("too many calls within the replay window")
)

// Record is the in-memory replay record; safe for concurrent use.
type Record struct {
	mu        sync.Mutex
	lim       Limits
	seen      map[Key]struct{}
	perSecret map[uint64]int
	durable   bool
	pending   []Key // used, not yet handed to a durable store (durable only)
	window    time.Duration
	pruned    time.Time
}

// New returns an empty in-memory record bounded by lim.
func New(lim Limits) *Record {
	return &Record{lim: lim, seen: map[Key]struct{}{}, perSecret: map[uint64]int{}}
}

// NewDurable returns an empty record that also keeps every key it accepts as pending until a durable
// store takes it (TakePending).
func NewDurable(lim Limits) *Record {
	r := New(lim)
	r.durable = true
	return r
}

// UseNonce records k as used at now and returns nil when it was unused, ErrReplay when it was used and
// not expired (window), ErrFull at a bound. It never blocks on I/O.
func (r *Record) UseNonce(k Key, now time.Time, window time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.window = window
	if now.Sub(r.pruned) > window/64 {
		r.prune(now)
	}
	if _, ok := r.seen[k]; ok && !k.Expired(now, window) {
		return ErrReplay
	}
	if r.perSecret[k.Secret] >= r.lim.PerSecret || len(r.seen) >= r.lim.Total {
		// Expired keys may be what fills it; look again at most once a second.
		if now.Sub(r.pruned) > time.Second {
			r.prune(now)
		}
		if r.perSecret[k.Secret] >= r.lim.PerSecret || len(r.seen) >= r.lim.Total {
			return ErrFull
		}
	}
	r.add(k)
	if r.durable {
		r.pending = append(r.pending, k)
	}
	return nil
}

func (r *Record) add(k Key) {
	if _, ok := r.seen[k]; !ok {
		r.seen[k] = struct{}{}
		r.perSecret[k.Secret]++
	}
}

// prune forgets the expired keys. Caller holds r.mu.
func (r *Record) prune(now time.Time) {
	for k := range r.seen {
		if k.Expired(now, r.window) {
			delete(r.seen, k)
			if r.perSecret[k.Secret]--; r.perSecret[k.Secret] <= 0 {
				delete(r.perSecret, k.Secret)
			}
		}
	}
	r.pruned = now
}

// Load adds keys an earlier run recorded durably, bounds aside (they were within them when used).
func (r *Record) Load(keys []Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		r.add(k)
	}
}

// Len returns how many keys the record holds.
func (r *Record) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// TakePending returns the keys used since the last TakePending, for a durable store to write.
func (r *Record) TakePending() []Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pending
	r.pending = nil
	return p
}

// Requeue hands keys back after a durable write of them failed.
func (r *Record) Requeue(keys []Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = append(keys, r.pending...)
}

// HasPending tells whether keys wait for a durable write.
func (r *Record) HasPending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending) > 0
}
