package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/internal/netlab"
)

const killAdminToken = "kill-test-admin"

// killTopology is one account and one SG the churned ENIs join.
var killTopology = `{
  "adminTokens": ["` + killAdminToken + `"],
  "accounts": [{"appId": "1"}],
  "securityGroups": [{"sgId": "sg-k", "appId": "1", "ingress": [{"ipProtocol": "tcp", "portRange": "22", "action": "ACCEPT"}], "egress": []}],
  "networkInterfaces": []
}`

// TestKillDuringENIChurn: ENIs are PUT one after another into an enforcing daemon (`--dataplane both`)
// that is SIGKILLed meanwhile; after the restart every ENI whose PUT was answered is stored, decided by
// its own table and, where it has a veth, attached again; no ENI is there that was never PUT, and at
// most the one PUT in flight at the kill is there unanswered.
// It stays whole: the PUTs, the kill and the checks after the restart share one record of answers.
func TestKillDuringENIChurn(t *testing.T) {
	requireKernel(t)
	lab := netlab.New(t, "nkl")
	const withVeth = 5
	for i := 0; i < 200; i += withVeth {
		lab.IP("-n", lab.Host, "link", "add", fmt.Sprintf("sgk-%d", i), "type", "veth", "peer", "name", fmt.Sprintf("sgkp-%d", i))
	}
	dir := t.TempDir()
	topo := filepath.Join(dir, "topology.json")
	require.NoError(t, os.WriteFile(topo, []byte(killTopology), 0o600))
	extra := &daemonExtra{Dataplane: DataplaneBoth, PinPath: pinDir(t), HostNetns: lab.Host}
	d := startDaemonWith(t, dir, true, extra, topo)

	c := &client.Native{Endpoint: d.base, Token: killAdminToken}
	eniOf := func(i int) client.ENISpec {
		e := client.ENISpec{NetworkInterfaceID: fmt.Sprintf("eni-k%d", i), AppID: "1",
			PrivateIPAddresses: []string{fmt.Sprintf("198.19.10.%d", 1+i)}, SgIDs: []string{"sg-k"}}
		if i%withVeth == 0 {
			e.HostInterface = fmt.Sprintf("sgk-%d", i)
		}
		return e
	}
	var mu sync.Mutex
	var acked []int
	inflight := -1
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			mu.Lock()
			inflight = i
			mu.Unlock()
			e, err := c.PutENI(context.Background(), eniOf(i))
			if err != nil {
				return // the daemon is gone
			}
			if e.HostInterface != "" && (e.Attached == nil || !*e.Attached) {
				t.Errorf("ENI %s answered before its interface was attached", e.NetworkInterfaceID)
			}
			mu.Lock()
			acked = append(acked, i)
			mu.Unlock()
		}
	}()
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 40 }, 30*time.Second, time.Millisecond)
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGKILL))
	_ = d.cmd.Wait()
	<-done
	mu.Lock()
	answered, lastSent := slices.Clone(acked), inflight
	mu.Unlock()

	d = startDaemonWith(t, dir, false, extra, "")
	c.Endpoint = d.base
	list, err := c.ListENIs(context.Background())
	require.NoError(t, err)
	stored := map[string]client.ENI{}
	for _, e := range list {
		stored[e.NetworkInterfaceID] = e
	}
	for _, i := range answered {
		want := eniOf(i)
		got, ok := stored[want.NetworkInterfaceID]
		if !assert.True(t, ok, "answered PUT of %s lost", want.NetworkInterfaceID) {
			continue
		}
		assert.Equal(t, want.PrivateIPAddresses, got.PrivateIPAddresses)
		if want.HostInterface != "" {
			assert.True(t, got.Attached != nil && *got.Attached, "%s attached again after the restart", want.NetworkInterfaceID)
		}
		port := 22
		raw, err := c.Check(context.Background(), client.CheckRequest{ENI: want.NetworkInterfaceID, Direction: "ingress",
			Protocol: "tcp", Remote: "198.18.0.9", Port: &port})
		require.NoError(t, err)
		assert.Contains(t, string(raw), `"sgId":"sg-k"`, "%s decided by its own table", want.NetworkInterfaceID)
	}
	for id := range stored {
		var i int
		_, err := fmt.Sscanf(id, "eni-k%d", &i)
		require.NoError(t, err)
		assert.True(t, slices.Contains(answered, i) || i == lastSent, "%s is stored but was never answered nor in flight", id)
	}
	t.Logf("%d PUTs answered before SIGKILL, %d ENIs stored after the restart", len(answered), len(stored))
}
