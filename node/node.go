// Package node assembles one running sgsim node from a Config: its store, its write path, its dataplanes
// (the Go engine and/or the eBPF program), the program's attachment to host interfaces, and the HTTP
// handlers. `sgsim serve`, the benchmarks, scenarios and tests all build their daemon here.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/hostif"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/etcdstore"
)

// Values of Config.Dataplane.
const (
	DataplaneGo   = "go"   // the pure-Go engine only: simulation
	DataplaneEBPF = "ebpf" // the eBPF TC program only: enforcement, no /check
	DataplaneBoth = "both" // the program enforces and the Go engine answers /check
)

// Config is everything a node is built from; the zero value is an in-memory Go-engine node that still
// needs a Topology or Seed.
type Config struct {
	// DataDir holds the bbolt store (store.DBFile); "" keeps the state in memory (scenarios, tests).
	DataDir string
	// Topology is a topology file that seeds a store holding no state yet; ignored once it holds one.
	Topology string
	// Seed seeds instead of Topology, for in-process callers that built their state already.
	Seed *model.State
	// Dataplane is DataplaneGo (the default when empty), DataplaneEBPF or DataplaneBoth.
	Dataplane string
	// PinPath is the bpffs directory of the program's maps and links ("" pins nothing).
	PinPath string
	// HostNetns is the network namespace (ip netns name or path) of the host interfaces; "" = ours.
	HostNetns string
	// Clsact attaches through a clsact qdisc even where the kernel has TCX.
	Clsact bool
	// NoAttach publishes every table into the program but attaches it to no interface: replay and
	// scenarios decide through BPF_PROG_TEST_RUN, and benchmarks attach where they choose.
	NoAttach bool
	// Guard holds name patterns (path.Match): an interface that matches one and that no ENI claims
	// gets the drop-everything program the moment it appears.
	Guard []string
	// Control configures the write path (limits, the Go engine's matcher); Logger and NoEngine are set
	// by the node.
	Control control.Options
	// API configures the handlers (clock, request bounds); Logger, Nonces, RuleCounts and StoreHealth
	// are set by the node.
	API    api.Options
	Logger *slog.Logger

	// Etcd, when set, makes the node a fleet API replica (SPEC §9) on these etcd endpoints: the state
	// lives in etcd (DataDir is not used), no dataplane is loaded, and each answer carries enforcement.
	Etcd []string
	// EtcdPrefix is the fleet's key prefix; "" = DefaultEtcdPrefix.
	EtcdPrefix string
	// EnforceTimeout bounds how long an answer waits for the affected hosts; 0 = DefaultEnforceTimeout.
	EnforceTimeout time.Duration
	// EtcdOptions configure the replica's store (a cluster's own limits: etcdstore.WithMaxTxnOps).
	EtcdOptions []etcdstore.Option
	// DialEtcd makes the replica's etcd client; nil = clientv3.New. Tests wrap the client's KV.
	DialEtcd func(clientv3.Config) (*clientv3.Client, error)
}

// Node is one assembled daemon. Its handler serves at once; Serve puts it on a listener.
type Node struct {
	log     *slog.Logger
	st      store.Store
	ctrl    *control.Controller
	bpf     *bpf.Dataplane
	links   *hostif.Follower // nil unless the program is attached to host interfaces
	stop    context.CancelFunc
	handler *api.Handler
	fleet   *fleet // nil unless the node is a fleet replica (Config.Etcd)

	seedable bool // the data directory has no committed store file (store.SeedDecision)
}

// New builds the node of cfg: it opens (and seeds) the store, loads every dataplane with the current
// tables and attaches the eBPF program to the ENIs' host interfaces, so that once it returns every
// table is in force and the handler may take calls. Close releases what it holds.
func New(ctx context.Context, cfg Config) (n *Node, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	switch cfg.Dataplane {
	case "", DataplaneGo, DataplaneEBPF, DataplaneBoth:
	default:
		return nil, fmt.Errorf("--dataplane %q: want go, ebpf or both", cfg.Dataplane)
	}
	enforce := cfg.Dataplane == DataplaneEBPF || cfg.Dataplane == DataplaneBoth
	if enforce && cfg.HostNetns != "" {
		if _, err := os.Stat(netns.Path(cfg.HostNetns)); err != nil {
			return nil, fmt.Errorf("--host-netns %s: %w", cfg.HostNetns, err)
		}
	}
	n = &Node{log: log}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
			n = nil
		}
	}()
	if len(cfg.Etcd) > 0 {
		return n, n.newFleet(ctx, cfg)
	}
	if enforce {
		// Loaded before the store is opened: a host that cannot run the program learns it first.
		if n.bpf, err = loadBPF(ctx, string(cfg.Dataplane), bpf.Options{PinPath: cfg.PinPath, Clsact: cfg.Clsact}); err != nil {
			return n, err
		}
	}
	seed, err := n.openStore(ctx, cfg)
	if err != nil {
		return n, err
	}
	copts := cfg.Control
	copts.Logger = log
	copts.NoEngine = cfg.Dataplane == DataplaneEBPF
	if enforce {
		// The program's slots bound the ENIs this host holds: past them a PUT is refused whole.
		lim := control.DefaultLimits()
		if copts.Limits != nil {
			lim = *copts.Limits
		}
		if lim.ENIsPerHost == 0 || lim.ENIsPerHost > bpf.MaxENIs {
			lim.ENIsPerHost = bpf.MaxENIs
		}
		copts.Limits = &lim
	}
	if enforce && !cfg.NoAttach {
		copts.OnApplied = n.follow
	}
	monitored := store.NewMonitored(n.st, store.MonitorOptions{ProbeDir: cfg.DataDir}) // for /readyz
	if n.ctrl, err = control.New(ctx, monitored, seed, copts); err != nil {
		return n, err
	}
	if err := n.enforce(ctx, cfg); err != nil {
		return n, err
	}
	aopts := cfg.API
	aopts.Logger = log
	aopts.StoreHealth = monitored.Health
	if nonces, ok := n.st.(api.NonceStore); ok {
		aopts.Nonces = nonces
	}
	if n.bpf != nil {
		aopts.RuleCounts = ruleCounts(n.bpf)
		aopts.TableGeneration = n.bpf.TableGeneration // used where there is no Go engine
	}
	if n.links != nil {
		aopts.Interfaces = func(ifname string) api.InterfaceState {
			st := n.links.Status(ifname)
			return api.InterfaceState{Ifindex: st.Ifindex, Attached: st.Attached}
		}
	}
	n.handler = api.NewHandler(n.ctrl, aopts)
	return n, nil
}

// openStore opens cfg's store and returns the state that seeds it when it holds none yet.
func (n *Node) openStore(ctx context.Context, cfg Config) (_ *model.State, err error) {
	if cfg.DataDir == "" {
		n.st = store.NewMemory()
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("--data-dir %s: %w", cfg.DataDir, err)
		}
		// Decided on the file before bbolt opens it: bbolt re-initialises an empty file.
		if n.seedable, err = store.SeedDecision(cfg.DataDir, cfg.Topology != "" || cfg.Seed != nil); err != nil {
			return nil, err
		}
		b, err := store.OpenBolt(filepath.Join(cfg.DataDir, store.DBFile))
		if err != nil {
			return nil, err
		}
		n.st = b
	}
	existing, gen, err := n.st.Load(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case existing != nil:
		if cfg.Topology != "" || cfg.Seed != nil {
			n.log.Info("store already holds a state; --topology ignored", "generation", gen, "topology", cfg.Topology)
		}
		return nil, nil
	case cfg.DataDir != "" && !n.seedable:
		return nil, fmt.Errorf("store: %s holds no state: restore it from a backup, or move it aside and start with --topology", filepath.Join(cfg.DataDir, store.DBFile))
	case cfg.Seed != nil:
		return cfg.Seed, nil
	case cfg.Topology != "":
		return model.LoadTopologyFile(cfg.Topology)
	case cfg.DataDir == "":
		return nil, errors.New("an in-memory node needs a topology to start from")
	default:
		return nil, fmt.Errorf("%s is empty: give --topology to seed it on first start", filepath.Join(cfg.DataDir, store.DBFile))
	}
}

// enforce loads the current tables into the eBPF program and, unless cfg.NoAttach, starts following
// the host interfaces: every ENI's hostInterface that exists is attached before New returns, the
// others as soon as they appear.
func (n *Node) enforce(ctx context.Context, cfg Config) error {
	if n.bpf == nil {
		return nil
	}
	if err := n.ctrl.AddDataplane(ctx, n.bpf); err != nil {
		return err
	}
	if cfg.NoAttach {
		return nil
	}
	// The follower outlives New's context: it stops with Close.
	fctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	links, err := hostif.Start(fctx, hostif.Config{Netns: cfg.HostNetns, Enforcer: n.bpf, Guard: cfg.Guard, Logger: n.log},
		hostInterfaces(n.ctrl.View().State))
	if err != nil {
		stop()
		return err
	}
	n.links, n.stop = links, stop
	attached := 0
	for name := range hostInterfaces(n.ctrl.View().State) {
		if links.Status(name).Attached {
			attached++
		}
	}
	n.log.Info("eBPF dataplane following host interfaces", "attached", attached, "netns", cfg.HostNetns, "guard", cfg.Guard)
	return nil
}

// follow hands the follower the host interfaces of a new committed state.
func (n *Node) follow(ctx context.Context, v *control.View) error {
	if n.links == nil {
		return nil // still starting: enforce hands it the state
	}
	return n.links.Want(ctx, hostInterfaces(v.State))
}

// hostInterfaces maps every hostInterface of s to its ENI.
func hostInterfaces(s *model.State) map[string]string {
	out := map[string]string{}
	for _, id := range s.ENIIDs() {
		if eni, _ := s.ENI(id); eni.HostInterface != "" {
			out[eni.HostInterface] = id
		}
	}
	return out
}

// Interface reports what the node knows of the host interface ifname; the zero State when it follows
// none.
func (n *Node) Interface(ifname string) hostif.State {
	if n.links == nil {
		return hostif.State{}
	}
	return n.links.Status(ifname)
}

// ruleCounts reads the kernel's per-rule counters of the tables published in dp.
func ruleCounts(dp *bpf.Dataplane) func() ([]api.RuleCount, error) {
	return func() ([]api.RuleCount, error) { return hitsOf(dp) }
}

func hitsOf(dp *bpf.Dataplane) ([]api.RuleCount, error) {
	hits, err := dp.Hits()
	if err != nil {
		return nil, err
	}
	out := make([]api.RuleCount, 0, len(hits))
	for _, h := range hits {
		if h.Decision != nil {
			out = append(out, api.RuleCount{Explained: *h.Decision, Packets: h.Packets})
		}
	}
	return out, nil
}

// Handler serves every HTTP endpoint of the node.
func (n *Node) Handler() http.Handler { return n.handler }

// Controller is the node's write path.
func (n *Node) Controller() *control.Controller { return n.ctrl }

// BPF is the node's eBPF dataplane; nil when it enforces nothing (Dataplane go).
func (n *Node) BPF() *bpf.Dataplane { return n.bpf }

// Serve answers HTTP on listen (host:port; port 0 picks a free one) until ctx is done, then shuts
// down gracefully. ready, if set, is called with the bound address once connections are accepted.
func (n *Node) Serve(ctx context.Context, listen string, ready func(addr string)) error {
	ln, err := listenTCP(listen)
	if err != nil {
		return err
	}
	return n.ServeOn(ctx, ln, ready)
}

// ServeOn is Serve on a listener already bound (so that a bad address fails before New changes
// anything); it closes ln when it returns.
func (n *Node) ServeOn(ctx context.Context, ln net.Listener, ready func(addr string)) error {
	if err := serveHandler(ctx, n.log, ln, n.handler, ready, "generation", n.ctrl.View().Generation); err != nil {
		return err
	}
	n.log.Info("stopped")
	return nil
}

// listenTCP listens on listen, naming the flag in its error.
func listenTCP(listen string) (net.Listener, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", listen, err)
	}
	return ln, nil
}

// Close releases the node's program and store. Pinned links stay in the kernel and keep enforcing the
// last tables until the next start adopts them.
func (n *Node) Close() error {
	var errs []error
	if n.stop != nil {
		n.stop()
		if n.links != nil {
			<-n.links.Done()
		}
	}
	if n.bpf != nil {
		if err := n.bpf.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close eBPF dataplane: %w", err))
		}
	}
	if n.st != nil {
		if err := n.st.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	if n.fleet != nil {
		if err := n.fleet.cli.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close etcd client: %w", err))
		}
	}
	return errors.Join(errs...)
}
