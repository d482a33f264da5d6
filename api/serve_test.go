package api

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestServeStartErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  ServeConfig
		msg  string
	}{
		{"empty store, no topology", ServeConfig{Listen: "127.0.0.1:0"}, "give --topology"},
		{"missing topology", ServeConfig{Listen: "127.0.0.1:0", Topology: "nope.json"}, "nope.json"},
		{"bad listen address", ServeConfig{Listen: "127.0.0.1:99999", Topology: demoTopology}, "--listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DataDir = t.TempDir()
			err := Serve(context.Background(), tt.cfg)
			assert.ErrorContains(t, err, tt.msg)
		})
	}
	t.Run("bad topology names file and entry", func(t *testing.T) {
		dir := t.TempDir()
		bad := filepath.Join(dir, "bad.json")
		assert.NoError(t, os.WriteFile(bad, []byte(`{"accounts":[{"appId":""}],"securityGroups":[],"networkInterfaces":[]}`), 0o600))
		err := Serve(context.Background(), ServeConfig{Listen: "127.0.0.1:0", DataDir: dir, Topology: bad})
		assert.ErrorContains(t, err, "bad.json")
		assert.ErrorContains(t, err, "accounts[0].appId")
	})
}
