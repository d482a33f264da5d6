package node

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/model"
)

// TestFleetAgentReadyOnlyInForce: an eBPF agent whose host namespace does not exist yet reads its share
// but cannot attach it: it is not ready (503, and so are its other endpoints) however often it retries.
// Once the namespace and the ENI's veth appear it attaches, and when /readyz first answers 200 the
// veth is attached and real TCP gets what the tables say, with no wait.
func TestFleetAgentReadyOnlyInForce(t *testing.T) {
	requireKernel(t)
	t.Parallel()
	seed, err := model.NewState(model.Topology{
		Accounts: []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret}},
		SecurityGroups: []model.SecurityGroup{{SgID: "sg-web", AppID: fleetApp, SgName: "web", Egress: []model.Rule{{Action: "ACCEPT"}},
			Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"}}}},
		NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: "e1", AppID: fleetApp,
			PrivateIPAddresses: []string{"198.18.224.1"}, SgIDs: []string{"sg-web"}, Host: "hr", HostInterface: "sgq-e1"}},
	})
	require.NoError(t, err)
	endpoint := etcdtest.Start(t).Endpoint()
	newReplica(t, endpoint, seed, 5*time.Second)
	hostNS := netlab.HostNamespace("nfready")
	rec := &logRecorder{}
	base := runEBPFAgent(t, endpoint, "hr", hostNS, slog.New(rec))

	require.Eventually(t, func() bool { return rec.has("resyncing", hostNS) }, 10*time.Second, 5*time.Millisecond,
		"the agent read its share and failed to attach it")
	for _, path := range []string{"/readyz", "/healthz", "/sgsim/v1/enis/e1"} {
		code, body := agentGet(t, base, path)
		assert.Equal(t, http.StatusServiceUnavailable, code, "%s: %s", path, body)
		assert.Contains(t, body, "not in force yet", path)
	}

	lab := netlab.New(t, "nfready")
	require.Equal(t, hostNS, lab.Host)
	lab.AddVM("e1", "sgq-e1", "198.18.224.1")
	lab.AddVM("cli", "sgq-cli", "198.18.224.9")
	for _, port := range []string{"80", "8080"} {
		lab.EchoTCP("e1", "198.18.224.1:"+port)
	}
	require.Eventually(t, func() bool { code, _ := agentGet(t, base, "/readyz"); return code == http.StatusOK },
		15*time.Second, 5*time.Millisecond, "ready once the veth is there; its log: %v", rec)
	code, body := agentGet(t, base, "/sgsim/v1/enis/e1")
	require.Equal(t, http.StatusOK, code, body)
	assert.True(t, strings.Contains(body, `"attached":true`), "attached when ready: %s", body)
	assert.NoError(t, lab.EchoRoundTrip("cli", "198.18.224.1:80", 5*time.Second))
	assert.Error(t, lab.EchoRoundTrip("cli", "198.18.224.1:8080", refusedAfter))
}
