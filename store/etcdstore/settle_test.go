package etcdstore

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/store/storetest"
)

// lossyKV is a KV whose next commit that writes the generation key loses its answer: after applying
// the transaction (applied) or instead of sending it.
type lossyKV struct {
	clientv3.KV
	genKey  string
	armed   atomic.Bool
	applied bool
	between func() // run after the transaction applied, before its answer is lost
}

func (k *lossyKV) Txn(ctx context.Context) clientv3.Txn {
	return &lossyTxn{Txn: k.KV.Txn(ctx), kv: k}
}

type lossyTxn struct {
	clientv3.Txn
	kv     *lossyKV
	writes bool // a Then op puts the generation key
}

func (t *lossyTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *lossyTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *lossyTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		if op.IsPut() && string(op.KeyBytes()) == t.kv.genKey && !strings.Contains(string(op.ValueBytes()), `"fence:`) {
			t.writes = true
		}
	}
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *lossyTxn) Commit() (*clientv3.TxnResponse, error) {
	if !t.writes || !t.kv.armed.CompareAndSwap(true, false) {
		return t.Txn.Commit()
	}
	if t.kv.applied {
		if _, err := t.Txn.Commit(); err != nil {
			return nil, err
		}
		if t.kv.between != nil {
			t.kv.between()
		}
	}
	return nil, context.DeadlineExceeded
}

// TestCommitWhoseAnswerIsLost: a commit etcd applied but whose answer was lost is answered as made, at
// the revision it applied at; one etcd never saw is answered as an error and, fenced, can no longer
// apply (SPEC §6: an error changed nothing; a success is durable).
func TestCommitWhoseAnswerIsLost(t *testing.T) {
	for _, tc := range []struct {
		name             string
		applied, another bool // another: a second writer commits after the lost one applied
	}{{"applied", true, false}, {"applied, then another writer's commit", true, true}, {"not sent", false, false}} {
		applied := tc.applied
		t.Run(tc.name, func(t *testing.T) {
			te := startEtcd(t)
			prefix := te.prefix()
			ctx := context.Background()
			cli := te.client(t)
			lossy := &lossyKV{KV: cli.KV, applied: applied}
			cli.KV = lossy
			s, err := Open(ctx, cli, prefix)
			require.NoError(t, err)
			lossy.genKey = s.genKey()
			commitNext(t, s, storetest.Demo(t))
			before, base, err := s.Load(ctx)
			require.NoError(t, err)

			if tc.another {
				second := openStore(t, te, prefix)
				lossy.between = func() {
					cur, gen, err := second.Load(ctx)
					require.NoError(t, err)
					_, err = second.CommitAffecting(ctx, addSG(t, cur, "sg-second"), gen+1, []string{})
					require.NoError(t, err)
				}
			}
			lossy.armed.Store(true)
			next := addSG(t, before, "sg-lost-answer")
			rev, err := s.CommitAffecting(ctx, next, base+1, []string{})
			require.False(t, lossy.armed.Load(), "the commit's answer was lost")
			other := openStore(t, te, prefix)
			now, at, lerr := other.Load(ctx)
			require.NoError(t, lerr)
			_, has := now.SG("sg-lost-answer")
			if applied {
				require.NoError(t, err)
				if tc.another {
					assert.Less(t, rev, at, "answered at the revision it applied at, before the second writer's")
					_, second := now.SG("sg-second")
					assert.True(t, second)
				} else {
					assert.Equal(t, at, rev, "answered at the revision it applied at")
				}
				assert.True(t, has)
			} else {
				require.ErrorIs(t, err, context.DeadlineExceeded)
				assert.False(t, has, "an error changed nothing")
				assert.Greater(t, at, base, "the fence moved the generation on: the lost transaction cannot apply")
				assert.Equal(t, before.Topology(), now.Topology())
			}
			// The store goes on committing from what etcd holds.
			cur, gen, err := s.Load(ctx)
			require.NoError(t, err)
			_, err = s.CommitAffecting(ctx, addSG(t, cur, "sg-after"), gen+1, []string{})
			require.NoError(t, err)
		})
	}
}

// TestOpenWaitsForEtcdAndSaysSo: Open against an etcd that does not answer keeps trying, logging why,
// until its context ends, and then names the endpoints.
func TestOpenWaitsForEtcdAndSaysSo(t *testing.T) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: 100 * time.Millisecond, Logger: zap.NewNop()})
	require.NoError(t, err)
	defer cli.Close()
	var logs testkit.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), reachTry+1500*time.Millisecond)
	defer cancel()
	_, err = Open(ctx, cli, "/t", WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	require.ErrorContains(t, err, "reach etcd [127.0.0.1:1]")
	assert.Contains(t, logs.String(), "etcd does not answer yet; trying again")
}
