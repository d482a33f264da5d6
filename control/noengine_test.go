package control

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// TestNoEngine: without the built-in engine every change still reaches the added dataplanes.
func TestNoEngine(t *testing.T) {
	ctx := context.Background()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	c, err := New(ctx, store.NewMemory(), s, Options{NoEngine: true})
	require.NoError(t, err)
	require.Nil(t, c.Engine())
	rec := &recorder{}
	require.NoError(t, c.AddDataplane(ctx, rec))
	require.Len(t, rec.last(), 6, "a new dataplane gets every ENI")
	require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil))
	require.Len(t, rec.calls, 2)
	require.NotEmpty(t, rec.last())
	require.Equal(t, uint64(2), c.View().Generation)
}
