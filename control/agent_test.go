package control

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// The fleet's split, end to end over one store: a Controller writes; an agent that sees only the
// store's Watch rebuilds each committed state from its Change and runs the Applier alone. It ends with
// the writer's tables.
func TestAgentFollowsTheStoreWatch(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory()
	c, _ := newCtrlWith(t, st)
	first := c.View()
	agent := NewApplier(first.State, first.Generation, ApplierOptions{Factory: dataplane.ClassifierFactory})

	applied := make(chan uint64, 16)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		state := first.State
		done <- st.Watch(wctx, first.Generation, func(ch store.Change) error {
			next, err := ch.Apply(state)
			if err != nil {
				return err
			}
			if err := agent.Apply(wctx, next, ch.Revision); err != nil {
				return err
			}
			state = next
			applied <- ch.Revision
			return nil
		})
	}()

	require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-ssh", []model.Rule{{SgID: "sg-web", Action: "ACCEPT"}}, nil))
	_, err := c.PortAction(ctx, "1250000001", "sg-web", true, []string{"eni-spare"})
	require.NoError(t, err)
	g, err := c.CreateSecurityGroup(ctx, "1250000001", "agent", "", 0)
	require.NoError(t, err)
	require.NoError(t, c.ModifySecurityGroupsOfNetworkInterface(ctx, "1250000001", []ENISGs{{ENI: "eni-web1", SgIDs: []string{g.SgID, "sg-ssh"}}}))
	for want := first.Generation + 1; want <= c.View().Generation; want++ {
		select {
		case got := <-applied:
			require.Equal(t, want, got)
		case err := <-done:
			t.Fatalf("watch ended: %v", err)
		}
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.Equal(t, c.View().Generation, agent.View().Generation)
	assert.Equal(t, c.View().Tables, agent.View().Tables)
	for id, want := range c.View().Tables {
		got, ok := agent.Engine().Snapshot().ENI(id)
		require.True(t, ok)
		assert.Equal(t, want, got.Tables, id)
	}
}
