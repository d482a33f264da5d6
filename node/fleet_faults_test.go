package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// The etcd-restart test's load: writer g owns ENIs eg{g}a and eg{g}b, on two different hosts; its call
// i sets both to listOf(i) in one ModifySecurityGroupsOfNetworkInterface, so a call half applied would
// show the two apart. listOf is one SG of sg-p0..7 and one of sg-q0..7: 64 distinct lists.
const (
	loadWriters = 4
	loadCalls   = 64
)

func listOf(i int) []string { return []string{fmt.Sprintf("sg-p%d", i%8), fmt.Sprintf("sg-q%d", i/8)} }

// callOf is the call whose list l is: -1 for the seed's [sg-anchor], -2 for anything else.
func callOf(l []string) int {
	for i := range loadCalls {
		if slices.Equal(l, listOf(i)) {
			return i
		}
	}
	if slices.Equal(l, []string{"sg-anchor"}) {
		return -1
	}
	return -2
}

// loadTopology: sg-pK admits tcp/2000+K, sg-qK tcp/3000+K, sg-anchor tcp/22; each of h1..h3 holds an
// anchor ENI in sg-anchor, and the writers' ENIs start there too.
func loadTopology(t *testing.T) *model.State {
	topo := model.Topology{Accounts: []model.Account{{AppID: fleetApp, SecretID: fleetID, SecretKey: fleetSecret}}}
	sg := func(id string, port int) model.SecurityGroup {
		return model.SecurityGroup{SgID: id, AppID: fleetApp, SgName: id,
			Ingress: []model.Rule{{IPProtocol: "tcp", CidrIP: "0.0.0.0/0", PortRange: fmt.Sprint(port), Action: "ACCEPT"}}}
	}
	topo.SecurityGroups = append(topo.SecurityGroups, sg("sg-anchor", 22))
	for k := range 8 {
		topo.SecurityGroups = append(topo.SecurityGroups, sg(fmt.Sprintf("sg-p%d", k), 2000+k), sg(fmt.Sprintf("sg-q%d", k), 3000+k))
	}
	eni := func(id, host string, ip int) model.NetworkInterface {
		return model.NetworkInterface{NetworkInterfaceID: id, AppID: fleetApp, PrivateIPAddresses: []string{fmt.Sprintf("198.18.230.%d", ip)},
			SgIDs: []string{"sg-anchor"}, Host: host}
	}
	for h := 1; h <= 3; h++ {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, eni(fmt.Sprintf("anchor-h%d", h), fmt.Sprintf("h%d", h), h))
	}
	for g := range loadWriters {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces,
			eni(fmt.Sprintf("eg%da", g), fmt.Sprintf("h%d", g%3+1), 10+2*g), eni(fmt.Sprintf("eg%db", g), fmt.Sprintf("h%d", (g+1)%3+1), 11+2*g))
	}
	s, err := model.NewState(topo)
	require.NoError(t, err)
	return s
}

func setListParams(g, i int) url.Values {
	v := url.Values{}
	for n, suffix := range []string{"a", "b"} {
		v.Set(fmt.Sprintf("networkInterfaceSet.%d.networkInterfaceId", n), fmt.Sprintf("eg%d%s", g, suffix))
		for m, sg := range listOf(i) {
			v.Set(fmt.Sprintf("networkInterfaceSet.%d.sgIds.%d", n, m), sg)
		}
	}
	return v
}

// loadCall is one call of the load and how it was answered.
type loadCall struct {
	i        int
	ok       bool   // answered with success
	revision uint64 // its enforcement's revision, when ok
	after    bool   // sent after etcd was back
}

// requireAgentEnforces checks that the tables a holds for host's ENIs are exactly what a fresh compile
// of host's share of s gives, and of all of s, and that its engine decides as they say: each of host's ENIs admits tcp from 198.18.9.9 to
// the port of the first rule of an SG (when that rule admits 0.0.0.0/0) exactly when it is in that SG
// (the tests give each such SG a port of its own).
func requireAgentEnforces(t *testing.T, a *fleetAgent, s *model.State, host string) {
	t.Helper()
	share, err := agent.Share(s, host)
	require.NoError(t, err)
	ap := a.Applier()
	require.NotNil(t, ap, "%s has a share in force", host)
	fromShare, fromAll := compiler.New(share), compiler.New(s)
	for _, id := range s.ENIIDs() {
		n, _ := s.ENI(id)
		if n.Host != host {
			continue
		}
		want, err := fromShare.Compile(id)
		require.NoError(t, err)
		assert.Equal(t, want, ap.View().Tables[id], "%s on %s: a fresh compile of the host's share", id, host)
		want, err = fromAll.Compile(id)
		require.NoError(t, err)
		assert.Equal(t, want, ap.View().Tables[id], "%s on %s: a fresh compile of the whole state", id, host)
		for _, sg := range s.SGIDs() {
			g, _ := s.SG(sg)
			if len(g.Ingress) == 0 || g.Ingress[0].CidrIP != "0.0.0.0/0" {
				continue // the tables' comparison covers it; a verdict from 198.18.9.9 would say little
			}
			var port uint16
			_, err := fmt.Sscan(g.Ingress[0].PortRange, &port)
			require.NoError(t, err)
			assert.Equal(t, slices.Contains(n.SgIDs, sg), accepts(a, id, port), "%s on %s: tcp/%d (%s)", id, host, port, sg)
		}
	}
}

// TestFleetEtcdRestartUnderLoad: two replicas take signed calls from four writers while the embedded
// etcd is stopped and started again. While it is away the replicas' /readyz answer 503 naming it, and
// every writer's calls are answered (with failures), not held; 200 once it is back. Every call answered
// with success is in etcd's history at its revision and in the final state unless a later call of the
// same writer replaced it; every commit of the run applied some call whole; each writer's commits
// follow its calls' order; and afterwards the three agents enforce the final state, acknowledged.
// It stays whole: the writers, the outage and the checks afterwards share one run's calls and history.
func TestFleetEtcdRestartUnderLoad(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	// Every client reaches etcd through one proxy, cut just before etcd stops: a graceful stop waits
	// for open watches to end, and through the proxy there are none left to wait for.
	proxy := startCutProxy(t, etcd.Endpoint())
	endpoint := proxy.Endpoint()
	replicas := []*Node{newReplica(t, endpoint, loadTopology(t), time.Second), newReplica(t, endpoint, nil, time.Second)}
	agents := map[string]*fleetAgent{}
	for _, h := range []string{"h1", "h2", "h3"} {
		agents[h] = startFleetAgent(t, endpoint, h)
	}
	enforcing(t, replicas[0], agents["h1"], agents["h2"], agents["h3"])
	startRev := replicas[0].Controller().View().Generation

	var (
		mu    sync.Mutex
		calls = make([][]loadCall, loadWriters)
		back  bool // etcd is back
	)
	count := func(pred func(c loadCall) bool) (least int) {
		mu.Lock()
		defer mu.Unlock()
		least = loadCalls
		for _, cs := range calls {
			n := 0
			for _, c := range cs {
				if pred(c) {
					n++
				}
			}
			least = min(least, n)
		}
		return least
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range loadWriters {
		wg.Go(func() {
			for i := 0; i < loadCalls; i++ {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				c := loadCall{i: i, after: back}
				mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				resp, err := tencentOf(replicas[(g+i)%2]).Call(ctx, "ModifySecurityGroupsOfNetworkInterface", setListParams(g, i))
				cancel()
				if err == nil && resp.Err() == nil {
					if e := enforcementOf(t, resp.Body); assert.NotNil(t, e, "%s", resp.Body) {
						c.ok, c.revision = true, e.Revision
					}
				}
				mu.Lock()
				calls[g] = append(calls[g], c)
				mu.Unlock()
			}
		})
	}
	require.Eventually(t, func() bool { return count(func(c loadCall) bool { return c.ok }) >= 2 }, 20*time.Second, 5*time.Millisecond,
		"every writer has calls answered before etcd stops")
	proxy.Cut()
	etcd.Stop()
	for i, n := range replicas {
		require.Eventually(t, func() bool {
			w := asFleetAdmin(n, http.MethodGet, "/readyz", "")
			return w.Code == http.StatusServiceUnavailable && strings.Contains(w.Body.String(), endpoint)
		}, 20*time.Second, 5*time.Millisecond, "replica %d not ready while etcd is down, naming it", i)
	}
	require.Eventually(t, func() bool { return count(func(c loadCall) bool { return !c.ok }) >= 1 }, 20*time.Second, 5*time.Millisecond,
		"every writer has a call answered with a failure while etcd is down")
	etcd.Resume()
	proxy.Restore()
	mu.Lock()
	back = true
	mu.Unlock()
	for i, n := range replicas {
		require.Eventually(t, func() bool { return asFleetAdmin(n, http.MethodGet, "/readyz", "").Code == http.StatusOK },
			20*time.Second, 5*time.Millisecond, "replica %d ready once etcd is back", i)
	}
	require.Eventually(t, func() bool { return count(func(c loadCall) bool { return c.ok && c.after }) >= 3 }, 30*time.Second, 5*time.Millisecond,
		"every writer has calls answered after etcd is back")
	close(stop)
	wg.Wait()

	// One more call touches every host, through a replica that waits long enough for any agent still
	// reconnecting: all three must have resynced.
	last := newReplica(t, endpoint, nil, 10*time.Second)
	ctx := context.Background()
	resp, err := tencentOf(last).Call(ctx, "ModifySecurityGroupPolicy", policy("sg-anchor", 23))
	require.NoError(t, err)
	require.NoError(t, resp.Err())
	e := enforcementOf(t, resp.Body)
	require.NotNil(t, e, "%s", resp.Body)
	assert.Equal(t, api.Enforcement{Revision: e.Revision, Hosts: 3, Pending: []string{}, Down: []string{}}, *e, "every agent acknowledged")
	final, finalRev, err := last.fleet.st.Load(ctx)
	require.NoError(t, err)
	require.Equal(t, e.Revision, finalRev)

	// etcd's history from before the load to the end: every commit applied one call whole.
	history := make([][]int, loadWriters) // per writer, the calls its commits applied, in revision order
	atRevision := map[uint64]*model.State{}
	cur, err := last.fleet.st.LoadAt(ctx, startRev)
	require.NoError(t, err)
	errDone := errors.New("at the end")
	err = last.fleet.st.Watch(ctx, startRev, func(ch store.Change) error {
		if cur, err = ch.Apply(cur); err != nil {
			return err
		}
		atRevision[ch.Revision] = cur
		for g := range loadWriters {
			a, _ := cur.ENI(fmt.Sprintf("eg%da", g))
			b, _ := cur.ENI(fmt.Sprintf("eg%db", g))
			require.Equal(t, a.SgIDs, b.SgIDs, "revision %d: writer %d's call applied to one ENI of two", ch.Revision, g)
			if h := history[g]; callOf(a.SgIDs) != -1 && (len(h) == 0 || h[len(h)-1] != callOf(a.SgIDs)) {
				history[g] = append(h, callOf(a.SgIDs))
			}
		}
		if ch.Revision >= finalRev {
			return errDone
		}
		return nil
	})
	require.ErrorIs(t, err, errDone)
	assert.Equal(t, final.Topology(), cur.Topology(), "the history ends in the final state")

	failed, landed := 0, 0
	for g, cs := range calls {
		issued := map[int]bool{}
		lastOK := -1
		for _, c := range cs {
			issued[c.i] = true
			if !c.ok {
				failed++
				if slices.Contains(history[g], c.i) {
					landed++ // committed, but its answer was lost with etcd: all of it, or none
				}
				continue
			}
			lastOK = c.i
			at := atRevision[c.revision]
			require.NotNil(t, at, "writer %d call %d: its revision %d is a commit of the run", g, c.i, c.revision)
			n, _ := at.ENI(fmt.Sprintf("eg%da", g))
			assert.Equal(t, listOf(c.i), n.SgIDs, "writer %d call %d: in force at its revision %d", g, c.i, c.revision)
			assert.Contains(t, history[g], c.i, "writer %d call %d answered, then lost", g, c.i)
		}
		assert.True(t, slices.IsSorted(history[g]) && len(slices.Compact(slices.Clone(history[g]))) == len(history[g]),
			"writer %d's commits follow its calls' order: %v", g, history[g])
		for _, i := range history[g] {
			assert.True(t, issued[i], "writer %d: commit of call %d, never sent", g, i)
		}
		n, _ := final.ENI(fmt.Sprintf("eg%da", g))
		end := callOf(n.SgIDs)
		assert.GreaterOrEqual(t, end, lastOK, "writer %d: the final state holds its last answered call %d or a later one, not %d", g, lastOK, end)
	}
	t.Logf("%d calls failed while etcd was away, %d of them committed all the same", failed, landed)
	require.Positive(t, failed)

	for h, a := range agents {
		assert.GreaterOrEqual(t, a.Revision(), finalRev, "%s has the last change in force", h)
		requireAgentEnforces(t, a, final, h)
	}
}

// cutProxy forwards TCP to an etcd server until Cut, which closes every connection through it and
// refuses new ones until Restore: one client loses etcd while the others keep it.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
}

func startCutProxy(t *testing.T, endpoint string) *cutProxy {
	u, err := url.Parse(endpoint)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.Cut(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, up) {
				continue
			}
			for _, pair := range [][2]net.Conn{{c, up}, {up, c}} {
				wg.Go(func() {
					_, _ = io.Copy(pair[0], pair[1])
					pair[0].Close()
					pair[1].Close()
					p.mu.Lock()
					delete(p.conns, pair[1])
					p.mu.Unlock()
				})
			}
		}
	})
	return p
}

// track records both ends of a new connection, or closes them while the proxy is cut.
func (p *cutProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		if p.cut {
			c.Close()
		} else {
			p.conns[c] = true
		}
	}
	return !p.cut
}

func (p *cutProxy) Endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *cutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *cutProxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// logRecorder is a slog.Handler keeping every record's message and attributes as text.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// has reports whether some line holds every one of parts.
func (l *logRecorder) has(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(line string) bool {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				return false
			}
		}
		return true
	})
}

// startLoggedAgent is startFleetAgent with the agent's log kept in rec.
func startLoggedAgent(t *testing.T, endpoint, host string, rec *logRecorder) *fleetAgent {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, agent.Config{Client: cli, Prefix: fleetPrefix, Host: host, Logger: slog.New(rec)})
	require.NoError(t, err)
	fa := &fleetAgent{Agent: a, cli: cli, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(fa.done); _ = a.Run(ctx) }()
	t.Cleanup(fa.stop)
	return fa
}

// TestFleetAgentWatchCompacted: h2's agent loses etcd (its connection is cut; its lease lives on)
// while calls commit and etcd is compacted past everything h2 has heard. Back, its watch fails as
// compacted; it resyncs and acknowledges, and its tables are the final state's, none stale. A change
// whose revision was compacted is answered 410 (gone) naming the revision; one still kept, 200.
func TestFleetAgentWatchCompacted(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	endpoint := etcd.Endpoint()
	proxy := startCutProxy(t, endpoint)
	// Long enough for h1, which etcd reaches, to acknowledge on a loaded machine; short enough that the
	// three answers that wait it out (h2 cut off) end well within h2's lease, so that h2 comes back
	// to a compacted watch, not a lost lease.
	a := newReplica(t, endpoint, fleetTopology(t), 400*time.Millisecond)
	rec := &logRecorder{}
	h1, h2 := startFleetAgent(t, endpoint, "h1"), startLoggedAgent(t, proxy.Endpoint(), "h2", rec)
	enforcing(t, a, h1, h2)
	heard := h2.Revision()
	ctx := context.Background()
	acked := func(rev uint64) bool {
		pending, down, err := a.fleet.st.EnforcementOf(ctx, rev, []string{"h1", "h2"})
		require.NoError(t, err)
		return len(pending)+len(down) == 0
	}
	require.Eventually(t, func() bool { return acked(heard) }, 10*time.Second, 5*time.Millisecond, "h2 acknowledged before the cut")
	call := func(params url.Values) *api.Enforcement {
		t.Helper()
		resp, err := tencentOf(a).Call(ctx, "ModifySecurityGroupPolicy", params)
		require.NoError(t, err)
		require.NoError(t, resp.Err())
		e := enforcementOf(t, resp.Body)
		require.NotNil(t, e, "%s", resp.Body)
		return e
	}

	proxy.Cut()
	// sg-a is on h1 and h2: h2 cannot acknowledge and is pending; sg-b's h3 has no agent: down.
	var first, lastA *api.Enforcement
	for i := range 3 {
		lastA = call(policy("sg-a", 7000+i))
		assert.Equal(t, api.Enforcement{Revision: lastA.Revision, Hosts: 2, Pending: []string{"h2"}, Down: []string{}}, *lastA)
		if first == nil {
			first = lastA
		}
	}
	for i := range 10 {
		e := call(policy("sg-b", 8000+i))
		assert.Equal(t, []string{"h3"}, e.Down)
	}
	_, latest, err := a.fleet.st.Load(ctx)
	require.NoError(t, err)
	cli := etcd.Client(t)
	_, err = cli.Compact(ctx, int64(latest))
	require.NoError(t, err)
	assert.Equal(t, heard, h2.Revision(), "h2 heard nothing while cut")
	proxy.Restore()

	// lastA's revision is compacted away: its change is no longer there to ask about, but h2's ack is.
	require.Eventually(t, func() bool { return acked(lastA.Revision) }, 15*time.Second, 10*time.Millisecond, "h2 back: resynced and acknowledged; its log: %v", rec)
	assert.True(t, rec.has("resyncing", "compacted"), "h2's watch failed as compacted: %v", rec.lines)
	final, finalRev, err := a.fleet.st.Load(ctx)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, h2.Revision(), lastA.Revision)
	requireAgentEnforces(t, h2, final, "h2")
	requireAgentEnforces(t, h1, final, "h1")
	assert.True(t, accepts(h2, "e2", 7002))
	assert.False(t, accepts(h2, "e2", 7000), "no stale table")

	w := asFleetAdmin(a, http.MethodGet, fmt.Sprintf("/sgsim/v1/changes/%d", first.Revision), "")
	assert.Equal(t, http.StatusGone, w.Code, w.Body.String())
	assert.Contains(t, w.Body.String(), fmt.Sprintf("change %d", first.Revision))
	assert.Contains(t, w.Body.String(), "compacted")
	code, kept := change(t, a, finalRev)
	assert.Equal(t, http.StatusOK, code)
	require.NotNil(t, kept)
	assert.Equal(t, api.Enforcement{Revision: finalRev, Hosts: 1, Pending: []string{}, Down: []string{"h3"}}, *kept)
}
