// Package control is the write path, in two halves: a Writer (validate an API operation, check
// ownership and quotas, commit) and an Applier (recompile the ENIs the change of state affects, stage
// them in every dataplane, switch them in). A single-host Controller composes the two under one lock so
// that each operation is durable and enforced before it returns (SPEC §6).
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// Limits are the API quotas of SPEC §4. Topology files are not checked against them.
type Limits struct {
	RulesPerDirection int // per SG and direction; the implicit DROP does not count
	SGsPerENI         int
	SGsPerProject     int // per account and project
	ENIsPerSG         int
	SGRefRulesPerSG   int // rules with an sgId, per SG (both directions)
	// ENIsPerHost is how many ENIs this host can enforce (the eBPF program's slots); 0 = no limit.
	// Reaching it refuses the next new ENI (model.CodeConflict) before anything is committed.
	ENIsPerHost int
	// PerNamedHost makes ENIsPerHost the limit of each named host (a fleet replica's: its agents'
	// slots), counting the ENIs whose host is that one, for a new ENI and one moved there; ENIs with
	// no host are placed nowhere and not limited. Without it, every ENI counts (a single host, which
	// enforces them all whatever their host field).
	PerNamedHost bool
}

// DefaultLimits returns Tencent's documented defaults.
func DefaultLimits() Limits {
	return Limits{RulesPerDirection: 100, SGsPerENI: 5, SGsPerProject: 50, ENIsPerSG: 2000, SGRefRulesPerSG: 10}
}

// Dataplane receives every table change in two steps, so that building the new lookup structures
// overlaps the store's commit: Stage builds them beside the live ones without changing what packets see;
// the Staged's Switch, called once the change is durable, puts them in force before it returns.
type Dataplane interface {
	Stage(ctx context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) (dataplane.Staged, error)
}

// EngineDataplane adapts the pure-Go engine to Dataplane.
type EngineDataplane struct{ Engine *dataplane.Engine }

// Stage implements Dataplane.
func (e EngineDataplane) Stage(_ context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) (dataplane.Staged, error) {
	return e.Engine.Stage(gen, changed, removed), nil
}

// Options configure a Controller; the zero value means defaults.
type Options struct {
	Limits  *Limits                  // nil = DefaultLimits()
	Factory dataplane.MatcherFactory // matcher of the built-in engine; nil = dataplane.LinearFactory
	Logger  *slog.Logger             // nil = slog.Default()
	// NoEngine keeps no built-in Go engine (Engine returns nil): for a daemon whose only dataplane is
	// the kernel's, so a change is not also compiled into matchers nobody reads.
	NoEngine bool
	// OnApplied, if set, runs after each change is in force in every dataplane and before the call
	// returns (the node follows the ENIs' host interfaces there); its error fails the call, whose change
	// stays durable and in force.
	OnApplied func(ctx context.Context, v *View) error
	// Commit, if set, commits each change instead of the store's Commit: a fleet replica's store assigns
	// the revision and reports which hosts the change affects (SPEC §9). An error wrapping ErrStale says
	// the store moved past old: the Controller reloads from the store and runs the operation again.
	Commit func(ctx context.Context, old, next *model.State, gen uint64) (Committed, error)
}

// Committed is what a commit through Options.Commit reports: the revision the store gave the change
// and the hosts it affects.
type Committed struct {
	Revision uint64
	Hosts    []string
}

// ErrStale is wrapped by an Options.Commit error when the store holds a newer state than the one the
// change was derived from (another writer got there first).
var ErrStale = errors.New("control: the store moved past the state this change was derived from")

// maxStaleRetries bounds how often one call is re-run after ErrStale before it is refused: enough for
// a handful of replicas racing on the same objects.
const maxStaleRetries = 32

type commitNoteKey struct{}

// WithCommitNote returns a context under which a Controller call records, in the returned Committed,
// what Options.Commit reported for the change it committed (left zero when it committed none): how an
// API handler learns the revision its answer waits for without every operation returning it.
func WithCommitNote(ctx context.Context) (context.Context, *Committed) {
	note := &Committed{}
	return context.WithValue(ctx, commitNoteKey{}, note), note
}

// View is one committed version: the State, its generation and the tables compiled from it.
type View struct {
	State      *model.State
	Generation uint64
	Tables     map[string]*compiler.Tables // every ENI; never modified after publication
	Index      *compiler.Index

	// compiler indexed State for Tables: the next change's compile shares its member index while the
	// ENIs stay the same (compiler.NewFrom).
	compiler *compiler.Compiler
	// local lists State's ENIs on the applier's host (ApplierOptions.Host), kept while the ENIs are.
	local []string
}

// Controller is the single-host write path: the Writer and the Applier under one lock held for the
// whole validate→commit→publish sequence. Readers use View or the built-in engine and never wait.
type Controller struct {
	// lock is a one-slot semaphore rather than a mutex so that a writer waits for it only as long as
	// its context allows (a fleet replica's reload holds it while etcd answers).
	lock      chan struct{}
	store     Store
	writer    *Writer
	applier   *Applier
	onApplied func(ctx context.Context, v *View) error
	commit    func(ctx context.Context, old, next *model.State, gen uint64) (Committed, error)
}

// New loads the state from st; when st is empty it seeds it with seed (generation 1). The returned
// Controller already serves lookups through Engine().
func New(ctx context.Context, st Store, seed *model.State, opts Options) (*Controller, error) {
	limits := DefaultLimits()
	if opts.Limits != nil {
		limits = *opts.Limits
	}
	s, gen, err := st.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("control: load state: %w", err)
	}
	if s == nil {
		if seed == nil {
			return nil, errors.New("control: the store is empty and no topology was given to seed it")
		}
		s, gen = seed, 1
		if err := st.Commit(ctx, s, gen); err != nil {
			return nil, fmt.Errorf("control: seed store: %w", err)
		}
	}
	return &Controller{
		lock:      make(chan struct{}, 1),
		onApplied: opts.OnApplied,
		commit:    opts.Commit,
		store:     st,
		writer:    NewWriter(st, limits),
		applier:   NewApplier(s, gen, ApplierOptions{Factory: opts.Factory, Logger: opts.Logger, NoEngine: opts.NoEngine}),
	}, nil
}

// Engine returns the built-in Go engine, always in step with the committed state; nil with NoEngine.
func (c *Controller) Engine() *dataplane.Engine { return c.applier.Engine() }

// View returns the current committed version.
func (c *Controller) View() *View { return c.applier.View() }

// Limits returns the quotas in force.
func (c *Controller) Limits() Limits { return c.writer.Limits() }

// Timings returns the latency histograms of applying changes.
func (c *Controller) Timings() *Timings { return c.applier.Timings() }

// AddDataplane loads every current table into dp and then keeps it in step with every change.
func (c *Controller) AddDataplane(ctx context.Context, dp Dataplane) error {
	if err := c.acquire(ctx); err != nil {
		return err
	}
	defer c.release()
	return c.applier.AddDataplane(ctx, dp)
}

// acquire takes the write lock, or fails with ctx's error when ctx ends first.
func (c *Controller) acquire(ctx context.Context) error {
	select {
	case c.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("control: waiting for the write lock: %w", context.Cause(ctx))
	}
}

func (c *Controller) release() { <-c.lock }

// apply commits next and puts the tables of the ENIs it affects in force. The tables are compiled, then
// staged in every dataplane while the store commits; they are switched in only once the commit has
// succeeded, so a failed commit changes nothing. Caller holds the lock.
func (c *Controller) apply(ctx context.Context, next *model.State) error {
	old := c.applier.View()
	gen := old.Generation + 1
	p, err := c.applier.Prepare(next, gen)
	if err != nil {
		return &model.Error{Code: model.CodeInternal, Reason: err.Error(), Err: err} // a compiler bug; nothing committed
	}
	committed := make(chan error, 1)
	var report Committed
	go func() {
		if c.commit == nil {
			committed <- c.writer.Commit(ctx, next, gen)
			return
		}
		var err error
		if report, err = c.commit(ctx, old.State, next, gen); err != nil && !errors.Is(err, ErrStale) {
			err = &model.Error{Code: model.CodeInternal, Reason: fmt.Sprintf("commit failed: %v", err), Err: err}
		}
		committed <- err
	}()
	// Once the commit is under way the change must reach every dataplane, even if the caller gives up:
	// staging is not cut short by the call's cancellation.
	p.Stage(context.WithoutCancel(ctx))
	if err := <-committed; err != nil {
		p.Discard()
		return err
	}
	if c.commit != nil {
		p.next.Generation = report.Revision // the store's number, so that View speaks the store's revisions
		if note, ok := ctx.Value(commitNoteKey{}).(*Committed); ok {
			*note = report
		}
	}
	if err := p.Switch(); err != nil {
		// The change is durable; a dataplane that failed is out of step and says so in the logs.
		return &model.Error{Code: model.CodeInternal, Reason: err.Error(), Err: err}
	}
	if c.onApplied != nil {
		if err := c.onApplied(context.WithoutCancel(ctx), c.applier.View()); err != nil {
			return &model.Error{Code: model.CodeInternal, Reason: err.Error(), Err: err}
		}
	}
	return nil
}

// write runs op, a Writer operation, on the committed state outside the lock, so that validating a
// call (a big policy's parse included) overlaps other calls' commits and a refusal or a no-op never
// waits for one: answered from a state that was the committed one during the call, it is as if the
// call came just then. A change is committed under the lock if the state has not moved since, else op
// runs again on the state in force: the optimistic concurrency a fleet's writers use against etcd.
// Where other writers commit too (a store with Latest), the View may lag the store: a refusal or a
// no-op is answered only from a View the store shows is still the newest, else the View is brought
// up to date first and op runs again, so no call is answered from a state another writer has since
// replaced (SPEC §9: concurrent replicas never lose an update).
func (c *Controller) write(ctx context.Context, op func(s *model.State) (*model.State, error)) error {
	v := c.View()
	next, err := op(v.State)
	for tries := 0; err != nil || next == nil; tries++ {
		if again, answer := c.staleAnswer(ctx, v, err, tries, c.Refresh); !again {
			return answer
		}
		v = c.View()
		next, err = op(v.State)
	}
	if err := c.acquire(ctx); err != nil {
		return &model.Error{Code: model.CodeInternal, Reason: err.Error(), Err: err}
	}
	defer c.release()
	for retries := 0; ; retries++ {
		if cur := c.View(); cur != v {
			v = cur
			if next, err = op(cur.State); err != nil || next == nil {
				// As before the lock: answered only from the newest state.
				if again, answer := c.staleAnswer(ctx, cur, err, retries, c.refresh); !again {
					return answer
				}
				continue
			}
		}
		err = c.apply(ctx, next)
		if !errors.Is(err, ErrStale) {
			return err
		}
		if retries == maxStaleRetries {
			return &model.Error{Code: model.CodeInternal, Reason: fmt.Sprintf("gave up after %d conflicting commits: %v", retries+1, err), Err: err}
		}
		if err := c.refresh(ctx); err != nil {
			return &model.Error{Code: model.CodeInternal, Reason: err.Error(), Err: err}
		}
	}
}

// staleAnswer tells whether a refusal or no-op (err, nil for a no-op) that op reached on v must be
// decided again (again: the store holds a newer state, now put in force by refresh, which is Refresh
// outside the lock and refresh under it), or else what to answer: err, or why no answer can be given.
func (c *Controller) staleAnswer(ctx context.Context, v *View, err error, tries int, refresh func(context.Context) error) (again bool, answer error) {
	newer, lerr := c.newerInStore(ctx, v)
	switch {
	case lerr != nil:
		return false, &model.Error{Code: model.CodeInternal, Reason: lerr.Error(), Err: lerr}
	case !newer:
		return false, err
	case tries == maxStaleRetries:
		return false, &model.Error{Code: model.CodeInternal, Reason: fmt.Sprintf("gave up after %d states replaced while answering", tries+1)}
	}
	if rerr := refresh(ctx); rerr != nil {
		return false, &model.Error{Code: model.CodeInternal, Reason: rerr.Error(), Err: rerr}
	}
	return true, nil
}

// latestStore is a Store other writers commit to as well, which can say cheaply which state is newest.
type latestStore interface {
	Latest(ctx context.Context) (uint64, error)
}

// newerInStore tells whether the store holds a newer state than v (never, for a store only this
// Controller writes).
func (c *Controller) newerInStore(ctx context.Context, v *View) (bool, error) {
	ls, ok := c.store.(latestStore)
	if !ok {
		return false, nil
	}
	latest, err := ls.Latest(ctx)
	if err != nil {
		return false, fmt.Errorf("control: is the state still the newest: %w", err)
	}
	return latest > v.Generation, nil
}

// Refresh loads the store's current state and puts it in force if it is newer than the View: how a
// fleet replica follows what other replicas commit.
func (c *Controller) Refresh(ctx context.Context) error {
	if err := c.acquire(ctx); err != nil {
		return err
	}
	defer c.release()
	return c.refresh(ctx)
}

// refresh is Refresh under the lock.
func (c *Controller) refresh(ctx context.Context) error {
	s, gen, err := c.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("control: reload state: %w", err)
	}
	if s == nil || gen == c.applier.View().Generation {
		return nil
	}
	if err := c.applier.Apply(context.WithoutCancel(ctx), s, gen); err != nil {
		return fmt.Errorf("control: put generation %d in force: %w", gen, err)
	}
	return nil
}

// ModifySecurityGroupPolicy overwrites both rule lists of sgID, all or nothing.
func (c *Controller) ModifySecurityGroupPolicy(ctx context.Context, appID, sgID string, ingress, egress []model.Rule) error {
	return c.write(ctx, func(s *model.State) (*model.State, error) {
		return c.writer.ModifySecurityGroupPolicy(s, appID, sgID, ingress, egress)
	})
}

// ModifySecurityGroupsOfNetworkInterface overwrites the ordered SG list of every listed ENI, all or none.
func (c *Controller) ModifySecurityGroupsOfNetworkInterface(ctx context.Context, appID string, set []ENISGs) error {
	return c.write(ctx, func(s *model.State) (*model.State, error) {
		return c.writer.ModifySecurityGroupsOfNetworkInterface(s, appID, set)
	})
}

// CreateSecurityGroup creates an SG with no rules (it drops everything) and returns it.
func (c *Controller) CreateSecurityGroup(ctx context.Context, appID, name, remark string, projectID int) (*model.SecurityGroup, error) {
	return writeReturning(ctx, c, func(s *model.State) (*model.State, *model.SecurityGroup, error) {
		return c.writer.CreateSecurityGroup(s, appID, name, remark, projectID)
	})
}

// DeleteSecurityGroup deletes an unused, unreferenced, non-preset SG of appID.
func (c *Controller) DeleteSecurityGroup(ctx context.Context, appID, sgID string) error {
	return c.write(ctx, func(s *model.State) (*model.State, error) {
		return c.writer.DeleteSecurityGroup(s, appID, sgID)
	})
}

// PortAction adds sgID to (add=true) or removes it from each port, applying every port that can be
// applied and reporting the others. Adding appends the SG at the end (lowest priority).
func (c *Controller) PortAction(ctx context.Context, appID, sgID string, add bool, ports []string) ([]PortFailure, error) {
	return writeReturning(ctx, c, func(s *model.State) (*model.State, []PortFailure, error) {
		return c.writer.PortAction(s, appID, sgID, add, ports)
	})
}

// writeReturning is c.write for an operation that also returns a result: the one of the run that
// committed, or the zero value with the error.
func writeReturning[T any](ctx context.Context, c *Controller, op func(*model.State) (*model.State, T, error)) (T, error) {
	var out T
	err := c.write(ctx, func(s *model.State) (next *model.State, err error) {
		next, out, err = op(s)
		return next, err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// NewReadOnly returns a Controller that serves the views of a, an Applier kept in step by someone
// else (a fleet agent's watch loop), so that the read-only API endpoints can answer on a host; every
// write through it is refused and changes nothing.
func NewReadOnly(a *Applier, lim Limits) *Controller {
	return &Controller{lock: make(chan struct{}, 1), store: readOnlyStore{}, writer: NewWriter(readOnlyStore{}, lim), applier: a}
}

// errReadOnly refuses the writes of a NewReadOnly Controller.
var errReadOnly = errors.New("control: this node takes no API calls (a fleet agent: send them to a replica)")

type readOnlyStore struct{}

func (readOnlyStore) Load(context.Context) (*model.State, uint64, error) { return nil, 0, nil }
func (readOnlyStore) Commit(context.Context, *model.State, uint64) error { return errReadOnly }
