package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sgsim/sgsim/agent"
	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/hostif"
	"github.com/sgsim/sgsim/model"
)

// AgentConfig is what one host's fleet agent runs with (`sgsim agent`, SPEC §9).
type AgentConfig struct {
	Etcd       []string
	EtcdPrefix string // "" = DefaultEtcdPrefix
	Host       string
	// Dataplane is DataplaneGo (the default when empty: simulate, answer /check) or DataplaneEBPF
	// (enforce on the host interfaces of this host's ENIs).
	Dataplane string
	Guard     []string // DataplaneEBPF: as Config.Guard
	PinPath   string   // DataplaneEBPF: as Config.PinPath
	HostNetns string   // DataplaneEBPF: as Config.HostNetns
	Clsact    bool     // DataplaneEBPF: as Config.Clsact
	// Listen, if set, serves this host's read-only endpoints there (port 0 picks a free one); Ready is
	// called with the bound address.
	Listen string
	Ready  func(addr string)
	// API configures the handler of Listen (AdminTokens: the share carries no admin tokens).
	API    api.Options
	Logger *slog.Logger
}

// RunAgent runs this host's agent until ctx ends: it enforces the host's share of the fleet's state
// and, with cfg.Listen, answers /healthz, /livez, /readyz, /metrics, POST /sgsim/v1/check and the
// read-only GET /sgsim/v1/enis[/{id}] and /sgsim/v1/enis/{id}/table for this host.
func RunAgent(ctx context.Context, cfg AgentConfig) (err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	switch cfg.Dataplane {
	case "", DataplaneGo, DataplaneEBPF:
	default:
		return fmt.Errorf("--dataplane %q: want go or ebpf", cfg.Dataplane)
	}
	// Bound first, so that a bad --listen fails before anything is loaded or attached.
	var ln net.Listener
	if cfg.Listen != "" {
		if ln, err = listenTCP(cfg.Listen); err != nil {
			return err
		}
		defer ln.Close() // after the server's own close: a listener closed twice says so, and is ignored
	}
	if len(cfg.Etcd) == 0 {
		return errors.New("agent: --etcd is required")
	}
	prefix := cfg.EtcdPrefix
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	if err := checkEtcdEndpoints(cfg.Etcd); err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Etcd, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("--etcd %v: %w", cfg.Etcd, err)
	}
	defer func() { err = errors.Join(err, cli.Close()) }()
	acfg := agent.Config{Client: cli, Prefix: prefix, Host: cfg.Host, Logger: log}
	var enf *agentEnforcer
	if cfg.Dataplane == DataplaneEBPF {
		if enf, err = newAgentEnforcer(ctx, cfg, log); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, enf.close()) }()
		acfg.Dataplanes, acfg.NoEngine = []control.Dataplane{enf.bpf}, true
	}
	// Ready once a share is in force everywhere it goes, its interfaces attached included: the
	// applier exists as soon as the tables are loaded, which is before an attachment that can fail.
	var inForce atomic.Bool
	acfg.OnApplied = func(ctx context.Context, v *control.View) error {
		if enf != nil {
			if err := enf.follow(ctx, v); err != nil {
				return err
			}
		}
		inForce.Store(true)
		return nil
	}
	a, err := agent.New(ctx, acfg)
	if err != nil {
		return err
	}
	if cfg.Listen == "" {
		return a.Run(ctx)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = a.Run(runCtx); stop() })
	serveErr := serveHandler(runCtx, log, ln, newAgentHandler(a, cfg, enf, inForce.Load), cfg.Ready, "host", cfg.Host)
	stop()
	wg.Wait()
	if ctx.Err() != nil && errors.Is(runErr, context.Canceled) {
		runErr = nil
	}
	return errors.Join(runErr, serveErr)
}

// agentEnforcer is an ebpf agent's program and its attachment to this host's interfaces.
type agentEnforcer struct {
	cfg   AgentConfig
	log   *slog.Logger
	bpf   *bpf.Dataplane
	links atomic.Pointer[hostif.Follower] // nil until the first share is in force
	stop  context.CancelFunc
}

// loadBPF loads the eBPF program for --dataplane flag. A failure says what it most likely needs, unless
// another process holds the pin path: then root and BTF are not the matter.
func loadBPF(ctx context.Context, flag string, opts bpf.Options) (*bpf.Dataplane, error) {
	d, err := bpf.Load(ctx, opts)
	switch {
	case errors.Is(err, bpf.ErrPinPathInUse):
		return nil, fmt.Errorf("--dataplane %s: %w", flag, err)
	case err != nil:
		return nil, fmt.Errorf("--dataplane %s: load the eBPF program (needs root and a kernel with BTF; pin path %q): %w",
			flag, opts.PinPath, err)
	}
	return d, nil
}

func newAgentEnforcer(ctx context.Context, cfg AgentConfig, log *slog.Logger) (*agentEnforcer, error) {
	dp, err := loadBPF(ctx, "ebpf", bpf.Options{PinPath: cfg.PinPath, Clsact: cfg.Clsact})
	if err != nil {
		return nil, err
	}
	return &agentEnforcer{cfg: cfg, log: log, bpf: dp}, nil
}

// follow is the agent's OnApplied: the host interfaces of this host's ENIs are attached before the
// share is acknowledged. The follower starts with the first share, so that what an earlier run pinned
// stays attached until the agent knows its ENIs.
func (e *agentEnforcer) follow(ctx context.Context, v *control.View) error {
	want := localInterfaces(v.State, e.cfg.Host)
	if l := e.links.Load(); l != nil {
		return l.Want(ctx, want)
	}
	fctx, stop := context.WithCancel(context.Background()) // ends with close, not with one resync
	l, err := hostif.Start(fctx, hostif.Config{Netns: e.cfg.HostNetns, Enforcer: e.bpf, Guard: e.cfg.Guard, Logger: e.log}, want)
	if err != nil {
		stop()
		return err
	}
	e.stop = stop
	e.links.Store(l)
	return nil
}

func (e *agentEnforcer) close() error {
	if l := e.links.Load(); l != nil {
		e.stop()
		<-l.Done()
	}
	if err := e.bpf.Close(); err != nil {
		return fmt.Errorf("close eBPF dataplane: %w", err)
	}
	return nil
}

// localInterfaces maps the hostInterface of every ENI of s placed on host to its ENI.
func localInterfaces(s *model.State, host string) map[string]string {
	out := map[string]string{}
	for _, id := range s.ENIIDs() {
		if n, _ := s.ENI(id); n.Host == host && n.HostInterface != "" {
			out[n.HostInterface] = id
		}
	}
	return out
}

// agentRoutes are the endpoints an agent serves: the read-only ones of a node.
var agentRoutes = []string{
	"GET /healthz", "GET /livez", "GET /readyz", "GET /metrics", "POST /sgsim/v1/check",
	"GET /sgsim/v1/enis", "GET /sgsim/v1/enis/{id}", "GET /sgsim/v1/enis/{id}/table",
}

// newAgentHandler serves agentRoutes from the agent's share once inForce says its first share is in
// force (503 before, but for /livez).
func newAgentHandler(a *agent.Agent, cfg AgentConfig, enf *agentEnforcer, inForce func() bool) http.Handler {
	var (
		once sync.Once
		h    http.Handler
	)
	aopts := cfg.API
	aopts.Logger = cfg.Logger
	aopts.StoreHealth = a.Err // /readyz: not ready while changes cannot reach this host
	if enf != nil {
		aopts.RuleCounts = ruleCounts(enf.bpf)
		aopts.TableGeneration = enf.bpf.TableGeneration
		aopts.Interfaces = func(ifname string) api.InterfaceState {
			l := enf.links.Load()
			if l == nil {
				return api.InterfaceState{}
			}
			st := l.Status(ifname)
			return api.InterfaceState{Ifindex: st.Ifindex, Attached: st.Attached}
		}
	}
	handler := func() http.Handler {
		ap := a.Applier()
		if ap == nil || !inForce() {
			return nil
		}
		once.Do(func() { h = api.NewHandler(control.NewReadOnly(ap, control.DefaultLimits()), aopts) })
		return h
	}
	mux := http.NewServeMux()
	for _, route := range agentRoutes {
		mux.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
			h := handler()
			switch {
			case h == nil && route == "GET /livez":
				// Alive while it waits for etcd or its interfaces: a liveness probe must not restart it.
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
			case h == nil:
				http.Error(w, "agent "+cfg.Host+": the host's share is not in force yet", http.StatusServiceUnavailable)
			case route == "GET /sgsim/v1/enis":
				serveLocalENIs(w, r, h, cfg.Host)
			case r.PathValue("id") != "" && !isLocal(a, r.PathValue("id"), cfg.Host):
				// The share holds other hosts' ENIs only as members of SGs: not this host's to show.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf("network interface %q: not on host %s", r.PathValue("id"), cfg.Host)})
			default:
				h.ServeHTTP(w, r)
			}
		})
	}
	return mux
}

func isLocal(a *agent.Agent, id, host string) bool {
	n, ok := a.Applier().View().State.ENI(id)
	return ok && n.Host == host
}

// serveLocalENIs is GET /sgsim/v1/enis with only this host's ENIs.
func serveLocalENIs(w http.ResponseWriter, r *http.Request, h http.Handler, host string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	var list api.ENIList
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &list) != nil {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}
	list.NetworkInterfaces = slices.DeleteFunc(list.NetworkInterfaces, func(e api.ENIResponse) bool { return e.Host != host })
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

// serveHandler answers HTTP with h on listen until ctx is done, then shuts down gracefully; ready, if
// set, is called with the bound address once connections are accepted. attrs follow the address in
// the "serving" log line.
func serveHandler(ctx context.Context, log *slog.Logger, ln net.Listener, h http.Handler, ready func(addr string), attrs ...any) error {
	srv := api.NewServer(ln.Addr().String(), h)
	log.Info("serving", append([]any{"addr", ln.Addr().String()}, attrs...)...)
	if ready != nil {
		ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
