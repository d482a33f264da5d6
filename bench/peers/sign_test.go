package peers

import (
	"context"
	"log/slog"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// TestSignModify: calls signed ahead are accepted by the daemon's handler in the order signed, each
// with its own Nonce, and a second send of one is refused as a replay.
func TestSignModify(t *testing.T) {
	rules := []model.Rule{{IPProtocol: "udp", PortRange: "9", Action: "DROP"}, {Action: "ACCEPT"}}
	state, err := model.NewState(BenchTopology(rules, benchSecretID, benchSecretKey))
	require.NoError(t, err)
	quiet := slog.New(slog.DiscardHandler)
	ctrl, err := control.New(context.Background(), store.NewMemory(), state, control.Options{Logger: quiet})
	require.NoError(t, err)
	d := &Daemon{host: "127.0.0.1:9", secretKey: benchSecretKey,
		client: client.InProcess(api.NewHandler(ctrl, api.Options{Logger: quiet}))}
	first, second := d.SignModify(rules[1:]), d.SignModify(rules)
	require.NoError(t, first.err)
	assert.Equal(t, "1", first.call.Params.Get("Nonce"))
	assert.Equal(t, "2", second.call.Params.Get("Nonce"))
	assert.Equal(t, http.MethodPost, first.call.Method)
	for _, call := range []SignedModify{first, second} {
		_, _, err := d.Send(context.Background(), call)
		require.NoError(t, err)
	}
	g, _ := ctrl.View().State.SG(BenchSG)
	assert.Len(t, g.Ingress, 2)
	_, _, err = d.Send(context.Background(), first)
	assert.ErrorContains(t, err, `"code":4500`)
}
