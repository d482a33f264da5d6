package agent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/etcdstore"
)

const prefix = "/sgsim"

func client(t testing.TB, endpoint string) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// newReplica is a replica writing through its own Store on cli.
func newReplica(t testing.TB, cli *clientv3.Client) *replica {
	t.Helper()
	st, err := etcdstore.Open(context.Background(), cli, prefix)
	require.NoError(t, err)
	return &replica{t: t, st: st}
}

// replica is the writing side of a test: a Store and the state it last committed.
type replica struct {
	t   testing.TB
	st  *etcdstore.Store
	cur *model.State
	rev uint64
}

// commit commits next with the hosts it affects and waits until they enforce it.
func (r *replica) commit(next *model.State) (rev uint64, hosts []string) {
	ctx := context.Background()
	hosts = AffectedHosts(r.cur, next)
	rev, err := r.st.CommitAffecting(ctx, next, r.rev+1, hosts)
	require.NoError(r.t, err)
	r.cur, r.rev = next, rev
	return rev, hosts
}

func (r *replica) wait(rev uint64, hosts []string, timeout time.Duration) (pending, down []string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	pending, down, err := r.st.WaitEnforced(ctx, rev, hosts)
	require.NoError(r.t, err)
	return pending, down
}

func (r *replica) edit(f func(b *model.Builder)) *model.State {
	b := r.cur.Edit()
	f(b)
	return b.State()
}

// topology: e0 on h1 and e1 on h2 in sg-a (ssh from sg-a members), e2 on h2 in sg-b (web).
func topology(t *testing.T) *model.State {
	s, err := model.NewState(model.Topology{
		Accounts: []model.Account{{AppID: "1250000001"}},
		SecurityGroups: []model.SecurityGroup{
			{SgID: "sg-a", AppID: "1250000001", Ingress: []model.Rule{{IPProtocol: "tcp", SgID: "sg-a", PortRange: "22", Action: "ACCEPT"}}},
			{SgID: "sg-b", AppID: "1250000001", Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "80", Action: "ACCEPT"}}},
		},
		NetworkInterfaces: []model.NetworkInterface{
			{NetworkInterfaceID: "e0", AppID: "1250000001", PrivateIPAddresses: []string{"198.18.0.10"}, SgIDs: []string{"sg-a"}, Host: "h1", HostInterface: "tap0"},
			{NetworkInterfaceID: "e1", AppID: "1250000001", PrivateIPAddresses: []string{"198.18.0.11"}, SgIDs: []string{"sg-a"}, Host: "h2", HostInterface: "tap0"},
			{NetworkInterfaceID: "e2", AppID: "1250000001", PrivateIPAddresses: []string{"198.18.0.12"}, SgIDs: []string{"sg-b"}, Host: "h2", HostInterface: "tap1"},
		},
	})
	require.NoError(t, err)
	return s
}

// runAgent starts an agent with its own client; stop ends it (a clean stop: its lease is revoked)
// and closes the client.
func runAgent(t testing.TB, endpoint, host string) (a *Agent, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	cli := client(t, endpoint)
	a, err := New(ctx, Config{Client: cli, Prefix: prefix, Host: host})
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() { assert.ErrorIs(t, a.Run(ctx), context.Canceled) })
	stop = sync.OnceFunc(func() { cancel(); wg.Wait(); cli.Close() })
	t.Cleanup(stop)
	return a, stop
}

// verdict is how host's agent decides a TCP packet from remote to eni's port.
func verdict(t *testing.T, a *Agent, eni, remote string, port uint16) (model.Action, bool) {
	ap := a.Applier()
	require.NotNil(t, ap)
	v, ok := ap.Engine().Match(eni, model.Ingress, &dataplane.Packet{Remote: netip.MustParseAddr(remote), Proto: 6, Port: port, HasPort: true})
	return v.Action, ok
}

func TestAgentsEnforceTheirShare(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	r := newReplica(t, client(t, endpoint))
	a1, stop1 := runAgent(t, endpoint, "h1")
	a2, _ := runAgent(t, endpoint, "h2")
	require.Eventually(t, func() bool { p, d := r.wait(0, []string{"h1", "h2"}, time.Second); return len(p)+len(d) == 0 },
		10*time.Second, 20*time.Millisecond, "both registered")

	rev, hosts := r.commit(topology(t))
	assert.Equal(t, []string{"h1", "h2"}, hosts)
	pending, down := r.wait(rev, hosts, 5*time.Second)
	assert.Empty(t, pending)
	assert.Empty(t, down)
	share := a1.Applier().View().State
	assert.ElementsMatch(t, []string{"e0", "e1"}, share.ENIIDs(), "h1: its ENI and the sg-a member it names")
	e1, _ := share.ENI("e1")
	assert.Empty(t, e1.HostInterface, "another host's interface is not h1's")
	_, hasB := share.SG("sg-b")
	assert.False(t, hasB)
	act, ok := verdict(t, a1, "e0", "198.18.0.11", 22)
	require.True(t, ok)
	assert.Equal(t, model.Accept, act, "ssh from an sg-a member")
	act, _ = verdict(t, a1, "e0", "198.18.0.12", 22)
	assert.Equal(t, model.Drop, act)

	// A change to sg-b reaches h2 only.
	h1rev := a1.Revision()
	rev, hosts = r.commit(r.edit(func(b *model.Builder) {
		g, _ := r.cur.SG("sg-b")
		ng := *g
		ng.Ingress = []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: "8080", Action: "ACCEPT"}}
		require.NoError(t, b.PutSG(ng))
	}))
	assert.Equal(t, []string{"h2"}, hosts)
	pending, _ = r.wait(rev, hosts, 5*time.Second)
	assert.Empty(t, pending)
	act, _ = verdict(t, a2, "e2", "203.0.113.1", 8080)
	assert.Equal(t, model.Accept, act)
	assert.Equal(t, h1rev, a1.Revision(), "h1 heard nothing")

	// e2 joins sg-a: h1's sgId rule now names its address too.
	rev, hosts = r.commit(r.edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("e2", []string{"sg-b", "sg-a"})) }))
	assert.Equal(t, []string{"h1", "h2"}, hosts)
	pending, _ = r.wait(rev, hosts, 5*time.Second)
	assert.Empty(t, pending)
	act, _ = verdict(t, a1, "e0", "198.18.0.12", 22)
	assert.Equal(t, model.Accept, act)

	// e0 moves to h2: detached on h1, attached on h2, both acknowledge.
	moved := func(host string) *model.State {
		return r.edit(func(b *model.Builder) {
			n, _ := r.cur.ENI("e0")
			nn := *n
			nn.Host, nn.HostInterface = host, "tap9"
			require.NoError(t, b.PutENI(nn))
		})
	}
	rev, hosts = r.commit(moved("h2"))
	assert.Equal(t, []string{"h1", "h2"}, hosts)
	pending, _ = r.wait(rev, hosts, 5*time.Second)
	assert.Empty(t, pending)
	_, ok = a1.Applier().View().Tables["e0"]
	assert.False(t, ok, "h1 no longer holds e0's tables")
	act, ok = verdict(t, a2, "e0", "198.18.0.11", 22)
	require.True(t, ok)
	assert.Equal(t, model.Accept, act)

	// h1's agent stops (down at once), e0 moves back while it is down, a new agent resyncs and acks.
	stop1()
	rev, hosts = r.commit(moved("h1"))
	pending, down = r.wait(rev, hosts, 300*time.Millisecond)
	assert.Empty(t, pending)
	assert.Equal(t, []string{"h1"}, down)
	start := time.Now()
	a1, _ = runAgent(t, endpoint, "h1")
	require.Eventually(t, func() bool { p, d := r.wait(rev, hosts, time.Second); return len(p)+len(d) == 0 },
		10*time.Second, 10*time.Millisecond)
	t.Logf("restarted agent enforcing and acknowledged after %v", time.Since(start))
	act, ok = verdict(t, a1, "e0", "198.18.0.11", 22)
	require.True(t, ok)
	assert.Equal(t, model.Accept, act)
}

func TestShare(t *testing.T) {
	s := topology(t)
	empty, err := Share(nil, "h1")
	require.NoError(t, err)
	assert.Empty(t, empty.ENIIDs())
	none, err := Share(s, "elsewhere")
	require.NoError(t, err)
	assert.Empty(t, none.ENIIDs())
	assert.Empty(t, none.SGIDs())
	h2, err := Share(s, "h2")
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"e0", "e1", "e2"}, h2.ENIIDs(), "e0 is a member of sg-a, which sg-a's rule names")
	assert.Empty(t, AffectedHosts(s, s), "nothing changed: nobody")
}

// chained is a fleet where SG rules name other SGs in a chain (sg-0 names sg-1, …), ENIs spread over
// hosts h0…h3 with one or two SGs each: shares overlap and miss each other in every way.
func chained(t *testing.T) *model.State {
	topo := model.Topology{Accounts: []model.Account{{AppID: "1250000001"}, {AppID: "1250000002"}}}
	const sgs = 6
	for i := range sgs {
		topo.SecurityGroups = append(topo.SecurityGroups, model.SecurityGroup{SgID: fmt.Sprintf("sg-%d", i), AppID: "1250000001",
			Ingress: []model.Rule{{IPProtocol: "tcp", SgID: fmt.Sprintf("sg-%d", (i+1)%sgs), PortRange: "22", Action: "ACCEPT"}},
			Egress:  []model.Rule{{CidrIP: "198.18.0.0/15", Action: "ACCEPT"}}})
	}
	for i := range 24 {
		sg := []string{fmt.Sprintf("sg-%d", i%sgs)}
		if i%5 == 0 {
			sg = append(sg, fmt.Sprintf("sg-%d", (i+3)%sgs))
		}
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{
			NetworkInterfaceID: fmt.Sprintf("eni-%02d", i), AppID: "1250000001", SgIDs: sg,
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.1.%d", i+1)}, Host: fmt.Sprintf("h%d", i%3),
			HostInterface: fmt.Sprintf("tap%d", i)})
	}
	s, err := model.NewState(topo)
	require.NoError(t, err)
	return s
}

// The share an agent reads through the indexes (etcdstore.ShareRecords) is the share of the whole
// state, for every host, across changes that move members, references and hosts.
// It stays whole: each change builds on the state the changes before it made.
func TestShareRecordsMatchTheWholeState(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	ctx := context.Background()
	r := newReplica(t, client(t, endpoint))
	st := r.st
	states := []*model.State{chained(t)}
	edit := func(f func(b *model.Builder)) {
		b := states[len(states)-1].Edit()
		f(b)
		states = append(states, b.State())
	}
	edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("eni-01", []string{"sg-4"})) })
	edit(func(b *model.Builder) {
		g, _ := states[0].SG("sg-2")
		ng := *g
		ng.Ingress = []model.Rule{{IPProtocol: "udp", SgID: "sg-5", PortRange: "53", Action: "ACCEPT"}, {SgID: "sg-2", Action: "ACCEPT"}}
		require.NoError(t, b.PutSG(ng))
	})
	edit(func(b *model.Builder) {
		n, _ := states[0].ENI("eni-03")
		nn := *n
		nn.Host = "h3"
		require.NoError(t, b.PutENI(nn))
	})
	edit(func(b *model.Builder) { require.NoError(t, b.DeleteENI("eni-00")) })
	edit(func(b *model.Builder) { // a member re-addressed: its index entry stays, its record changes
		n, _ := states[0].ENI("eni-05")
		nn := *n
		nn.PrivateIPAddresses = []string{"198.18.2.5"}
		require.NoError(t, b.PutENI(nn))
	})
	edit(func(b *model.Builder) { // a rule changed, naming the same SG
		g, _ := states[0].SG("sg-1")
		ng := *g
		ng.Ingress = []model.Rule{{IPProtocol: "tcp", SgID: "sg-2", PortRange: "2222", Action: "ACCEPT"}}
		require.NoError(t, b.PutSG(ng))
	})
	// Each host reads as its agent does, with the caches of its previous reads (and the shares it
	// built), and afresh: h0's share loses eni-00, whose key its cache holds.
	// Each also puts its shares in force through one applier, as its agent does, whose compiler and
	// host ENI list carry over from share to share while the ENIs are the same (control.View).
	type reader struct {
		host    string
		agent   *Agent
		cached  bool
		applier *control.Applier
	}
	var readers []*reader
	for _, host := range []string{"h0", "h1", "h2", "h3", "h4"} {
		readers = append(readers, &reader{host: host, agent: &Agent{cfg: Config{Host: host}}, cached: true}, &reader{host: host, agent: &Agent{cfg: Config{Host: host}}})
	}
	for i, s := range states {
		r.commit(s)
		for _, rd := range readers {
			host, a, cache := rd.host, rd.agent, &rd.agent.shareCache
			if !rd.cached {
				cache = nil
			}
			sh, err := st.ReadShare(ctx, host, r.rev*uint64(i%2), cache) // serializable every other state
			require.NoError(t, err)
			assert.Equal(t, r.rev, sh.Revision)
			got, err := a.shareFromRead(sh)
			require.NoError(t, err)
			want, err := Share(s, host)
			require.NoError(t, err)
			assert.Equal(t, want.Topology(), got.Topology(), "state %d, host %s", i, host)
			// The host's ENIs compile from its share exactly as from the whole state.
			if rd.applier == nil {
				rd.applier = control.NewApplier(got, sh.Revision, control.ApplierOptions{Host: host, NoEngine: true})
			} else {
				require.NoError(t, rd.applier.Apply(ctx, got, sh.Revision))
			}
			full, part := compiler.New(s).CompileAll(), compiler.New(got).CompileAll()
			applied := rd.applier.View().Tables
			local := 0
			for _, id := range got.ENIIDs() {
				if n, _ := got.ENI(id); n.Host == host {
					local++
					assert.Equal(t, full[id], part[id], "state %d, host %s, %s", i, host, id)
					assert.Equal(t, full[id], applied[id], "state %d, host %s, %s in force", i, host, id)
				}
			}
			assert.Len(t, applied, local, "state %d, host %s: only its ENIs in force", i, host)
		}
	}
	for _, rd := range readers {
		if rd.cached {
			assert.Positive(t, rd.agent.shareCache.Hits(), "%s: some reads needed no walk", rd.host)
		}
	}
}

// A share cache read in one etcd history is not trusted in another behind the same endpoint (etcd
// wiped, revisions starting over): the read finds the revision went back and reads afresh.
func TestShareCacheAcrossHistories(t *testing.T) {
	etcd := etcdtest.Start(t)
	ctx := context.Background()
	cli := client(t, etcd.Endpoint())
	a := &Agent{cfg: Config{Host: "h2"}}
	read := func(st *etcdstore.Store, want *model.State) {
		var sh etcdstore.Share
		require.Eventually(t, func() bool { // the client reconnects after the wipe
			var err error
			sh, err = st.ReadShare(ctx, "h2", 0, &a.shareCache)
			return err == nil
		}, 20*time.Second, 50*time.Millisecond)
		if sh.Afresh {
			a.decoded, a.built = nil, nil
		}
		got, err := a.shareFromRead(sh)
		require.NoError(t, err)
		wantShare, err := Share(want, "h2")
		require.NoError(t, err)
		assert.Equal(t, wantShare.Topology(), got.Topology())
	}
	r := newReplica(t, cli)
	r.commit(topology(t))
	for port := range 3 { // revisions of the first history run ahead of the second's
		r.commit(r.edit(func(b *model.Builder) {
			g, _ := r.cur.SG("sg-b")
			ng := *g
			ng.Ingress = []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: fmt.Sprint(8000 + port), Action: "ACCEPT"}}
			require.NoError(t, b.PutSG(ng))
		}))
	}
	read(r.st, r.cur)
	read(r.st, r.cur)
	require.Positive(t, a.shareCache.Hits())

	etcd.Wipe()
	second := r.edit(func(b *model.Builder) {
		g, _ := r.cur.SG("sg-b")
		ng := *g
		ng.Ingress = []model.Rule{{IPProtocol: "udp", CidrIP: "198.18.0.0/15", PortRange: "53", Action: "ACCEPT"}}
		require.NoError(t, b.PutSG(ng))
	})
	st, err := etcdstore.Open(ctx, cli, prefix)
	require.NoError(t, err)
	require.NoError(t, st.Commit(ctx, second, 1))
	read(st, second)
}

// An applier given only a host's share (control.ApplierOptions.Host) holds, across changes that move
// members, references and hosts, exactly the tables a compile of the whole state gives that host's
// ENIs, and no others.
func TestHostAppliersMatchAFullCompile(t *testing.T) {
	states := []*model.State{chained(t)}
	edit := func(f func(b *model.Builder)) {
		b := states[len(states)-1].Edit()
		f(b)
		states = append(states, b.State())
	}
	edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("eni-01", []string{"sg-4"})) })
	edit(func(b *model.Builder) { // moved to h0 with its SGs and addresses as they were
		n, _ := states[0].ENI("eni-07")
		nn := *n
		nn.Host = "h0"
		require.NoError(t, b.PutENI(nn))
	})
	edit(func(b *model.Builder) {
		g, _ := states[0].SG("sg-3")
		ng := *g
		ng.Ingress = append(slices.Clone(ng.Ingress), model.Rule{IPProtocol: "udp", SgID: "sg-0", PortRange: "53", Action: "ACCEPT"})
		require.NoError(t, b.PutSG(ng))
	})
	edit(func(b *model.Builder) { require.NoError(t, b.DeleteENI("eni-02")) })
	edit(func(b *model.Builder) { // a member elsewhere re-addressed
		n, _ := states[0].ENI("eni-04")
		nn := *n
		nn.PrivateIPAddresses = []string{"198.18.3.4"}
		require.NoError(t, b.PutENI(nn))
	})
	for _, host := range []string{"h0", "h1", "h2", "h3"} {
		var ap *control.Applier
		for i, s := range states {
			share, err := Share(s, host)
			require.NoError(t, err)
			if ap == nil {
				ap = control.NewApplier(share, uint64(i+1), control.ApplierOptions{Host: host})
			} else {
				require.NoError(t, ap.Apply(context.Background(), share, uint64(i+1)))
			}
			want := map[string]*compiler.Tables{}
			for id, tabs := range compiler.New(s).CompileAll() {
				if n, _ := s.ENI(id); n.Host == host {
					want[id] = tabs
				}
			}
			assert.Equal(t, want, ap.View().Tables, "state %d, host %s", i, host)
			inEngine := map[string]*compiler.Tables{}
			for id, et := range ap.Engine().Snapshot().ENIs() {
				inEngine[id] = et.Tables
			}
			assert.Equal(t, want, inEngine, "state %d, host %s: the engine", i, host)
		}
	}
}

// An agent whose lease is revoked behind its back registers again and acknowledges again; a feed
// compacted past its revision ends its follow with ErrCompacted, after which Run resyncs.
func TestAgentRecovers(t *testing.T) {
	endpoint := etcdtest.Start(t).Endpoint()
	ctx := context.Background()
	cli := client(t, endpoint)
	r := newReplica(t, cli)
	a, _ := runAgent(t, endpoint, "h1")
	rev, hosts := r.commit(topology(t))
	require.Eventually(t, func() bool { p, d := r.wait(rev, hosts[:1], time.Second); return len(p)+len(d) == 0 },
		10*time.Second, 10*time.Millisecond)

	resp, err := cli.Get(ctx, prefix+"/hosts/h1")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	_, err = cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	require.NoError(t, err)
	rev, hosts = r.commit(r.edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("e0", []string{"sg-a", "sg-b"})) }))
	require.Contains(t, hosts, "h1")
	require.Eventually(t, func() bool { p, d := r.wait(rev, []string{"h1"}, time.Second); return len(p)+len(d) == 0 },
		10*time.Second, 10*time.Millisecond, "registered again and enforcing")
	assert.Equal(t, rev, a.Revision())

	// The follow of an agent behind a compaction fails as compacted.
	_, err = cli.Compact(ctx, int64(rev))
	require.NoError(t, err)
	host, err := a.st.RegisterHost(ctx, "h9")
	require.NoError(t, err)
	defer host.Close()
	err = a.follow(ctx, 1, host)
	assert.ErrorIs(t, err, store.ErrCompacted)
}

// etcd stopped and restarted under a running agent: the agent keeps its tables meanwhile, and the
// first change after the restart is enforced and acknowledged.
func TestAgentAcrossEtcdRestart(t *testing.T) {
	etcd := etcdtest.Start(t)
	endpoint, restart := etcd.Endpoint(), etcd.Restart
	ctx := context.Background()
	r := newReplica(t, client(t, endpoint))
	st := r.st
	a, _ := runAgent(t, endpoint, "h1")
	rev, _ := r.commit(topology(t))
	require.Eventually(t, func() bool { p, d := r.wait(rev, []string{"h1"}, time.Second); return len(p)+len(d) == 0 },
		10*time.Second, 10*time.Millisecond)

	restart(500 * time.Millisecond)
	act, ok := verdict(t, a, "e0", "198.18.0.11", 22)
	require.True(t, ok)
	assert.Equal(t, model.Accept, act, "tables in force while etcd was away")
	var next *model.State
	require.Eventually(t, func() bool {
		next = r.edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("e0", []string{"sg-b"})) })
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, rv, err := st.Load(cctx)
		if err != nil {
			return false
		}
		got, err := st.CommitAffecting(cctx, next, rv+1, AffectedHosts(r.cur, next))
		if err != nil {
			return false
		}
		r.cur, r.rev = next, got
		return true
	}, 20*time.Second, 100*time.Millisecond, "commits resume after the restart")
	require.Eventually(t, func() bool { p, d := r.wait(r.rev, []string{"h1"}, time.Second); return len(p)+len(d) == 0 },
		20*time.Second, 20*time.Millisecond, "the agent enforces and acknowledges after the restart")
	act, _ = verdict(t, a, "e0", "198.18.0.11", 22)
	assert.Equal(t, model.Drop, act, "e0 left sg-a")
}

// fleetOf is one ENI per host h0000…, all in sg-all, whose rule names sg-all (so every ENI's table
// holds every address), plus sg-spare that nothing names.
func fleetOf(b testing.TB, hosts int) *model.State {
	topo := model.Topology{Accounts: []model.Account{{AppID: "1250000001"}},
		SecurityGroups: []model.SecurityGroup{
			{SgID: "sg-all", AppID: "1250000001", Ingress: []model.Rule{{IPProtocol: "tcp", SgID: "sg-all", PortRange: "22", Action: "ACCEPT"}}},
			{SgID: "sg-spare", AppID: "1250000001"},
		}}
	for i := range hosts {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{
			NetworkInterfaceID: fmt.Sprintf("eni-%04d", i), AppID: "1250000001", SgIDs: []string{"sg-all"},
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)}, Host: fmt.Sprintf("h%04d", i)})
	}
	s, err := model.NewState(topo)
	require.NoError(b, err)
	return s
}

// tieredOf is a fleet as clouds run them: one ENI per host h0000…, every one in sg-base, whose rules
// are CIDR rules only (ssh from a management range, every egress), and in one of the tiers of ten ENIs
// (on ten hosts); tier k accepts tcp/8080 from tier k−1 and tcp/5432 from itself, so every host's table
// holds twenty addresses whatever the fleet's size. Plus sg-spare that nothing names.
func tieredOf(b testing.TB, hosts int) *model.State {
	topo := model.Topology{Accounts: []model.Account{{AppID: "1250000001"}},
		SecurityGroups: []model.SecurityGroup{
			{SgID: "sg-base", AppID: "1250000001",
				Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "198.19.255.0/24", PortRange: "22", Action: "ACCEPT"}},
				Egress:  []model.Rule{{CidrIP: "0.0.0.0/0", Action: "ACCEPT"}}},
			{SgID: "sg-spare", AppID: "1250000001"},
		}}
	tiers := (hosts + 9) / 10
	for k := range tiers {
		g := model.SecurityGroup{SgID: fmt.Sprintf("sg-tier-%03d", k), AppID: "1250000001",
			Ingress: []model.Rule{{IPProtocol: "tcp", SgID: fmt.Sprintf("sg-tier-%03d", k), PortRange: "5432", Action: "ACCEPT"}}}
		if k > 0 {
			g.Ingress = append(g.Ingress, model.Rule{IPProtocol: "tcp", SgID: fmt.Sprintf("sg-tier-%03d", k-1), PortRange: "8080", Action: "ACCEPT"})
		}
		topo.SecurityGroups = append(topo.SecurityGroups, g)
	}
	for i := range hosts {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{
			NetworkInterfaceID: fmt.Sprintf("eni-%04d", i), AppID: "1250000001", SgIDs: []string{"sg-base", fmt.Sprintf("sg-tier-%03d", i%tiers)},
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)}, Host: fmt.Sprintf("h%04d", i)})
	}
	s, err := model.NewState(topo)
	require.NoError(b, err)
	return s
}

// benchFleet is an embedded etcd, a replica and one agent per host, each with its own etcd client.
type benchFleet struct {
	etcd   *etcdtest.Server
	r      *replica
	agents []*Agent
	stop   func()
}

// startFleet runs hosts agents and commits topology to them, waiting until all enforce it.
func startFleet(b *testing.B, hosts int, topology *model.State) *benchFleet {
	f := &benchFleet{etcd: etcdtest.Start(b), agents: make([]*Agent, hosts)}
	endpoint := f.etcd.Endpoint()
	cli := client(b, endpoint)
	f.r = newReplica(b, cli)
	stops := make([]func(), 0, hosts)
	f.stop = func() {
		for _, stop := range stops {
			stop()
		}
		cli.Close()
		f.etcd.Stop()
	}
	rev, _ := f.r.commit(topology)
	// Agents join in groups of 100, each group enforcing before the next starts: a thousand agents
	// building their first share at once (in fleetOf, of a thousand members each) would keep 2 cores
	// busy for seconds, past their lease keepalives.
	for start := 0; start < hosts; start += 100 {
		var group []string
		for i := start; i < min(start+100, hosts); i++ {
			var stop func()
			f.agents[i], stop = runAgent(b, endpoint, fmt.Sprintf("h%04d", i))
			stops = append(stops, stop)
			group = append(group, fmt.Sprintf("h%04d", i))
		}
		require.Eventually(b, func() bool { p, d := f.r.wait(rev, group, 10*time.Second); return len(p)+len(d) == 0 },
			120*time.Second, 50*time.Millisecond)
	}
	return f
}

func (f *benchFleet) feedEvents() (n uint64) {
	for _, a := range f.agents {
		n += a.Stats().FeedEvents
	}
	return n
}

// measure commits change(i) for each iteration and times it until every affected host has
// acknowledged it; wantHosts, if set, is how many hosts each change must affect.
func (f *benchFleet) measure(b *testing.B, wantHosts int, change func(bld *model.Builder, i int)) {
	r := f.r
	var lat []time.Duration
	before, err := f.etcd.Counters()
	require.NoError(b, err)
	feedBefore := f.feedEvents()
	var cpu time.Duration
	downs := 0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		next := r.edit(func(bld *model.Builder) { change(bld, i) })
		start, cpuStart := time.Now(), cpuTime()
		rev, hosts := r.commit(next)
		pending, down := r.wait(rev, hosts, 10*time.Second)
		// A host whose lease lapsed (keepalives starved on these 2 cores) is down, not waited for: it
		// registers again, resyncs and acks, and the change is enforced everywhere only then.
		lapsed := map[string]bool{}
		for len(down) > 0 && time.Since(start) < 30*time.Second {
			markAll(lapsed, down)
			time.Sleep(10 * time.Millisecond)
			pending, down = r.wait(rev, hosts, 10*time.Second)
		}
		downs += len(lapsed)
		took := time.Since(start)
		lat, cpu = append(lat, took), cpu+cpuTime()-cpuStart
		require.Empty(b, pending)
		require.Empty(b, down)
		if wantHosts > 0 {
			require.Len(b, hosts, wantHosts)
		}
		// Each change starts on an idle machine, as long after the last as the last took: on a fleet
		// the agents' work is spread over as many machines, here it is all on these 2 cores, and
		// fleet-wide changes back to back (a second of CPU each at 1,000 hosts) keep them saturated
		// until the agents' lease keepalives go unanswered for their TTL.
		time.Sleep(took)
	}
	b.StopTimer()
	// Events of the last change may still be on their way to watchers that stopped waiting.
	time.Sleep(200 * time.Millisecond)
	after, err := f.etcd.Counters()
	require.NoError(b, err)
	n := float64(len(lat))
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(after.Writes-before.Writes)/n, "etcd-writes/change")
	b.ReportMetric(float64(after.WatchEvents-before.WatchEvents)/n, "watch-events/change")
	b.ReportMetric(float64(f.feedEvents()-feedBefore)/n, "feed-events/change")
	b.ReportMetric(float64(cpu.Microseconds())/1000/n, "cpu-ms/change")
	b.ReportMetric(float64(downs)/n, "hosts-down/change")
}

// cpuTime is the CPU time this process (etcd, replica and agents alike) has used: between a commit
// and its last ack, what the change cost the machine (steadier than latency on a shared one).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkChangeEnforced: a commit through the store until every affected agent (goroutines with the
// Go engine, each with its own etcd client) has acknowledged it, on an embedded etcd on this machine,
// at 10, 100 and 1,000 hosts, on two fleets:
//   - fleetOf (all, one): sg-all names itself, so every host's table holds every host's address;
//   - tieredOf (tiered-all, tiered-one): a fleet-wide SG of CIDR rules and tiers of ten that name
//     each other, so a host's table holds its tiers' addresses.
//
// "all" changes the fleet-wide SG's rules (every host affected), "one" one ENI's SG list to add or
// remove an SG nothing names (one host affected). Each reports p50/p99 of change → enforced, the
// etcd writes (raft entries: the commit, feeds beyond its transaction, one ack per affected host) and
// the watch events etcd sent (feeds to agents, acks and registrations to the waiting replica) per
// change, the feed events agents received per change, the process's CPU per change, and the hosts
// per change whose lease lapsed meanwhile (their keepalives starved of CPU; the change counts as
// enforced once they registered again and acknowledged). Changes are spaced (see measure): the
// latencies are those of one change on an otherwise idle fleet.
func BenchmarkChangeEnforced(b *testing.B) {
	fleets := []struct {
		prefix   string
		topology func(testing.TB, int) *model.State
		shared   string // the fleet-wide SG
		rule     func(port int) []model.Rule
		base     []string // eni-0000's SGs
	}{
		{"", fleetOf, "sg-all", func(port int) []model.Rule {
			return []model.Rule{{IPProtocol: "tcp", SgID: "sg-all", PortRange: fmt.Sprint(port), Action: "ACCEPT"}}
		}, []string{"sg-all"}},
		{"tiered-", tieredOf, "sg-base", func(port int) []model.Rule {
			return []model.Rule{{IPProtocol: "tcp", CidrIP: "198.19.255.0/24", PortRange: fmt.Sprint(port), Action: "ACCEPT"}}
		}, []string{"sg-base", "sg-tier-000"}},
	}
	for _, hosts := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("hosts=%d", hosts), func(b *testing.B) {
			for _, fl := range fleets {
				f := startFleet(b, hosts, fl.topology(b, hosts))
				b.Run(fl.prefix+"all", func(b *testing.B) {
					f.measure(b, hosts, func(bld *model.Builder, i int) {
						g, _ := f.r.cur.SG(fl.shared)
						ng := *g
						ng.Ingress = fl.rule(1000 + i%2)
						require.NoError(b, bld.PutSG(ng))
					})
				})
				b.Run(fl.prefix+"one", func(b *testing.B) {
					f.measure(b, 1, func(bld *model.Builder, i int) {
						sgs := slices.Clone(fl.base)
						if i%2 == 0 {
							sgs = append(sgs, "sg-spare")
						}
						require.NoError(b, bld.SetENISGs("eni-0000", sgs))
					})
				})
				f.stop()
			}
		})
	}
}

// BenchmarkAgentRestart: a host with 100 ENIs whose agent starts from nothing: registered, share read
// at one revision, compiled and in force in the Go engine, acknowledged.
func BenchmarkAgentRestart(b *testing.B) {
	endpoint := etcdtest.Start(b).Endpoint()
	ctx := context.Background()
	r := newReplica(b, client(b, endpoint))
	st := r.st
	s := fleetOf(b, 100)
	bld := s.Edit()
	for _, id := range s.ENIIDs() {
		n, _ := s.ENI(id)
		nn := *n
		nn.Host = "h0000"
		require.NoError(b, bld.PutENI(nn))
	}
	rev, _ := r.commit(bld.State())
	cli := client(b, endpoint)
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		actx, cancel := context.WithCancel(ctx)
		a, err := New(actx, Config{Client: cli, Prefix: prefix, Host: "h0000"})
		require.NoError(b, err)
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(actx) }()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		for a.Revision() != rev && wctx.Err() == nil {
			pending, _, err := st.WaitEnforced(wctx, rev, []string{"h0000"})
			require.NoError(b, err)
			if len(pending) == 0 && a.Revision() == rev {
				break
			}
		}
		wcancel()
		lat = append(lat, time.Since(start))
		require.Len(b, a.Applier().View().Tables, 100)
		cancel()
		<-done
		// The next iteration's agent must acknowledge anew.
		require.NoError(b, st.Ack(ctx, "h0000", 0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// flakyDataplane is a dataplane that records the tables it holds and fails the first switch of a
// generation after failAfter.
type flakyDataplane struct {
	mu        sync.Mutex
	held      map[string]*compiler.Tables
	failAfter uint64
	failed    bool
}

type flakyStaged struct {
	dp      *flakyDataplane
	gen     uint64
	changed map[string]*compiler.Tables
	removed []string
}

func (f *flakyDataplane) Stage(_ context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) (dataplane.Staged, error) {
	return &flakyStaged{dp: f, gen: gen, changed: changed, removed: removed}, nil
}

func (s *flakyStaged) Switch() error {
	s.dp.mu.Lock()
	defer s.dp.mu.Unlock()
	if s.gen > s.dp.failAfter && !s.dp.failed {
		s.dp.failed = true
		return fmt.Errorf("switch of generation %d failed", s.gen)
	}
	maps.Copy(s.dp.held, s.changed)
	for _, id := range s.removed {
		delete(s.dp.held, id)
	}
	return nil
}

func (s *flakyStaged) Discard() {}

func (f *flakyDataplane) tables(eni string) *compiler.Tables {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[eni]
}

// A dataplane that fails to switch a change in is not acknowledged for it: the agent resyncs and
// acknowledges only once the dataplane holds the change.
func TestAgentAcksOnlyWhatItsDataplanesHold(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*model.State, *model.Builder) error
		moved  bool // the change takes e0 off h1
	}{
		{"rules", func(cur *model.State, b *model.Builder) error {
			g, _ := cur.SG("sg-a")
			ng := *g
			ng.Ingress = []model.Rule{{IPProtocol: "tcp", SgID: "sg-a", PortRange: "2222", Action: "ACCEPT"}}
			return b.PutSG(ng)
		}, false},
		// The ENI the failed change moved away must go from the dataplane too (review finding: a new
		// applier loaded the tables in force, and removed nothing).
		{"moved away", func(cur *model.State, b *model.Builder) error {
			n, _ := cur.ENI("e0")
			moved := *n
			moved.Host, moved.HostInterface = "h3", "tap9"
			return b.PutENI(moved)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			endpoint := etcdtest.Start(t).Endpoint()
			r := newReplica(t, client(t, endpoint))
			rev, _ := r.commit(topology(t))
			next := r.edit(func(b *model.Builder) { require.NoError(t, tc.change(r.cur, b)) })
			dp := &flakyDataplane{held: map[string]*compiler.Tables{}, failAfter: rev}
			ctx, cancel := context.WithCancel(context.Background())
			cli := client(t, endpoint)
			a, err := New(ctx, Config{Client: cli, Prefix: prefix, Host: "h1", Dataplanes: []control.Dataplane{dp}, Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, err)
			var wg sync.WaitGroup
			wg.Go(func() { _ = a.Run(ctx) })
			t.Cleanup(func() { cancel(); wg.Wait() })
			require.Eventually(t, func() bool { return a.Revision() == rev }, 10*time.Second, 5*time.Millisecond)
			before := dp.tables("e0")
			require.NotNil(t, before)

			rev2, hosts := r.commit(next)
			require.Contains(t, hosts, "h1")
			pending, down := r.wait(rev2, []string{"h1"}, 15*time.Second)
			require.Empty(t, pending, "acknowledged in the end")
			require.Empty(t, down)
			dp.mu.Lock()
			assert.True(t, dp.failed, "the change's first switch failed")
			dp.mu.Unlock()
			got := dp.tables("e0")
			if tc.moved {
				assert.Nil(t, got, "the dataplane holds what was acknowledged: e0 is gone")
				return
			}
			want, err := compiler.New(next).Compile("e0")
			require.NoError(t, err)
			require.NotNil(t, got)
			assert.Equal(t, want.Ingress.Entries, got.Ingress.Entries, "the dataplane holds what was acknowledged")
			assert.NotEqual(t, before.Ingress.Entries, got.Ingress.Entries)
		})
	}
}

// TestNewRefusesBadHostNames: an agent's host name is a segment of its etcd keys, so one that is not
// a host name (a '/' would make its keys another host's) is refused before anything is read; a name
// an older build took (a space in it) is not.
func TestNewRefusesBadHostNames(t *testing.T) {
	for _, host := range []string{"", "a/b", "..", "h\x00", "h\n1", strings.Repeat("h", 254)} {
		_, err := New(context.Background(), Config{Host: host})
		require.Error(t, err, "%q", host)
		if host != "" {
			assert.ErrorContains(t, err, fmt.Sprintf("host %q", host))
		}
	}
	assert.True(t, model.ValidHost("rack 1.node-7"))
}
