package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sgsim/sgsim/model"
)

// Monitored is a Store that remembers whether its commits work, for a readiness probe: the last
// commit's failure (a full disk, an I/O error) until a later commit or a probe write succeeds, and
// commits in progress longer than a threshold (a frozen or dying disk). Health never blocks on the
// store, so it can answer while a commit hangs.
type Monitored struct {
	Store
	stallAfter time.Duration
	probeDir   string
	now        func() time.Time

	mu        sync.Mutex
	inflight  map[uint64]time.Time // commits in progress by start time
	nextID    uint64
	failure   error     // the last commit's error, nil once one succeeded since
	failedAt  time.Time // when failure happened
	probing   bool      // a probe write is running
	probedAt  time.Time // when the last probe started
	probeErr  error     // the last probe's error
	probeTick time.Duration
}

// MonitorOptions configure NewMonitored.
type MonitorOptions struct {
	// StallAfter is how long a commit may be in progress before Health reports it; 0 = 2 s (a local
	// disk commits in milliseconds, so seconds mean a frozen or failing device).
	StallAfter time.Duration
	// ProbeDir, if set, is a directory on the store's file system: after a failed commit Health writes
	// and syncs a small file there (at most once a second, never waiting for it) and reports ready again
	// when that works, so a daemon taken out of service for a full disk comes back once space is freed
	// without needing a write to be sent to it first.
	ProbeDir string
	// Now is the clock; nil = time.Now.
	Now func() time.Time
}

// NewMonitored wraps s.
func NewMonitored(s Store, o MonitorOptions) *Monitored {
	if o.StallAfter <= 0 {
		o.StallAfter = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Monitored{Store: s, stallAfter: o.StallAfter, probeDir: o.ProbeDir, now: o.Now,
		inflight: map[uint64]time.Time{}, probeTick: time.Second}
}

// Commit implements Store, recording how it went.
func (m *Monitored) Commit(ctx context.Context, s *model.State, gen uint64) error {
	m.mu.Lock()
	id := m.nextID
	m.nextID++
	m.inflight[id] = m.now()
	m.mu.Unlock()

	err := m.Store.Commit(ctx, s, gen)

	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.inflight, id)
	switch {
	case err == nil:
		m.failure = nil
	case errors.Is(err, ErrConflict), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// Another writer got there first, or the client hung up: not the store failing.
	default:
		m.failure, m.failedAt, m.probeErr = err, m.now(), nil
	}
	return err
}

// Health is nil when the store can take writes, else why not.
func (m *Monitored) Health() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var oldest time.Time
	for _, start := range m.inflight {
		if oldest.IsZero() || start.Before(oldest) {
			oldest = start
		}
	}
	if !oldest.IsZero() && now.Sub(oldest) >= m.stallAfter {
		return fmt.Errorf("a commit has been in progress for %s (more than %s): the disk is frozen or failing",
			now.Sub(oldest).Round(time.Millisecond), m.stallAfter)
	}
	if m.failure == nil {
		return nil
	}
	if m.probeDir != "" && !m.probing && now.Sub(m.probedAt) >= m.probeTick {
		m.probing, m.probedAt = true, now
		go m.probe(now)
	}
	msg := fmt.Sprintf("the last commit failed %s ago: %v", now.Sub(m.failedAt).Round(time.Millisecond), m.failure)
	if m.probeErr != nil {
		msg += fmt.Sprintf("; a probe write still fails: %v", m.probeErr)
	}
	return errors.New(msg)
}

// probeSize is what a probe writes: a few pages, about what a small commit adds.
const probeSize = 16 << 10

// probe writes, syncs and removes a file in probeDir; if that works the failure is forgotten, unless a
// commit failed again after the probe started.
func (m *Monitored) probe(started time.Time) {
	err := writeProbe(filepath.Join(m.probeDir, ".sgsim-probe"))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.probing = false
	switch {
	case m.failedAt.After(started):
	case err == nil:
		m.failure, m.probeErr = nil, nil
	default:
		m.probeErr = err
	}
}

func writeProbe(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	_, werr := f.Write(make([]byte, probeSize))
	serr := f.Sync()
	cerr := f.Close()
	return errors.Join(werr, serr, cerr)
}
