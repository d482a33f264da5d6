package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// Applier is the enforcing half of the write path: given the state in force and the next one, it
// recompiles the ENIs compiler.Affected names and puts them in force on every dataplane. It knows
// nothing of API operations or of the store, so a fleet agent that only watches committed states can
// run it. Its writing methods (AddDataplane, Prepare and what a Prepared does, Apply) must not run
// concurrently: the Controller's lock, or an agent's one watch loop, serialises them; View never waits.
type Applier struct {
	log     *slog.Logger
	host    string // with Host set: only that host's ENIs get tables
	engine  *dataplane.Engine
	dps     []*attached
	cur     atomic.Pointer[View]
	timings *Timings
}

// attached is a dataplane and whether it is in step with the View. One whose Stage or Switch failed
// may hold older tables of some ENIs, or of none of that change, and the state has moved on without
// it; so the next change gives it every table and removes every ENI removed meanwhile, instead of only
// what that change touches, which would leave the failed change's ENIs stale in it for good.
type attached struct {
	dp     Dataplane
	behind bool
	gone   map[string]bool // ENIs removed since it fell behind, which it may still hold
}

// ApplierOptions configure an Applier; the zero value means defaults.
type ApplierOptions struct {
	Factory  dataplane.MatcherFactory // matcher of the built-in engine; nil = dataplane.LinearFactory
	Logger   *slog.Logger             // nil = slog.Default()
	NoEngine bool                     // keep no built-in Go engine (see Options.NoEngine)
	// Host, if set, gives tables only to the ENIs placed on this host: a fleet agent's state also holds
	// other hosts' ENIs, but only as members of the SGs its rules name, and compiling their tables
	// would cost every agent the whole fleet's tables.
	Host string
}

// NewApplier compiles every ENI of s (committed as generation gen) and publishes it in the built-in
// engine, which then already answers lookups.
func NewApplier(s *model.State, gen uint64, opts ApplierOptions) *Applier {
	a := &Applier{log: opts.Logger, host: opts.Host, timings: newTimings()}
	if a.log == nil {
		a.log = slog.Default()
	}
	start := time.Now()
	v := &View{State: s, Generation: gen, Index: compiler.NewIndex(s), compiler: compiler.New(s)}
	if a.host != "" {
		v.local = a.hostENIs(s)
	}
	v.Tables = a.compileAll(v)
	since(a.timings.Apply, start)
	a.cur.Store(v)
	if !opts.NoEngine {
		factory := opts.Factory
		if factory == nil {
			factory = dataplane.LinearFactory
		}
		a.engine = dataplane.NewEngine(factory)
		a.engine.Publish(gen, v.Tables, nil)
		a.dps = []*attached{{dp: EngineDataplane{a.engine}}}
	}
	return a
}

// compileAll compiles every ENI of v's state that gets tables.
func (a *Applier) compileAll(v *View) map[string]*compiler.Tables {
	if a.host == "" {
		return v.compiler.CompileAll()
	}
	out := make(map[string]*compiler.Tables, len(v.local))
	for _, id := range v.local {
		out[id], _ = v.compiler.Compile(id) // every listed ENI exists
	}
	return out
}

// hostENIs lists the ENIs of s placed on the applier's host.
func (a *Applier) hostENIs(s *model.State) []string {
	var local []string
	for _, id := range s.ENIIDs() {
		if n, _ := s.ENI(id); n.Host == a.host {
			local = append(local, id)
		}
	}
	return local
}

// Timings returns the latency histograms of the changes this Applier puts in force.
func (a *Applier) Timings() *Timings { return a.timings }

// View returns the version in force.
func (a *Applier) View() *View { return a.cur.Load() }

// Engine returns the built-in Go engine; nil with NoEngine.
func (a *Applier) Engine() *dataplane.Engine { return a.engine }

// holdsENIs is a Dataplane that can say which ENIs it holds tables for, some perhaps left by an
// earlier process (a pinned eBPF dataplane).
type holdsENIs interface {
	ENIs() []string
}

// AddDataplane loads every current table into dp and then keeps it in step with every change. ENIs
// dp holds that the View has not (an earlier process's, deleted or moved away meanwhile) are removed.
func (a *Applier) AddDataplane(ctx context.Context, dp Dataplane) error {
	v := a.cur.Load()
	var stale []string
	if h, ok := dp.(holdsENIs); ok {
		for _, id := range h.ENIs() {
			if _, ok := v.Tables[id]; !ok {
				stale = append(stale, id)
			}
		}
	}
	if len(stale) > 0 {
		// First, on their own: their slots may be the ones the View's ENIs need.
		st, err := dp.Stage(ctx, v.Generation, nil, stale)
		if err != nil {
			return fmt.Errorf("control: load dataplane: remove %d network interfaces it holds and the state has not: %w", len(stale), err)
		}
		if err := st.Switch(); err != nil {
			return fmt.Errorf("control: load dataplane: remove %d network interfaces it holds and the state has not: %w", len(stale), err)
		}
	}
	st, err := dp.Stage(ctx, v.Generation, v.Tables, nil)
	if err != nil {
		return fmt.Errorf("control: load dataplane: %w", err)
	}
	if err := st.Switch(); err != nil {
		return fmt.Errorf("control: load dataplane: %w", err)
	}
	a.dps = append(a.dps, &attached{dp: dp})
	return nil
}

// Apply puts next, committed as generation gen, in force: Prepare, Stage and Switch in one go.
func (a *Applier) Apply(ctx context.Context, next *model.State, gen uint64) error {
	p, err := a.Prepare(next, gen)
	if err != nil {
		return err
	}
	p.Stage(ctx)
	return p.Switch()
}

// Prepared is a change compiled but not yet in force. Stage it, then Switch it once it is durable, or
// Discard it.
type Prepared struct {
	a       *Applier
	start   time.Time
	next    *View
	changed map[string]*compiler.Tables
	removed []string
	staged  []dataplane.Staged
	errs    []error // per dataplane, its Stage error
}

// Prepare compiles the tables of the ENIs that differ between the state in force and next. An error
// is a compiler bug; nothing changed.
func (a *Applier) Prepare(next *model.State, gen uint64) (*Prepared, error) {
	old := a.cur.Load()
	p := &Prepared{a: a, start: time.Now()}
	comp := compiler.NewFrom(old.compiler, next)
	var local []string
	var changed map[string]*compiler.Tables
	var err error
	if a.host != "" {
		local = old.local
		if !old.State.SameENIs(next) {
			local = a.hostENIs(next)
		}
		changed, p.removed, err = a.compileHost(old, comp, local)
	} else {
		var present []string
		for _, id := range compiler.Affected(old.State, next) {
			if _, ok := next.ENI(id); ok {
				present = append(present, id)
			} else {
				p.removed = append(p.removed, id)
			}
		}
		changed, err = compileAffected(comp, present)
	}
	since(a.timings.Compile, p.start)
	if err != nil {
		return nil, fmt.Errorf("control: generation %d: %w", gen, err)
	}
	p.changed = changed
	tables := make(map[string]*compiler.Tables, len(old.Tables)+len(changed))
	for id, t := range old.Tables {
		tables[id] = t
	}
	for _, id := range p.removed {
		delete(tables, id)
	}
	for id, t := range changed {
		tables[id] = t
	}
	p.next = &View{State: next, Generation: gen, Tables: tables, Index: old.Index.Next(old.State, next), compiler: comp, local: local}
	return p, nil
}

// Stage builds the change in every dataplane at once, beside what packets see: each builds its own
// lookup structures (the Go engine and the eBPF program both build a classifier per table), so with
// several they overlap instead of adding up. A dataplane's failure is kept for Switch to report.
func (p *Prepared) Stage(ctx context.Context) {
	defer since(p.a.timings.Stage, time.Now())
	dps := p.a.dps
	p.staged = make([]dataplane.Staged, len(dps))
	p.errs = make([]error, len(dps))
	var wg sync.WaitGroup
	for i, at := range dps {
		changed, removed := p.changed, p.removed
		if at.behind {
			changed, removed = p.next.Tables, catchUpRemovals(at.gone, p.removed, p.next.Tables)
		}
		wg.Go(func() { p.staged[i], p.errs[i] = at.dp.Stage(ctx, p.next.Generation, changed, removed) })
	}
	wg.Wait()
}

// catchUpRemovals is what a dataplane that fell behind must drop: every ENI removed since, this
// change's included, but those that have tables again.
func catchUpRemovals(gone map[string]bool, removed []string, tables map[string]*compiler.Tables) []string {
	var out []string
	for _, id := range slices.Concat(slices.Collect(maps.Keys(gone)), removed) {
		if _, ok := tables[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Discard drops what Stage built; nothing changed.
func (p *Prepared) Discard() {
	for _, st := range p.staged {
		if st != nil {
			st.Discard()
		}
	}
}

// Switch makes the change the version in force and switches it in on every dataplane, all at once. An
// error names the dataplanes that are now out of step (the change stays in force where it got); the
// next change catches them up (attached).
func (p *Prepared) Switch() error {
	switchStart := time.Now()
	p.a.cur.Store(p.next)
	errs := slices.Clone(p.errs)
	switched := make([]error, len(p.staged))
	var wg sync.WaitGroup
	for i, st := range p.staged {
		if st != nil {
			wg.Go(func() { switched[i] = st.Switch() })
		}
	}
	wg.Wait()
	errs = append(errs, switched...)
	for i, at := range p.a.dps[:len(p.staged)] {
		switch {
		case p.errs[i] != nil || switched[i] != nil:
			if !at.behind {
				at.behind, at.gone = true, map[string]bool{}
			}
			for _, id := range p.removed {
				at.gone[id] = true
			}
		case at.behind:
			at.behind, at.gone = false, nil // caught up: it holds every table of the View
		}
	}
	since(p.a.timings.Switch, switchStart)
	since(p.a.timings.Apply, p.start)
	p.a.log.Debug("applied", "generation", p.next.Generation, "recompiled", len(p.changed), "removed", len(p.removed))
	if err := errors.Join(errs...); err != nil {
		p.a.log.Error("publish failed", "generation", p.next.Generation, "err", err)
		return fmt.Errorf("publish failed: %w", err)
	}
	return nil
}

// compileHost is Prepare's compile with Options.Host: the host's few ENIs (local) are compiled by comp
// and those whose tables differ from the ones in force are changed; the ENIs whose tables go (deleted,
// or moved to another host) are removed. Comparing the host's tables instead of asking compiler.Affected keeps the
// cost to the host's ENIs, where Affected walks every ENI of a state that also holds every member of
// the SGs the host's rules name (in a fleet where an SG names itself, every ENI of the fleet).
func (a *Applier) compileHost(old *View, comp *compiler.Compiler, local []string) (changed map[string]*compiler.Tables, removed []string, err error) {
	next := comp.State()
	for id := range old.Tables {
		if n, ok := next.ENI(id); !ok || n.Host != a.host {
			removed = append(removed, id)
		}
	}
	slices.Sort(removed)
	compiled, err := compileAffected(comp, local)
	if err != nil {
		return nil, nil, err
	}
	changed = make(map[string]*compiler.Tables, len(compiled))
	for id, t := range compiled {
		if o := old.Tables[id]; o == nil || !sameTables(o, t) {
			changed[id] = t
		}
	}
	return changed, removed, nil
}

// sameTables tells whether two compilations of one ENI have the same rows.
func sameTables(a, b *compiler.Tables) bool {
	return a.ENI == b.ENI && sameTable(a.Ingress, b.Ingress) && sameTable(a.Egress, b.Egress)
}

func sameTable(a, b *compiler.Table) bool {
	return a.ENI == b.ENI && a.Direction == b.Direction && a.NoSG == b.NoSG &&
		slices.EqualFunc(a.Entries, b.Entries, func(x, y compiler.Entry) bool {
			return x.Protocol == y.Protocol && x.AnyRemote == y.AnyRemote && x.Ports == y.Ports && x.Action == y.Action &&
				x.SgID == y.SgID && x.RuleIndex == y.RuleIndex && x.Rule == y.Rule && samePrefixes(x.Remotes, y.Remotes)
		})
}

// samePrefixes is slices.Equal, at once for the one member list compilations share while the members
// are the same (compiler.NewFrom).
func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0]) {
		return true
	}
	return slices.Equal(a, b)
}

// compileAffected compiles the tables of the listed ENIs of comp's state. ENIs with the same ordered SG
// list have the same rows: each list is compiled once and its (immutable) entries shared, so a rule
// change of an SG used by many ENIs costs one compile.
func compileAffected(comp *compiler.Compiler, affected []string) (map[string]*compiler.Tables, error) {
	s := comp.State()
	changed := make(map[string]*compiler.Tables, len(affected))
	byList := map[string]*compiler.Tables{}
	for _, id := range affected {
		eni, ok := s.ENI(id)
		if !ok {
			continue
		}
		key := strings.Join(eni.SgIDs, "\x00")
		if t, ok := byList[key]; ok {
			changed[id] = &compiler.Tables{ENI: id, Ingress: retarget(t.Ingress, id), Egress: retarget(t.Egress, id)}
			continue
		}
		t, err := comp.Compile(id)
		if err != nil {
			return nil, fmt.Errorf("compile %s: %w", id, err)
		}
		byList[key] = t
		changed[id] = t
	}
	return changed, nil
}

// retarget returns t's rows under another ENI's name.
func retarget(t *compiler.Table, eni string) *compiler.Table {
	c := *t
	c.ENI = eni
	return &c
}
