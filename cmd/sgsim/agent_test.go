package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/node"
)

// TestAgentFlagErrors: a bad or missing flag stops `sgsim agent` with an error naming it, before it
// connects to anything.
func TestAgentFlagErrors(t *testing.T) {
	_, err := runCore(t, "agent")
	require.ErrorContains(t, err, `required flag(s) "etcd", "host" not set`)
	for _, tt := range []struct {
		name string
		o    agentOptions
		msg  string
	}{
		{"unknown dataplane", agentOptions{AgentConfig: node.AgentConfig{Etcd: []string{"http://127.0.0.1:1"}, Host: "h1", Dataplane: "both"}},
			`--dataplane "both": want go or ebpf`},
		{"no etcd", agentOptions{AgentConfig: node.AgentConfig{Host: "h1"}}, "--etcd is required"},
		{"missing token file", agentOptions{AgentConfig: node.AgentConfig{Etcd: []string{"http://127.0.0.1:1"}, Host: "h1"}, AdminTokenFile: "/nonexistent/tokens"},
			"--admin-token-file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorContains(t, runAgent(context.Background(), tt.o), tt.msg)
		})
	}
}
