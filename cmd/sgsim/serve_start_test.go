package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/node"
)

// startTopology has one ENI without a host interface and, with %s filled, one with.
const startTopology = `{
  "accounts": [{"appId": "1"}],
  "securityGroups": [{"sgId": "sg-1", "appId": "1", "ingress": [{"action": "ACCEPT"}], "egress": []}],
  "networkInterfaces": [
    {"networkInterfaceId": "eni-plain", "appId": "1", "privateIpAddresses": ["198.18.210.20"], "sgIds": ["sg-1"]}%s
  ]
}`

func writeTopology(t *testing.T, extraENI string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "topo.json")
	require.NoError(t, os.WriteFile(p, []byte(strings.Replace(startTopology, "%s", extraENI, 1)), 0o600))
	return p
}

// TestServeFlagErrors: bad flag values stop the start with an error naming the flag, before anything is
// loaded.
func TestServeFlagErrors(t *testing.T) {
	topo := writeTopology(t, "")
	tests := []struct {
		name string
		o    serveOptions
		msg  string
	}{
		{"unknown dataplane", serveOptions{Config: node.Config{Dataplane: "xdp"}}, `--dataplane "xdp": want go, ebpf or both`},
		{"missing host netns", serveOptions{Config: node.Config{Dataplane: dataplaneEBPF, HostNetns: "sgs-no-such-ns"}}, "--host-netns sgs-no-such-ns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.Listen = "127.0.0.1:0"
			tt.o.DataDir, tt.o.Topology = t.TempDir(), topo
			require.ErrorContains(t, runServe(context.Background(), tt.o), tt.msg)
		})
	}
}

// TestServeMissingHostInterface: an ENI whose hostInterface does not exist stops the start with an error
// naming the ENI, the interface and the namespace, and nothing is attached.
func TestServeMissingHostInterface(t *testing.T) {
	requireKernel(t)
	lab := newVMLab(t)
	topo := writeTopology(t, `,
    {"networkInterfaceId": "eni-gone", "appId": "1", "privateIpAddresses": ["198.18.210.21"], "sgIds": ["sg-1"],
     "hostInterface": "sgs-gone"}`)
	err := runServe(context.Background(), serveOptions{Listen: "127.0.0.1:0", Config: node.Config{
		DataDir: t.TempDir(), Topology: topo, Dataplane: dataplaneEBPF, PinPath: pinDir(t), HostNetns: lab.Host}})
	require.ErrorContains(t, err, "ENI eni-gone: hostInterface sgs-gone does not exist in network namespace "+lab.Host)
}

// TestServeCheckByDataplane: /sgsim/v1/check is answered by the Go engine with go and both, and refused
// with 409 by an ebpf-only daemon, which keeps no Go engine.
func TestServeCheckByDataplane(t *testing.T) {
	requireKernel(t)
	lab := newVMLab(t)
	topo, err := os.ReadFile(writeTopology(t, ""))
	require.NoError(t, err)
	for _, tt := range []struct {
		mode   string
		status int
	}{{dataplaneGo, http.StatusOK}, {dataplaneEBPF, http.StatusConflict}, {dataplaneBoth, http.StatusOK}} {
		t.Run(tt.mode, func(t *testing.T) {
			d := startDaemon(t, lab, tt.mode, t.TempDir(), pinDir(t), string(topo))
			resp, err := http.Post(d.base+"/sgsim/v1/check", "application/json",
				strings.NewReader(`{"eni":"eni-plain","direction":"ingress","protocol":"tcp","remote":"198.18.210.9","port":22}`))
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, tt.status, resp.StatusCode)
			require.NoError(t, d.stop())
		})
	}
}
