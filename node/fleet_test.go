package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sgsim/sgsim/agent"
	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/model"
)

const (
	fleetApp    = "1250000001"
	fleetSecret = "fleet-secret-key"
	fleetID     = "AKIDfleet000000000000000000000000001"
	fleetToken  = "tok-fleet"
	fleetProj   = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
	fleetAdmin  = "fleet-admin-token"
	fleetPrefix = "/fleet"
	// fleetHost is the host every replica's calls are signed for: calls go in-process, so one signed
	// call can be sent to either replica.
	fleetHost = "http://sgsim.fleet.test"
)

// fleetTopology: h1 holds e1 (sg-a), h2 holds e2 (sg-a), h3 holds e3 (sg-b); sg-a admits ssh from its
// members; sg-c, sg-d, sg-e are unused.
func fleetTopology(t *testing.T) *model.State {
	sg := func(id string, rules ...model.Rule) model.SecurityGroup {
		return model.SecurityGroup{SgID: id, AppID: fleetApp, SgName: id, Ingress: rules}
	}
	eni := func(id, ip, host string, sgs ...string) model.NetworkInterface {
		return model.NetworkInterface{NetworkInterfaceID: id, AppID: fleetApp, PrivateIPAddresses: []string{ip}, SgIDs: sgs,
			Host: host, HostInterface: "tap-" + id}
	}
	s, err := model.NewState(model.Topology{
		AdminTokens: []string{fleetAdmin},
		Accounts: []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret,
			HuaweiProjectID: fleetProj, HuaweiTokens: []string{fleetToken}}},
		SecurityGroups: []model.SecurityGroup{
			sg("sg-a", model.Rule{IPProtocol: "tcp", SgID: "sg-a", PortRange: "22", Action: "ACCEPT"}),
			sg("sg-b", model.Rule{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"}),
			sg("sg-c"), sg("sg-d"), sg("sg-e"),
		},
		NetworkInterfaces: []model.NetworkInterface{
			eni("e1", "198.18.0.1", "h1", "sg-a"),
			eni("e2", "198.18.0.2", "h2", "sg-a"),
			eni("e3", "198.18.0.3", "h3", "sg-b"),
		},
	})
	require.NoError(t, err)
	return s
}

// newReplica starts an API replica of the fleet on its own etcd client.
func newReplica(t *testing.T, endpoint string, seed *model.State, timeout time.Duration) *Node {
	n := startReplica(t, Config{Etcd: []string{endpoint}, Seed: seed, EnforceTimeout: timeout})
	t.Cleanup(func() { assert.NoError(t, n.Close()) })
	return n
}

// startReplica starts the replica of cfg (under fleetPrefix, logging nothing); the caller closes it.
func startReplica(t *testing.T, cfg Config) *Node {
	cfg.EtcdPrefix, cfg.Logger = fleetPrefix, slog.New(slog.DiscardHandler)
	n, err := New(context.Background(), cfg)
	require.NoError(t, err)
	return n
}

// fleetAgent is one host's agent in a goroutine, with its own etcd client.
type fleetAgent struct {
	*agent.Agent
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}
}

func startFleetAgent(t *testing.T, endpoint, host string) *fleetAgent {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, agent.Config{Client: cli, Prefix: fleetPrefix, Host: host})
	require.NoError(t, err)
	fa := &fleetAgent{Agent: a, cli: cli, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(fa.done); _ = a.Run(ctx) }()
	t.Cleanup(fa.stop)
	return fa
}

// stop ends the agent cleanly (its lease is revoked: down at once).
func (fa *fleetAgent) stop() {
	fa.cancel()
	<-fa.done
	fa.cli.Close()
}

// kill ends the agent as a crash does: its client goes first, so its lease is not revoked and only
// expires.
func (fa *fleetAgent) kill() {
	fa.cli.Close()
	fa.cancel()
	<-fa.done
}

// enforcing waits until every agent has the replica's current revision in force.
func enforcing(t *testing.T, n *Node, agents ...*fleetAgent) {
	rev := n.Controller().View().Generation
	for _, a := range agents {
		require.Eventually(t, func() bool { return a.Revision() >= rev }, 10*time.Second, 5*time.Millisecond)
	}
}

func tencentOf(n *Node) *client.Tencent {
	return &client.Tencent{Endpoint: fleetHost, SecretID: fleetID, SecretKey: fleetSecret, HTTP: client.InProcess(n.Handler())}
}

func huaweiOf(n *Node) *client.Huawei {
	return &client.Huawei{Endpoint: fleetHost, Token: fleetToken, Project: fleetProj, HTTP: client.InProcess(n.Handler())}
}

// enforcementOf decodes the "enforcement" of an answer's body; nil when it has none.
func enforcementOf(t *testing.T, body []byte) *api.Enforcement {
	var out struct {
		Enforcement *api.Enforcement `json:"enforcement"`
	}
	require.NoError(t, json.Unmarshal(body, &out), "%s", body)
	return out.Enforcement
}

// policy is the ModifySecurityGroupPolicy parameters of sgID admitting TCP port from anywhere.
func policy(sgID string, port int) url.Values {
	return url.Values{"sgId": {sgID}, "ingress.0.ipProtocol": {"tcp"}, "ingress.0.cidrIp": {"0.0.0.0/0"},
		"ingress.0.portRange": {fmt.Sprint(port)}, "ingress.0.action": {"ACCEPT"}}
}

func change(t *testing.T, n *Node, rev uint64) (int, *api.Enforcement) {
	w := asFleetAdmin(n, http.MethodGet, fmt.Sprintf("/sgsim/v1/changes/%d", rev), "")
	if w.Code != http.StatusOK {
		return w.Code, nil
	}
	var e api.Enforcement
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e))
	return w.Code, &e
}

// asFleetAdmin serves one request to n's handler with the fleet's admin token.
func asFleetAdmin(n *Node, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+fleetAdmin)
	w := httptest.NewRecorder()
	n.Handler().ServeHTTP(w, req)
	return w
}

func accepts(a *fleetAgent, eni string, port uint16) bool {
	ap := a.Applier()
	if ap == nil {
		return false
	}
	v, ok := ap.Engine().Match(eni, model.Ingress, &dataplane.Packet{Remote: netip.MustParseAddr("198.18.9.9"), Proto: 6, Port: port, HasPort: true})
	return ok && v.Action == model.Accept
}

func TestFleetAnswersCarryEnforcement(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	a := newReplica(t, endpoint, fleetTopology(t), 5*time.Second)
	b := newReplica(t, endpoint, fleetTopology(t), 5*time.Second) // seeded already: its topology is ignored
	h1, h2, h3 := startFleetAgent(t, endpoint, "h1"), startFleetAgent(t, endpoint, "h2"), startFleetAgent(t, endpoint, "h3")
	enforcing(t, a, h1, h2, h3)
	ctx := context.Background()

	// sg-b is on h3 alone: only h3 is waited for, and it enforces the change before the answer.
	resp, err := tencentOf(a).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-b", 8080))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e, "%s", resp.Body)
	assert.Equal(t, 1, e.Hosts)
	assert.Empty(t, e.Pending)
	assert.Empty(t, e.Down)
	assert.GreaterOrEqual(t, h3.Revision(), e.Revision, "h3 acknowledged before the answer")
	assert.True(t, accepts(h3, "e3", 8080))
	assert.False(t, accepts(h3, "e3", 80))
	assert.Less(t, h1.Revision(), e.Revision, "h1 holds nothing the change touches and heard nothing")

	// The same, later, from the other replica.
	code, later := change(t, b, e.Revision)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, e, later)
	code, _ = change(t, b, e.Revision-1)
	assert.Equal(t, http.StatusNotFound, code, "a revision that committed no change")
	code, _ = change(t, b, e.Revision+1000)
	assert.Equal(t, http.StatusNotFound, code, "a revision etcd has not reached")
	// A tenant's token may not read the fleet's changes (their hosts are not one account's).
	req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("/sgsim/v1/changes/%d", e.Revision), nil)
	req.Header.Set("X-Auth-Token", fleetToken)
	tw := httptest.NewRecorder()
	b.Handler().ServeHTTP(tw, req)
	assert.Equal(t, http.StatusForbidden, tw.Code, tw.Body.String())

	// Huawei and the admin API answer with enforcement too; sg-c on e1 and e2 affects h1 and h2.
	hr, err := huaweiOf(b).PortAction(ctx, "sg-c", "add", []string{"e1", "e2"})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, hr.Status, "%s", hr.Body)
	he := enforcementOf(t, hr.Body)
	require.NotNil(t, he, "%s", hr.Body)
	assert.Equal(t, api.Enforcement{Revision: he.Revision, Hosts: 2, Pending: []string{}, Down: []string{}}, *he)
	assert.Greater(t, he.Revision, e.Revision)

	put := `{"appId":"` + fleetApp + `","privateIpAddresses":["198.18.0.4"],"sgIds":["sg-b"],"host":"h1"}`
	w := asFleetAdmin(a, http.MethodPut, "/sgsim/v1/enis/e4", put)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	pe := enforcementOf(t, w.Body.Bytes())
	require.NotNil(t, pe)
	assert.NotContains(t, w.Body.String(), `"attached"`, "a replica is on no ENI's host: it cannot say (its agent does)")
	assert.Equal(t, 1, pe.Hosts)
	assert.Empty(t, pe.Pending)
	assert.True(t, accepts(h1, "e4", 8080), "the new ENI is in force on its host")

	// A call that changes nothing names the change whose state it found (here the PUT of e4, the
	// newest), in force where that change is, as GET /sgsim/v1/changes/{R} reports it.
	resp, err = tencentOf(b).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-b", 8080))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	ne := enforcementOf(t, resp.Body)
	require.NotNil(t, ne)
	assert.Equal(t, api.Enforcement{Revision: pe.Revision, Hosts: 1, Pending: []string{}, Down: []string{}}, *ne)
	code, later = change(t, a, ne.Revision)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, ne, later)

	// Reads on either replica follow what the other committed.
	require.Eventually(t, func() bool {
		n, ok := b.Controller().View().State.ENI("e4")
		return ok && n.Host == "h1"
	}, 5*time.Second, 5*time.Millisecond)
}

func TestFleetNonceReplayedToOtherReplica(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	a := newReplica(t, endpoint, fleetTopology(t), time.Second)
	b := newReplica(t, endpoint, nil, time.Second)
	ctx := context.Background()
	ta, tb := tencentOf(a), tencentOf(b)
	sc, err := ta.Sign("ModifySecurityGroupPolicy", policy("sg-d", 443))
	require.NoError(t, err)
	resp, err := ta.Send(ctx, sc)
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	again, err := tb.Send(ctx, sc)
	require.NoError(t, err)
	assert.Equal(t, model.CodeReplay, again.Code, "%s", again.Body)
	assert.Nil(t, enforcementOf(t, again.Body), "a refusal carries no enforcement")
}

// TestFleetNoOpOnAStaleReplicaIsNoLostUpdate: a call one replica answers after another replica's
// answered change is in force after it, even where the second replica's View has not yet followed
// the first's commit and so takes the call for a no-op (SPEC §9: no lost update); a no-op's answer
// names the change whose state it found, as GET /sgsim/v1/changes/{R} reports it.
func TestFleetNoOpOnAStaleReplicaIsNoLostUpdate(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	a := newReplica(t, endpoint, fleetTopology(t), time.Second)
	b := newReplica(t, endpoint, nil, time.Second)
	ctx := context.Background()
	for i := range 100 {
		resp, err := tencentOf(a).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-b", 8080))
		require.NoError(t, err)
		require.NoError(t, resp.Err())
		// b may not have followed a's commit yet: its View may still hold port 80 (the SG's seed
		// and the previous round's last write).
		resp, err = tencentOf(b).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-b", 80))
		require.NoError(t, err)
		require.NoError(t, resp.Err())
		e := enforcementOf(t, resp.Body)
		require.NotNil(t, e, "%s", resp.Body)
		require.NoError(t, a.Controller().Refresh(ctx))
		g, _ := a.Controller().View().State.SG("sg-b")
		require.Equal(t, "80", g.Ingress[0].PortRange, "round %d: b's answered call lost to a's earlier one", i)
		code, later := change(t, a, e.Revision)
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, e.Hosts, later.Hosts, "round %d: the answer and GET /changes/%d agree", i, e.Revision)
	}
	// A no-op on an up-to-date replica names the change that made the state it found.
	require.NoError(t, b.Controller().Refresh(ctx))
	resp, err := tencentOf(b).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-b", 80))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	assert.Equal(t, b.Controller().View().Generation, e.Revision)
	code, later := change(t, b, e.Revision)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, later, e)
}

// TestFleetENIChangeOfNoTableReachesItsAgent: a change of an ENI that leaves every table as it was
// (a new MAC) still reaches the agent of its host, which serves the stored object: the call waits for
// that host, and the agent then holds the new object.
func TestFleetENIChangeOfNoTableReachesItsAgent(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	replica := newReplica(t, endpoint, fleetTopology(t), 5*time.Second)
	h3 := startFleetAgent(t, endpoint, "h3")
	enforcing(t, replica, h3)
	put := `{"appId":"` + fleetApp + `","macAddress":"02:00:00:00:00:33","privateIpAddresses":["198.18.0.3"],"sgIds":["sg-b"],` +
		`"host":"h3","hostInterface":"tap-e3"}`
	w := asFleetAdmin(replica, http.MethodPut, "/sgsim/v1/enis/e3", put)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	e := enforcementOf(t, w.Body.Bytes())
	require.NotNil(t, e)
	assert.Equal(t, api.Enforcement{Revision: e.Revision, Hosts: 1, Pending: []string{}, Down: []string{}}, *e)
	got, ok := h3.Applier().View().State.ENI("e3")
	require.True(t, ok)
	assert.Equal(t, "02:00:00:00:00:33", got.MacAddress, "the agent holds the new object once the call is answered")
}

// TestFleetENIsPerHost: a replica refuses (409, nothing committed) a PUT that would give one host
// more ENIs than it can enforce, a new ENI or one moved there, and takes the same ENI on another host.
func TestFleetENIsPerHost(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	lim := control.DefaultLimits()
	lim.ENIsPerHost = 2
	replica := startReplica(t, Config{Etcd: []string{endpoint}, Seed: fleetTopology(t), EnforceTimeout: time.Second,
		Control: control.Options{Limits: &lim}})
	t.Cleanup(func() { assert.NoError(t, replica.Close()) })
	eni := func(ip, host string) string {
		return `{"appId":"` + fleetApp + `","privateIpAddresses":["` + ip + `"],"sgIds":["sg-b"],"host":"` + host + `"}`
	}
	w := asFleetAdmin(replica, http.MethodPut, "/sgsim/v1/enis/e4", eni("198.18.0.4", "h1"))
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	before := replica.Controller().View()
	for _, tc := range []struct{ id, body string }{
		{"e5", eni("198.18.0.5", "h1")}, // a third new ENI on h1
		{"e2", eni("198.18.0.2", "h1")}, // e2 moved from h2 to h1
	} {
		w = asFleetAdmin(replica, http.MethodPut, "/sgsim/v1/enis/"+tc.id, tc.body)
		require.Equal(t, http.StatusConflict, w.Code, w.Body.String())
		assert.Contains(t, w.Body.String(), `host \"h1\" enforces at most 2 network interfaces and holds 2`)
		assert.Same(t, before, replica.Controller().View(), "nothing committed")
	}
	w = asFleetAdmin(replica, http.MethodPut, "/sgsim/v1/enis/e5", eni("198.18.0.5", "h2"))
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
}

func TestFleetConcurrentReplicasSerialise(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	replicas := []*Node{newReplica(t, endpoint, fleetTopology(t), time.Second), newReplica(t, endpoint, nil, time.Second)}
	ctx := context.Background()

	// Policy overwrites of one SG race on both replicas: the SG ends as the answered call with the
	// highest revision left it, and no two answers share a revision.
	const calls = 8
	revs := make([]uint64, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			resp, err := tencentOf(replicas[i%2]).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-d", 1000+i))
			if !assert.NoError(t, err) || !assert.NoError(t, resp.Err()) {
				return
			}
			if e := enforcementOf(t, resp.Body); assert.NotNil(t, e) {
				revs[i] = e.Revision
			}
		})
	}
	// Port adds of four SGs to one ENI race too: each is a read-modify-write of e3's list, so a lost
	// update would drop one. Serially they append in revision order.
	adds := []string{"sg-a", "sg-c", "sg-d", "sg-e"}
	addRevs := make([]uint64, len(adds))
	for i, sg := range adds {
		wg.Go(func() {
			hr, err := huaweiOf(replicas[i%2]).PortAction(ctx, sg, "add", []string{"e3"})
			if !assert.NoError(t, err) || !assert.Equal(t, http.StatusOK, hr.Status, "%s", hr.Body) {
				return
			}
			assert.Empty(t, hr.Fail)
			if e := enforcementOf(t, hr.Body); assert.NotNil(t, e) {
				addRevs[i] = e.Revision
			}
		})
	}
	wg.Wait()
	all := slices.Concat(revs, addRevs)
	slices.Sort(all)
	require.Equal(t, len(all), len(slices.Compact(slices.Clone(all))), "every answered call has a revision of its own: %v", all)

	last := slices.Index(revs, slices.Max(revs))
	want := []string{"sg-b"}
	order := slices.Clone(adds)
	slices.SortFunc(order, func(x, y string) int {
		return int(addRevs[slices.Index(adds, x)]) - int(addRevs[slices.Index(adds, y)])
	})
	want = append(want, order...)
	for _, n := range replicas {
		require.NoError(t, n.Controller().Refresh(ctx))
		s := n.Controller().View().State
		g, _ := s.SG("sg-d")
		require.Len(t, g.Ingress, 1)
		assert.Equal(t, fmt.Sprint(1000+last), g.Ingress[0].PortRange, "the last answered overwrite wins")
		e3, _ := s.ENI("e3")
		assert.Equal(t, want, e3.SgIDs, "every answered add is kept, in revision order")
	}
}

func TestFleetKilledAgentPendingThenDown(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	a := newReplica(t, endpoint, fleetTopology(t), 500*time.Millisecond)
	h1, h3 := startFleetAgent(t, endpoint, "h1"), startFleetAgent(t, endpoint, "h3")
	enforcing(t, a, h1, h3)
	ctx := context.Background()

	h3.kill()
	resp, err := tencentOf(a).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-b", 8443))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e)
	assert.Equal(t, api.Enforcement{Revision: e.Revision, Hosts: 1, Pending: []string{"h3"}, Down: []string{}}, *e,
		"a killed host's lease lives on: it is pending, and the answer did not wait past the timeout")

	// h2 never registered: down at once, not waited for.
	hr, err := huaweiOf(a).PortAction(ctx, "sg-c", "add", []string{"e2"})
	require.NoError(t, err)
	he := enforcementOf(t, hr.Body)
	require.NotNil(t, he, "%s", hr.Body)
	assert.Equal(t, []string{"h2"}, he.Down)

	require.Eventually(t, func() bool {
		_, now := change(t, a, e.Revision)
		return now != nil && slices.Equal(now.Down, []string{"h3"}) && len(now.Pending) == 0
	}, 15*time.Second, 100*time.Millisecond, "once its lease expires h3 is down")

	// Restarted, h3 resyncs and acknowledges: the change is in force everywhere.
	h3 = startFleetAgent(t, endpoint, "h3")
	require.Eventually(t, func() bool {
		_, now := change(t, a, e.Revision)
		return now != nil && len(now.Down) == 0 && len(now.Pending) == 0
	}, 10*time.Second, 20*time.Millisecond)
	assert.True(t, accepts(h3, "e3", 8443))
}

func TestFleetConfigErrors(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no state and no topology", Config{Etcd: []string{endpoint}, EtcdPrefix: "/empty"}, "give --topology"},
		{"replicas enforce nothing", Config{Etcd: []string{endpoint}, Dataplane: DataplaneEBPF}, "replicas enforce nothing"},
		{"bad prefix", Config{Etcd: []string{endpoint}, EtcdPrefix: "nope/"}, "prefix"},
		{"negative timeout", Config{Etcd: []string{endpoint}, EnforceTimeout: -time.Second}, "--enforce-timeout"},
		{"not an endpoint", Config{Etcd: []string{"notaurl"}}, "--etcd notaurl: want a URL (http://HOST:PORT) or HOST:PORT"},
		{"another scheme", Config{Etcd: []string{"ftp://127.0.0.1:2379"}}, "--etcd ftp://127.0.0.1:2379: want an http, https, unix or unixs URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(context.Background(), tt.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestFleetAgentListen(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	// e1 joins sg-b's sgId rule, so h3's share holds it as a member: still not h3's ENI to list.
	seed := fleetTopology(t)
	b := seed.Edit()
	g, _ := seed.SG("sg-b")
	ng := *g
	ng.Ingress = append(slices.Clone(ng.Ingress), model.Rule{IPProtocol: "udp", SgID: "sg-a", PortRange: "53", Action: "ACCEPT"})
	require.NoError(t, b.PutSG(ng))
	a := newReplica(t, endpoint, b.State(), 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, AgentConfig{Etcd: []string{endpoint}, EtcdPrefix: fleetPrefix, Host: "h3", Listen: "127.0.0.1:0",
			Ready: func(addr string) { addrc <- addr }, API: api.Options{AdminTokens: []string{"agent-admin"}}})
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done, "a stopped agent returns nil")
	})
	base := "http://" + <-addrc
	get := func(method, path, body string) (int, string) {
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer agent-admin")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var b strings.Builder
		_, err = io.Copy(&b, resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b.String()
	}
	require.Eventually(t, func() bool { code, _ := get(http.MethodGet, "/healthz", ""); return code == http.StatusOK },
		10*time.Second, 10*time.Millisecond)
	code, body := get(http.MethodGet, "/sgsim/v1/enis", "")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `"e3"`)
	assert.NotContains(t, body, `"e1"`, "only this host's ENIs are listed")
	code, body = get(http.MethodGet, "/sgsim/v1/enis/e1", "")
	assert.Equal(t, http.StatusNotFound, code, body)

	// A change answered by the replica is what the agent's /check decides.
	resp, err := tencentOf(a).Call(context.Background(), "ModifySecurityGroupPolicy", policy("sg-b", 8080))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e)
	assert.Empty(t, e.Pending)
	check := func(port int) string {
		code, body := get(http.MethodPost, "/sgsim/v1/check",
			fmt.Sprintf(`{"eni":"e3","direction":"ingress","protocol":"tcp","remote":"198.18.9.9","port":%d}`, port))
		require.Equal(t, http.StatusOK, code, body)
		return body
	}
	assert.Contains(t, check(8080), `"ACCEPT"`)
	assert.Contains(t, check(80), `"DROP"`)

	for _, tt := range []struct {
		method, path string
		status       int
		has          string
	}{
		{http.MethodGet, "/sgsim/v1/enis", http.StatusOK, `"e3"`},
		{http.MethodGet, "/sgsim/v1/enis/e3", http.StatusOK, `"host":"h3"`},
		{http.MethodGet, "/sgsim/v1/enis/e3/table", http.StatusOK, `"8080"`},
		{http.MethodGet, "/metrics", http.StatusOK, "sgsim_"},
		{http.MethodPut, "/sgsim/v1/enis/e9", http.StatusMethodNotAllowed, ""},
		{http.MethodPost, "/v2/index.php", http.StatusNotFound, ""},
		{http.MethodGet, "/sgsim/v1/enis/e1", http.StatusNotFound, "not on host h3"},
	} {
		code, body = get(tt.method, tt.path, "{}")
		assert.Equal(t, tt.status, code, "%s %s: %s", tt.method, tt.path, body)
		assert.Contains(t, body, tt.has, "%s %s", tt.method, tt.path)
	}
}

func TestSingleHostAnswersCarryNoEnforcement(t *testing.T) {
	n, err := New(context.Background(), Config{Seed: fleetTopology(t)})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, n.Close()) })
	resp, err := tencentOf(n).Call(context.Background(), "ModifySecurityGroupPolicy", policy("sg-b", 8080))
	require.NoError(t, err)
	assert.JSONEq(t, `{"code":0,"message":""}`, string(resp.Body))
	hr, err := huaweiOf(n).PortAction(context.Background(), "sg-c", "add", []string{"e1"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"fail":[]}`, string(hr.Body))
	code, _ := change(t, n, n.Controller().View().Generation)
	assert.Equal(t, http.StatusNotFound, code, "no changes endpoint on a single host")
}

func TestFleetENIMovedBetweenHosts(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	a := newReplica(t, endpoint, fleetTopology(t), 5*time.Second)
	h1, h3 := startFleetAgent(t, endpoint, "h1"), startFleetAgent(t, endpoint, "h3")
	enforcing(t, a, h1, h3)
	require.True(t, accepts(h3, "e3", 80))

	put := `{"appId":"` + fleetApp + `","privateIpAddresses":["198.18.0.3"],"sgIds":["sg-b"],"host":"h1","hostInterface":"tap-e3"}`
	w := asFleetAdmin(a, http.MethodPut, "/sgsim/v1/enis/e3", put)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	e := enforcementOf(t, w.Body.Bytes())
	require.NotNil(t, e)
	assert.Equal(t, api.Enforcement{Revision: e.Revision, Hosts: 2, Pending: []string{}, Down: []string{}}, *e,
		"both the host it leaves and the one it joins are waited for")
	assert.True(t, accepts(h1, "e3", 80), "enforced on its new host before the answer")
	_, stillThere := h3.Applier().View().Tables["e3"]
	assert.False(t, stillThere, "gone from its old host before the answer")
}

// TestFleetAgentEBPFEnforcesBeforeTheAnswer: an agent with the eBPF dataplane attaches to its ENI's
// veth, and real TCP through it changes as a replica's call says before the call is answered.
func TestFleetAgentEBPFEnforcesBeforeTheAnswer(t *testing.T) {
	requireKernel(t)
	lab := netlab.New(t, "nfa")
	lab.AddVM("e3", "sgf-e3", "198.18.212.3")
	lab.AddVM("cli", "sgf-cli", "198.18.212.9") // no ENI claims it: unfiltered
	for _, port := range []string{"80", "8080"} {
		lab.EchoTCP("e3", "198.18.212.3:"+port)
	}
	seed, err := model.NewState(model.Topology{
		Accounts: []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret}},
		SecurityGroups: []model.SecurityGroup{{SgID: "sg-b", AppID: fleetApp, SgName: "b",
			Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"}},
			Egress:  []model.Rule{{Action: "ACCEPT"}}}},
		NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: "e3", AppID: fleetApp,
			PrivateIPAddresses: []string{"198.18.212.3"}, SgIDs: []string{"sg-b"}, Host: "h3", HostInterface: "sgf-e3"}},
	})
	require.NoError(t, err)
	endpoint := etcdtest.Start(t).Endpoint()
	replica := newReplica(t, endpoint, seed, 5*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	addrc, done := make(chan string, 1), make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, AgentConfig{Etcd: []string{endpoint}, EtcdPrefix: fleetPrefix, Host: "h3", Dataplane: DataplaneEBPF,
			PinPath: pinDir(t), HostNetns: lab.Host, Listen: "127.0.0.1:0", Ready: func(addr string) { addrc <- addr },
			API: api.Options{AdminTokens: []string{"agent-admin"}}, Logger: slog.New(slog.DiscardHandler)})
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	base := "http://" + <-addrc
	require.Eventually(t, func() bool {
		req, _ := http.NewRequest(http.MethodGet, base+"/sgsim/v1/enis/e3", nil)
		req.Header.Set("Authorization", "Bearer agent-admin")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"attached":true`)
	}, 10*time.Second, 10*time.Millisecond, "the agent attaches to e3's veth")

	connect := func(port string, timeout time.Duration) error {
		return lab.EchoRoundTrip("cli", "198.18.212.3:"+port, timeout)
	}
	require.NoError(t, connect("80", 3*time.Second))
	require.Error(t, connect("8080", 300*time.Millisecond))

	params := policy("sg-b", 8080)
	params.Set("egress.0.action", "ACCEPT")
	resp, err := tencentOf(replica).Call(context.Background(), "ModifySecurityGroupPolicy", params)
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e)
	assert.Equal(t, api.Enforcement{Revision: e.Revision, Hosts: 1, Pending: []string{}, Down: []string{}}, *e)
	require.NoError(t, connect("8080", 3*time.Second), "in force in the kernel when answered")
	require.Error(t, connect("80", 300*time.Millisecond))
}
