package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"

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
	discarded  int
	fail       error // returned by Stage
	failSwitch error
	stageGate  chan struct{} // when set, Stage waits for it to close
}

type recorded struct {
	r       *recorder
	gen     uint64
	changed []string
}

func (r *recorder) Stage(ctx context.Context, gen uint64, changed map[string]*compiler.Tables, _ []string) (dataplane.Staged, error) {
	if r.fail != nil {
		return nil, r.fail
	}
	if r.stageGate != nil {
		<-r.stageGate
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &recorded{r: r, gen: gen, changed: slices.Sorted(maps.Keys(changed))}, nil
}

func (s *recorded) Switch() error {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	if s.r.store != nil {
		if _, gen, err := s.r.store.Load(context.Background()); err != nil || gen != s.gen {
			return fmt.Errorf("switched generation %d while the store holds %d (%v)", s.gen, gen, err)
		}
	}
	s.r.calls = append(s.r.calls, s.changed)
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
	for id, want := range full {
		got, ok := c.Engine().Snapshot().ENI(id)
		require.True(t, ok)
		assert.Equal(t, want, got.Tables, id)
	}
}

func TestPublishFailureIsReported(t *testing.T) {
	c, rec := newCtrl(t)
	rec.fail = errors.New("map full")
	err := c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-web", nil, nil)
	assert.Equal(t, model.CodeInternal, model.CodeOf(err))
	assert.ErrorContains(t, err, "map full")
}

func TestSwitchFailureIsReported(t *testing.T) {
	c, rec := newCtrl(t)
	rec.failSwitch = errors.New("switch refused")
	err := c.ModifySecurityGroupPolicy(context.Background(), "1250000001", "sg-web", nil, nil)
	assert.Equal(t, model.CodeInternal, model.CodeOf(err))
	assert.ErrorContains(t, err, "switch refused")
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
	for id, want := range c.View().Tables {
		got, ok := agent.Engine().Snapshot().ENI(id)
		require.True(t, ok)
		assert.Equal(t, want, got.Tables, id)
	}
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
	for id, want := range v.Tables {
		got, ok := c.Engine().Snapshot().ENI(id)
		require.True(t, ok)
		assert.Equal(t, want, got.Tables, id)
	}
}
