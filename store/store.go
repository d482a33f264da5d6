// Package store keeps the control plane's durable state as one record per object (account, SG, ENI),
// each with the revision that last wrote it; a commit writes only the records it changes, under one
// revision (the state's generation). Load reads the latest state, LoadAt an earlier one still in the
// history, and Watch delivers the changes in order. A Commit that returns nil survives a crash of the
// process (bbolt fsyncs before returning).
//
// A Bolt also keeps the Tencent replay record (UseNonce, see nonces.go) and reports whether it can
// commit (Health).
//
// The interface is shaped for a store shared by many hosts (etcd: one key per object, a Commit as a
// transaction guarded by the revisions read and retried on ErrConflict, Watch as etcd's watch): nothing
// in it assumes one process or one file.
package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/sgsim/sgsim/model"
)

// Store is durable state of records with a history.
//
//   - Load returns the latest state and its revision; a nil State and 0 when nothing was ever committed.
//   - Commit makes s the state at revision generation, writing only the records that differ from the
//     last state committed or loaded through this Store. generation must be above the store's revision
//     (ErrConflict otherwise: another writer got there first; re-Load and retry).
//   - LoadAt returns the state as of a revision still in the history (ErrCompacted when older).
//   - Watch calls fn with every change after fromRevision, in revision order, then with each new one as
//     it is committed, until ctx ends or fn fails; fromRevision must still be in the history.
type Store interface {
	Load(ctx context.Context) (*model.State, uint64, error)
	Commit(ctx context.Context, s *model.State, generation uint64) error
	LoadAt(ctx context.Context, revision uint64) (*model.State, error)
	Watch(ctx context.Context, fromRevision uint64, fn func(Change) error) error
	Close() error
}

var (
	// ErrConflict is a Commit's error when the store moved past the state it was derived from.
	ErrConflict = errors.New("store: conflicting commit")
	// ErrCompacted is the error of LoadAt and Watch for a revision no longer in the history.
	ErrCompacted = errors.New("store: revision compacted")
)

// DefaultHistory is how many revisions a store keeps for LoadAt and Watch. On disk the history costs
// the records those revisions changed: at the default quotas an SG record is at most about 20 KB, so
// a few MB; with raised quotas (10k-rule policies, about 1 MB each) up to about 128 MB.
const DefaultHistory = 128

// Memory is a Store that forgets everything when the process ends: for tests and scenarios.
type Memory struct {
	mu      sync.Mutex
	rs      RecordSet
	history []memRevision // oldest first, at most DefaultHistory
	trimmed bool          // history no longer starts at the first commit
	wake    chan struct{} // closed and replaced by every commit
}

type memRevision struct {
	state  *model.State
	change Change
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{} }

// Load implements Store.
func (m *Memory) Load(ctx context.Context) (*model.State, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.history) == 0 {
		return nil, 0, nil
	}
	last := m.history[len(m.history)-1]
	return last.state, last.change.Revision, nil
}

// commitable refuses what no store can commit: a state under a finished context, or none at all.
func commitable(ctx context.Context, s *model.State) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s == nil {
		return errors.New("store: commit of a nil state")
	}
	return nil
}

// Commit implements Store. States are immutable, so keeping the pointer is enough.
func (m *Memory) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if err := commitable(ctx, s); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.history); n > 0 && gen <= m.history[n-1].change.Revision {
		return fmt.Errorf("%w: revision %d, the store is at %d", ErrConflict, gen, m.history[n-1].change.Revision)
	}
	d, err := m.rs.Diff(s, gen)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	m.rs.Advance(s, d)
	m.history = append(m.history, memRevision{state: s, change: Change{Revision: gen, Puts: d.Puts, Deletes: d.Dels}})
	if len(m.history) > DefaultHistory {
		m.history = slices.Clone(m.history[len(m.history)-DefaultHistory:])
		m.trimmed = true
	}
	if m.wake != nil {
		close(m.wake)
	}
	m.wake = make(chan struct{})
	return nil
}

// LoadAt implements Store.
func (m *Memory) LoadAt(ctx context.Context, rev uint64) (*model.State, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, h := range m.history {
		if h.change.Revision == rev {
			return h.state, nil
		}
	}
	return nil, fmt.Errorf("%w: revision %d is not in the history", ErrCompacted, rev)
}

// Watch implements Store.
func (m *Memory) Watch(ctx context.Context, from uint64, fn func(Change) error) error {
	return watch(ctx, from, fn, func(from uint64) ([]Change, <-chan struct{}, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.wake == nil {
			m.wake = make(chan struct{})
		}
		if m.trimmed && from+1 < m.history[0].change.Revision {
			return nil, nil, fmt.Errorf("%w: revision %d is not in the history", ErrCompacted, from)
		}
		var out []Change
		for _, h := range m.history {
			if h.change.Revision > from {
				out = append(out, h.change)
			}
		}
		return out, m.wake, nil
	})
}

// Close implements Store.
func (m *Memory) Close() error { return nil }

// watch runs a Watch over since, which returns the changes after a revision and a channel closed by
// the next commit (taken before reading, so no commit slips between the read and the wait).
func watch(ctx context.Context, from uint64, fn func(Change) error, since func(uint64) ([]Change, <-chan struct{}, error)) error {
	for {
		changes, wake, err := since(from)
		if err != nil {
			return err
		}
		for _, c := range changes {
			if err := fn(c); err != nil {
				return err
			}
			from = c.Revision
		}
		if len(changes) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}
