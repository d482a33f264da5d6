package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// Share is what an agent's tables need of the state at one revision.
type Share struct {
	Revision uint64 // the commit in force at the read; 0 for an empty store
	// Records: every account, the ENIs whose host is the agent's (P/index/host), their SGs, and the SGs
	// those SGs' sgId rules name.
	Records []store.Record
	// Members of each named SG (P/index/members): other hosts' ENIs only through their addresses.
	Members map[string][]Member
}

// ReadShare reads host's share at one revision. Without a cache it walks the dependencies (host index,
// ENIs, their SGs, the named SGs with their member lists) in four round trips. With one (an agent's,
// across its resyncs) it reads every key the last read needed in one transaction (more only beyond
// MaxTxnOps keys) and walks again only when the dependencies it finds differ from last time's. Either
// way it reads keys of the share only, none per member ENI, whatever the size of the fleet.
func (s *Store) ReadShare(ctx context.Context, host string, cache *ShareCache) (Share, error) {
	if cache != nil && cache.plan != nil {
		sh, ok, err := s.shareByPlan(ctx, host, cache.plan)
		if err != nil || ok {
			if ok {
				cache.hits++
			}
			return sh, err
		}
	}
	sh, p, err := s.shareWalk(ctx, host)
	if cache != nil && err == nil {
		cache.plan = p
	}
	return sh, err
}

// ShareCache keeps what an agent's last share read depended on. Not safe for concurrent use.
type ShareCache struct {
	plan *sharePlan
	hits int
}

// Hits returns how many reads the cached dependencies served in one pass (no walk).
func (c *ShareCache) Hits() int { return c.hits }

// sharePlan is what a share's dependencies were.
type sharePlan struct {
	local []string // the host's ENIs, as its index lists them
	used  []string // sorted SGs the local ENIs use
	named []string // sorted SGs the used SGs' rules name
}

func (p *sharePlan) namedOnly() []string {
	return slices.DeleteFunc(slices.Clone(p.named), func(id string) bool { return slices.Contains(p.used, id) })
}

func (s *Store) eniKey(id string) string { return s.objectKey(store.Key{Kind: store.KindENI, ID: id}) }
func (s *Store) sgKey(id string) string  { return s.objectKey(store.Key{Kind: store.KindSG, ID: id}) }
func (s *Store) accountsPrefix() string {
	return s.objectsPrefix() + kindSegments[store.KindAccount] + "/"
}

// shareWalk reads the share dependency by dependency.
func (s *Store) shareWalk(ctx context.Context, host string) (Share, *sharePlan, error) {
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.genKey()),
		clientv3.OpGet(s.hostIndexKey(host)),
		clientv3.OpGet(s.accountsPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return Share{}, nil, fmt.Errorf("etcdstore: read the share of %s: %w", host, err)
	}
	gens := resp.Responses[0].GetResponseRange().Kvs
	if len(gens) == 0 {
		return Share{}, nil, nil
	}
	rev := resp.Header.Revision
	p := &sharePlan{}
	if p.local, err = indexList(resp.Responses[1].GetResponseRange().Kvs); err != nil {
		return Share{}, nil, err
	}
	local, err := s.getAt(ctx, rev, mapped(p.local, s.eniKey))
	if err != nil {
		return Share{}, nil, err
	}
	if p.used, err = usedBy(local); err != nil {
		return Share{}, nil, err
	}
	used, err := s.getAt(ctx, rev, mapped(p.used, s.sgKey))
	if err != nil {
		return Share{}, nil, err
	}
	if p.named, err = namedBy(used); err != nil {
		return Share{}, nil, err
	}
	named, err := s.getAt(ctx, rev, slices.Concat(mapped(p.namedOnly(), s.sgKey), mapped(p.named, s.membersKey)))
	if err != nil {
		return Share{}, nil, err
	}
	kvs := slices.Concat(resp.Responses[2].GetResponseRange().Kvs, local, used)
	var lists []*mvccpb.KeyValue
	for _, kv := range named {
		if strings.HasPrefix(string(kv.Key), s.objectsPrefix()) {
			kvs = append(kvs, kv)
		} else {
			lists = append(lists, kv)
		}
	}
	sh, err := s.shareOf(uint64(gens[0].ModRevision), kvs, lists)
	return sh, p, err
}

// shareByPlan reads every key of p at once; ok is false when the dependencies are no longer p's.
func (s *Store) shareByPlan(ctx context.Context, host string, p *sharePlan) (sh Share, ok bool, err error) {
	namedOnly := p.namedOnly()
	ops := []clientv3.Op{clientv3.OpGet(s.genKey()), clientv3.OpGet(s.hostIndexKey(host)), clientv3.OpGet(s.accountsPrefix(), clientv3.WithPrefix())}
	keys := slices.Concat(mapped(p.local, s.eniKey), mapped(p.used, s.sgKey), mapped(namedOnly, s.sgKey), mapped(p.named, s.membersKey))
	first := min(len(keys), s.maxOps-len(ops))
	for _, k := range keys[:first] {
		ops = append(ops, clientv3.OpGet(k))
	}
	// One transaction is one revision; keys beyond it are read at that revision.
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return Share{}, false, fmt.Errorf("etcdstore: read the share of %s: %w", host, err)
	}
	results := make([][]*mvccpb.KeyValue, 0, 3+len(keys))
	for _, r := range resp.Responses {
		results = append(results, r.GetResponseRange().Kvs)
	}
	rest, err := s.getEach(ctx, resp.Header.Revision, keys[first:])
	if err != nil {
		return Share{}, false, err
	}
	results = append(results, rest...)
	if len(results[0]) == 0 {
		return Share{}, false, nil
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
		return Share{}, false, err
	}
	local := take(len(p.local))
	if used, err := usedBy(local); err != nil || len(local) != len(p.local) || !slices.Equal(used, p.used) {
		return Share{}, false, err
	}
	used := take(len(p.used))
	if named, err := namedBy(used); err != nil || len(used) != len(p.used) || !slices.Equal(named, p.named) {
		return Share{}, false, err
	}
	kvs := slices.Concat(results[2], local, used, take(len(namedOnly)))
	sh, err = s.shareOf(uint64(results[0][0].ModRevision), kvs, take(len(p.named)))
	return sh, err == nil, err
}

// shareOf decodes a share's records and member lists.
func (s *Store) shareOf(rev uint64, kvs, lists []*mvccpb.KeyValue) (Share, error) {
	recs, err := s.decodeAll(kvs)
	if err != nil {
		return Share{}, err
	}
	sh := Share{Revision: rev, Records: recs, Members: map[string][]Member{}}
	for _, kv := range lists {
		var ms []Member
		if err := json.Unmarshal(kv.Value, &ms); err != nil {
			return Share{}, fmt.Errorf("etcdstore: index %s: %w", kv.Key, err)
		}
		sh.Members[strings.TrimPrefix(string(kv.Key), s.membersKey(""))] = ms
	}
	return sh, nil
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

// getAt reads keys at rev; absent keys are left out.
func (s *Store) getAt(ctx context.Context, rev int64, keys []string) ([]*mvccpb.KeyValue, error) {
	each, err := s.getEach(ctx, rev, keys)
	return slices.Concat(each...), err
}

// getEach reads keys at rev in transactions of at most maxOps reads: for each key, its value or none.
func (s *Store) getEach(ctx context.Context, rev int64, keys []string) ([][]*mvccpb.KeyValue, error) {
	out := make([][]*mvccpb.KeyValue, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), s.maxOps)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("etcdstore: read at revision %d: %w", rev, err)
		}
		for _, r := range resp.Responses {
			out = append(out, r.GetResponseRange().Kvs)
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
