package hostif

import (
	"context"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
)

// call is one Enforcer call the fake saw.
type call struct {
	op, ifname, eni string
	ifindex         int
}

// fakeEnforcer records every call; it checks that each runs inside the followed namespace by looking
// the interface up there.
type fakeEnforcer struct {
	mu    sync.Mutex
	calls chan call
	fail  map[string]error // ifname → error Attach returns
}

func newFake() *fakeEnforcer {
	return &fakeEnforcer{calls: make(chan call, 64), fail: map[string]error{}}
}

func (f *fakeEnforcer) lookup(ifname string) int {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1
	}
	return ifc.Index
}

func (f *fakeEnforcer) Attach(_ context.Context, ifname, eni string) error {
	f.mu.Lock()
	err := f.fail[ifname]
	f.mu.Unlock()
	f.calls <- call{"attach", ifname, eni, f.lookup(ifname)}
	return err
}

func (f *fakeEnforcer) Guard(_ context.Context, ifname string) error {
	f.calls <- call{"guard", ifname, "", f.lookup(ifname)}
	return nil
}

func (f *fakeEnforcer) Detach(ifname string) error {
	f.calls <- call{"detach", ifname, "", f.lookup(ifname)}
	return nil
}

func (f *fakeEnforcer) Forget(ifindex int) error {
	f.calls <- call{"forget", "", "", ifindex}
	return nil
}

// next waits for the next call.
func (f *fakeEnforcer) next(t *testing.T) call {
	t.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no enforcer call within 5 s")
		return call{}
	}
}

// none checks that no call comes within a short while.
func (f *fakeEnforcer) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-f.calls:
		t.Fatalf("unexpected enforcer call %+v", c)
	case <-time.After(100 * time.Millisecond):
	}
}

// ifindex is the index of ifname in the lab's host namespace.
func ifindex(t *testing.T, lab *netlab.Lab, ifname string) int {
	t.Helper()
	idx, err := netns.Do(lab.Host, func() (int, error) {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return 0, err
		}
		return ifc.Index, nil
	})
	require.NoError(t, err)
	return idx
}

// TestFollowerFollowsLinks: the follower attaches a namespace's real veths that exist before it starts
// or appear later, follows them when renamed away and back, re-created or removed, and leaves alone
// those no ENI or guard wants. It stays whole: each step acts on the links the steps before it left.
func TestFollowerFollowsLinks(t *testing.T) {
	netlab.RequireRoot(t)
	lab := netlab.New(t, "hif")
	veth := func(name string) {
		lab.IP("-n", lab.Host, "link", "add", name, "type", "veth", "peer", "name", "pe"+name)
	}
	veth("sgv-pre") // exists before the follower starts
	fake := newFake()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, err := Start(ctx, Config{Netns: lab.Host, Enforcer: fake, Guard: []string{"sgg-*"}},
		map[string]string{"sgv-pre": "eni-pre", "sgv-a": "eni-a"})
	require.NoError(t, err)

	// Start attaches what exists before it returns; what does not exist is only wanted.
	c := fake.next(t)
	assert.Equal(t, call{"attach", "sgv-pre", "eni-pre", ifindex(t, lab, "sgv-pre")}, c)
	assert.Equal(t, State{Ifindex: c.ifindex, Attached: true}, f.Status("sgv-pre"))
	assert.Equal(t, State{}, f.Status("sgv-a"))
	fake.none(t) // the subscription's own dump of sgv-pre changes nothing

	t.Run("wanted interface appears", func(t *testing.T) {
		veth("sgv-a")
		c := fake.next(t)
		assert.Equal(t, call{"attach", "sgv-a", "eni-a", ifindex(t, lab, "sgv-a")}, c)
		require.Eventually(t, func() bool { return f.Status("sgv-a").Attached }, time.Second, time.Millisecond)
	})
	t.Run("unclaimed interface matching a guard appears", func(t *testing.T) {
		veth("sgg-1")
		assert.Equal(t, call{"guard", "sgg-1", "", ifindex(t, lab, "sgg-1")}, fake.next(t))
		veth("sgx-1") // matches no guard: left alone
		fake.none(t)
	})
	t.Run("ENI claims a guarded interface", func(t *testing.T) {
		require.NoError(t, f.Want(ctx, map[string]string{"sgv-pre": "eni-pre", "sgv-a": "eni-a", "sgg-1": "eni-g"}))
		assert.Equal(t, call{"attach", "sgg-1", "eni-g", ifindex(t, lab, "sgg-1")}, fake.next(t))
		assert.True(t, f.Status("sgg-1").Attached, "attached before Want returns")
	})
	t.Run("deleted and re-created", func(t *testing.T) {
		old := ifindex(t, lab, "sgv-a")
		lab.IP("-n", lab.Host, "link", "del", "sgv-a")
		assert.Equal(t, call{"forget", "", "", old}, fake.next(t))
		require.Eventually(t, func() bool { return !f.Status("sgv-a").Attached }, time.Second, time.Millisecond)
		veth("sgv-a")
		c := fake.next(t)
		assert.Equal(t, call{"attach", "sgv-a", "eni-a", ifindex(t, lab, "sgv-a")}, c)
		assert.NotEqual(t, old, c.ifindex)
	})
	t.Run("renamed away and back", func(t *testing.T) {
		lab.IP("-n", lab.Host, "link", "set", "sgv-a", "name", "sgv-z")
		assert.Equal(t, call{"detach", "sgv-z", "", ifindex(t, lab, "sgv-z")}, fake.next(t))
		require.Eventually(t, func() bool { return !f.Status("sgv-a").Attached }, time.Second, time.Millisecond)
		lab.IP("-n", lab.Host, "link", "set", "sgv-z", "name", "sgv-a")
		assert.Equal(t, call{"attach", "sgv-a", "eni-a", ifindex(t, lab, "sgv-a")}, fake.next(t))
	})
	t.Run("a failed attach is reported and retried on the next event", func(t *testing.T) {
		fake.mu.Lock()
		fake.fail["sgv-b"] = os.ErrPermission
		fake.mu.Unlock()
		require.NoError(t, f.Want(ctx, map[string]string{"sgv-pre": "eni-pre", "sgv-a": "eni-a", "sgg-1": "eni-g", "sgv-b": "eni-b"}))
		veth("sgv-b")
		assert.Equal(t, "attach", fake.next(t).op)
		require.Eventually(t, func() bool { return f.Status("sgv-b").Err != nil }, time.Second, time.Millisecond)
		assert.False(t, f.Status("sgv-b").Attached)
		fake.mu.Lock()
		delete(fake.fail, "sgv-b")
		fake.mu.Unlock()
		lab.IP("-n", lab.Host, "link", "set", "sgv-b", "up")
		for c := fake.next(t); c.op != "attach" || c.ifname != "sgv-b"; c = fake.next(t) {
		}
		require.Eventually(t, func() bool { return f.Status("sgv-b").Attached }, time.Second, time.Millisecond)
	})
	t.Run("no longer wanted", func(t *testing.T) {
		require.NoError(t, f.Want(ctx, map[string]string{"sgv-pre": "eni-pre"}))
		got := map[string]string{}
		for range 3 {
			c := fake.next(t)
			got[c.ifname] = c.op
		}
		// sgg-1 goes back to the guard; the others are detached.
		assert.Equal(t, map[string]string{"sgv-a": "detach", "sgv-b": "detach", "sgg-1": "guard"}, got)
		assert.Equal(t, State{}, f.Status("sgv-a"))
	})
	cancel()
	select {
	case <-f.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("follower did not stop")
	}
}

func TestStartRejectsBadGuard(t *testing.T) {
	_, err := Start(context.Background(), Config{Enforcer: newFake(), Guard: []string{"tap["}}, nil)
	require.ErrorContains(t, err, `--guard "tap["`)
}

// TestRelistAfterLostEvents: when the subscription lost events (the follower then lists again), a
// wanted link that appeared meanwhile is attached and one that went is forgotten.
func TestRelistAfterLostEvents(t *testing.T) {
	netlab.RequireRoot(t)
	lab := netlab.New(t, "hrl")
	lab.IP("-n", lab.Host, "link", "add", "sgv-kept", "type", "veth", "peer", "name", "pe-kept")
	fake := newFake()
	f := &Follower{cfg: Config{Netns: lab.Host, Enforcer: fake}, log: slogDiscard(), status: map[string]State{}}
	l := &loop{f: f, want: map[string]string{"sgv-new": "eni-new", "sgv-kept": "eni-kept"}, links: map[string]int{}, on: map[string]on{}}
	ctx := context.Background()
	require.NoError(t, l.relist(ctx))
	kept := ifindex(t, lab, "sgv-kept")
	assert.Equal(t, call{"attach", "sgv-kept", "eni-kept", kept}, fake.next(t))
	// Events lost: sgv-new appears, sgv-kept goes, and nothing tells the loop until it lists again.
	lab.IP("-n", lab.Host, "link", "add", "sgv-new", "type", "veth", "peer", "name", "pe-new")
	lab.IP("-n", lab.Host, "link", "del", "sgv-kept")
	require.NoError(t, l.relist(ctx))
	got := map[string]call{}
	for range 2 {
		c := fake.next(t)
		got[c.op] = c
	}
	assert.Equal(t, call{"forget", "", "", kept}, got["forget"])
	assert.Equal(t, call{"attach", "sgv-new", "eni-new", ifindex(t, lab, "sgv-new")}, got["attach"])
	assert.True(t, f.Status("sgv-new").Attached)
	assert.False(t, f.Status("sgv-kept").Attached)
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }
