package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// fullDisk is a memory store whose commits fail with ENOSPC while full is set.
type fullDisk struct {
	*store.Memory
	full atomic.Bool
}

func (d *fullDisk) Commit(ctx context.Context, s *model.State, gen uint64) error {
	if d.full.Load() {
		return fmt.Errorf("store: commit generation %d: write sgsim.db: %w", gen, syscall.ENOSPC)
	}
	return d.Memory.Commit(ctx, s, gen)
}

// TestProbesFollowTheStore: /readyz and /healthz say not ready, and why, while commits fail; /livez and
// reads keep answering; a commit that works again makes the daemon ready.
func TestProbesFollowTheStore(t *testing.T) {
	disk := &fullDisk{Memory: store.NewMemory()}
	mon := store.NewMonitored(disk, store.MonitorOptions{Now: func() time.Time { return testNow }})
	ctrl, err := control.New(context.Background(), mon, demoState(t), control.Options{})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, StoreHealth: mon.Health})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}

	for _, path := range []string{"/livez", "/readyz", "/healthz"} {
		status, body := a.get(path)
		assert.Equal(t, http.StatusOK, status, path)
		assert.Contains(t, body, `"status":"ok"`, path)
	}

	disk.full.Store(true)
	before := a.sg("sg-web")
	r := a.tc("Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.action", "DROP")
	assert.Equal(t, 6000, r.Code, r.Message)
	assert.Equal(t, before, a.sg("sg-web"), "a failed commit changes nothing")

	for _, path := range []string{"/readyz", "/healthz"} {
		status, body := a.get(path)
		assert.Equal(t, http.StatusServiceUnavailable, status, path)
		assert.JSONEq(t, `{"status":"not ready","generation":1,"reason":"the last commit failed 0s ago: store: commit generation 2: write sgsim.db: no space left on device"}`,
			body, path)
	}
	status, body := a.get("/livez")
	assert.Equal(t, http.StatusOK, status)
	assert.JSONEq(t, `{"status":"ok"}`, body)
	assert.Equal(t, 0, a.tc("Action", ActDescribePolicy, "sgId", "sg-web").Code, "reads keep working")

	disk.full.Store(false)
	assert.Equal(t, 0, a.tc("Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.action", "DROP").Code)
	status, body = a.get("/readyz")
	assert.Equal(t, http.StatusOK, status)
	assert.JSONEq(t, `{"status":"ok","generation":2}`, body)
}
