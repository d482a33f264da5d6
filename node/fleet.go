package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sgsim/sgsim/agent"
	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/etcdstore"
)

// DefaultEtcdPrefix is where a fleet keeps its keys when Config.EtcdPrefix is empty.
const DefaultEtcdPrefix = "/sgsim"

// DefaultEnforceTimeout is how long a fleet replica's answer waits for the affected hosts (SPEC §9).
const DefaultEnforceTimeout = 5 * time.Second

// How often a replica checks that etcd answers (its /readyz), and how long one check may take.
const (
	etcdProbeEvery   = 250 * time.Millisecond
	etcdProbeTimeout = time.Second
)

// fleetRefreshTimeout bounds a replica's background reload of the state from etcd (see refreshFleet).
const fleetRefreshTimeout = 5 * time.Second

// feedRepairGrace is how long an intent of owed feeds stands before a replica repairs it: its writer,
// if alive, pays it within milliseconds of its commit.
const feedRepairGrace = time.Second

// fleetRetryPause is how long a replica's failed background watch (state, owed feeds) waits before it
// starts again.
const fleetRetryPause = 200 * time.Millisecond

// fleet is what a node in etcd mode holds besides the controller.
type fleet struct {
	cli     *clientv3.Client
	st      *etcdstore.Store
	timeout time.Duration
	// unreachable is why the last probe of etcd failed; nil while it answers.
	unreachable atomic.Pointer[error]
	// feedsRepaired counts the feeds this replica wrote for changes whose writer did not.
	feedsRepaired prometheus.Counter
}

// checkEtcdEndpoints refuses an --etcd endpoint the client could never dial: a URL whose scheme is not
// http, https, unix or unixs or that has no host, or a bare endpoint that is not host:port.
func checkEtcdEndpoints(endpoints []string) error {
	for _, ep := range endpoints {
		if strings.Contains(ep, "://") {
			u, err := url.Parse(ep)
			switch {
			case err != nil:
				return fmt.Errorf("--etcd %s: %w", ep, err)
			case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" && u.Scheme != "unixs":
				return fmt.Errorf("--etcd %s: want an http, https, unix or unixs URL", ep)
			case u.Host == "" && u.Path == "":
				return fmt.Errorf("--etcd %s: no host", ep)
			}
			continue
		}
		if _, _, err := net.SplitHostPort(ep); err != nil {
			return fmt.Errorf("--etcd %s: want a URL (http://HOST:PORT) or HOST:PORT: %w", ep, err)
		}
	}
	return nil
}

// newFleet builds n as a stateless API replica of the fleet in cfg.Etcd (SPEC §9): the state lives in
// etcd, no dataplane is loaded, every change is one guarded etcd transaction that names the hosts it
// affects, and each answer waits (up to cfg.EnforceTimeout) for those hosts to acknowledge it.
func (n *Node) newFleet(ctx context.Context, cfg Config) error {
	switch cfg.Dataplane {
	case "", DataplaneGo:
	default:
		return fmt.Errorf("--dataplane %s with --etcd: replicas enforce nothing; run `sgsim agent` on each host", cfg.Dataplane)
	}
	if cfg.EnforceTimeout < 0 {
		return fmt.Errorf("--enforce-timeout %s: must not be negative", cfg.EnforceTimeout)
	}
	prefix := cfg.EtcdPrefix
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	f := &fleet{timeout: cfg.EnforceTimeout, feedsRepaired: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sgsim_fleet_feeds_repaired_total",
		Help: "Feeds of hosts this replica wrote for committed changes whose writer stopped before writing them."})}
	if f.timeout == 0 {
		f.timeout = DefaultEnforceTimeout
	}
	dial := cfg.DialEtcd
	if dial == nil {
		dial = clientv3.New
	}
	var err error
	// etcd's client logs through zap; its connection trouble reaches us as errors instead.
	if err := checkEtcdEndpoints(cfg.Etcd); err != nil {
		return err
	}
	if f.cli, err = dial(clientv3.Config{Endpoints: cfg.Etcd, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); err != nil {
		return fmt.Errorf("--etcd %v: %w", cfg.Etcd, err)
	}
	n.fleet = f
	sopts := append([]etcdstore.Option{etcdstore.WithLogger(n.log)}, cfg.EtcdOptions...)
	if f.st, err = etcdstore.Open(ctx, f.cli, prefix, sopts...); err != nil {
		return fmt.Errorf("--etcd %v: %w", cfg.Etcd, err)
	}
	n.st = f.st
	if err := n.seedFleet(ctx, cfg); err != nil {
		return err
	}
	copts := cfg.Control
	copts.Logger = n.log
	copts.NoEngine = true
	// An eBPF agent's slots bound the ENIs one host holds: past them a PUT (or a move) to that host is
	// refused whole, as on a single host, rather than committed and left pending there for good.
	lim := control.DefaultLimits()
	if copts.Limits != nil {
		lim = *copts.Limits
	}
	if lim.ENIsPerHost == 0 || lim.ENIsPerHost > bpf.MaxENIs {
		lim.ENIsPerHost = bpf.MaxENIs
	}
	lim.PerNamedHost = true
	copts.Limits = &lim
	copts.Commit = f.commit(n)
	if n.ctrl, err = control.New(ctx, f.st, nil, copts); err != nil {
		return err
	}
	aopts := cfg.API
	aopts.Logger = n.log
	aopts.Nonces = f.st // a Nonce used on one replica is refused by all
	aopts.Enforcement = f.enforcement(n)
	aopts.Change = f.change
	aopts.StoreHealth = f.health
	aopts.Collectors = append(slices.Clip(aopts.Collectors), f.feedsRepaired)
	n.handler = api.NewHandler(n.ctrl, aopts)
	// Followed in the background so that reads (Describe*, the admin GETs) see what other replicas
	// commit; writes do not depend on it (a stale one is refused by etcd and re-run).
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { n.followFleet(wctx) })
	wg.Go(func() { f.probe(wctx, cfg.Etcd, prefix) })
	wg.Go(func() { n.repairFeeds(wctx) })
	n.stop = func() { stop(); wg.Wait() }
	n.log.Info("fleet replica", "etcd", cfg.Etcd, "prefix", prefix, "revision", n.ctrl.View().Generation, "enforce-timeout", f.timeout)
	return nil
}

// seedFleet commits cfg's topology when the fleet's prefix holds no state; once it holds one the
// topology is ignored. Another replica seeding at the same moment wins, and that is fine.
func (n *Node) seedFleet(ctx context.Context, cfg Config) error {
	existing, rev, err := n.fleet.st.Load(ctx)
	if err != nil {
		return err
	}
	if existing != nil {
		if cfg.Topology != "" || cfg.Seed != nil {
			n.log.Info("etcd already holds a state; --topology ignored", "revision", rev, "topology", cfg.Topology)
		}
		return nil
	}
	seed := cfg.Seed
	switch {
	case seed != nil:
	case cfg.Topology != "":
		if seed, err = model.LoadTopologyFile(cfg.Topology); err != nil {
			return err
		}
	default:
		return errors.New("--etcd: the fleet holds no state yet: give --topology to seed it")
	}
	if err := n.fleet.st.Commit(ctx, seed, 1); err != nil && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("--topology: seed etcd: %w", err)
	}
	return nil
}

// commit is the controller's Options.Commit: one guarded transaction writing the feeds of the hosts
// the change affects. A commit whose feeds could not all be written is durable all the same: it is
// answered, and the hosts that were not told show as pending until a replica's repair tells them.
func (f *fleet) commit(n *Node) func(ctx context.Context, old, next *model.State, gen uint64) (control.Committed, error) {
	return func(ctx context.Context, old, next *model.State, gen uint64) (control.Committed, error) {
		hosts := agent.AffectedHosts(old, next)
		rev, err := f.st.CommitAffecting(ctx, next, gen, hosts)
		switch {
		case errors.Is(err, store.ErrConflict):
			return control.Committed{}, fmt.Errorf("%w: %w", control.ErrStale, err)
		case errors.Is(err, etcdstore.ErrFeedIncomplete):
			n.log.Error("committed, but not every affected host was notified", "revision", rev, "err", err)
		case err != nil:
			return control.Committed{}, err
		}
		return control.Committed{Revision: rev, Hosts: hosts}, nil
	}
}

// enforcement is the handler's Options.Enforcement: it waits up to the timeout for the hosts of c.
func (f *fleet) enforcement(n *Node) func(ctx context.Context, c control.Committed) *api.Enforcement {
	return func(ctx context.Context, c control.Committed) *api.Enforcement {
		wctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		if c.Revision == 0 {
			// The call changed nothing: the state it found is the change at the View's revision (the
			// newest, as the controller checked), in force where that change is; answered as GET
			// /sgsim/v1/changes/{R} answers for it, after the same wait as a change's.
			rev := n.ctrl.View().Generation
			hosts, err := f.st.ChangeHosts(wctx, rev)
			if err != nil {
				n.log.Error("the change a no-op found", "revision", rev, "err", err)
				return &api.Enforcement{Revision: rev, Pending: []string{}, Down: []string{}}
			}
			c = control.Committed{Revision: rev, Hosts: hosts}
		}
		pending, down, err := f.st.WaitEnforced(wctx, c.Revision, c.Hosts)
		if err != nil {
			// The change is committed; not knowing who has it, every host is reported pending.
			n.log.Error("wait for enforcement", "revision", c.Revision, "err", err)
			pending, down = slices.Clone(c.Hosts), nil
		}
		return newEnforcement(c.Revision, len(c.Hosts), pending, down)
	}
}

// change is the handler's Options.Change (GET /sgsim/v1/changes/{R}): where change rev is in force now.
func (f *fleet) change(ctx context.Context, rev uint64) (*api.Enforcement, error) {
	// Bounded like a write's wait: an etcd that does not answer is a 503, not a request held open.
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	hosts, err := f.st.ChangeHosts(ctx, rev)
	switch {
	case errors.Is(err, store.ErrCompacted):
		return nil, fmt.Errorf("%w: %w", api.ErrChangeForgotten, err)
	case errors.Is(err, etcdstore.ErrNoSuchChange):
		return nil, fmt.Errorf("%w: %w", api.ErrNoSuchChange, err)
	case err != nil:
		return nil, err
	}
	pending, down, err := f.st.EnforcementOf(ctx, rev, hosts)
	if err != nil {
		return nil, err
	}
	return newEnforcement(rev, len(hosts), pending, down), nil
}

func newEnforcement(rev uint64, hosts int, pending, down []string) *api.Enforcement {
	if pending == nil {
		pending = []string{}
	}
	if down == nil {
		down = []string{}
	}
	return &api.Enforcement{Revision: rev, Hosts: hosts, Pending: pending, Down: down}
}

// probe reads one key of prefix every etcdProbeEvery until ctx ends and keeps why the last read failed,
// for /readyz: a replica whose etcd does not answer can take no call.
func (f *fleet) probe(ctx context.Context, endpoints []string, prefix string) {
	tick := time.NewTicker(etcdProbeEvery)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, etcdProbeTimeout)
		_, err := f.cli.Get(pctx, prefix, clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			err = fmt.Errorf("etcd %s unreachable: %w", strings.Join(endpoints, ","), err)
			f.unreachable.Store(&err)
		} else {
			f.unreachable.Store(nil)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// health is the handler's Options.StoreHealth: why etcd did not answer the last probe, nil if it did.
func (f *fleet) health() error {
	if err := f.unreachable.Load(); err != nil {
		return *err
	}
	return nil
}

// followFleet refreshes the controller whenever etcd holds a newer state than its View, until ctx
// ends; a failed watch (etcd away, history compacted) is restarted from the View after a pause.
func (n *Node) followFleet(ctx context.Context) {
	n.keepRunning(ctx, "following etcd", func() error {
		return n.fleet.st.Watch(ctx, n.ctrl.View().Generation, func(ch store.Change) error {
			if ch.Revision <= n.ctrl.View().Generation {
				return nil // this replica's own commit, or one it has already loaded
			}
			return n.refreshFleet(ctx)
		})
	}, func() {
		if err := n.refreshFleet(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("reload from etcd", "err", err)
		}
	})
}

// keepRunning runs run until ctx ends, and again after fleetRetryPause whenever it returns, logging
// why (what it is doing, its error); afterPause, if set, runs after each pause.
func (n *Node) keepRunning(ctx context.Context, what string, run func() error, afterPause func()) {
	for ctx.Err() == nil {
		err := run()
		if ctx.Err() != nil {
			return
		}
		n.log.Warn(what+"; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(fleetRetryPause):
		}
		if afterPause != nil {
			afterPause()
		}
	}
}

// refreshFleet is Controller.Refresh bounded by fleetRefreshTimeout: it holds the controller's lock
// while it reads etcd, and every call of this replica waits for that lock, whatever its own deadline,
// so a read that etcd never answers must not hold it for as long as etcd is away.
func (n *Node) refreshFleet(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, fleetRefreshTimeout)
	defer cancel()
	return n.ctrl.Refresh(rctx)
}

// repairFeeds writes, until ctx ends, the feeds that committed changes owe and whose writer (another
// replica, or this one before a restart) stopped before writing them: at once for those found when
// it starts, after feedRepairGrace for those written later (etcdstore.Store.RepairFeeds). A failed
// watch or repair starts again after a pause.
func (n *Node) repairFeeds(ctx context.Context) {
	f := n.fleet
	n.keepRunning(ctx, "repairing owed feeds", func() error {
		return f.st.RepairFeeds(ctx, feedRepairGrace, func(r etcdstore.Repaired) { f.feedsRepaired.Add(float64(len(r.Hosts))) })
	}, nil)
}
