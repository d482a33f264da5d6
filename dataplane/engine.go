package dataplane

import (
	"maps"
	"sync"
	"sync/atomic"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// MatcherFactory builds the lookup structure of one compiled table (linear, classifier, …).
type MatcherFactory func(t *compiler.Table) TableMatcher

// LinearFactory builds the reference matcher.
func LinearFactory(t *compiler.Table) TableMatcher { return NewLinearTable(t) }

// ENITables is one ENI's compiled tables with their ready matchers, at one generation. Immutable.
type ENITables struct {
	Tables     *compiler.Tables
	Ingress    TableMatcher
	Egress     TableMatcher
	Generation uint64
}

// Match decides p in direction d.
func (t *ENITables) Match(d model.Direction, p *Packet) Verdict {
	m, tab := t.Ingress, t.Tables.Ingress
	if d == model.Egress {
		m, tab = t.Egress, t.Tables.Egress
	}
	return VerdictOf(tab, m.Lookup(p))
}

// Snapshot is an immutable view of every ENI's tables at one generation: deciding several checks of
// one packet against the same Snapshot never mixes table versions.
type Snapshot struct {
	Generation uint64
	enis       map[string]*ENITables
}

// ENI returns the tables of eni in this snapshot.
func (s *Snapshot) ENI(eni string) (*ENITables, bool) {
	t, ok := s.enis[eni]
	return t, ok
}

// ENIs returns every ENI's tables in the snapshot; callers must not modify the map.
func (s *Snapshot) ENIs() map[string]*ENITables { return s.enis }

// Match implements Matcher.
func (s *Snapshot) Match(eni string, d model.Direction, p *Packet) (Verdict, bool) {
	t, ok := s.enis[eni]
	if !ok {
		return Verdict{}, false
	}
	return t.Match(d, p), true
}

// Engine publishes per-ENI matchers behind one atomic pointer. Readers load the pointer and never
// block; writers build new matchers beside the live ones and swap them in with a single store.
type Engine struct {
	factory MatcherFactory
	cur     atomic.Pointer[Snapshot]
	writeMu sync.Mutex // serialises writers only
}

// NewEngine returns an empty engine that builds matchers with factory.
func NewEngine(factory MatcherFactory) *Engine {
	e := &Engine{factory: factory}
	e.cur.Store(&Snapshot{enis: map[string]*ENITables{}})
	return e
}

// Snapshot returns the live snapshot.
func (e *Engine) Snapshot() *Snapshot { return e.cur.Load() }

// Match implements Matcher against the live snapshot.
func (e *Engine) Match(eni string, d model.Direction, p *Packet) (Verdict, bool) {
	return e.cur.Load().Match(eni, d, p)
}

// Staged is a table change built beside the live tables and not yet in force, so a writer can build
// it while the change is being made durable and put it in force only once it is.
type Staged interface {
	// Switch puts the change in force, atomically per ENI direction.
	Switch() error
	// Discard drops the change; the live tables stay.
	Discard()
}

// Publish builds matchers for changed (keyed by ENI), drops removed, and swaps the result in at
// generation gen. ENIs not named keep their matchers.
func (e *Engine) Publish(gen uint64, changed map[string]*compiler.Tables, removed []string) {
	_ = e.Stage(gen, changed, removed).Switch() // the engine's Switch cannot fail
}

// Stage builds matchers for changed; its Switch drops removed and swaps the result in at gen.
func (e *Engine) Stage(gen uint64, changed map[string]*compiler.Tables, removed []string) Staged {
	built := make(map[string]*ENITables, len(changed))
	for id, t := range changed {
		built[id] = &ENITables{Tables: t, Ingress: e.factory(t.Ingress), Egress: e.factory(t.Egress), Generation: gen}
	}
	return &engineStaged{e: e, gen: gen, built: built, removed: removed}
}

type engineStaged struct {
	e       *Engine
	gen     uint64
	built   map[string]*ENITables
	removed []string
}

func (s *engineStaged) Switch() error {
	e := s.e
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	next := &Snapshot{Generation: s.gen, enis: maps.Clone(e.cur.Load().enis)}
	for _, id := range s.removed {
		delete(next.enis, id)
	}
	maps.Copy(next.enis, s.built)
	e.cur.Store(next)
	return nil
}

func (s *engineStaged) Discard() {}
