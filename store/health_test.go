package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

// scriptedStore is a Store whose Commit returns what the test says, after the test lets it.
type scriptedStore struct {
	Memory
	mu      sync.Mutex
	result  error
	release chan struct{} // nil = commit at once
}

func (s *scriptedStore) Commit(ctx context.Context, st *model.State, gen uint64) error {
	s.mu.Lock()
	res, rel := s.result, s.release
	s.mu.Unlock()
	if rel != nil {
		<-rel
	}
	if res != nil {
		return res
	}
	return s.Memory.Commit(ctx, st, gen)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestMonitoredHealth(t *testing.T) {
	ctx := context.Background()
	enospc := fmt.Errorf("store: commit generation 3 to /d/sgsim.db: write /d/sgsim.db: %w", syscall.ENOSPC)
	for _, tc := range []struct {
		name   string
		result error
		want   string // "" = healthy after the commit
	}{
		{"a commit succeeds", nil, ""},
		{"a full disk", enospc, "the last commit failed 0s ago: " + enospc.Error()},
		{"an I/O error", errors.New("store: commit: input/output error"), "the last commit failed 0s ago: store: commit: input/output error"},
		{"a conflicting commit is another writer, not the disk", fmt.Errorf("commit generation 3: %w", ErrConflict), ""},
		{"a client that hung up", fmt.Errorf("store: %w", context.Canceled), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1e9, 0)}
			inner := &scriptedStore{result: tc.result}
			m := NewMonitored(inner, MonitorOptions{Now: clock.now})
			require.NoError(t, m.Health(), "healthy before any commit")
			assert.Equal(t, tc.result, m.Commit(ctx, demo(t), 1), "the store's own answer is passed on")
			if tc.want == "" {
				assert.NoError(t, m.Health())
				return
			}
			assert.EqualError(t, m.Health(), tc.want)
			inner.result = nil
			require.NoError(t, m.Commit(ctx, demo(t), 1))
			assert.NoError(t, m.Health(), "a commit that works clears it")
		})
	}
}

func TestMonitoredReportsAStalledCommit(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	inner := &scriptedStore{release: make(chan struct{})}
	m := NewMonitored(inner, MonitorOptions{StallAfter: 3 * time.Second, Now: clock.now})
	done := make(chan error)
	go func() { done <- m.Commit(context.Background(), demo(t), 1) }()
	require.Eventually(t, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.inflight) == 1 },
		5*time.Second, time.Millisecond)
	clock.add(2 * time.Second)
	assert.NoError(t, m.Health(), "in progress, within the threshold")
	clock.add(1500 * time.Millisecond)
	assert.EqualError(t, m.Health(), "a commit has been in progress for 3.5s (more than 3s): the disk is frozen or failing")
	close(inner.release)
	require.NoError(t, <-done)
	assert.NoError(t, m.Health())
}

func TestMonitoredProbesAfterAFailure(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	probeDir := filepath.Join(t.TempDir(), "not-yet")
	inner := &scriptedStore{result: errors.New("no space left on device")}
	m := NewMonitored(inner, MonitorOptions{ProbeDir: probeDir, Now: clock.now})
	require.Error(t, m.Commit(context.Background(), demo(t), 1))
	require.Error(t, m.Health()) // starts the first probe, which fails: its directory is missing
	require.Eventually(t, func() bool {
		err := m.Health()
		return err != nil && assert.ObjectsAreEqual(
			"the last commit failed 0s ago: no space left on device; a probe write still fails: open "+
				filepath.Join(probeDir, ".sgsim-probe")+": no such file or directory", err.Error())
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, os.Mkdir(probeDir, 0o700))
	assert.Error(t, m.Health(), "the next probe waits a second")
	clock.add(time.Second)
	require.Eventually(t, func() bool { return m.Health() == nil }, 5*time.Second, time.Millisecond,
		"a probe write that works makes it ready again")
	entries, err := os.ReadDir(probeDir)
	require.NoError(t, err)
	assert.Empty(t, entries, "the probe file is removed")
}
