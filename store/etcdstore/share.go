package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// ShareRecords reads, at one revision, the records an agent of host needs and nothing else: every
// account, the ENIs whose host is host (P/index/host), their SGs, the SGs those SGs' sgId rules name,
// and the ENIs that are members of the named SGs (P/index/members). It returns them with the store's
// revision as of that read (the commit in force then; 0 and no records for an empty store). Five round
// trips whatever the size of the fleet, each reading only keys of the share.
func (s *Store) ShareRecords(ctx context.Context, host string) ([]store.Record, uint64, error) {
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.genKey()),
		clientv3.OpGet(s.hostIndexKey(host)),
		clientv3.OpGet(s.objectsPrefix()+kindSegments[store.KindAccount]+"/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("etcdstore: read the share of %s: %w", host, err)
	}
	gens := resp.Responses[0].GetResponseRange().Kvs
	if len(gens) == 0 {
		return nil, 0, nil
	}
	rev := resp.Header.Revision
	recs, err := s.decodeAll(resp.Responses[2].GetResponseRange().Kvs)
	if err != nil {
		return nil, 0, err
	}
	read := func(keys []string) ([]*mvccpb.KeyValue, error) { return s.getAt(ctx, rev, keys) }
	local, err := indexList(resp.Responses[1].GetResponseRange().Kvs)
	if err != nil {
		return nil, 0, err
	}
	haveENI := map[string]bool{}
	eniKeys := func(ids []string) []string {
		var keys []string
		for _, id := range ids {
			if !haveENI[id] {
				haveENI[id] = true
				keys = append(keys, s.objectKey(store.Key{Kind: store.KindENI, ID: id}))
			}
		}
		return keys
	}
	// Local ENIs → the SGs they use → the SGs those name → the named SGs' members.
	kvs, err := read(eniKeys(local))
	if err != nil {
		return nil, 0, err
	}
	used := map[string]bool{}
	for _, kv := range kvs {
		var n model.NetworkInterface
		if err := json.Unmarshal(kv.Value, &struct{ Object *model.NetworkInterface }{&n}); err != nil {
			return nil, 0, fmt.Errorf("etcdstore: %s: %w", kv.Key, err)
		}
		for _, sg := range n.SgIDs {
			used[sg] = true
		}
	}
	sgKeys := func(ids map[string]bool, skip map[string]bool) []string {
		var keys []string
		for _, id := range sortedKeys(ids) {
			if !skip[id] {
				keys = append(keys, s.objectKey(store.Key{Kind: store.KindSG, ID: id}))
			}
		}
		return keys
	}
	sgKVs, err := read(sgKeys(used, nil))
	if err != nil {
		return nil, 0, err
	}
	kvs = append(kvs, sgKVs...)
	named := map[string]bool{}
	for _, kv := range sgKVs {
		var g model.SecurityGroup
		if err := json.Unmarshal(kv.Value, &struct{ Object *model.SecurityGroup }{&g}); err != nil {
			return nil, 0, fmt.Errorf("etcdstore: %s: %w", kv.Key, err)
		}
		for _, r := range slices.Concat(g.Ingress, g.Egress) {
			if r.SgID != "" {
				named[r.SgID] = true
			}
		}
	}
	keys := sgKeys(named, used)
	for _, sg := range sortedKeys(named) {
		keys = append(keys, s.membersKey(sg))
	}
	namedKVs, err := read(keys)
	if err != nil {
		return nil, 0, err
	}
	var members []string
	for _, kv := range namedKVs {
		if _, err := s.parseObjectKey(kv.Key); err == nil {
			kvs = append(kvs, kv)
			continue
		}
		ids, err := indexList([]*mvccpb.KeyValue{kv})
		if err != nil {
			return nil, 0, err
		}
		members = append(members, ids...)
	}
	memberKVs, err := read(eniKeys(members))
	if err != nil {
		return nil, 0, err
	}
	more, err := s.decodeAll(append(kvs, memberKVs...))
	if err != nil {
		return nil, 0, err
	}
	// The revision in force is the last commit at or before the read.
	return append(recs, more...), uint64(gens[0].ModRevision), nil
}

// getAt reads keys at rev in transactions of at most maxOps reads; absent keys are left out.
func (s *Store) getAt(ctx context.Context, rev int64, keys []string) ([]*mvccpb.KeyValue, error) {
	var out []*mvccpb.KeyValue
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
