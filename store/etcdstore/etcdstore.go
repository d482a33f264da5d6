// Package etcdstore is the record store of fleet mode (SPEC §9) in etcd: store.Store with one key per
// object and the derived indexes an agent needs, every commit one etcd transaction guarded by what it
// was derived from; plus the Nonce record of §4 shared by every replica and the fleet's bookkeeping
// (host leases, per-host change feeds and acknowledgements).
//
// Key layout under prefix P:
//
//	P/objects/{account|sg|eni}/{id}  {"seq":N,"object":<model JSON>}   one key per object
//	P/objects/admin/adminTokens      the topology's admin tokens (SPEC §8), the same envelope
//	P/index/members/{sgId}           [{"id","appId","ips"},…] the SG's members by ID with their addresses
//	                                 (written when one joins, leaves or is re-addressed): what another
//	                                 host's sgId rules need, in one key per SG instead of every record
//	P/index/host/{host}              ["eni-1",…] sorted ENI IDs whose host is host (written when it changes)
//	P/objects/generation             {"nextSeq":N,"hosts":[…],"commit":ID}: rewritten by every commit;
//	                                 its ModRevision is the store's revision, its value the hosts that
//	                                 commit affected (so its history answers "where is change R?") and
//	                                 the commit's random ID (settle; a fence rewrites it naming no host);
//	                                 under objects/ so one watch sees records and commits in order
//	P/feed/{host}                    "" rewritten in the commit of every change that affects host (or
//	                                 right after it, for the hosts beyond its transaction's room)
//	P/feedq/{base}                   ["h1",…] an intent: the feeds a commit owes, written in its
//	                                 transaction when they do not all fit there (base: the revision it
//	                                 was guarded on); split by its first payer into the first batch's
//	                                 feeds and P/feedq/{base}/{i}, one intent per later batch, each
//	                                 deleted in the transaction that writes its feeds (feeds.go)
//	P/acks/{host}                    decimal revision the host has in force (one key per host, overwritten)
//	P/hosts/{host}                   "" under the host's lease (TTL HostTTL)
//	P/nonces/{secret}/{ts}/{nonce}   "" under a lease that ends when the Timestamp leaves the window
//
// Revisions: the store's generation is etcd's revision of the transaction that committed the state
// (the ModRevision of P/objects/generation), so Load, Watch, LoadAt and SPEC §9's enforcement.revision speak
// the same number. Commit's generation argument is only checked to be above the revision this Store
// last saw, as bbolt checks it; the revision assigned is etcd's (CommitAffecting returns it).
//
// Guard: a commit compares P/objects/generation's ModRevision with the one of the state it was derived from.
// An API call reads more than the records it writes (references, quotas, IP uniqueness), so guarding
// only the written records would let two calls each pass on a state the other made invalid; one
// compare on the generation is the whole read set, in one operation.
//
// etcd's limits (defaults --max-txn-ops 128, --max-request-bytes 1.5 MiB): a commit is one operation
// per changed object, per changed index key (an SG's member list is one key, a host's ENI list one
// key), one for the generation and one per affected host's feed. A 100-ENI
// ModifySecurityGroupsOfNetworkInterface onto up to 5 SGs on 10 hosts is 100 + ≤10 + ≤10 + 1 + 10 ops
// (tested against an embedded etcd with the default limits). Bytes are counted too: a change above
// --max-request-bytes is refused with ErrTooLarge naming its size, or the object too big for any
// request. Feeds that do not fit in the commit's transaction are written right after it, before
// Commit returns: the commit's transaction holds one intent naming them (one operation, so any change
// that fits can owe the feeds of any fleet up to about MaxTxnOps² hosts), which is split into a first
// batch and an intent per later batch, those paid in concurrent transactions of at most MaxTxnOps-1
// feeds. A 100-ENI change spread over 100 hosts is 104 operations besides its feeds, then 23 feeds and
// the intent owing the other 77 (tested too). A change whose feeds fit writes no intent. A commit whose records and indexes
// alone exceed a limit is refused before anything is written, except the first commit of an empty
// store (seeding a topology): it is written in transactions within both limits, guarded on the
// generation's absence, the generation last, so Load and Watch see it only once complete, as one change.
//
// A writer that stops between its commit and those later transactions (killed, cut off from etcd)
// leaves its intents behind: every replica's RepairFeeds splits or pays them, each step guarded on the
// intent's revision so that the writer and any number of repairs write each feed once (feeds.go). A committed change therefore reaches every affected host, late by a grace period
// at worst, and a change whose feeds fit in its transaction pays nothing for it.
package etcdstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/nonce"
)

// DefaultMaxTxnOps is etcd's default --max-txn-ops.
const DefaultMaxTxnOps = 128

// DefaultMaxRequestBytes is etcd's default --max-request-bytes.
const DefaultMaxRequestBytes = 1536 * 1024

// opOverhead bounds what one operation adds to a request besides its key and value (protobuf framing),
// and requestSlack what a transaction adds besides the operations counted (the compare).
const (
	opOverhead   = 16
	requestSlack = 16 * 1024
)

var (
	// ErrTooLarge is Commit's error when a change needs more operations than one transaction allows.
	ErrTooLarge = errors.New("etcdstore: change too large for one etcd transaction")
	// ErrFeedIncomplete is returned, with the revision, when a commit succeeded but the feeds of some
	// affected hosts could not be written after it: the change is durable, those hosts do not know yet
	// (their intents stay in etcd, and a repair writes them).
	ErrFeedIncomplete = errors.New("etcdstore: committed, but not every affected host was notified")
)

// Option changes how Open sets up a Store.
type Option func(*Store)

// WithMaxTxnOps sets the cluster's --max-txn-ops when it is not etcd's default.
func WithMaxTxnOps(n int) Option { return func(s *Store) { s.maxOps = n } }

// WithMaxRequestBytes sets the cluster's --max-request-bytes when it is not etcd's default.
func WithMaxRequestBytes(n int) Option { return func(s *Store) { s.maxBytes = n } }

// WithLogger sets the logger (slog.Default otherwise).
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// WithNonceLimits bounds this Store's share of the Nonce record (nonce.DefaultLimits otherwise).
func WithNonceLimits(l nonce.Limits) Option { return func(s *Store) { s.nonces = nonce.New(l) } }

// Store is a store.Store in etcd. Safe for concurrent use; many Stores (replicas) may share a prefix.
type Store struct {
	cli      *clientv3.Client
	prefix   string
	maxOps   int
	maxBytes int
	log      *slog.Logger

	mu     sync.Mutex // serialises commits; guards rs, loaded, base
	rs     records
	loaded bool
	base   int64 // ModRevision of the generation key for the state rs follows; 0 when none

	nonceMu sync.Mutex
	nonces  *nonce.Record
	leases  map[int64]clientv3.LeaseID // nonce lease by expiry bucket

	payingMu sync.Mutex
	paying   map[string]bool // keys of the intents this Store's commit in progress pays itself
}

// Open returns a Store on cli under prefix (e.g. "/sgsim"), after checking that etcd answers.
func Open(ctx context.Context, cli *clientv3.Client, prefix string, opts ...Option) (*Store, error) {
	if cli == nil {
		return nil, errors.New("etcdstore: nil client")
	}
	if !strings.HasPrefix(prefix, "/") || strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("etcdstore: prefix %q must start with / and not end with one", prefix)
	}
	s := &Store{cli: cli, prefix: prefix, maxOps: DefaultMaxTxnOps, maxBytes: DefaultMaxRequestBytes, log: slog.Default(),
		leases: map[int64]clientv3.LeaseID{}, paying: map[string]bool{}}
	for _, o := range opts {
		o(s)
	}
	if s.nonces == nil {
		s.nonces = nonce.New(nonce.DefaultLimits())
	}
	if s.maxOps < 8 || s.maxBytes < 64*1024 {
		return nil, fmt.Errorf("etcdstore: etcd limits of %d operations and %d bytes per request are too small", s.maxOps, s.maxBytes)
	}
	if err := s.reach(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// reachTry bounds one attempt of reach; between attempts it logs why etcd did not answer, so a start
// that waits for etcd says so instead of hanging silently.
const reachTry = 5 * time.Second

// reach waits until etcd answers a read (an etcd that starts after the daemon is waited for), until
// ctx ends.
func (s *Store) reach(ctx context.Context) error {
	for {
		tctx, cancel := context.WithTimeout(ctx, reachTry)
		_, err := s.cli.Get(tctx, s.genKey())
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("etcdstore: reach etcd %v: %w", s.cli.Endpoints(), errors.Join(err, ctx.Err()))
		}
		s.log.Warn("etcd does not answer yet; trying again", "endpoints", s.cli.Endpoints(), "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

var kindSegments = map[store.Kind]string{store.KindAccount: "account", store.KindSG: "sg", store.KindENI: "eni", store.KindAdmin: "admin"}

func (s *Store) objectsPrefix() string { return s.prefix + "/objects/" }
func (s *Store) genKey() string        { return s.objectsPrefix() + "generation" }
func (s *Store) objectKey(k store.Key) string {
	return s.objectsPrefix() + kindSegments[k.Kind] + "/" + k.ID
}
func (s *Store) membersKey(sg string) string { return s.prefix + "/index/members/" + sg }
func (s *Store) hostIndexKey(h string) string {
	return s.prefix + "/index/host/" + h
}
func (s *Store) feedKey(h string) string { return s.prefix + "/feed/" + h }
func (s *Store) ackKey(h string) string  { return s.prefix + "/acks/" + h }
func (s *Store) hostKey(h string) string { return s.prefix + "/hosts/" + h }

// parseObjectKey returns the Key of an object's etcd key.
func (s *Store) parseObjectKey(key []byte) (store.Key, error) {
	rest, ok := strings.CutPrefix(string(key), s.objectsPrefix())
	seg, id, ok2 := strings.Cut(rest, "/")
	if ok && ok2 && id != "" {
		for k, name := range kindSegments {
			if name == seg {
				return store.Key{Kind: k, ID: id}, nil
			}
		}
	}
	return store.Key{}, fmt.Errorf("etcdstore: unexpected key %q", key)
}

// envelope is an object's value: its creation sequence and its JSON.
type envelope struct {
	Seq    uint64          `json:"seq"`
	Object json.RawMessage `json:"object"`
}

func encodeEnvelope(r store.Record) string {
	var b strings.Builder
	b.Grow(len(r.Value) + 32)
	b.WriteString(`{"seq":`)
	b.WriteString(strconv.FormatUint(r.Seq, 10))
	b.WriteString(`,"object":`)
	b.Write(r.Value)
	b.WriteByte('}')
	return b.String()
}

func (s *Store) decodeRecord(kv *mvccpb.KeyValue) (store.Record, error) {
	k, err := s.parseObjectKey(kv.Key)
	if err != nil {
		return store.Record{}, err
	}
	var e envelope
	if err := json.Unmarshal(kv.Value, &e); err != nil {
		return store.Record{}, fmt.Errorf("etcdstore: %s at revision %d: %w", k, kv.ModRevision, err)
	}
	if e.Object == nil {
		return store.Record{}, fmt.Errorf("etcdstore: %s at revision %d: no object in %.64q", k, kv.ModRevision, kv.Value)
	}
	return store.Record{Key: k, Seq: e.Seq, Revision: uint64(kv.ModRevision), Value: e.Object}, nil
}

// generation is the generation key's value.
type generation struct {
	NextSeq uint64   `json:"nextSeq"`
	Hosts   []string `json:"hosts"`
	// Commit names the commit that wrote it (random), so that a writer whose transaction's answer
	// was lost can tell whether the transaction applied (settle).
	Commit string `json:"commit,omitempty"`
}

// stateOf builds the state of an object listing read at revision rev (nil with no objects).
func (s *Store) stateOf(kvs []*mvccpb.KeyValue, rev int64) (*model.State, []store.Record, error) {
	recs := make([]store.Record, 0, len(kvs))
	for _, kv := range kvs {
		if string(kv.Key) == s.genKey() {
			continue
		}
		r, err := s.decodeRecord(kv)
		if err != nil {
			return nil, nil, err
		}
		recs = append(recs, r)
	}
	if len(recs) == 0 {
		return nil, nil, nil
	}
	st, err := store.Change{Revision: uint64(rev), Puts: recs}.Apply(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("etcdstore: %s: %w", s.prefix, err)
	}
	return st, recs, nil
}

// Load implements store.Store: the objects and the generation in one read.
func (s *Store) Load(ctx context.Context) (*model.State, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load(ctx)
}

// load reads the current state and makes rs follow it. Caller holds s.mu.
func (s *Store) load(ctx context.Context) (*model.State, uint64, error) {
	resp, err := s.cli.Get(ctx, s.objectsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcdstore: load %s: %w", s.prefix, err)
	}
	var g generation
	var base int64
	for _, kv := range resp.Kvs {
		if string(kv.Key) == s.genKey() {
			if err := json.Unmarshal(kv.Value, &g); err != nil {
				return nil, 0, fmt.Errorf("etcdstore: %s: %w", s.genKey(), err)
			}
			base = kv.ModRevision
		}
	}
	var st *model.State
	var recs []store.Record
	if base != 0 { // without a generation, objects are an unfinished seed: the store is empty
		if st, recs, err = s.stateOf(resp.Kvs, resp.Header.Revision); err != nil {
			return nil, 0, err
		}
	}
	s.rs = records{}
	s.rs.reset(st, recs, g.NextSeq)
	s.base, s.loaded = base, true
	return st, uint64(base), nil
}

// Latest returns the generation of the newest committed state (0 when the store holds none), in one
// linearizable read of the generation key: whether a state a replica holds is still the newest.
func (s *Store) Latest(ctx context.Context) (uint64, error) {
	resp, err := s.cli.Get(ctx, s.genKey())
	if err != nil {
		return 0, fmt.Errorf("etcdstore: read %s: %w", s.genKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return uint64(resp.Kvs[0].ModRevision), nil
}

// Commit implements store.Store. It notifies every host that holds an ENI before or after the change:
// correct for any change, but a fleet replica should say which hosts it affects (CommitAffecting).
// A commit whose feeds could not all be written is still durable and returns nil (the failure is
// logged): an error would tell the caller it was not made.
func (s *Store) Commit(ctx context.Context, next *model.State, gen uint64) error {
	_, err := s.CommitAffecting(ctx, next, gen, nil)
	if errors.Is(err, ErrFeedIncomplete) {
		return nil
	}
	return err
}

// CommitAffecting commits next as Commit does and writes the feed of each of hosts (nil: every host
// holding an ENI before or after) in the same transaction, returning the revision assigned. The caller
// computes hosts from compiler.Affected and the ENIs' Host fields of both states.
func (s *Store) CommitAffecting(ctx context.Context, next *model.State, gen uint64, hosts []string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if next == nil {
		return 0, errors.New("etcdstore: commit of a nil state")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loaded {
		if _, _, err := s.load(ctx); err != nil {
			return 0, err
		}
	}
	if s.base != 0 && gen <= uint64(s.base) {
		return 0, fmt.Errorf("%w: revision %d, %s is at %d", store.ErrConflict, gen, s.prefix, s.base)
	}
	d, err := s.rs.diff(next)
	if err != nil {
		return 0, fmt.Errorf("etcdstore: %w", err)
	}
	if hosts == nil {
		hosts = slices.Concat(sortedKeys(s.rs.hosts), sortedKeys(d.allHosts))
	}
	hosts = slices.DeleteFunc(slices.Compact(slices.Sorted(slices.Values(hosts))), func(h string) bool { return h == "" })
	token := newCommitToken()
	ops, sizes := s.commitOps(d, hosts, token)
	if err := s.fitsOneRequest(d, sizes); err != nil {
		return 0, err
	}
	total := requestSlack
	for _, n := range sizes {
		total += n
	}
	if (len(ops) > s.maxOps || total > s.maxBytes) && s.base == 0 {
		return s.seed(ctx, next, d, ops, sizes, hosts)
	}
	if len(ops) > s.maxOps {
		return 0, fmt.Errorf("%w: %d objects, %d member lists and %d host lists changed: %d operations, etcd allows %d",
			ErrTooLarge, len(d.Puts)+len(d.Dels), len(d.members), len(d.hosts), len(ops), s.maxOps)
	}
	if total > s.maxBytes {
		return 0, fmt.Errorf("%w: %d objects changed, %d bytes, etcd allows %d per request", ErrTooLarge, len(d.Puts)+len(d.Dels), total, s.maxBytes)
	}
	plan, err := s.planFeeds(hosts, len(ops), total, s.base)
	if err != nil && s.base == 0 {
		// A first state that fits one transaction but for its feeds' intent is seeded as a bigger one.
		return s.seed(ctx, next, d, ops, sizes, hosts)
	}
	if err != nil {
		return 0, err
	}
	ops = append(ops, plan.ops...)
	s.markPaying(plan.owed, true)
	defer s.markPaying(plan.owed, false)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.genKey()), "=", s.base)).Then(ops...).Commit()
	var rev int64
	switch {
	case err != nil:
		// The answer is lost, not necessarily the transaction: find out which, so that a commit that
		// applied is not answered as an error (SPEC §6) nor one that did not as a success.
		landed, serr := s.settle(ctx, token)
		if serr != nil || landed == 0 {
			s.loaded = false
			return 0, errors.Join(fmt.Errorf("etcdstore: commit to %s (%d operations): %w", s.prefix, len(ops), err), serr)
		}
		rev = landed
	case !resp.Succeeded:
		s.loaded = false
		return 0, fmt.Errorf("%w: %s moved past revision %d", store.ErrConflict, s.prefix, s.base)
	default:
		rev = resp.Header.Revision
	}
	s.rs.advance(next, d)
	s.base = rev
	return uint64(rev), s.payOwed(ctx, rev, plan.owed)
}

// settleTimeout bounds settle, whose etcd calls run whatever the call's context (often the one that
// ran out); settleRetry is its pause between rounds while etcd does not answer.
const (
	settleTimeout = 10 * time.Second
	settleRetry   = 100 * time.Millisecond
)

// settle tells, after a commit whose answer was lost, whether the transaction with token applied: the
// revision it applied at, or 0 when it did not and never will. Its outcome is made certain: while the
// generation is still at the base, a fence (the same generation rewritten, naming no host, guarded on
// the base as the commit was) moves it on, so the lost transaction, if still on its way, can no longer
// apply. Once the generation has moved, the first write after the base is the commit's own (it was
// guarded on the base) or another writer's, in which case ErrConflict. It keeps asking while etcd does
// not answer, up to settleTimeout, and then says the outcome is unknown. Caller holds s.mu.
func (s *Store) settle(ctx context.Context, token string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	var last error
	for {
		rev, done, err := s.settleOnce(ctx, token)
		if done {
			return rev, err
		}
		last = err
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("etcdstore: whether the commit applied is unknown: %w", errors.Join(last, ctx.Err()))
		case <-time.After(settleRetry):
		}
	}
}

// settleOnce is one round of settle: done with the outcome, or an error of etcd to try again on.
func (s *Store) settleOnce(ctx context.Context, token string) (rev int64, done bool, err error) {
	resp, err := s.cli.Get(ctx, s.genKey())
	if err != nil {
		return 0, false, err
	}
	var g generation
	var at int64
	if len(resp.Kvs) > 0 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &g); err != nil {
			return 0, true, fmt.Errorf("etcdstore: %s: %w", s.genKey(), err)
		}
		at = resp.Kvs[0].ModRevision
	}
	switch {
	case at != s.base && g.Commit == token:
		return at, true, nil
	case at != s.base && g.Commit == fenceOf(token):
		return 0, true, nil // a round before fenced it, and lost the fence's answer
	case at == 0:
		// A first commit: a fence would make a generation with no objects. A restart reloads.
		return 0, true, errors.New("etcdstore: whether the first commit applied is unknown")
	case at != s.base:
		first, rev, err := s.firstAfterBase(ctx)
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			return 0, true, fmt.Errorf("etcdstore: whether the commit applied is unknown: %w", err)
		case err != nil:
			return 0, false, err
		case first == token:
			return rev, true, nil // applied, and another writer's commit followed it
		case first == fenceOf(token):
			return 0, true, nil // fenced (the fence's answer lost), then another writer committed
		}
		return 0, true, fmt.Errorf("%w: %s moved past revision %d", store.ErrConflict, s.prefix, s.base)
	}
	fence, _ := json.Marshal(generation{NextSeq: g.NextSeq, Commit: fenceOf(token)})
	fresp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.genKey()), "=", s.base)).
		Then(clientv3.OpPut(s.genKey(), string(fence))).Commit()
	switch {
	case err != nil:
		return 0, false, err
	case fresp.Succeeded:
		return 0, true, nil // fenced: the lost transaction cannot apply now
	}
	return 0, false, errors.New("the generation moved during the fence") // read it again
}

// firstAfterBase returns the commit ID and revision of the first write of the generation after the
// base, from etcd's history (a watch from the revision after it).
func (s *Store) firstAfterBase(ctx context.Context) (string, int64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range s.cli.Watch(wctx, s.genKey(), clientv3.WithRev(s.base+1)) {
		if err := wr.Err(); err != nil {
			return "", 0, fmt.Errorf("etcdstore: the history of %s after revision %d: %w", s.genKey(), s.base, err)
		}
		for _, ev := range wr.Events {
			if ev.Kv == nil || ev.Type != clientv3.EventTypePut {
				return "", 0, nil // deleted (a seed starting over): no commit of this writer's
			}
			var g generation
			if err := json.Unmarshal(ev.Kv.Value, &g); err != nil {
				return "", 0, fmt.Errorf("etcdstore: %s at revision %d: %w", s.genKey(), ev.Kv.ModRevision, err)
			}
			return g.Commit, ev.Kv.ModRevision, nil
		}
	}
	return "", 0, fmt.Errorf("etcdstore: the history of %s after revision %d: %w", s.genKey(), s.base, ctx.Err())
}

// fenceOf is the commit ID of the fence settle writes for the commit token.
func fenceOf(token string) string { return "fence:" + token }

// newCommitToken names one commit.
func newCommitToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand's Read does not fail
	return hex.EncodeToString(b[:])
}

// seed writes the first state of an empty store when it needs more than one transaction: first any
// unfinished seed is cleared, then the objects and indexes in batches, then the generation, each
// guarded on the generation's absence (another replica seeding first is ErrConflict). Caller holds s.mu.
func (s *Store) seed(ctx context.Context, next *model.State, d delta, ops []clientv3.Op, sizes []int, hosts []string) (uint64, error) {
	absent := clientv3.Compare(clientv3.CreateRevision(s.genKey()), "=", 0)
	body, gen := ops[:len(ops)-1], ops[len(ops)-1]
	batches := [][]clientv3.Op{{clientv3.OpDelete(s.objectsPrefix(), clientv3.WithPrefix())}}
	for start, bytes := 0, requestSlack; start < len(body); {
		// Each batch within both limits; fitsOneRequest checked that every operation fits alone.
		end := start
		for end < len(body) && end-start < s.maxOps && bytes+sizes[end] <= s.maxBytes {
			bytes += sizes[end]
			end++
		}
		batches = append(batches, body[start:end])
		start, bytes = end, requestSlack
	}
	plan, err := s.planFeeds(hosts, 1, requestSlack+sizes[len(sizes)-1], 0)
	if err != nil {
		return 0, err
	}
	batches = append(batches, append([]clientv3.Op{gen}, plan.ops...))
	s.markPaying(plan.owed, true)
	defer s.markPaying(plan.owed, false)
	var rev int64
	for i, b := range batches {
		resp, err := s.cli.Txn(ctx).If(absent).Then(b...).Commit()
		if err != nil {
			s.loaded = false
			return 0, fmt.Errorf("etcdstore: seed %s (transaction %d of %d): %w", s.prefix, i+1, len(batches), err)
		}
		if !resp.Succeeded {
			s.loaded = false
			return 0, fmt.Errorf("%w: %s was seeded by another writer", store.ErrConflict, s.prefix)
		}
		rev = resp.Header.Revision
	}
	s.rs.advance(next, d)
	s.base = rev
	return uint64(rev), s.payOwed(ctx, rev, plan.owed)
}

// fitsOneRequest refuses a change with an object too big for any etcd request, naming it.
func (s *Store) fitsOneRequest(d delta, sizes []int) error {
	for i, r := range d.Puts {
		if requestSlack+sizes[i] > s.maxBytes {
			return fmt.Errorf("%w: %s is %d bytes, etcd allows %d per request", ErrTooLarge, r.Key, len(r.Value), s.maxBytes)
		}
	}
	return nil
}

// commitOps returns a commit's operations but its feeds, the puts first (in d.Puts' order), with the
// bytes each adds to a request.
func (s *Store) commitOps(d delta, hosts []string, token string) ([]clientv3.Op, []int) {
	n := len(d.Puts) + len(d.Dels) + len(d.members) + len(d.hosts) + 1
	ops, sizes := make([]clientv3.Op, 0, n+len(hosts)), make([]int, 0, n)
	add := func(key, value string, del bool) {
		if del {
			ops = append(ops, clientv3.OpDelete(key))
		} else {
			ops = append(ops, clientv3.OpPut(key, value))
		}
		sizes = append(sizes, len(key)+len(value)+opOverhead)
	}
	for _, r := range d.Puts {
		add(s.objectKey(r.Key), encodeEnvelope(r), false)
	}
	for _, k := range d.Dels {
		add(s.objectKey(k), "", true)
	}
	index := func(key string, list any, gone bool) {
		b, _ := json.Marshal(list) // member and ID lists always encode
		add(key, string(b), gone)
	}
	for _, sg := range sortedKeys(d.members) {
		index(s.membersKey(sg), d.members[sg], d.members[sg] == nil)
	}
	for _, h := range sortedKeys(d.hosts) {
		index(s.hostIndexKey(h), d.hosts[h], d.hosts[h] == nil)
	}
	g, _ := json.Marshal(generation{NextSeq: d.NextSeq, Hosts: hosts, Commit: token})
	add(s.genKey(), string(g), false)
	return ops, sizes
}

// LoadAt implements store.Store: the whole object prefix at rev (any etcd revision still kept).
func (s *Store) LoadAt(ctx context.Context, rev uint64) (*model.State, error) {
	resp, err := s.cli.Get(ctx, s.objectsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(int64(rev)))
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return nil, fmt.Errorf("%w: %s at revision %d: %w", store.ErrCompacted, s.prefix, rev, err)
	case errors.Is(err, rpctypes.ErrFutureRev):
		return nil, fmt.Errorf("etcdstore: %s: revision %d is ahead of the latest: %w", s.prefix, rev, err)
	case err != nil:
		return nil, fmt.Errorf("etcdstore: load %s at revision %d: %w", s.prefix, rev, err)
	}
	st, _, err := s.stateOf(resp.Kvs, int64(rev))
	return st, err
}

// Watch implements store.Store on etcd's watch of the object prefix, generation included: a Change is
// the records written at or before a revision that wrote the generation (a commit; a seed's batches
// before it fold into its one Change). etcd never splits one revision's events over two responses. The
// client re-establishes a broken watch by itself, from the last revision delivered.
func (s *Store) Watch(ctx context.Context, from uint64, fn func(store.Change) error) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := s.cli.Watch(wctx, s.objectsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(int64(from)+1))
	var pending []*clientv3.Event // events not yet closed by a generation
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("%w: %s keeps changes from revision %d, not after %d", store.ErrCompacted, s.prefix, resp.CompactRevision, from)
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("etcdstore: watch %s: %w", s.prefix, err)
		}
		pending = append(pending, resp.Events...)
		for {
			i := slices.IndexFunc(pending, func(ev *clientv3.Event) bool { return string(ev.Kv.Key) == s.genKey() })
			if i < 0 {
				break
			}
			rev := pending[i].Kv.ModRevision
			j := i + 1
			for j < len(pending) && pending[j].Kv.ModRevision <= rev {
				j++
			}
			c, err := s.changeOf(uint64(rev), pending[:j])
			if err != nil {
				return err
			}
			pending = pending[j:]
			if len(c.Puts)+len(c.Deletes) == 0 {
				continue // a commit that changed no record, as bbolt's history has none
			}
			if err := fn(c); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("etcdstore: watch of %s closed", s.prefix)
}

// changeOf is the Change of the events up to one commit's generation at rev: the last event of each
// key wins, puts and deletes in key order as bbolt gives them.
func (s *Store) changeOf(rev uint64, events []*clientv3.Event) (store.Change, error) {
	c := store.Change{Revision: rev}
	last := map[string]*clientv3.Event{}
	for _, ev := range events {
		if string(ev.Kv.Key) != s.genKey() {
			last[string(ev.Kv.Key)] = ev
		}
	}
	for _, ev := range last {
		if ev.Type == clientv3.EventTypeDelete {
			k, err := s.parseObjectKey(ev.Kv.Key)
			if err != nil {
				return c, err
			}
			c.Deletes = append(c.Deletes, k)
			continue
		}
		r, err := s.decodeRecord(ev.Kv)
		if err != nil {
			return c, err
		}
		r.Revision = rev
		c.Puts = append(c.Puts, r)
	}
	slices.SortFunc(c.Puts, func(a, b store.Record) int { return store.CompareKeys(a.Key, b.Key) })
	slices.SortFunc(c.Deletes, store.CompareKeys)
	return c, nil
}

// Close implements store.Store. The client is the caller's; the Nonces stay (other replicas need them).
func (s *Store) Close() error { return nil }

var _ store.Store = (*Store)(nil)
