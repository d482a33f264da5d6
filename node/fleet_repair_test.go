package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/etcdstore"
)

// repairHosts hosts r00… each hold one ENI of sg-w, which admits tcp/80. Under repairMaxOps, a change
// of sg-w's rules is two operations (the SG, the generation), five feeds and the intent owing the
// other seven.
const (
	repairHosts  = 12
	repairMaxOps = 8
)

func repairTopology(t *testing.T) *model.State {
	topo := model.Topology{
		AdminTokens: []string{fleetAdmin},
		Accounts:    []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret}},
		SecurityGroups: []model.SecurityGroup{{SgID: "sg-w", AppID: fleetApp, SgName: "sg-w",
			Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"}}}},
	}
	for i := range repairHosts {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{NetworkInterfaceID: repairENI(i), AppID: fleetApp,
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.240.%d", i+1)}, SgIDs: []string{"sg-w"}, Host: fmt.Sprintf("r%02d", i)})
	}
	s, err := model.NewState(topo)
	require.NoError(t, err)
	return s
}

func repairENI(i int) string { return fmt.Sprintf("w%02d", i) }

// repairReplica is the Config of a replica of the repair tests' small etcd limits.
func repairReplica(endpoint string, seed *model.State) Config {
	return Config{Etcd: []string{endpoint}, Seed: seed, EnforceTimeout: time.Second,
		EtcdOptions: []etcdstore.Option{etcdstore.WithMaxTxnOps(repairMaxOps)}}
}

// dyingReplica is a replica whose etcd requests all fail once it has committed a change: killed right
// after its commit's transaction, before the feeds that did not fit in it.
func dyingReplica(endpoint string) Config {
	cfg := repairReplica(endpoint, nil)
	cfg.DialEtcd = func(c clientv3.Config) (*clientv3.Client, error) {
		cli, err := clientv3.New(c)
		if err == nil {
			etcdtest.CutAfter(cli, etcdtest.PutsKey(fleetPrefix+"/objects/generation"))
		}
		return cli, err
	}
	return cfg
}

// startRepairAgents starts one agent per host of repairTopology.
func startRepairAgents(t *testing.T, endpoint string) []*fleetAgent {
	agents := make([]*fleetAgent, repairHosts)
	for i := range agents {
		agents[i] = startFleetAgent(t, endpoint, fmt.Sprintf("r%02d", i))
	}
	return agents
}

// commitThenDie has replica a (a dyingReplica) change sg-w to admit tcp/8080 instead: it is answered,
// committed, and a dies. It returns the change's revision.
func commitThenDie(t *testing.T, a *Node) uint64 {
	resp, err := tencentOf(a).Call(context.Background(), "ModifySecurityGroupPolicy", policy("sg-w", 8080))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e, "%s", resp.Body)
	assert.Equal(t, repairHosts, e.Hosts)
	return e.Revision
}

// enforcesChange says whether agent i enforces the change of commitThenDie, acknowledged.
func enforcesChange(agents []*fleetAgent, i int, rev uint64) bool {
	a := agents[i]
	return a.Revision() >= rev && accepts(a, repairENI(i), 8080) && !accepts(a, repairENI(i), 80)
}

// requireEnforcedEverywhere waits until every agent enforces the change at rev and n reports it in
// force on every host, then checks that n repaired exactly the owed feeds.
func requireEnforcedEverywhere(t *testing.T, n *Node, agents []*fleetAgent, rev uint64, owed int) {
	t.Helper()
	for i := range agents {
		require.Eventually(t, func() bool { return enforcesChange(agents, i, rev) }, 10*time.Second, 5*time.Millisecond, "r%02d", i)
	}
	var e *api.Enforcement
	require.Eventually(t, func() bool {
		var code int
		code, e = change(t, n, rev)
		return code == http.StatusOK && len(e.Pending) == 0
	}, 10*time.Second, 10*time.Millisecond, "GET /sgsim/v1/changes/%d: %+v", rev, e)
	assert.Equal(t, repairHosts, e.Hosts)
	assert.Empty(t, e.Down)
	assert.Equal(t, owed, feedsRepaired(t, n), "the feeds the dead writer owed, each written once")
}

var feedsRepairedLine = regexp.MustCompile(`(?m)^sgsim_fleet_feeds_repaired_total (\d+)$`)

// feedsRepaired reads n's sgsim_fleet_feeds_repaired_total from /metrics.
func feedsRepaired(t *testing.T, n *Node) int {
	w := asFleetAdmin(n, http.MethodGet, "/metrics", "")
	require.Equal(t, http.StatusOK, w.Code)
	m := feedsRepairedLine.FindStringSubmatch(w.Body.String())
	require.NotNil(t, m, "no sgsim_fleet_feeds_repaired_total in /metrics")
	v, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return v
}

// owedHosts reads the hosts the intents in etcd owe feeds to.
func owedHosts(t *testing.T, etcd *etcdtest.Server) []string {
	cli := etcd.Client(t)
	resp, err := cli.Get(context.Background(), fleetPrefix+"/feedq/", clientv3.WithPrefix())
	require.NoError(t, err)
	var owed []string
	for _, kv := range resp.Kvs {
		var hosts []string
		require.NoError(t, json.Unmarshal(kv.Value, &hosts))
		owed = append(owed, hosts...)
	}
	slices.Sort(owed)
	return owed
}

// Replica A commits a change affecting more hosts than fit in its transaction and dies before writing
// the rest of their feeds; replica B repairs them after the grace period: every agent enforces the
// change and acknowledges it, and B reports it in force everywhere.
func TestFleetReplicaDiesAfterCommit(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	b := startReplica(t, repairReplica(endpoint, repairTopology(t)))
	t.Cleanup(func() { assert.NoError(t, b.Close()) })
	agents := startRepairAgents(t, endpoint)
	enforcing(t, b, agents...)
	a := startReplica(t, dyingReplica(endpoint))
	t.Cleanup(func() { assert.NoError(t, a.Close()) })

	rev := commitThenDie(t, a)
	requireEnforcedEverywhere(t, b, agents, rev, repairHosts-5)
}

// The only replica dies that way: the hosts beyond its transaction never hear of the change until a
// replica starts, which repairs at once what it finds owed.
func TestFleetRestartedReplicaRepairsAtStart(t *testing.T) {
	etcd := etcdtest.Start(t)
	endpoint := etcd.Endpoint()
	// Seeded within etcd's default limits: every feed in the seed's transaction, so no agent still has
	// a late feed of the seed to answer (by reading the latest share) when the change commits.
	seeder := startReplica(t, Config{Etcd: []string{endpoint}, Seed: repairTopology(t)})
	agents := startRepairAgents(t, endpoint)
	enforcing(t, seeder, agents...)
	require.NoError(t, seeder.Close())
	a := startReplica(t, dyingReplica(endpoint))
	rev := commitThenDie(t, a)
	require.NoError(t, a.Close())

	owed := owedHosts(t, etcd)
	require.NotEmpty(t, owed)
	for i := range agents {
		if !slices.Contains(owed, fmt.Sprintf("r%02d", i)) {
			require.Eventually(t, func() bool { return enforcesChange(agents, i, rev) }, 10*time.Second, 5*time.Millisecond,
				"r%02d: told in the commit's transaction", i)
		}
	}
	for i := range agents {
		if slices.Contains(owed, fmt.Sprintf("r%02d", i)) {
			assert.False(t, enforcesChange(agents, i, rev), "r%02d: nothing told it", i)
		}
	}
	assert.Equal(t, owed, owedHosts(t, etcd), "no live replica: nobody repairs")

	c := startReplica(t, repairReplica(endpoint, nil))
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	requireEnforcedEverywhere(t, c, agents, rev, len(owed))
	assert.Empty(t, owedHosts(t, etcd), "the intents are paid")
}

// A feed written again for a change the host already has (the most a repair racing its writer could
// cause) costs the agent a share read and an ack of the same revision, nothing else.
func TestFleetAgentAnswersARepeatedFeed(t *testing.T) {
	etcd := etcdtest.Start(t)
	n := newReplica(t, etcd.Endpoint(), repairTopology(t), time.Second)
	agents := startRepairAgents(t, etcd.Endpoint())[:1]
	enforcing(t, n, agents...)
	a, rev := agents[0], agents[0].Revision()
	cli := etcd.Client(t)
	ctx := context.Background()
	ackOf := func() (int64, string) {
		resp, err := cli.Get(ctx, fleetPrefix+"/acks/r00")
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		return resp.Kvs[0].ModRevision, string(resp.Kvs[0].Value)
	}
	acked, value := ackOf()
	assert.Equal(t, strconv.FormatUint(rev, 10), value)
	resyncs := a.Stats().Resyncs
	view := a.Applier().View()

	_, err := cli.Put(ctx, fleetPrefix+"/feed/r00", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool { again, _ := ackOf(); return again > acked }, 5*time.Second, 5*time.Millisecond, "acknowledged again")
	_, value = ackOf()
	assert.Equal(t, strconv.FormatUint(rev, 10), value, "the same revision")
	assert.Equal(t, rev, a.Revision())
	assert.Equal(t, resyncs+1, a.Stats().Resyncs)
	assert.Same(t, view, a.Applier().View(), "nothing applied")
}
