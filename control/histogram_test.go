package control

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

// TestTimings: the initial compile counts as one apply; each committed change observes each step once;
// a refused change observes nothing; the histograms pass Prometheus' lint.
func TestTimings(t *testing.T) {
	c, _ := newCtrl(t)
	count := func(h prometheus.Histogram) uint64 {
		var m dto.Metric
		require.NoError(t, h.Write(&m))
		return m.GetHistogram().GetSampleCount()
	}
	tm := c.Timings()
	assert.Equal(t, uint64(1), count(tm.Apply))
	require.NoError(t, c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil))
	require.Error(t, c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-nope", nil, nil))
	assert.Equal(t, uint64(2), count(tm.Apply))
	for _, h := range []prometheus.Histogram{tm.Compile, tm.Stage, tm.Switch} {
		assert.Equal(t, uint64(1), count(h))
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tm.Collectors()...)
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	assert.Empty(t, problems)
}
