package control

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// TestCommitHookRetriesOnStale: with Options.Commit, a commit refused as stale (another writer got
// there first) reloads the store and re-runs the operation on what it holds, so neither change is
// lost; the note under WithCommitNote gets the store's revision and hosts, and View speaks that revision.
func TestCommitHookRetriesOnStale(t *testing.T) {
	ctx := context.Background()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	st := store.NewMemory()
	require.NoError(t, st.Commit(ctx, s, 10))
	attempts := 0
	hook := func(ctx context.Context, old, next *model.State, gen uint64) (Committed, error) {
		attempts++
		if attempts == 1 {
			// Another replica commits first: sg-web's ingress is rewritten.
			b := old.Edit()
			g, _ := old.SG("sg-web")
			other := *g
			other.Ingress = []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "8443", Action: "ACCEPT"}}
			require.NoError(t, b.PutSG(other))
			require.NoError(t, st.Commit(ctx, b.State(), 20))
			return Committed{}, fmt.Errorf("%w: revision %d", ErrStale, gen)
		}
		if err := st.Commit(ctx, next, 30); err != nil {
			return Committed{}, err
		}
		return Committed{Revision: 30, Hosts: []string{"h1"}}, nil
	}
	c, err := New(ctx, st, nil, Options{NoEngine: true, Commit: hook})
	require.NoError(t, err)
	cctx, note := WithCommitNote(ctx)
	require.NoError(t, c.ModifySecurityGroupPolicy(cctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil))
	assert.Equal(t, 2, attempts)
	assert.Equal(t, Committed{Revision: 30, Hosts: []string{"h1"}}, *note)
	assert.Equal(t, uint64(30), c.View().Generation)
	web, _ := c.View().State.SG("sg-web")
	assert.Equal(t, "8443", web.Ingress[0].PortRange, "the other writer's change is kept")
	db, _ := c.View().State.SG("sg-db")
	assert.Equal(t, []model.Rule{{Action: "ACCEPT"}}, db.Ingress, "and this call's")
}

// TestCommitHookGivesUp: a store that stays ahead of every attempt gets the call refused (6000), not
// retried forever; a failing hook's own error is an internal error naming it.
func TestCommitHookGivesUp(t *testing.T) {
	ctx := context.Background()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"always stale", ErrStale, "conflicting commits"},
		{"etcd away", errors.New("etcd unreachable"), "commit failed: etcd unreachable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hook := func(context.Context, *model.State, *model.State, uint64) (Committed, error) {
				return Committed{}, tt.err
			}
			c, err := New(ctx, store.NewMemory(), s, Options{NoEngine: true, Commit: hook})
			require.NoError(t, err)
			err = c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil)
			require.Error(t, err)
			assert.Equal(t, model.CodeInternal, model.CodeOf(err))
			assert.Contains(t, err.Error(), tt.want)
			assert.Equal(t, uint64(1), c.View().Generation, "nothing changed")
		})
	}
}
