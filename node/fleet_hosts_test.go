package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/model"
)

const agentAdmin = "agent-admin"

// realHost is one host of a fleet lab: its namespaces, with an unfiltered client VM "cli", and the
// ENIs of the topology placed on it.
type realHost struct {
	name string
	lab  *netlab.Lab
	enis []string
	base string // its agent's listener
}

// runEBPFAgent runs RunAgent for host with the eBPF dataplane on the host interfaces in netns, its own
// pin path and listener, until the test ends; it returns the listener's base URL.
func runEBPFAgent(t *testing.T, endpoint, host, netns string, log *slog.Logger) string {
	t.Helper()
	base, _ := startEBPFAgent(t, endpoint, host, netns, hostPinDir(t, host), log)
	return base
}

// startEBPFAgent is runEBPFAgent on the pin path pin, with stop to end the agent before the test does
// (a clean stop: its pins stay, and so do its tables in the kernel).
func startEBPFAgent(t *testing.T, endpoint, host, netns, pin string, log *slog.Logger) (base string, stop func()) {
	t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrc, done := make(chan string, 1), make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, AgentConfig{Etcd: []string{endpoint}, EtcdPrefix: fleetPrefix, Host: host, Dataplane: DataplaneEBPF,
			PinPath: pin, HostNetns: netns, Listen: "127.0.0.1:0", Ready: func(addr string) { addrc <- addr },
			API: api.Options{AdminTokens: []string{agentAdmin}}, Logger: log})
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			assert.NoError(t, <-done, "agent %s stopped", host)
		})
	}
	t.Cleanup(stop)
	select {
	case addr := <-addrc:
		return "http://" + addr, stop
	case err := <-done:
		once.Do(cancel) // done is drained: stop has nothing left to wait for
		t.Fatalf("agent %s: %v", host, err)
		return "", stop
	}
}

// hostPinDir is host's bpffs directory in this test, removed when it ends: agents of one test pin apart,
// or each would adopt the others' maps.
func hostPinDir(t *testing.T, host string) string {
	pin := pinDir(t) + "-" + host
	t.Cleanup(func() { _ = os.RemoveAll(pin) })
	return pin
}

// agentGet is GET path on an agent's listener with the agent's admin token: status and body.
func agentGet(t *testing.T, base, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+agentAdmin)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// probe is one connection attempt from a host's client VM to an ENI: TCP (an echo round trip) or UDP
// (a datagram and its echo), and whether the test expects it to get through.
type probe struct {
	host  *realHost
	eni   string
	proto string // "tcp" or "udp"
	port  int
	want  bool
}

func (p probe) String() string {
	return fmt.Sprintf("%s: %s %s:%d", p.host.name, p.proto, p.eni, p.port)
}

// refusedAfter is how long a probe expected to be dropped waits for an answer; one expected through
// gets far longer, so only a real drop fails it.
const refusedAfter = 400 * time.Millisecond

// runProbes runs every probe at once (each refusal costs refusedAfter) and asserts each got through exactly
// when it was expected to.
func runProbes(t *testing.T, ips map[string]string, probes []probe) {
	t.Helper()
	got := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			timeout := refusedAfter
			if p.want {
				timeout = 5 * time.Second
			}
			addr := fmt.Sprintf("%s:%d", ips[p.eni], p.port)
			if p.proto == "udp" {
				got[i] = p.host.lab.EchoRoundTripUDP("cli", addr, timeout)
			} else {
				got[i] = p.host.lab.EchoRoundTrip("cli", addr, timeout)
			}
		})
	}
	wg.Wait()
	for i, p := range probes {
		if p.want {
			assert.NoError(t, got[i], "%s: want through", p)
		} else {
			assert.Error(t, got[i], "%s: want dropped", p)
		}
	}
}

// webProbes: the sg-web ENIs of hosts, admitting tcp/tcpPort and udp/udpPort and nothing else of the
// ports the test uses.
func webProbes(hosts []*realHost, tcpPort, udpPort int) []probe {
	var out []probe
	for _, h := range hosts {
		for _, eni := range h.enis {
			if eni == "e3s" { // sg-solo's
				continue
			}
			for _, port := range []int{80, 8080} {
				out = append(out, probe{host: h, eni: eni, proto: "tcp", port: port, want: port == tcpPort})
			}
			for _, port := range []int{53, 5353} {
				out = append(out, probe{host: h, eni: eni, proto: "udp", port: port, want: port == udpPort})
			}
		}
	}
	return out
}

// soloProbes: h's sg-solo ENI e3s, admitting tcp/tcpPort and not the other of 80 and 9090.
func soloProbes(h *realHost, tcpPort int) []probe {
	return []probe{
		{host: h, eni: "e3s", proto: "tcp", port: 80, want: tcpPort == 80},
		{host: h, eni: "e3s", proto: "tcp", port: 9090, want: tcpPort == 9090},
	}
}

// TestFleetRealHostsEnforceBeforeTheAnswer: three network namespaces are three hosts, each with its own
// agent enforcing with the eBPF program on its ENIs' veths. One signed ModifySecurityGroupPolicy sent
// over a real socket to a replica changes what real TCP and UDP do on all three hosts by the time it is
// answered, and the answer names three hosts, none pending; a call that touches one host is waited for
// on that host only and changes nothing on the others.
// It stays whole: the three hosts, their agents and the traffic checks are one fleet's run.
func TestFleetRealHostsEnforceBeforeTheAnswer(t *testing.T) {
	requireKernel(t)
	t.Parallel()
	// h1 holds e1, h2 e2 (both in sg-web), h3 e3 (sg-web) and e3s (sg-solo); host hN is 198.18.22N.0/24.
	hosts := []*realHost{{name: "h1", enis: []string{"e1"}}, {name: "h2", enis: []string{"e2"}}, {name: "h3", enis: []string{"e3", "e3s"}}}
	ips := map[string]string{}
	accept := model.Rule{Action: "ACCEPT"}
	topo := model.Topology{
		Accounts: []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret}},
		SecurityGroups: []model.SecurityGroup{
			{SgID: "sg-web", AppID: fleetApp, SgName: "web", Egress: []model.Rule{accept}, Ingress: []model.Rule{
				{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"},
				{IPProtocol: "udp", CidrIP: "0.0.0.0/0", PortRange: "53", Action: "ACCEPT"}}},
			{SgID: "sg-solo", AppID: fleetApp, SgName: "solo", Egress: []model.Rule{accept}, Ingress: []model.Rule{
				{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"}}},
		},
	}
	for i, h := range hosts {
		h.lab = netlab.New(t, "nfr"+h.name)
		subnet := fmt.Sprintf("198.18.%d", 221+i)
		h.lab.AddVM("cli", "sgr-cli", subnet+".9") // no ENI claims it: unfiltered
		for j, eni := range h.enis {
			ips[eni] = fmt.Sprintf("%s.%d", subnet, j+1)
			hostIf := "sgr-" + eni
			h.lab.AddVM(eni, hostIf, ips[eni])
			for _, port := range []int{80, 8080, 9090} {
				h.lab.EchoTCP(eni, fmt.Sprintf("%s:%d", ips[eni], port))
			}
			for _, port := range []int{53, 5353} {
				h.lab.EchoUDP(eni, fmt.Sprintf("%s:%d", ips[eni], port))
			}
			sg := "sg-web"
			if eni == "e3s" {
				sg = "sg-solo"
			}
			topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{NetworkInterfaceID: eni, AppID: fleetApp,
				PrivateIPAddresses: []string{ips[eni]}, SgIDs: []string{sg}, Host: h.name, HostInterface: hostIf})
		}
	}
	seed, err := model.NewState(topo)
	require.NoError(t, err)
	endpoint := etcdtest.Start(t).Endpoint()
	replica := newReplica(t, endpoint, seed, 10*time.Second)
	srv := httptest.NewServer(replica.Handler())
	t.Cleanup(srv.Close)
	tencent := &client.Tencent{Endpoint: srv.URL, SecretID: fleetID, SecretKey: fleetSecret, HTTP: srv.Client()}

	for _, h := range hosts {
		h.base = runEBPFAgent(t, endpoint, h.name, h.lab.Host, nil)
	}
	for _, h := range hosts {
		require.Eventually(t, func() bool { code, _ := agentGet(t, h.base, "/readyz"); return code == http.StatusOK },
			15*time.Second, 10*time.Millisecond, "agent %s ready", h.name)
		for _, eni := range h.enis { // a ready agent has attached its share
			code, body := agentGet(t, h.base, "/sgsim/v1/enis/"+eni)
			require.Equal(t, http.StatusOK, code, body)
			require.Contains(t, body, `"attached":true`, "agent %s attached %s", h.name, eni)
		}
	}
	runProbes(t, ips, append(webProbes(hosts, 80, 53), soloProbes(hosts[2], 80)...))

	// sg-web is on all three hosts: the answer waits for each, and each enforces it when it comes.
	params := valuesOf(map[string]string{"sgId": "sg-web", "egress.0.action": "ACCEPT",
		"ingress.0.ipProtocol": "tcp", "ingress.0.cidrIp": "0.0.0.0/0", "ingress.0.portRange": "8080", "ingress.0.action": "ACCEPT",
		"ingress.1.ipProtocol": "udp", "ingress.1.cidrIp": "0.0.0.0/0", "ingress.1.portRange": "5353", "ingress.1.action": "ACCEPT"})
	resp, err := tencent.Call(context.Background(), "ModifySecurityGroupPolicy", params)
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e, "%s", resp.Body)
	assert.Equal(t, api.Enforcement{Revision: e.Revision, Hosts: 3, Pending: []string{}, Down: []string{}}, *e)
	runProbes(t, ips, append(webProbes(hosts, 8080, 5353), soloProbes(hosts[2], 80)...))

	// sg-solo is on h3 alone: only h3 is waited for, and only e3s changes.
	params = valuesOf(map[string]string{"sgId": "sg-solo", "egress.0.action": "ACCEPT",
		"ingress.0.ipProtocol": "tcp", "ingress.0.cidrIp": "0.0.0.0/0", "ingress.0.portRange": "9090", "ingress.0.action": "ACCEPT"})
	resp, err = tencent.Call(context.Background(), "ModifySecurityGroupPolicy", params)
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	solo := enforcementOf(t, resp.Body)
	require.NotNil(t, solo, "%s", resp.Body)
	assert.Equal(t, api.Enforcement{Revision: solo.Revision, Hosts: 1, Pending: []string{}, Down: []string{}}, *solo)
	assert.Greater(t, solo.Revision, e.Revision)
	runProbes(t, ips, append(webProbes(hosts, 8080, 5353), soloProbes(hosts[2], 9090)...))
}

// valuesOf is m as call parameters.
func valuesOf(m map[string]string) url.Values {
	v := url.Values{}
	for k, s := range m {
		v.Set(k, s)
	}
	return v
}
