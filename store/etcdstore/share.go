package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// ShareRecords reads, at one revision, the records an agent of host needs and nothing else: every
// account, the ENIs whose host is host (P/index/host), their SGs, the SGs those SGs' sgId rules name,
// and the ENIs that are members of the named SGs (P/index/members). It returns them with the store's
// revision as of that read (the commit in force then; 0 and no records for an empty store).
//
// Without a cache it walks those dependencies in five round trips. With one (an agent's, across its
// resyncs) it reads every key the last read needed in one transaction (more when they exceed
// MaxTxnOps), the member ENIs, the part of a share that grows with the fleet, without their values;
// when the dependencies read are the ones of last time, only the member ENIs that changed are fetched,
// otherwise it walks again.
func (s *Store) ShareRecords(ctx context.Context, host string, cache *ShareCache) ([]store.Record, uint64, error) {
	if cache != nil && cache.plan != nil {
		recs, gen, ok, err := s.shareByPlan(ctx, host, cache)
		if err != nil || ok {
			return recs, gen, err
		}
	}
	return s.shareWalk(ctx, host, cache)
}

// ShareCache holds an agent's last share read: its records and the keys it needed. Not safe for
// concurrent use; it never holds more than one share.
type ShareCache struct {
	last map[store.Key]store.Record
	plan *sharePlan
	hits int
}

// Hits returns how many reads the cached dependencies served in one pass (no walk).
func (c *ShareCache) Hits() int { return c.hits }

// sharePlan is what a share's dependencies were.
type sharePlan struct {
	local   []string            // the host's ENIs, as its index lists them
	used    []string            // sorted SGs the local ENIs use
	named   []string            // sorted SGs the used SGs' rules name
	members map[string][]string // named SG → its member list (nil: none)
	remote  []string            // members that are not local, in read order
}

func (c *ShareCache) remember(recs []store.Record, p *sharePlan) {
	c.last = make(map[store.Key]store.Record, len(recs))
	for _, r := range recs {
		c.last[r.Key] = r
	}
	c.plan = p
}

func (s *Store) eniKey(id string) string { return s.objectKey(store.Key{Kind: store.KindENI, ID: id}) }
func (s *Store) sgKey(id string) string  { return s.objectKey(store.Key{Kind: store.KindSG, ID: id}) }
func (s *Store) accountsPrefix() string {
	return s.objectsPrefix() + kindSegments[store.KindAccount] + "/"
}

// shareWalk reads the share dependency by dependency.
func (s *Store) shareWalk(ctx context.Context, host string, cache *ShareCache) ([]store.Record, uint64, error) {
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.genKey()),
		clientv3.OpGet(s.hostIndexKey(host)),
		clientv3.OpGet(s.accountsPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("etcdstore: read the share of %s: %w", host, err)
	}
	gens := resp.Responses[0].GetResponseRange().Kvs
	if len(gens) == 0 {
		return nil, 0, nil
	}
	rev := resp.Header.Revision
	kvs := resp.Responses[2].GetResponseRange().Kvs
	p := &sharePlan{}
	if p.local, err = indexList(resp.Responses[1].GetResponseRange().Kvs); err != nil {
		return nil, 0, err
	}
	local, err := s.getAt(ctx, rev, mapped(p.local, s.eniKey))
	if err != nil {
		return nil, 0, err
	}
	if p.used, err = usedBy(local); err != nil {
		return nil, 0, err
	}
	used, err := s.getAt(ctx, rev, mapped(p.used, s.sgKey))
	if err != nil {
		return nil, 0, err
	}
	if p.named, err = namedBy(used); err != nil {
		return nil, 0, err
	}
	namedOnly := slices.DeleteFunc(slices.Clone(p.named), func(id string) bool { return slices.Contains(p.used, id) })
	named, err := s.getAt(ctx, rev, slices.Concat(mapped(namedOnly, s.sgKey), mapped(p.named, s.membersKey)))
	if err != nil {
		return nil, 0, err
	}
	kvs = slices.Concat(kvs, local, used)
	var lists []*mvccpb.KeyValue
	for _, kv := range named {
		if strings.HasPrefix(string(kv.Key), s.objectsPrefix()) {
			kvs = append(kvs, kv)
		} else {
			lists = append(lists, kv)
		}
	}
	if p.members, err = s.membersOf(lists); err != nil {
		return nil, 0, err
	}
	p.remote = remoteMembers(p)
	recs, err := s.decodeAll(kvs)
	if err != nil {
		return nil, 0, err
	}
	remote, err := s.readCached(ctx, rev, p.remote, cache)
	if err != nil {
		return nil, 0, err
	}
	recs = append(recs, remote...)
	if cache != nil {
		cache.remember(recs, p)
	}
	// The revision in force is the last commit at or before the read.
	return recs, uint64(gens[0].ModRevision), nil
}

// shareByPlan reads every key of the cached plan at once; ok is false when the dependencies changed.
func (s *Store) shareByPlan(ctx context.Context, host string, cache *ShareCache) (recs []store.Record, gen uint64, ok bool, err error) {
	p := cache.plan
	namedOnly := slices.DeleteFunc(slices.Clone(p.named), func(id string) bool { return slices.Contains(p.used, id) })
	type read struct {
		key  string
		opts []clientv3.OpOption
	}
	reads := []read{{s.genKey(), nil}, {s.hostIndexKey(host), nil}, {s.accountsPrefix(), []clientv3.OpOption{clientv3.WithPrefix()}}}
	for _, k := range slices.Concat(mapped(p.local, s.eniKey), mapped(p.used, s.sgKey), mapped(namedOnly, s.sgKey), mapped(p.named, s.membersKey)) {
		reads = append(reads, read{k, nil})
	}
	nValues := len(reads)
	for _, id := range p.remote {
		reads = append(reads, read{s.eniKey(id), []clientv3.OpOption{clientv3.WithKeysOnly()}})
	}
	// One transaction is one revision; what does not fit is read at that revision.
	results := make([][]*mvccpb.KeyValue, 0, len(reads))
	var rev int64
	for start := 0; start < len(reads); start += s.maxOps {
		batch := reads[start:min(len(reads), start+s.maxOps)]
		ops := make([]clientv3.Op, len(batch))
		for i, r := range batch {
			ops[i] = clientv3.OpGet(r.key, append(slices.Clone(r.opts), clientv3.WithRev(rev))...)
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, 0, false, fmt.Errorf("etcdstore: read the share of %s: %w", host, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, r := range resp.Responses {
			results = append(results, r.GetResponseRange().Kvs)
		}
	}
	if len(results[0]) == 0 {
		return nil, 0, false, nil
	}
	next := 3
	take := func(n int) []*mvccpb.KeyValue {
		var out []*mvccpb.KeyValue
		for _, kvs := range results[next : next+n] {
			out = append(out, kvs...)
		}
		next += n
		return out
	}
	localList, err := indexList(results[1])
	if err != nil || !slices.Equal(localList, p.local) {
		return nil, 0, false, err
	}
	local := take(len(p.local))
	if used, err := usedBy(local); err != nil || len(local) != len(p.local) || !slices.Equal(used, p.used) {
		return nil, 0, false, err
	}
	used := take(len(p.used))
	if named, err := namedBy(used); err != nil || len(used) != len(p.used) || !slices.Equal(named, p.named) {
		return nil, 0, false, err
	}
	namedSGs := take(len(namedOnly))
	members, err := s.membersOf(take(len(p.named)))
	if err != nil || !maps.EqualFunc(members, p.members, slices.Equal) {
		return nil, 0, false, err
	}
	recs, err = s.decodeAll(slices.Concat(results[2], local, used, namedSGs))
	if err != nil {
		return nil, 0, false, err
	}
	var heads []*mvccpb.KeyValue
	for _, kvs := range results[nValues:] {
		heads = append(heads, kvs...)
	}
	remote, err := s.refresh(ctx, rev, heads, cache)
	if err != nil {
		return nil, 0, false, err
	}
	recs = append(recs, remote...)
	cache.remember(recs, p)
	cache.hits++
	return recs, uint64(results[0][0].ModRevision), true, nil
}

// remoteMembers lists the members of the named SGs that are not the host's, each once.
func remoteMembers(p *sharePlan) []string {
	seen := map[string]bool{}
	for _, id := range p.local {
		seen[id] = true
	}
	var out []string
	for _, sg := range p.named {
		for _, id := range p.members[sg] {
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out
}

func mapped(ids []string, key func(string) string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = key(id)
	}
	return out
}

// usedBy returns, sorted, the SGs of ENI records.
func usedBy(kvs []*mvccpb.KeyValue) ([]string, error) {
	set := map[string]bool{}
	for _, kv := range kvs {
		var n model.NetworkInterface
		if err := json.Unmarshal(kv.Value, &struct{ Object *model.NetworkInterface }{&n}); err != nil {
			return nil, fmt.Errorf("etcdstore: %s: %w", kv.Key, err)
		}
		for _, sg := range n.SgIDs {
			set[sg] = true
		}
	}
	return sortedKeys(set), nil
}

// namedBy returns, sorted, the SGs the sgId rules of SG records name.
func namedBy(kvs []*mvccpb.KeyValue) ([]string, error) {
	set := map[string]bool{}
	for _, kv := range kvs {
		var g model.SecurityGroup
		if err := json.Unmarshal(kv.Value, &struct{ Object *model.SecurityGroup }{&g}); err != nil {
			return nil, fmt.Errorf("etcdstore: %s: %w", kv.Key, err)
		}
		for _, r := range slices.Concat(g.Ingress, g.Egress) {
			if r.SgID != "" {
				set[r.SgID] = true
			}
		}
	}
	return sortedKeys(set), nil
}

// membersOf decodes member index keys into SG → members.
func (s *Store) membersOf(kvs []*mvccpb.KeyValue) (map[string][]string, error) {
	out := map[string][]string{}
	for _, kv := range kvs {
		ids, err := indexList([]*mvccpb.KeyValue{kv})
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(string(kv.Key), s.membersKey(""))] = ids
	}
	return out, nil
}

// readCached reads the ENIs ids at rev, taking from cache those whose revision did not change.
func (s *Store) readCached(ctx context.Context, rev int64, ids []string, cache *ShareCache) ([]store.Record, error) {
	keys := mapped(ids, s.eniKey)
	if cache == nil || len(cache.last) == 0 {
		kvs, err := s.getAt(ctx, rev, keys)
		if err != nil {
			return nil, err
		}
		return s.decodeAll(kvs)
	}
	heads, err := s.getAt(ctx, rev, keys, clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	return s.refresh(ctx, rev, heads, cache)
}

// refresh returns the records of keys read without values (heads): cached when the revision is the
// same, fetched at rev otherwise.
func (s *Store) refresh(ctx context.Context, rev int64, heads []*mvccpb.KeyValue, cache *ShareCache) ([]store.Record, error) {
	out := make([]store.Record, 0, len(heads))
	var fetch []string
	for _, kv := range heads {
		k, err := s.parseObjectKey(kv.Key)
		if err != nil {
			return nil, err
		}
		if r, ok := cache.last[k]; ok && r.Revision == uint64(kv.ModRevision) {
			out = append(out, r)
		} else {
			fetch = append(fetch, string(kv.Key))
		}
	}
	kvs, err := s.getAt(ctx, rev, fetch)
	if err != nil {
		return nil, err
	}
	fresh, err := s.decodeAll(kvs)
	if err != nil {
		return nil, err
	}
	return append(out, fresh...), nil
}

// getAt reads keys at rev in transactions of at most maxOps reads; absent keys are left out.
func (s *Store) getAt(ctx context.Context, rev int64, keys []string, opts ...clientv3.OpOption) ([]*mvccpb.KeyValue, error) {
	var out []*mvccpb.KeyValue
	opts = append(opts, clientv3.WithRev(rev))
	for len(keys) > 0 {
		n := min(len(keys), s.maxOps)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(k, opts...)
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("etcdstore: read at revision %d: %w", rev, err)
		}
		for _, r := range resp.Responses {
			out = append(out, r.GetResponseRange().Kvs...)
		}
		keys = keys[n:]
	}
	return out, nil
}

func (s *Store) decodeAll(kvs []*mvccpb.KeyValue) ([]store.Record, error) {
	out := make([]store.Record, 0, len(kvs))
	for _, kv := range kvs {
		r, err := s.decodeRecord(kv)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// indexList decodes an index key's ENI list (none when the key is absent).
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
