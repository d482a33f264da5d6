package node

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/model"
)

// TestFleetAgentReadyOnlyInForce: an eBPF agent whose host namespace does not exist yet reads its share
// but cannot attach it: it is not ready (503, and so are its other endpoints but /livez) however often
// it retries. Once the namespace and the ENI's veth appear it attaches, and when /readyz first answers
// 200 the veth is attached and real TCP gets what the tables say, with no wait.
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
	code, body := agentGet(t, base, "/livez")
	assert.Equal(t, http.StatusOK, code, "alive all the same: %s", body)

	lab := netlab.New(t, "nfready")
	require.Equal(t, hostNS, lab.Host)
	lab.AddVM("e1", "sgq-e1", "198.18.224.1")
	lab.AddVM("cli", "sgq-cli", "198.18.224.9")
	for _, port := range []string{"80", "8080"} {
		lab.EchoTCP("e1", "198.18.224.1:"+port)
	}
	require.Eventually(t, func() bool { code, _ := agentGet(t, base, "/readyz"); return code == http.StatusOK },
		15*time.Second, 5*time.Millisecond, "ready once the veth is there; its log: %v", rec)
	code, body = agentGet(t, base, "/sgsim/v1/enis/e1")
	require.Equal(t, http.StatusOK, code, body)
	assert.True(t, strings.Contains(body, `"attached":true`), "attached when ready: %s", body)
	assert.NoError(t, lab.EchoRoundTrip("cli", "198.18.224.1:80", 5*time.Second))
	assert.Error(t, lab.EchoRoundTrip("cli", "198.18.224.1:8080", refusedAfter))
}

// TestFleetEBPFAgentRestartedPastCompaction: an eBPF agent stops; its pinned program keeps the last
// tables in force while calls change its ENI's SG and etcd is compacted past everything it heard.
// Restarted on the same pins, it resyncs: when it is ready the kernel enforces the final state (no stale
// table), and it acknowledges the last change.
func TestFleetEBPFAgentRestartedPastCompaction(t *testing.T) {
	requireKernel(t)
	t.Parallel()
	pl := newPinnedAgentLab(t, "nfpin", "sgp", "198.18.225", "hp", "80", "8080", "9090")
	lab, etcd, replica, pin, through, ready := pl.lab, pl.etcd, pl.replica, pl.pin, pl.through, pl.ready
	base, stop := startEBPFAgent(t, etcd.Endpoint(), "hp", lab.Host, pin, nil)
	ready(base)
	through("80", true)
	through("8080", false)
	stop()
	through("80", true) // the pinned tables, in force with no agent
	through("8080", false)

	var last *api.Enforcement
	for _, port := range []int{9090, 8080} {
		params := policy("sg-web", port)
		params.Set("egress.0.action", "ACCEPT")
		resp, err := tencentOf(replica).Call(context.Background(), "ModifySecurityGroupPolicy", params)
		require.NoError(t, err)
		require.NoError(t, resp.Err())
		last = enforcementOf(t, resp.Body)
		require.NotNil(t, last, "%s", resp.Body)
		assert.Equal(t, api.Enforcement{Revision: last.Revision, Hosts: 1, Pending: []string{}, Down: []string{"hp"}}, *last,
			"a stopped agent's host is down")
	}
	through("80", true) // still the old tables: nobody updated them
	_, latest, err := replica.fleet.st.Load(context.Background())
	require.NoError(t, err)
	_, err = etcd.Client(t).Compact(context.Background(), int64(latest))
	require.NoError(t, err)

	base, _ = startEBPFAgent(t, etcd.Endpoint(), "hp", lab.Host, pin, nil)
	ready(base)
	through("8080", true)
	through("80", false)
	through("9090", false)
	// Ready means in force; the ack follows it.
	var now *api.Enforcement
	require.Eventually(t, func() bool {
		_, now = change(t, replica, last.Revision)
		return now != nil && len(now.Down)+len(now.Pending) == 0
	}, 10*time.Second, 5*time.Millisecond, "registered again and acknowledged")
	assert.Equal(t, api.Enforcement{Revision: last.Revision, Hosts: 1, Pending: []string{}, Down: []string{}}, *now, "acknowledged")
}

// TestFleetReplicaReadyFollowsEtcd: a replica cut off from etcd answers /readyz (and /healthz) 503
// naming etcd and why, /livez 200; reconnected, 200 again.
func TestFleetReplicaReadyFollowsEtcd(t *testing.T) {
	t.Parallel()
	proxy := startCutProxy(t, etcdtest.Start(t).Endpoint())
	n := newReplica(t, proxy.Endpoint(), fleetTopology(t), time.Second)
	for _, path := range []string{"/readyz", "/healthz", "/livez"} {
		w := asFleetAdmin(n, http.MethodGet, path, "")
		assert.Equal(t, http.StatusOK, w.Code, "%s: %s", path, w.Body)
	}
	proxy.Cut()
	require.Eventually(t, func() bool {
		return asFleetAdmin(n, http.MethodGet, "/readyz", "").Code == http.StatusServiceUnavailable
	},
		10*time.Second, 5*time.Millisecond, "not ready once etcd does not answer")
	for _, path := range []string{"/readyz", "/healthz"} {
		w := asFleetAdmin(n, http.MethodGet, path, "")
		assert.Equal(t, http.StatusServiceUnavailable, w.Code, path)
		assert.Contains(t, w.Body.String(), "etcd "+proxy.Endpoint()+" unreachable", path)
	}
	w := asFleetAdmin(n, http.MethodGet, "/livez", "")
	assert.Equal(t, http.StatusOK, w.Code, "alive all the same: %s", w.Body)
	w = asFleetAdmin(n, http.MethodGet, fmt.Sprintf("/sgsim/v1/changes/%d", n.Controller().View().Generation), "")
	assert.Equal(t, http.StatusServiceUnavailable, w.Code, "a change asked of an unreachable etcd: %s", w.Body)
	proxy.Restore()
	require.Eventually(t, func() bool { return asFleetAdmin(n, http.MethodGet, "/readyz", "").Code == http.StatusOK },
		15*time.Second, 5*time.Millisecond, "ready once etcd answers again")
}

// TestFleetAgentNotReadyWhileCutOff: an agent cut off from etcd keeps its share in force but hears of
// no change: /readyz answers 503 with why once its lease or watch fails, /livez 200; reconnected, it
// resyncs and is ready again.
func TestFleetAgentNotReadyWhileCutOff(t *testing.T) {
	t.Parallel()
	etcdEndpoint := etcdtest.Start(t).Endpoint()
	newReplica(t, etcdEndpoint, fleetTopology(t), time.Second)
	proxy := startCutProxy(t, etcdEndpoint)
	ctx, cancel := context.WithCancel(context.Background())
	addrc, done := make(chan string, 1), make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, AgentConfig{Etcd: []string{proxy.Endpoint()}, EtcdPrefix: fleetPrefix, Host: "h1", Listen: "127.0.0.1:0",
			Ready: func(addr string) { addrc <- addr }, Logger: slog.New(slog.DiscardHandler)})
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	base := "http://" + <-addrc
	ready := func() bool { code, _ := agentGet(t, base, "/readyz"); return code == http.StatusOK }
	require.Eventually(t, ready, 15*time.Second, 5*time.Millisecond, "ready with its share in force")

	proxy.Cut()
	require.Eventually(t, func() bool { return !ready() }, 30*time.Second, 10*time.Millisecond, "not ready once cut off")
	code, body := agentGet(t, base, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code, body)
	assert.Contains(t, body, `"reason":`, "the reason is the agent's failure (a lost lease, a failed watch)")
	assert.NotContains(t, body, "not in force yet", "its share is in force all along")
	code, body = agentGet(t, base, "/livez")
	assert.Equal(t, http.StatusOK, code, "alive all the same: %s", body)
	proxy.Restore()
	require.Eventually(t, ready, 30*time.Second, 10*time.Millisecond, "ready again once reconnected")
}

// TestFleetEBPFAgentRestartedAfterADelete: an ENI deleted while its eBPF agent is stopped (its pinned
// program still filtering the ENI's interface with the last tables) is gone from the kernel once the
// restarted agent has acknowledged the delete: its tables freed and its interface detached (SPEC §8),
// not left filtered by what an earlier process put there.
func TestFleetEBPFAgentRestartedAfterADelete(t *testing.T) {
	requireKernel(t)
	t.Parallel()
	pl := newPinnedAgentLab(t, "nfdel", "sgd", "198.18.226", "hd", "80", "8080")
	lab, etcd, replica, pin, through, ready := pl.lab, pl.etcd, pl.replica, pl.pin, pl.through, pl.ready
	base, stop := startEBPFAgent(t, etcd.Endpoint(), "hd", lab.Host, pin, nil)
	ready(base)
	through("80", true)
	through("8080", false)
	stop()
	w := asFleetAdmin(replica, http.MethodDelete, "/sgsim/v1/enis/e1", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	del := enforcementOf(t, w.Body.Bytes())
	require.NotNil(t, del, "%s", w.Body)
	assert.Equal(t, []string{"hd"}, del.Down, "the stopped agent's host is down")
	through("8080", false) // the pinned tables, in force with no agent

	base, _ = startEBPFAgent(t, etcd.Endpoint(), "hd", lab.Host, pin, nil)
	ready(base)
	require.Eventually(t, func() bool {
		_, now := change(t, replica, del.Revision)
		return now != nil && len(now.Down)+len(now.Pending) == 0
	}, 10*time.Second, 5*time.Millisecond, "the delete acknowledged")
	code, body := agentGet(t, base, "/sgsim/v1/enis")
	require.Equal(t, http.StatusOK, code, body)
	assert.NotContains(t, body, `"e1"`)
	through("8080", true) // detached: nothing filters the interface any more
	through("80", true)
	for _, hook := range []string{"ingress", "egress"} {
		matches, err := filepath.Glob(filepath.Join(pin, "link-*-"+hook))
		require.NoError(t, err)
		assert.Empty(t, matches, "no pinned %s link left", hook)
	}
}

// pinnedAgentLab is a lab of one VM e1 (NET.1, its veth PREFIX-e1, ENI e1 on host, sg-web admitting
// tcp/80) with echo servers on ports and a client cli (NET.9), an etcd, a replica seeded with it, the
// host's pin directory, and checks of a port through e1 and of an agent's readiness.
type pinnedAgentLab struct {
	lab     *netlab.Lab
	etcd    *etcdtest.Server
	replica *Node
	pin     string
	through func(port string, want bool)
	ready   func(base string)
}

func newPinnedAgentLab(t *testing.T, name, prefix, net, host string, ports ...string) pinnedAgentLab {
	t.Helper()
	lab := netlab.New(t, name)
	lab.AddVM("e1", prefix+"-e1", net+".1")
	lab.AddVM("cli", prefix+"-cli", net+".9")
	for _, port := range ports {
		lab.EchoTCP("e1", net+".1:"+port)
	}
	seed, err := model.NewState(model.Topology{
		AdminTokens: []string{fleetAdmin},
		Accounts:    []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret}},
		SecurityGroups: []model.SecurityGroup{{SgID: "sg-web", AppID: fleetApp, SgName: "web", Egress: []model.Rule{{Action: "ACCEPT"}},
			Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"}}}},
		NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: "e1", AppID: fleetApp,
			PrivateIPAddresses: []string{net + ".1"}, SgIDs: []string{"sg-web"}, Host: host, HostInterface: prefix + "-e1"}},
	})
	require.NoError(t, err)
	etcd := etcdtest.Start(t)
	pl := pinnedAgentLab{lab: lab, etcd: etcd, replica: newReplica(t, etcd.Endpoint(), seed, 2*time.Second), pin: hostPinDir(t, host)}
	pl.through = func(port string, want bool) {
		t.Helper()
		if want {
			assert.NoError(t, lab.EchoRoundTrip("cli", net+".1:"+port, 5*time.Second), "tcp/%s through", port)
		} else {
			assert.Error(t, lab.EchoRoundTrip("cli", net+".1:"+port, refusedAfter), "tcp/%s dropped", port)
		}
	}
	pl.ready = func(base string) {
		t.Helper()
		require.Eventually(t, func() bool { code, _ := agentGet(t, base, "/readyz"); return code == http.StatusOK },
			15*time.Second, 5*time.Millisecond, "agent ready")
	}
	return pl
}
