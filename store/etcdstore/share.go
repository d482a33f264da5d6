package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/store"
)

// Share is what an agent's tables need of the state at one revision. Its records' values and member
// lists are shared with later reads through the same ShareCache: callers must not modify them.
type Share struct {
	Revision uint64 // the commit in force at the read; 0 for an empty store
	// Records: every account, the ENIs whose host is the agent's (P/index/host), their SGs, and the SGs
	// those SGs' sgId rules name.
	Records []store.Record
	// Members of each named SG (P/index/members): other hosts' ENIs only through their addresses.
	Members map[string][]Member
	// Afresh is set when nothing of an earlier read was used: the first read through a cache, or
	// one that found another etcd history. What a caller derived from earlier reads is stale then.
	Afresh bool
}

// ShareCache keeps what an agent's last share read found, so the next read transfers and decodes only
// the keys that changed. It holds within one etcd history: ReadShare drops it when revisions went back
// or the store was seeded anew, and a caller whose watch failed (compacted, etcd lost) starts from a
// zero ShareCache, since a restore from a snapshot may reuse revisions. Not safe for concurrent use.
type ShareCache struct {
	kvs     map[string]*mvccpb.KeyValue // every key the last share depended on, as read (absent: not there)
	deps    map[string]shareDeps        // what an ENI or SG record names, by key, at its ModRevision
	members map[string]decodedMembers   // decoded member lists by key, at their ModRevision
	records map[string]store.Record     // decoded records by key, at their ModRevision (Revision)
	// The first round trip's read of each key of kvs as last built: the same while the key is, so a
	// read of unchanged dependencies builds no operations.
	gets map[string]cachedGet
	// The first round trip's other reads (head), linearizable and serializable.
	heads [2]headOps
	// The revision of the last read and the creation revision of the generation key then: a key's
	// ModRevision says what it holds only within one etcd history.
	rev, genCreated int64
	hits            int
}

// Hits returns how many reads found every dependency in one round trip (the dependencies were those
// of the read before).
func (c *ShareCache) Hits() int { return c.hits }

type shareDeps struct {
	modRev int64
	ids    []string // an ENI's SGs, or the SGs an SG's sgId rules name
}

type headOps struct {
	host string
	ops  []clientv3.Op
}

type cachedGet struct {
	minModRev    int64
	serializable bool
	op           clientv3.Op
}

type decodedMembers struct {
	modRev int64
	list   []Member
}

func (s *Store) eniKey(id string) string { return s.objectKey(store.Key{Kind: store.KindENI, ID: id}) }
func (s *Store) sgKey(id string) string  { return s.objectKey(store.Key{Kind: store.KindSG, ID: id}) }
func (s *Store) accountsPrefix() string {
	return s.objectsPrefix() + kindSegments[store.KindAccount] + "/"
}

// ReadShare reads host's share at one revision: the host index, then the host's ENIs, their SGs, the
// SGs those name with their member lists, each step reading only keys the steps before named, never
// one per member ENI. With a cache (an agent's, across its resyncs) the first round trip also reads
// every key the last share depended on, with etcd returning the values of only those modified since
// (WithMinModRev), so a change costs its own keys; more round trips, for the new keys alone, only when
// the dependencies changed. With atLeast > 0 (the revision of a feed event) the read is served by
// the etcd member the client talks to without a consensus round (serializable), and again through
// consensus if that member is behind atLeast; with 0 it is linearizable.
func (s *Store) ReadShare(ctx context.Context, host string, atLeast uint64, cache *ShareCache) (Share, error) {
	if cache == nil {
		cache = &ShareCache{}
	}
	r := shareRead{s: s, cache: cache, got: map[string]*mvccpb.KeyValue{}, afresh: cache.kvs == nil}
	known := sortedKeys(cache.kvs)
	// Never older than the last read either: a member behind it (one of several endpoints) would hand
	// back a state this host has already left, and an ack of it would move backwards. A revision below
	// the last read's is then etcd's own answer through consensus: another history.
	head, err := r.first(ctx, host, known, atLeast, uint64(max(cache.rev, 0)))
	if err != nil {
		return Share{}, fmt.Errorf("etcdstore: read the share of %s: %w", host, err)
	}
	if len(head[0]) == 0 { // no generation: an empty store
		*cache = ShareCache{hits: cache.hits}
		return Share{}, nil
	}
	gen := head[0][0]
	if cache.kvs != nil && (r.rev < cache.rev || gen.CreateRevision != cache.genCreated) {
		// Revisions went back, or the store was seeded anew: another history (etcd wiped, or
		// restored from an older snapshot), where the cached revisions say nothing.
		*cache = ShareCache{hits: cache.hits}
		return s.ReadShare(ctx, host, atLeast, cache)
	}
	cache.rev, cache.genCreated = r.rev, gen.CreateRevision
	rounds := r.rounds
	local, err := indexList(head[1])
	if err != nil {
		return Share{}, err
	}
	localKeys := mapped(local, s.eniKey)
	localKVs, err := r.need(ctx, localKeys)
	if err != nil {
		return Share{}, err
	}
	used, err := r.names(localKVs, enisSGs)
	if err != nil {
		return Share{}, err
	}
	usedKeys := mapped(used, s.sgKey)
	usedKVs, err := r.need(ctx, usedKeys)
	if err != nil {
		return Share{}, err
	}
	named, err := r.names(usedKVs, sgRefs)
	if err != nil {
		return Share{}, err
	}
	namedOnly := slices.DeleteFunc(slices.Clone(named), func(id string) bool { return slices.Contains(used, id) })
	namedKeys := mapped(namedOnly, s.sgKey)
	namedKVs, err := r.need(ctx, namedKeys)
	if err != nil {
		return Share{}, err
	}
	listKeys := mapped(named, s.membersKey)
	lists, err := r.need(ctx, listKeys)
	if err != nil {
		return Share{}, err
	}
	if r.rounds == rounds {
		cache.hits++
	}
	keys := slices.Concat(localKeys, usedKeys, namedKeys, listKeys)
	return r.share(uint64(gen.ModRevision), slices.Concat(head[2], localKVs, usedKVs, namedKVs), lists, keys)
}

// share decodes the share read, the records and member lists not modified since the last read taken
// from the cache, and leaves in the cache exactly this share's dependencies (keys).
func (r *shareRead) share(rev uint64, recordKVs, lists []*mvccpb.KeyValue, keys []string) (Share, error) {
	s, cache := r.s, r.cache
	recs := make([]store.Record, 0, len(recordKVs))
	records := make(map[string]store.Record, len(recordKVs))
	for _, kv := range recordKVs {
		rec, ok := cache.records[string(kv.Key)]
		if !ok || rec.Revision != uint64(kv.ModRevision) {
			var err error
			if rec, err = s.decodeRecord(kv); err != nil {
				return Share{}, err
			}
		}
		recs = append(recs, rec)
		records[string(kv.Key)] = rec
	}
	sh := Share{Revision: rev, Records: recs, Members: make(map[string][]Member, len(lists)), Afresh: r.afresh}
	members := make(map[string]decodedMembers, len(lists))
	for _, kv := range lists {
		key := string(kv.Key)
		d, ok := cache.members[key]
		if !ok || d.modRev != kv.ModRevision {
			d = decodedMembers{modRev: kv.ModRevision}
			if err := json.Unmarshal(kv.Value, &d.list); err != nil {
				return Share{}, fmt.Errorf("etcdstore: index %s: %w", kv.Key, err)
			}
		}
		members[key] = d
		sh.Members[strings.TrimPrefix(key, s.membersKey(""))] = d.list
	}
	kvs := make(map[string]*mvccpb.KeyValue, len(keys))
	for _, k := range keys {
		if kv := r.got[k]; kv != nil {
			kvs[k] = kv
		}
	}
	deps := make(map[string]shareDeps, len(r.deps))
	for k, d := range r.deps {
		if kvs[k] != nil {
			deps[k] = d
		}
	}
	maps.DeleteFunc(cache.gets, func(k string, g cachedGet) bool { return kvs[k] == nil || g.minModRev != kvs[k].ModRevision+1 })
	cache.kvs, cache.deps, cache.members, cache.records = kvs, deps, members, records
	return sh, nil
}

// shareRead is one ReadShare in progress: every key read so far at one revision.
type shareRead struct {
	s      *Store
	cache  *ShareCache
	rev    int64
	got    map[string]*mvccpb.KeyValue // key → value at rev; nil: absent at rev
	deps   map[string]shareDeps
	rounds int
	afresh bool
}

// first reads the generation, the host index, the accounts and the keys the last share depended on,
// in one transaction (more only beyond MaxTxnOps keys, at the same revision), and returns the first
// three's results. A serializable read (atLeast > 0) older than atLeast or than last (the last read's
// revision) is asked again through consensus.
func (r *shareRead) first(ctx context.Context, host string, known []string, atLeast, last uint64) ([][]*mvccpb.KeyValue, error) {
	s := r.s
	serializable := atLeast > 0
	for {
		head := r.head(host, serializable)
		inTxn := min(len(known), s.maxOps-len(head))
		ops := r.appendOps(append(make([]clientv3.Op, 0, len(head)+inTxn), head...), known[:inTxn], 0, serializable)
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, err
		}
		r.rounds++
		if serializable && resp.Header.Revision < int64(max(atLeast, last)) {
			serializable = false // this member is behind the change or the last read: ask through consensus
			continue
		}
		r.rev = resp.Header.Revision
		ranges := make([]*clientv3.GetResponse, len(resp.Responses))
		for i, rr := range resp.Responses {
			ranges[i] = (*clientv3.GetResponse)(rr.GetResponseRange())
		}
		rest, err := r.get(ctx, known[inTxn:], true)
		if err != nil {
			return nil, err
		}
		if err := r.take(ctx, known, slices.Concat(ranges[3:], rest)); err != nil {
			return nil, err
		}
		return [][]*mvccpb.KeyValue{ranges[0].Kvs, ranges[1].Kvs, ranges[2].Kvs}, nil
	}
}

// head returns the reads of the generation, the host index and the accounts, built once per host and
// kind of read.
func (r *shareRead) head(host string, serializable bool) []clientv3.Op {
	i := 0
	if serializable {
		i = 1
	}
	if h := r.cache.heads[i]; h.host == host && h.ops != nil {
		return h.ops
	}
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	s := r.s
	ops := []clientv3.Op{
		clientv3.OpGet(s.genKey(), append(opts, clientv3.WithKeysOnly())...), // its value lists the last change's hosts
		clientv3.OpGet(s.hostIndexKey(host), opts...),
		clientv3.OpGet(s.accountsPrefix(), append(opts, clientv3.WithPrefix())...),
	}
	r.cache.heads[i] = headOps{host: host, ops: ops}
	return ops
}

// appendOps appends to out the reads of keys at rev (0: the transaction's): a key read before only if
// modified since.
// Those at the transaction's revision are kept in the cache and used again while the key is the same.
func (r *shareRead) appendOps(out []clientv3.Op, keys []string, rev int64, serializable bool) []clientv3.Op {
	for _, k := range keys {
		var minModRev int64
		if kv := r.cache.kvs[k]; kv != nil {
			minModRev = kv.ModRevision + 1
		}
		if g, ok := r.cache.gets[k]; ok && rev == 0 && g.minModRev == minModRev && g.serializable == serializable {
			out = append(out, g.op)
			continue
		}
		var o []clientv3.OpOption
		if serializable {
			o = append(o, clientv3.WithSerializable())
		}
		if rev != 0 {
			o = append(o, clientv3.WithRev(rev))
		}
		if minModRev != 0 {
			o = append(o, clientv3.WithMinModRev(minModRev))
		}
		out = append(out, clientv3.OpGet(k, o...))
		if rev == 0 && minModRev != 0 {
			if r.cache.gets == nil {
				r.cache.gets = map[string]cachedGet{}
			}
			r.cache.gets[k] = cachedGet{minModRev: minModRev, serializable: serializable, op: out[len(out)-1]}
		}
	}
	return out
}

// get reads keys at r.rev in transactions of at most MaxTxnOps reads; cached keys only if modified.
// A read at a past revision needs no consensus round (that revision's values never change) unless
// the member asked is behind it.
func (r *shareRead) get(ctx context.Context, keys []string, cached bool) ([]*clientv3.GetResponse, error) {
	out := make([]*clientv3.GetResponse, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), r.s.maxOps)
		batch := func(serializable bool) []clientv3.Op {
			if cached {
				return r.appendOps(make([]clientv3.Op, 0, n), keys[:n], r.rev, serializable)
			}
			opts := []clientv3.OpOption{clientv3.WithRev(r.rev)}
			if serializable {
				opts = append(opts, clientv3.WithSerializable())
			}
			ops := make([]clientv3.Op, n)
			for i, k := range keys[:n] {
				ops[i] = clientv3.OpGet(k, opts...)
			}
			return ops
		}
		resp, err := r.s.cli.Txn(ctx).Then(batch(true)...).Commit()
		if errors.Is(err, rpctypes.ErrFutureRev) {
			resp, err = r.s.cli.Txn(ctx).Then(batch(false)...).Commit()
		}
		if err != nil {
			return nil, fmt.Errorf("read at revision %d: %w", r.rev, err)
		}
		r.rounds++
		for _, rr := range resp.Responses {
			out = append(out, (*clientv3.GetResponse)(rr.GetResponseRange()))
		}
		keys = keys[n:]
	}
	return out, nil
}

// take records the results of reading keys (in order). A cached key that came back without a value
// is unchanged if etcd counted it (Count is taken before the modification filter) and read again in
// full otherwise: a deleted key looks the same, and so would an unchanged one if Count ever followed
// the filter, which then costs a read and never a stale value.
func (r *shareRead) take(ctx context.Context, keys []string, results []*clientv3.GetResponse) error {
	var again []string
	for i, k := range keys {
		res, cached := results[i], r.cache.kvs[k]
		switch {
		case len(res.Kvs) > 0:
			r.got[k] = res.Kvs[0]
		case cached != nil && res.Count > 0:
			r.got[k] = cached
		case cached != nil:
			again = append(again, k)
		default:
			r.got[k] = nil
		}
	}
	if len(again) == 0 {
		return nil
	}
	full, err := r.get(ctx, again, false)
	if err != nil {
		return err
	}
	for i, k := range again {
		r.got[k] = nil
		if len(full[i].Kvs) > 0 {
			r.got[k] = full[i].Kvs[0]
		}
	}
	return nil
}

// need returns the values of keys at r.rev (absent keys left out), reading those not read yet.
func (r *shareRead) need(ctx context.Context, keys []string) ([]*mvccpb.KeyValue, error) {
	var missing []string
	for _, k := range keys {
		if _, ok := r.got[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		res, err := r.get(ctx, missing, false)
		if err != nil {
			return nil, err
		}
		for i, k := range missing {
			r.got[k] = nil
			if len(res[i].Kvs) > 0 {
				r.got[k] = res[i].Kvs[0]
			}
		}
	}
	out := make([]*mvccpb.KeyValue, 0, len(keys))
	for _, k := range keys {
		if kv := r.got[k]; kv != nil {
			out = append(out, kv)
		}
	}
	return out, nil
}

// names returns, sorted, the IDs the records kvs name (by of: an ENI's SGs, an SG's referenced SGs),
// decoding only records modified since the cache last saw them.
func (r *shareRead) names(kvs []*mvccpb.KeyValue, of func(value []byte) ([]string, error)) ([]string, error) {
	if r.deps == nil {
		r.deps = map[string]shareDeps{}
	}
	set := map[string]bool{}
	for _, kv := range kvs {
		key := string(kv.Key)
		d, ok := r.cache.deps[key]
		if !ok || d.modRev != kv.ModRevision {
			ids, err := of(kv.Value)
			if err != nil {
				return nil, fmt.Errorf("etcdstore: %s: %w", kv.Key, err)
			}
			d = shareDeps{modRev: kv.ModRevision, ids: ids}
		}
		r.deps[key] = d
		for _, id := range d.ids {
			set[id] = true
		}
	}
	return sortedKeys(set), nil
}

func mapped(ids []string, key func(string) string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = key(id)
	}
	return out
}

// enisSGs returns the SGs of an ENI record.
func enisSGs(value []byte) ([]string, error) {
	var n struct {
		Object struct {
			SgIDs []string `json:"sgIds"`
		} `json:"object"`
	}
	if err := json.Unmarshal(value, &n); err != nil {
		return nil, err
	}
	return n.Object.SgIDs, nil
}

// sgRefs returns the SGs the sgId rules of an SG record name. Only the rules' sgId fields are decoded.
func sgRefs(value []byte) ([]string, error) {
	type ref struct {
		SgID string `json:"sgId"`
	}
	var g struct {
		Object struct {
			Ingress []ref `json:"ingress"`
			Egress  []ref `json:"egress"`
		} `json:"object"`
	}
	if err := json.Unmarshal(value, &g); err != nil {
		return nil, err
	}
	var out []string
	for _, r := range slices.Concat(g.Object.Ingress, g.Object.Egress) {
		if r.SgID != "" {
			out = append(out, r.SgID)
		}
	}
	return out, nil
}

// indexList decodes a host index key's ENI list (none when the key is absent).
func indexList(kvs []*mvccpb.KeyValue) ([]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	var ids []string
	if err := json.Unmarshal(kvs[0].Value, &ids); err != nil {
		return nil, fmt.Errorf("etcdstore: index %s: %w", kvs[0].Key, err)
	}
	return ids, nil
}
