// Package hostif keeps the dataplane attached to the host interfaces the ENIs name, following the
// kernel's link events: an interface is attached when it appears, re-attached when it is re-created or
// renamed to a wanted name, detached when no ENI wants it any more, forgotten when it goes, and an
// unclaimed interface whose name matches a guard pattern gets the drop-everything program at once.
// Nothing polls: one netlink subscription (with the initial list on the same socket, so no event falls
// between list and subscribe) drives everything.
package hostif

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/internal/netns"
)

// Enforcer puts programs on interfaces; the eBPF dataplane implements it. Every call is made from the
// followed namespace, one at a time.
type Enforcer interface {
	// Attach enforces eni's tables on ifname, replacing whatever program is there.
	Attach(ctx context.Context, ifname, eni string) error
	// Guard puts the drop-everything program on ifname, which no ENI claims.
	Guard(ctx context.Context, ifname string) error
	// Detach removes the program from ifname, which still exists.
	Detach(ifname string) error
	// Forget releases what the dataplane held for an interface that is gone (its pins, its binding).
	Forget(ifindex int) error
}

// Config says what to follow.
type Config struct {
	// Netns is the namespace (ip netns name or path) holding the host interfaces; "" = ours.
	Netns    string
	Enforcer Enforcer
	// Guard holds path.Match patterns; an unclaimed interface whose name matches one is guarded.
	Guard  []string
	Logger *slog.Logger
}

// State is what the follower knows of one wanted interface.
type State struct {
	Ifindex  int  // 0 while the interface does not exist
	Attached bool // the ENI's tables are enforced on it now
	Err      error
}

// Follower follows one namespace's links. Its methods are safe for concurrent use.
type Follower struct {
	cfg  Config
	log  *slog.Logger
	reqs chan request
	done chan struct{}

	mu     sync.Mutex // guards status, read by Status without waiting for the loop
	status map[string]State
}

// request is a change of the wanted set, answered once the loop has reconciled it.
type request struct {
	want  map[string]string // ifname → ENI
	reply chan struct{}
}

// on is what the loop puts on one interface.
type on struct {
	ifindex int
	eni     string // "" = the guard
}

// Start subscribes to cfg.Netns's link events, attaches every interface of want (ifname → ENI) that
// exists and guards the unclaimed ones, then follows the kernel until ctx is done.
func Start(ctx context.Context, cfg Config, want map[string]string) (*Follower, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, g := range cfg.Guard {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("--guard %q: %w", g, err)
		}
	}
	f := &Follower{cfg: cfg, log: cfg.Logger, reqs: make(chan request), done: make(chan struct{}), status: map[string]State{}}
	// want is known before the first list's reconcile: an interface an earlier process left attached
	// is then attached anew at once, not detached first.
	l := &loop{f: f, want: maps.Clone(want), links: map[string]int{}, on: map[string]on{}}
	if l.want == nil {
		l.want = map[string]string{}
	}
	if e, ok := cfg.Enforcer.(earlierInterfaces); ok {
		l.earlier = e.EarlierInterfaces()
	}
	sub, err := f.subscribe()
	if err != nil {
		return nil, err
	}
	if err := l.relist(ctx); err != nil {
		sub.close()
		return nil, err
	}
	l.setWant(ctx, want)
	go func() {
		defer close(f.done)
		l.run(ctx, sub)
	}()
	return f, nil
}

// subscription is one netlink link-event subscription: its events, its errors, and how to end it.
type subscription struct {
	updates chan netlink.LinkUpdate
	errs    chan error
	done    chan struct{}
	once    sync.Once
}

func (s *subscription) close() { s.once.Do(func() { close(s.done) }) }

// subscribe opens a link-event subscription in the followed namespace, with the initial list on the same
// socket. The receive buffer is raised: a burst of link events that overflows it (ENOBUFS) loses events,
// and then the follower subscribes and lists again.
func (f *Follower) subscribe() (*subscription, error) {
	s := &subscription{updates: make(chan netlink.LinkUpdate, 256), errs: make(chan error, 1), done: make(chan struct{})}
	open := func() (struct{}, error) {
		return struct{}{}, netlink.LinkSubscribeWithOptions(s.updates, s.done, netlink.LinkSubscribeOptions{
			ListExisting:      true,
			ReceiveBufferSize: 4 << 20,
			ErrorCallback:     func(err error) { nonBlockingSend(s.errs, err) },
		})
	}
	var err error
	if f.cfg.Netns == "" {
		_, err = open()
	} else {
		_, err = netns.Do(f.cfg.Netns, open)
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("subscribe to link events: %w", err)
	}
	return s, nil
}

// relist reads the namespace's links afresh and reconciles every name it knows or finds: the start,
// and the resync after a subscription lost events. Events of the subscription's own dump that follow
// change nothing.
func (l *loop) relist(ctx context.Context) error {
	links, err := l.f.list()
	if err != nil {
		return err
	}
	old := l.links
	l.links = make(map[string]int, len(links))
	for _, lk := range links {
		l.links[lk.Attrs().Name] = lk.Attrs().Index
	}
	for name, idx := range old {
		if l.links[name] != idx {
			l.gone(name, idx)
		}
	}
	for name, idx := range l.links {
		if _, mine := l.on[name]; !mine && slices.Contains(l.earlier, idx) {
			l.on[name] = on{ifindex: idx, eni: earlierMark}
		}
	}
	l.earlier = nil
	for name := range old {
		l.reconcile(ctx, name)
	}
	for name := range l.links {
		l.reconcile(ctx, name)
	}
	return nil
}

func nonBlockingSend(ch chan error, err error) {
	select {
	case ch <- err:
	default:
	}
}

// list reads the namespace's links.
func (f *Follower) list() ([]netlink.Link, error) {
	if f.cfg.Netns == "" {
		return netlink.LinkList()
	}
	return netns.Do(f.cfg.Netns, netlink.LinkList)
}

// Want replaces the wanted set (ifname → ENI) and returns once every wanted interface that exists is
// attached (or failed to attach: see Status) and every interface no longer wanted is detached.
func (f *Follower) Want(ctx context.Context, want map[string]string) error {
	r := request{want: want, reply: make(chan struct{})}
	select {
	case f.reqs <- r:
	case <-f.done:
		return errors.New("hostif: the follower has stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.reply:
		return nil
	case <-f.done:
		return errors.New("hostif: the follower has stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status reports what the follower knows of the wanted interface ifname.
func (f *Follower) Status(ifname string) State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status[ifname]
}

// Done is closed once the follower has stopped (its context ended or the subscription failed).
func (f *Follower) Done() <-chan struct{} { return f.done }

// loop is the follower's state, owned by its one goroutine.
type loop struct {
	f     *Follower
	want  map[string]string // ifname → ENI
	links map[string]int    // ifname → ifindex of the interfaces that exist
	on    map[string]on     // ifname → what this loop put on it
	// earlier is, until the first list, the interfaces an earlier process left a program on (by
	// ifindex): taken as on, but as nothing this loop put there, so that each is attached anew,
	// guarded or detached.
	earlier []int
}

// earlierMark is on.eni for what an earlier process left on an interface: no ENI ID, so reconcile never
// takes it for what it wants there.
const earlierMark = "\x00earlier"

// earlierInterfaces is an Enforcer that can say on which interfaces an earlier process left a program.
type earlierInterfaces interface {
	EarlierInterfaces() []int
}

// run applies link events and want changes until ctx ends. A subscription that fails or loses events is
// replaced by a new one and a fresh list, a moment later, as often as it takes.
func (l *loop) run(ctx context.Context, sub *subscription) {
	defer func() { sub.close() }()
	for {
		lost := false
		select {
		case <-ctx.Done():
			return
		case err := <-sub.errs:
			// An interrupted dump is repeated by the relist below; a receive error (ENOBUFS) lost events.
			l.f.log.Warn("link events lost: subscribing and listing again", "err", err)
			lost = true
		case r := <-l.f.reqs:
			l.setWant(ctx, r.want)
			close(r.reply)
		case u, ok := <-sub.updates:
			if !ok {
				l.f.log.Warn("link events: the subscription closed: subscribing and listing again")
				lost = true
				break
			}
			l.update(ctx, u)
		}
		for lost {
			sub.close()
			next, err := l.f.subscribe()
			if err == nil {
				if err = l.relist(ctx); err == nil {
					sub, lost = next, false
					continue
				}
				next.close()
			}
			l.f.log.Error("link events: resubscribe", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// update applies one link event: the names it adds or removes are reconciled.
func (l *loop) update(ctx context.Context, u netlink.LinkUpdate) {
	name, idx := u.Attrs().Name, u.Attrs().Index
	if u.Header.Type == unix.RTM_DELLINK {
		if l.links[name] == idx {
			delete(l.links, name)
		}
		l.gone(name, idx)
		l.reconcile(ctx, name)
		return
	}
	// A rename keeps the index: the old name no longer exists, and what was put on the device moves
	// with it, to be kept, replaced or removed under its new name.
	for old, i := range l.links {
		if i == idx && old != name {
			delete(l.links, old)
			if o, ok := l.on[old]; ok && o.ifindex == idx {
				delete(l.on, old)
				l.on[name] = o
			}
			l.reconcile(ctx, old)
		}
	}
	l.links[name] = idx
	l.reconcile(ctx, name)
}

// gone forgets what was put on an interface that no longer exists.
func (l *loop) gone(name string, idx int) {
	if o, ok := l.on[name]; ok && o.ifindex == idx {
		delete(l.on, name)
		if err := l.enforce(func(e Enforcer) error { return e.Forget(idx) }); err != nil {
			l.f.log.Warn("forget a removed interface", "interface", name, "ifindex", idx, "err", err)
		}
	}
}

func (l *loop) setWant(ctx context.Context, want map[string]string) {
	old := l.want
	l.want = make(map[string]string, len(want))
	for k, v := range want {
		l.want[k] = v
	}
	for name := range old {
		if _, still := l.want[name]; !still {
			l.reconcile(ctx, name)
			l.f.mu.Lock()
			delete(l.f.status, name)
			l.f.mu.Unlock()
		}
	}
	for name := range l.want {
		l.reconcile(ctx, name)
	}
}

// reconcile makes what is on ifname what should be: the wanted ENI's tables, the guard, or nothing.
func (l *loop) reconcile(ctx context.Context, name string) {
	idx, exists := l.links[name]
	cur, has := l.on[name]
	if has && cur.ifindex != idx {
		// Re-created under the same name (a new index), or renamed away: what was put on the old
		// device is no longer ours to manage by this name.
		delete(l.on, name)
		has = false
	}
	eni, wanted := l.want[name]
	var err error
	switch {
	case !exists:
	case wanted && (!has || cur.eni != eni):
		err = l.enforce(func(e Enforcer) error { return e.Attach(ctx, name, eni) })
		if err == nil {
			l.on[name] = on{ifindex: idx, eni: eni}
			l.f.log.Info("attached", "interface", name, "eni", eni, "ifindex", idx)
		}
	case !wanted && l.guarded(name) && (!has || cur.eni != ""):
		err = l.enforce(func(e Enforcer) error { return e.Guard(ctx, name) })
		if err == nil {
			l.on[name] = on{ifindex: idx}
			l.f.log.Info("guarded", "interface", name, "ifindex", idx)
		}
	case !wanted && !l.guarded(name) && has:
		err = l.enforce(func(e Enforcer) error { return e.Detach(name) })
		if err == nil {
			delete(l.on, name)
			l.f.log.Info("detached", "interface", name, "ifindex", idx)
		}
	}
	if err != nil {
		l.f.log.Error("enforce on a host interface", "interface", name, "eni", eni, "err", err)
	}
	if wanted {
		o, attached := l.on[name]
		l.f.mu.Lock()
		l.f.status[name] = State{Ifindex: idx, Attached: attached && exists && o.eni == eni, Err: err}
		l.f.mu.Unlock()
	}
}

func (l *loop) guarded(name string) bool {
	for _, g := range l.f.cfg.Guard {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// enforce runs fn in the followed namespace.
func (l *loop) enforce(fn func(Enforcer) error) error {
	if l.f.cfg.Netns == "" {
		return fn(l.f.cfg.Enforcer)
	}
	_, err := netns.Do(l.f.cfg.Netns, func() (struct{}, error) { return struct{}{}, fn(l.f.cfg.Enforcer) })
	return err
}
