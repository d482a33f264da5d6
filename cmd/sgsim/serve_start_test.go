package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/node"
)

// startTopology has one ENI without a host interface and, with %s filled, one with.
const startTopology = `{
  "adminTokens": ["lab-admin"],
  "accounts": [{"appId": "1"}],
  "securityGroups": [{"sgId": "sg-1", "appId": "1", "ingress": [{"action": "ACCEPT"}], "egress": []}],
  "networkInterfaces": [
    {"networkInterfaceId": "eni-plain", "appId": "1", "privateIpAddresses": ["198.18.210.20"], "sgIds": ["sg-1"]}%s
  ]
}`

func writeTopology(t *testing.T, extraENI string) string {
	t.Helper()
	p := testkit.WriteFile(t, "topo.json", strings.Replace(startTopology, "%s", extraENI, 1))
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
		{"a negative limit", serveOptions{Config: node.Config{Control: control.Options{Limits: &control.Limits{RulesPerDirection: -1,
			SGsPerENI: 5, SGsPerProject: 50, ENIsPerSG: 2000, SGRefRulesPerSG: 10}}}}, "--max-rules -1: must be at least 1"},
		{"a zero limit", serveOptions{Config: node.Config{Control: control.Options{Limits: &control.Limits{RulesPerDirection: 100,
			SGsPerENI: 0, SGsPerProject: 50, ENIsPerSG: 2000, SGRefRulesPerSG: 10}}}}, "--max-sgs-per-eni 0: must be at least 1"},
		{"an invalid listen address", serveOptions{Listen: "127.0.0.1:99999"}, "--listen 127.0.0.1:99999"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.o.Listen == "" {
				tt.o.Listen = "127.0.0.1:0"
			}
			tt.o.DataDir, tt.o.Topology = filepath.Join(t.TempDir(), "data"), topo
			require.ErrorContains(t, runServe(context.Background(), tt.o), tt.msg)
			_, err := os.Stat(tt.o.DataDir)
			assert.ErrorIs(t, err, os.ErrNotExist, "nothing was seeded or created")
		})
	}
}

// TestServeStartsBeforeItsInterfaces: an ENI whose hostInterface does not exist yet does not stop the
// start (SPEC §8); its interface is attached once it appears.
func TestServeStartsBeforeItsInterfaces(t *testing.T) {
	requireKernel(t)
	lab := newVMLab(t)
	topo, err := os.ReadFile(writeTopology(t, `,
    {"networkInterfaceId": "eni-gone", "appId": "1", "privateIpAddresses": ["198.18.210.21"], "sgIds": ["sg-1"],
     "hostInterface": "sgs-gone"}`))
	require.NoError(t, err)
	pin := pinDir(t)
	d := startDaemon(t, lab, dataplaneEBPF, t.TempDir(), pin, string(topo))
	lab.AddVM("eni-gone", "sgs-gone", "198.18.210.21")
	ifindex, err := netns.Do(lab.Host, func() (int, error) {
		ifc, err := net.InterfaceByName("sgs-gone")
		if err != nil {
			return 0, err
		}
		return ifc.Index, nil
	})
	require.NoError(t, err)
	// The daemon pins the links it attaches.
	require.Eventually(t, func() bool {
		_, err := os.Stat(filepath.Join(pin, fmt.Sprintf("link-%d-ingress", ifindex)))
		return err == nil
	}, 2*time.Second, 5*time.Millisecond, "sgs-gone attached once it appeared")
	require.NoError(t, d.stop())
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
			req, err := http.NewRequest(http.MethodPost, d.base+"/sgsim/v1/check",
				strings.NewReader(`{"eni":"eni-plain","direction":"ingress","protocol":"tcp","remote":"198.18.210.9","port":22}`))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer lab-admin") // inspection needs a credential
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, tt.status, resp.StatusCode)
			require.NoError(t, d.stop())
		})
	}
}
