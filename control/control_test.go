package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// recorder is a Dataplane that remembers which ENIs each switched change carried, and checks that
// nothing is switched in before the store holds it.
type recorder struct {
	mu         sync.Mutex
	store      store.Store // when set, Switch checks the change's generation is committed there
	calls      [][]string  // per switched change, its ENIs
	removals   [][]string  // per switched change, the ENIs it removed
	discarded  int
	fail       error // returned by Stage
	failSwitch error
	stageGate  chan struct{} // when set, Stage waits for it to close
}

type recorded struct {
	r                *recorder
	gen              uint64
	changed, removed []string
}

func (r *recorder) Stage(ctx context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) (dataplane.Staged, error) {
	if r.fail != nil {
		return nil, r.fail
	}
	if r.stageGate != nil {
		<-r.stageGate
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &recorded{r: r, gen: gen, changed: slices.Sorted(maps.Keys(changed)), removed: removed}, nil
}

func (s *recorded) Switch() error {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	if s.r.store != nil {
		_, gen, err := s.r.store.Load(context.Background())
		if err != nil {
			return fmt.Errorf("switched generation %d with the store unreadable: %w", s.gen, err)
		}
		if gen != s.gen {
			return fmt.Errorf("switched generation %d while the store holds %d", s.gen, gen)
		}
	}
	s.r.calls = append(s.r.calls, s.changed)
	s.r.removals = append(s.r.removals, s.removed)
	return s.r.failSwitch
}

func (s *recorded) Discard() {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.discarded++
}

func (r *recorder) last() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[len(r.calls)-1]
}

func newCtrl(t *testing.T) (*Controller, *recorder) {
	return newCtrlWith(t, store.NewMemory())
}

func newCtrlWith(t *testing.T, st store.Store) (*Controller, *recorder) {
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	c, err := New(context.Background(), st, s, Options{})
	require.NoError(t, err)
	rec := &recorder{store: st}
	require.NoError(t, c.AddDataplane(context.Background(), rec))
	require.Len(t, rec.calls[0], 6, "a new dataplane gets every ENI")
	return c, rec
}

func TestRecompilesOnlyAffected(t *testing.T) {
	ctx := context.Background()
	c, rec := newCtrl(t)
	const db2 = "b9ac5247-c4ca-4c9b-b8fa-7d19132e560a"

	// Rule change: the SG's users.
	require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil))
	assert.Equal(t, []string{db2, "eni-db1"}, rec.last())
	assert.Equal(t, 1, mustSG(c.View().State, "sg-db").Version)

	// Membership change of sg-web (eni-web1 leaves): eni-web1 plus users of SGs referencing sg-web —
	// none now, since the rule change above dropped sg-db's references.
	require.NoError(t, c.ModifySecurityGroupsOfNetworkInterface(ctx, "1250000001", []ENISGs{{ENI: "eni-web1", SgIDs: []string{"sg-ssh"}}}))
	assert.Equal(t, []string{"eni-web1"}, rec.last())

	// Put a reference back: sg-ssh references sg-web; moving eni-spare into sg-web recompiles it and
	// every user of sg-ssh (eni-web1, eni-web2).
	require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-ssh", []model.Rule{{SgID: "sg-web", Action: "ACCEPT"}}, nil))
	_, err := c.PortAction(ctx, "1250000001", "sg-web", true, []string{"eni-spare"})
	require.NoError(t, err)
	assert.Equal(t, []string{"eni-spare", "eni-web1", "eni-web2"}, rec.last())

	// The built-in engine agrees with a full recompile of the final state.
	full := compiler.New(c.View().State).CompileAll()
	engineHolds(t, c.Engine(), full)
}

// A dataplane that fails to stage (publish) or to switch the tables makes the call an internal error
// naming the failure.
func TestDataplaneFailureIsReported(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(*recorder) string
	}{
		{"publish", func(rec *recorder) string { rec.fail = errors.New("map full"); return "map full" }},
		{"switch", func(rec *recorder) string { rec.failSwitch = errors.New("switch refused"); return "switch refused" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, rec := newCtrl(t)
			want := tc.fail(rec)
			err := c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-web", nil, nil)
			assert.Equal(t, model.CodeInternal, model.CodeOf(err))
			assert.ErrorContains(t, err, want)
		})
	}
}

// A dataplane that failed a change is given every table and every removal it missed with the next
// change, so the failed change's ENIs are not left stale in it; once caught up it gets only what each
// change touches again.
func TestDataplaneBehindCatchesUp(t *testing.T) {
	const db2 = "b9ac5247-c4ca-4c9b-b8fa-7d19132e560a"
	all := []string{db2, "eni-db1", "eni-spare", "eni-web1", "eni-web2"}
	for _, tc := range []struct {
		name string
		fail func(*recorder, error)
	}{
		{"stage", func(rec *recorder, err error) { rec.fail = err }},
		{"switch", func(rec *recorder, err error) { rec.failSwitch = err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c, rec := newCtrl(t)
			tc.fail(rec, errors.New("refused"))
			require.ErrorContains(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil), "refused")
			require.ErrorContains(t, c.DeleteENI(ctx, "eni-other"), "refused")
			tc.fail(rec, nil)

			require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-web", []model.Rule{{Action: "DROP"}}, nil))
			assert.Equal(t, all, rec.last(), "every table of the View")
			assert.Equal(t, []string{"eni-other"}, rec.removals[len(rec.removals)-1], "the ENI deleted while it was behind")

			require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", nil, nil))
			assert.Equal(t, []string{db2, "eni-db1"}, rec.last(), "caught up: only the change's ENIs")
			assert.Empty(t, rec.removals[len(rec.removals)-1])
		})
	}
}

// failingStore refuses every commit after the first (the seed).
type failingStore struct {
	store.Memory
	commits int
}

func (f *failingStore) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if f.commits++; f.commits > 1 {
		return errors.New("disk full")
	}
	return f.Memory.Commit(ctx, s, gen)
}

// A change whose commit fails is staged (the build overlaps the commit) but never switched in: the
// dataplanes, the engine and the View all stay as they were.
func TestFailedCommitChangesNothing(t *testing.T) {
	ctx := context.Background()
	c, rec := newCtrlWith(t, &failingStore{})
	before := c.View()
	eng := c.Engine().Snapshot()
	err := c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil)
	assert.Equal(t, model.CodeInternal, model.CodeOf(err))
	assert.ErrorContains(t, err, "disk full")
	assert.Same(t, before, c.View())
	assert.Same(t, eng, c.Engine().Snapshot())
	assert.Len(t, rec.calls, 1, "only the initial load was switched in")
	assert.Equal(t, 1, rec.discarded)
}

// cancellingStore cancels the call's context while it commits, as a client hanging up would, then
// opens gate.
type cancellingStore struct {
	store.Memory
	cancel context.CancelFunc
	gate   chan struct{}
}

func (c *cancellingStore) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if c.cancel == nil {
		return c.Memory.Commit(ctx, s, gen)
	}
	c.cancel()
	defer close(c.gate)
	return c.Memory.Commit(context.WithoutCancel(ctx), s, gen) // already past its own cancellation check
}

// A change whose commit went through reaches every dataplane even when the caller gave up meanwhile.
func TestCommittedChangeIsPublishedAfterCancel(t *testing.T) {
	st := &cancellingStore{}
	c, rec := newCtrlWith(t, st)
	ctx, cancel := context.WithCancel(context.Background())
	st.cancel, st.gate = cancel, make(chan struct{})
	rec.stageGate = st.gate // stage only once the call is cancelled
	require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil))
	require.Error(t, ctx.Err())
	assert.Len(t, rec.calls, 2, "the change was switched in")
	assert.Equal(t, uint64(2), c.View().Generation)
}

func TestNewNeedsSeedForEmptyStore(t *testing.T) {
	_, err := New(context.Background(), store.NewMemory(), nil, Options{})
	assert.ErrorContains(t, err, "empty")
}

// An agent that sees only the committed states, one after another, and runs the Applier alone ends up
// with the same tables as the single-host Controller.
func TestApplierAloneFollowsCommittedStates(t *testing.T) {
	ctx := context.Background()
	c, _ := newCtrl(t)
	first := c.View()
	agent := NewApplier(first.State, first.Generation, ApplierOptions{Factory: dataplane.ClassifierFactory})
	rec := &recorder{}
	require.NoError(t, agent.AddDataplane(ctx, rec))
	steps := []func() error{
		func() error {
			return c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-ssh", []model.Rule{{SgID: "sg-web", Action: "ACCEPT"}}, nil)
		},
		func() error {
			_, err := c.PortAction(ctx, "1250000001", "sg-web", true, []string{"eni-spare"})
			return err
		},
		func() error {
			return c.ModifySecurityGroupsOfNetworkInterface(ctx, "1250000001", []ENISGs{{ENI: "eni-web1", SgIDs: []string{"sg-ssh"}}})
		},
	}
	for i, step := range steps {
		require.NoError(t, step(), "step %d", i)
		v := c.View()
		require.NoError(t, agent.Apply(ctx, v.State, v.Generation))
		assert.Equal(t, compiler.Affected(first.State, v.State), rec.last(), "step %d", i)
		assert.Equal(t, v.Tables, agent.View().Tables, "step %d", i)
		first = v
	}
	engineHolds(t, agent.Engine(), c.View().Tables)
}

// A commit refused because another writer moved the store on is a 6000 whose cause is store.ErrConflict,
// and changes nothing here.
func TestConflictingCommitNamesItsCause(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory()
	c, rec := newCtrlWith(t, st)
	before := c.View()
	require.NoError(t, st.Commit(ctx, before.State, before.Generation+1), "another writer")
	err := c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil)
	assert.Equal(t, model.CodeInternal, model.CodeOf(err))
	assert.ErrorIs(t, err, store.ErrConflict)
	assert.Same(t, before, c.View())
	assert.Equal(t, 1, rec.discarded)
}

// Concurrent writers validate outside the lock; whoever finds the state moved on re-runs its operation on
// the new one, so no change is lost and the tables in force are those of the final state.
func TestConcurrentWritersLoseNothing(t *testing.T) {
	ctx := context.Background()
	c, _ := newCtrl(t)
	sgs := []string{"sg-web", "sg-ssh", "sg-lockdown", "sg-db"}
	var wg sync.WaitGroup
	for w, sg := range sgs {
		wg.Go(func() {
			for i := range 25 {
				rules := []model.Rule{{IPProtocol: "tcp", PortRange: fmt.Sprint(1000*(w+1) + i), Action: "ACCEPT"}}
				assert.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", sg, rules, nil))
			}
		})
	}
	wg.Wait()
	v := c.View()
	assert.Equal(t, uint64(1+4*25), v.Generation, "every change committed once")
	for w, sg := range sgs {
		assert.Equal(t, fmt.Sprint(1000*(w+1)+24), mustSG(v.State, sg).Ingress[0].PortRange, sg)
	}
	assert.Equal(t, compiler.New(v.State).CompileAll(), v.Tables)
	engineHolds(t, c.Engine(), v.Tables)
}

// The fleet's split, end to end over one store: a Controller writes; an agent that sees only the
// store's Watch rebuilds each committed state from its Change and runs the Applier alone. It ends with
// the writer's tables.
func TestAgentFollowsTheStoreWatch(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory()
	c, _ := newCtrlWith(t, st)
	first := c.View()
	agent := NewApplier(first.State, first.Generation, ApplierOptions{Factory: dataplane.ClassifierFactory})

	applied := make(chan uint64, 16)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		state := first.State
		done <- st.Watch(wctx, first.Generation, func(ch store.Change) error {
			next, err := ch.Apply(state)
			if err != nil {
				return err
			}
			if err := agent.Apply(wctx, next, ch.Revision); err != nil {
				return err
			}
			state = next
			applied <- ch.Revision
			return nil
		})
	}()

	require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-ssh", []model.Rule{{SgID: "sg-web", Action: "ACCEPT"}}, nil))
	_, err := c.PortAction(ctx, "1250000001", "sg-web", true, []string{"eni-spare"})
	require.NoError(t, err)
	g, err := c.CreateSecurityGroup(ctx, "1250000001", "agent", "", 0)
	require.NoError(t, err)
	require.NoError(t, c.ModifySecurityGroupsOfNetworkInterface(ctx, "1250000001", []ENISGs{{ENI: "eni-web1", SgIDs: []string{g.SgID, "sg-ssh"}}}))
	for want := first.Generation + 1; want <= c.View().Generation; want++ {
		select {
		case got := <-applied:
			require.Equal(t, want, got)
		case err := <-done:
			t.Fatalf("watch ended: %v", err)
		}
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.Equal(t, c.View().Generation, agent.View().Generation)
	assert.Equal(t, c.View().Tables, agent.View().Tables)
	engineHolds(t, agent.Engine(), c.View().Tables)
}

// dbIngressFrom decides a postgres packet to eni-db1 from src with the controller's engine.
func dbIngressFrom(t *testing.T, c *Controller, src string) dataplane.Verdict {
	t.Helper()
	v, ok := c.Engine().Match("eni-db1", model.Ingress, &dataplane.Packet{Proto: 6, Remote: netip.MustParseAddr(src), Port: 5432, HasPort: true})
	require.True(t, ok)
	return v
}

// TestENIAtRunTime: an ENI created, re-addressed and deleted at run time re-targets the sgId rules
// naming its SGs on every ENI they reach, in one change each, and only those ENIs are recompiled.
func TestENIAtRunTime(t *testing.T) {
	ctx := context.Background()
	c, rec := newCtrl(t)
	const app = "1250000001"
	web3 := model.NetworkInterface{NetworkInterfaceID: "eni-web3", AppID: app, PrivateIPAddresses: []string{"198.18.1.30"},
		SgIDs: []string{"sg-web"}, HostInterface: "sgweb3"}
	assert.Equal(t, dataplane.ReasonDefaultDrop, dbIngressFrom(t, c, "198.18.1.30").Reason)

	got, err := c.PutENI(ctx, web3)
	require.NoError(t, err)
	assert.Equal(t, "sgweb3", got.HostInterface)
	// eni-db1 and the db port take sg-db's "postgres from the web tier" rule: their tables change too.
	assert.Equal(t, []string{"b9ac5247-c4ca-4c9b-b8fa-7d19132e560a", "eni-db1", "eni-web3"}, rec.last())
	v := dbIngressFrom(t, c, "198.18.1.30")
	assert.Equal(t, dataplane.ReasonRule, v.Reason)
	assert.Equal(t, "sg-db", v.SgID)

	gen := c.View().Generation
	_, err = c.PutENI(ctx, web3)
	require.NoError(t, err)
	assert.Equal(t, gen, c.View().Generation, "putting the same ENI again changes nothing")

	web3.PrivateIPAddresses = []string{"198.18.1.31"}
	_, err = c.PutENI(ctx, web3)
	require.NoError(t, err)
	assert.Equal(t, dataplane.ReasonDefaultDrop, dbIngressFrom(t, c, "198.18.1.30").Reason)
	assert.Equal(t, dataplane.ReasonRule, dbIngressFrom(t, c, "198.18.1.31").Reason)

	require.NoError(t, c.DeleteENI(ctx, "eni-web3"))
	assert.Equal(t, dataplane.ReasonDefaultDrop, dbIngressFrom(t, c, "198.18.1.31").Reason)
	_, ok := c.Engine().Match("eni-web3", model.Ingress, &dataplane.Packet{Proto: 6, Remote: netip.MustParseAddr("198.18.0.1")})
	assert.False(t, ok, "a deleted ENI's tables are gone")
	_, ok = c.View().Tables["eni-web3"]
	assert.False(t, ok)
}

func TestPutENIRefusals(t *testing.T) {
	ctx := context.Background()
	const app = "1250000001"
	eni := func(edit func(*model.NetworkInterface)) model.NetworkInterface {
		n := model.NetworkInterface{NetworkInterfaceID: "eni-new", AppID: app, PrivateIPAddresses: []string{"198.18.7.1"}, SgIDs: []string{"sg-web"}}
		edit(&n)
		return n
	}
	tests := []struct {
		name string
		eni  model.NetworkInterface
		lim  func(*Limits)
		code int
		msg  string
	}{
		{"private IP of another ENI", eni(func(n *model.NetworkInterface) { n.PrivateIPAddresses = []string{"198.18.1.10"} }), nil,
			model.CodeConflict, `privateIpAddresses[0]: "198.18.1.10": already a private IP of network interface eni-web1`},
		{"SG of another account", eni(func(n *model.NetworkInterface) { n.SgIDs = []string{"sg-other"} }), nil,
			model.CodeNotOwner, `sgIds[0]: "sg-other"`},
		{"unknown SG", eni(func(n *model.NetworkInterface) { n.SgIDs = []string{"sg-nope"} }), nil, model.CodeNotFound, "sg-nope"},
		{"too many SGs", eni(func(n *model.NetworkInterface) { n.SgIDs = []string{"sg-web", "sg-db", "sg-ssh"} }),
			func(l *Limits) { l.SGsPerENI = 2 }, model.CodeBadParameter, "at most 2 allowed"},
		{"SG full", eni(func(*model.NetworkInterface) {}), func(l *Limits) { l.ENIsPerSG = 2 }, model.CodeBadParameter,
			"would have 3 network interfaces, at most 2"},
		{"host full", eni(func(*model.NetworkInterface) {}), func(l *Limits) { l.ENIsPerHost = 6 }, model.CodeConflict,
			"this host enforces at most 6 network interfaces"},
		// A single host enforces every ENI whatever its host field: naming another host is no way round.
		{"host full, another host named", eni(func(n *model.NetworkInterface) { n.Host = "elsewhere" }),
			func(l *Limits) { l.ENIsPerHost = 6 }, model.CodeConflict, "this host enforces at most 6 network interfaces"},
		{"another account's ENI", eni(func(n *model.NetworkInterface) { n.NetworkInterfaceID = "eni-other"; n.SgIDs = nil }), nil,
			model.CodeNotOwner, "belongs to another account"},
		{"bad address", eni(func(n *model.NetworkInterface) { n.PrivateIPAddresses = []string{"198.18.7"} }), nil,
			model.CodeBadParameter, "privateIpAddresses[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, rec := newCtrl(t)
			if tt.lim != nil {
				lim := c.writer.limits
				tt.lim(&lim)
				c.writer.limits = lim
			}
			before := c.View()
			_, err := c.PutENI(ctx, tt.eni)
			require.Error(t, err)
			assert.Equal(t, tt.code, model.CodeOf(err))
			assert.Contains(t, err.Error(), tt.msg)
			assert.Same(t, before, c.View(), "nothing changed")
			assert.Len(t, rec.calls, 1, "only the initial load was switched in")
		})
	}
	t.Run("delete unknown", func(t *testing.T) {
		c, _ := newCtrl(t)
		assert.Equal(t, model.CodeNotFound, model.CodeOf(c.DeleteENI(ctx, "eni-nope")))
	})
}

// TestTimings: the initial compile counts as one apply; each committed change observes each step once;
// a refused change observes nothing; the histograms pass Prometheus' lint.
func TestTimings(t *testing.T) {
	c, _ := newCtrl(t)
	count := func(h prometheus.Histogram) uint64 {
		var m dto.Metric
		require.NoError(t, h.Write(&m))
		return m.GetHistogram().GetSampleCount()
	}
	tm := c.Timings()
	assert.Equal(t, uint64(1), count(tm.Apply))
	require.NoError(t, c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil))
	require.Error(t, c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-nope", nil, nil))
	assert.Equal(t, uint64(2), count(tm.Apply))
	for _, h := range []prometheus.Histogram{tm.Compile, tm.Stage, tm.Switch} {
		assert.Equal(t, uint64(1), count(h))
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tm.Collectors()...)
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// TestNoEngine: without the built-in engine every change still reaches the added dataplanes.
func TestNoEngine(t *testing.T) {
	ctx := context.Background()
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	c, err := New(ctx, store.NewMemory(), s, Options{NoEngine: true})
	require.NoError(t, err)
	require.Nil(t, c.Engine())
	rec := &recorder{}
	require.NoError(t, c.AddDataplane(ctx, rec))
	require.Len(t, rec.last(), 6, "a new dataplane gets every ENI")
	require.NoError(t, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil))
	require.Len(t, rec.calls, 2)
	require.NotEmpty(t, rec.last())
	require.Equal(t, uint64(2), c.View().Generation)
}

// engineHolds checks that the engine's live tables are want's, ENI by ENI.
func engineHolds(t *testing.T, e *dataplane.Engine, want map[string]*compiler.Tables) {
	t.Helper()
	for id, tables := range want {
		got, ok := e.Snapshot().ENI(id)
		require.True(t, ok, id)
		assert.Equal(t, tables, got.Tables, id)
	}
}

// besideState is the demo state plus other SGs of 100 rules each, n rules in all, that no ENI uses:
// what a one-rule change is committed beside.
func besideState(b *testing.B, n int) *model.State {
	s, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(b, err)
	e := s.Edit()
	for g := 0; g*100 < n; g++ {
		sg := model.SecurityGroup{SgID: fmt.Sprintf("sg-other%d", g), AppID: "1250000001"}
		for r := range min(100, n-g*100) {
			sg.Ingress = append(sg.Ingress, model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("10.%d.%d.0/24", g%256, r), PortRange: strconv.Itoa(1000 + r), Action: "ACCEPT"})
		}
		require.NoError(b, e.PutSG(sg))
	}
	return e.State()
}

// BenchmarkModifyBeside measures a one-rule ModifySecurityGroupPolicy committed to bbolt (fsync included)
// beside n other rules: the write cost should not grow with the rest of the state (issue 17 item 6).
func BenchmarkModifyBeside(b *testing.B) {
	for _, n := range []int{0, 10_000, 50_000, 200_000} {
		b.Run(fmt.Sprintf("others=%d", n), func(b *testing.B) {
			st, err := store.OpenBolt(filepath.Join(b.TempDir(), "b.db"))
			require.NoError(b, err)
			b.Cleanup(func() { st.Close() })
			ctx := context.Background()
			c, err := New(ctx, st, besideState(b, n), Options{})
			require.NoError(b, err)
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rule := []model.Rule{{IPProtocol: "tcp", PortRange: strconv.Itoa(1 + i%2), Action: "ACCEPT"}}
				start := time.Now()
				require.NoError(b, c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-web", rule, nil))
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		})
	}
}

// BenchmarkRefusalDuringCommits measures a refused call (7001, another account's SG) while another
// client keeps committing 10k-rule policies to bbolt: a refusal should not wait for those commits.
func BenchmarkRefusalDuringCommits(b *testing.B) {
	st, err := store.OpenBolt(filepath.Join(b.TempDir(), "b.db"))
	require.NoError(b, err)
	b.Cleanup(func() { st.Close() })
	ctx := context.Background()
	lim := DefaultLimits()
	lim.RulesPerDirection = 10_000
	c, err := New(ctx, st, besideState(b, 0), Options{Limits: &lim})
	require.NoError(b, err)
	var policies [2][]model.Rule
	for v := range policies {
		for r := range 10_000 {
			policies[v] = append(policies[v], model.Rule{IPProtocol: "tcp", CidrIP: fmt.Sprintf("10.%d.%d.0/24", r/256, r%256), PortRange: strconv.Itoa(1000 + r + v), Action: "ACCEPT"})
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-web", policies[i%2], nil); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // the writer is under way
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		err := c.ModifySecurityGroupPolicy(ctx, "1250000002", "sg-web", nil, nil)
		lat = append(lat, time.Since(start))
		if model.CodeOf(err) != model.CodeNotOwner {
			b.Fatalf("want 7001, got %v", err)
		}
		time.Sleep(time.Millisecond) // spread the refusals over the writer's commits
	}
	b.StopTimer()
	close(stop)
	<-done
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// A writer waits for the lock another change holds only as long as its own context allows, and its
// giving up changes nothing.
func TestWriteGivesUpOnTheLockWithItsContext(t *testing.T) {
	c, rec := newCtrl(t)
	gate := make(chan struct{})
	rec.stageGate = gate // the first change holds the lock in Stage until the gate opens
	first := make(chan error, 1)
	go func() {
		first <- c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-db", []model.Rule{{Action: "ACCEPT"}}, nil)
	}()
	require.Eventually(t, func() bool { return len(c.lock) == 1 }, 5*time.Second, time.Millisecond, "the first change holds the lock")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := c.ModifySecurityGroupPolicy(ctx, "1250000001", "sg-web", []model.Rule{{Action: "DROP"}}, nil)
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, model.CodeInternal, model.CodeOf(err))
	close(gate)
	require.NoError(t, <-first)
	v := c.View()
	assert.Equal(t, uint64(2), v.Generation, "only the first change committed")
	web, _ := v.State.SG("sg-web")
	assert.NotEqual(t, []model.Rule{{Action: "DROP"}}, web.Ingress, "the abandoned write changed nothing")
}
