package etcdtest

import (
	"context"
	"errors"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrCut is what a cut client's requests fail with.
var ErrCut = errors.New("etcdtest: this client's requests are cut")

// CutKV is a client's KV whose requests fail once a transaction it looks for has committed: the
// process stops there, as far as its reads and writes go (the client's watches and leases go on).
type CutKV struct {
	clientv3.KV
	after func(ops []clientv3.Op) bool
	cut   atomic.Bool
}

// CutAfter makes cli's KV requests fail with ErrCut once a transaction whose operations after accepts
// has committed. It replaces cli.KV, so cli must be the caller's alone and not yet in use.
func CutAfter(cli *clientv3.Client, after func(ops []clientv3.Op) bool) *CutKV {
	k := &CutKV{KV: cli.KV, after: after}
	cli.KV = k
	return k
}

// PutsKey accepts a transaction that puts key.
func PutsKey(key string) func(ops []clientv3.Op) bool {
	return func(ops []clientv3.Op) bool {
		for _, op := range ops {
			if op.IsPut() && string(op.KeyBytes()) == key {
				return true
			}
		}
		return false
	}
}

func (k *CutKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if k.cut.Load() {
		return nil, ErrCut
	}
	return k.KV.Get(ctx, key, opts...)
}

func (k *CutKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if k.cut.Load() {
		return nil, ErrCut
	}
	return k.KV.Put(ctx, key, val, opts...)
}

func (k *CutKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if k.cut.Load() {
		return nil, ErrCut
	}
	return k.KV.Delete(ctx, key, opts...)
}

func (k *CutKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if k.cut.Load() {
		return clientv3.OpResponse{}, ErrCut
	}
	return k.KV.Do(ctx, op)
}

func (k *CutKV) Txn(ctx context.Context) clientv3.Txn { return &cutTxn{Txn: k.KV.Txn(ctx), kv: k} }

// cutTxn is a transaction of a CutKV: it keeps its Then operations to look at once committed.
type cutTxn struct {
	clientv3.Txn
	kv   *CutKV
	then []clientv3.Op
}

func (t *cutTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }

func (t *cutTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	t.then = append(t.then, ops...)
	return t
}

func (t *cutTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *cutTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.kv.cut.Load() {
		return nil, ErrCut
	}
	resp, err := t.Txn.Commit()
	if err == nil && resp.Succeeded && t.kv.after(t.then) {
		t.kv.cut.Store(true)
	}
	return resp, err
}
