package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
)

// serve builds cfg's node and serves it on listen until it fails (these tests never get that far).
func serve(cfg Config, listen string) error {
	n, err := New(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Serve(context.Background(), listen, nil)
}

func TestServeStartErrors(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		listen string
		msg    string
	}{
		{"empty store, no topology", Config{}, "127.0.0.1:0", "give --topology"},
		{"missing topology", Config{Topology: "nope.json"}, "127.0.0.1:0", "nope.json"},
		{"bad listen address", Config{Topology: demoTopology}, "127.0.0.1:99999", "--listen"},
		{"unknown dataplane", Config{Topology: demoTopology, Dataplane: "xdp"}, "127.0.0.1:0", `--dataplane "xdp": want go, ebpf or both`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DataDir = t.TempDir()
			assert.ErrorContains(t, serve(tt.cfg, tt.listen), tt.msg)
		})
	}
	t.Run("bad topology names file and entry", func(t *testing.T) {
		dir := t.TempDir()
		bad := filepath.Join(dir, "bad.json")
		assert.NoError(t, os.WriteFile(bad, []byte(`{"accounts":[{"appId":""}],"securityGroups":[],"networkInterfaces":[]}`), 0o600))
		err := serve(Config{DataDir: dir, Topology: bad}, "127.0.0.1:0")
		assert.ErrorContains(t, err, "bad.json")
		assert.ErrorContains(t, err, "accounts[0].appId")
	})
	t.Run("in-memory node without a topology", func(t *testing.T) {
		assert.ErrorContains(t, serve(Config{}, "127.0.0.1:0"), "needs a topology")
	})
}
