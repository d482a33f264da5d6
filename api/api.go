// Package api serves the control plane over HTTP: the Tencent v2 and Huawei VPC dialects of SPEC §4–§5,
// the SPEC §8 admin endpoints, the fleet's enforcement reports (/sgsim/v1/changes/{R}), the inspection
// endpoints (/sgsim/v1/check, /sgsim/v1/enis/{id}/table), /metrics, and the probes /livez
// (the process answers), /readyz (the store can take writes) and /healthz (= /readyz).
package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/store/nonce"
)

// Options configure the handler; the zero value means defaults.
type Options struct {
	// Now is the clock for Timestamp and Nonce checks; nil = time.Now. Tests inject a fixed clock.
	Now func() time.Time
	// MaxBodyBytes bounds request bodies; 0 = 128 bytes per allowed parameter, at least 1 MiB.
	MaxBodyBytes int64
	// MaxParams bounds the number of Tencent parameters; 0 = room for a full policy under the
	// controller's limits (6 fields per rule, both directions), at least 2000.
	MaxParams int
	// ReplayWindow is how long a Nonce is remembered and how far a Timestamp may be off; 0 = 2 hours.
	ReplayWindow time.Duration
	Logger       *slog.Logger
	// Nonces is the replay record (store.Bolt's is durable, so a replay is refused after a restart too);
	// nil = an in-memory record with nonce.DefaultLimits.
	Nonces NonceStore
	// RuleCounts, if set, reads an enforcing dataplane's per-rule packet counters (the eBPF program's)
	// for /metrics.
	RuleCounts func() ([]RuleCount, error)
	// StoreHealth, if set, says why the store cannot take writes now (nil when it can): /readyz and
	// /healthz answer 503 with its text. It must not block (store.Monitored.Health does not).
	StoreHealth func() error
	// TrackedFlows, if set, reads how many flows an enforcing dataplane tracks, for /metrics.
	TrackedFlows func() (int, error)
	// Collectors are exposed on /metrics beside the handler's own (a fleet replica's feed repairs).
	Collectors []prometheus.Collector
	// AdminTokens authenticate the inspection endpoints and /metrics (Authorization: Bearer TOKEN)
	// besides the topology's adminTokens (SPEC §8).
	AdminTokens []string
	// Interfaces, if set, reports a host interface's state (the node that attaches them sets it), for
	// the admin endpoints' attached and ifindex.
	Interfaces func(ifname string) InterfaceState
	// TableGeneration, if set, reports the generation of an ENI's tables in force where the node keeps
	// no Go engine to tell (an eBPF-only node), for the admin endpoints' tableGeneration.
	TableGeneration func(eni string) (uint64, bool)
	// Enforcement, if set (fleet mode, SPEC §9), is called after every accepted change with what its
	// commit reported (zero when the call changed nothing) and returns the answer's "enforcement",
	// added to the Tencent, Huawei and admin bodies; unset, those bodies are the single host's.
	Enforcement func(ctx context.Context, c control.Committed) *Enforcement
	// Change, if set, answers GET /sgsim/v1/changes/{R}: the enforcement of the change committed at R;
	// its error wraps ErrNoSuchChange or ErrChangeForgotten when that is why it has none.
	Change func(ctx context.Context, rev uint64) (*Enforcement, error)
}

// RuleCount is how many packets one entry of an ENI's live table decided in an enforcing dataplane
// since that table was published.
type RuleCount struct {
	dataplane.Explained
	Packets uint64
}

// NonceStore is the replay record of SPEC §4 (nonce.Record in memory; store.Bolt durably, writing a
// call's Nonce with the commit of its change and the others batched). UseNonce records the call's
// (SecretId, Timestamp, Nonce) and returns nil when it was unused within window, nonce.ErrReplay when
// it was used, nonce.ErrFull when the record is at its bound; it must not wait on a disk, and it waits
// on a shared store (etcd) no longer than ctx allows.
type NonceStore interface {
	UseNonce(ctx context.Context, k nonce.Key, now time.Time, window time.Duration) error
}

// LocalNonces is rec as a NonceStore: this process's record alone (a handler given no Nonces uses one).
func LocalNonces(rec *nonce.Record) NonceStore { return localNonces{rec} }

type localNonces struct{ rec *nonce.Record }

func (m localNonces) UseNonce(_ context.Context, k nonce.Key, now time.Time, window time.Duration) error {
	return m.rec.UseNonce(k, now, window)
}

// Handler is the http.Handler of NewHandler; its extra methods serve in-process callers (scenarios).
type Handler struct {
	ctrl    *control.Controller
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	nonces  NonceStore
	metrics *metrics
	parsing chan struct{} // a slot per Tencent request being parsed and authenticated
}

// NewHandler returns the API handler for ctrl.
func NewHandler(ctrl *control.Controller, opts Options) *Handler {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxParams <= 0 {
		// A raised --max-rules must not be undone by the request bounds.
		opts.MaxParams = max(2000, 2*6*ctrl.Limits().RulesPerDirection+64)
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = max(1<<20, 128*int64(opts.MaxParams))
	}
	if opts.ReplayWindow <= 0 {
		opts.ReplayWindow = 2 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	h := &Handler{ctrl: ctrl, opts: opts, log: opts.Logger, mux: http.NewServeMux(),
		nonces: opts.Nonces, parsing: make(chan struct{}, runtime.GOMAXPROCS(0))}
	if h.nonces == nil {
		h.nonces = LocalNonces(nonce.New(nonce.DefaultLimits()))
	}
	h.metrics = newMetrics(h)
	h.mux.HandleFunc("/v2/index.php", h.serveTencent)
	h.mux.HandleFunc("POST /v2.0/{project}/security-groups/{sg}/instance/action", h.serveHuawei)
	h.mux.HandleFunc("POST /v1/{project}/security-groups/{sg}/instance/action", h.serveHuawei)
	h.mux.HandleFunc("POST /sgsim/v1/check", h.serveCheck)
	h.mux.HandleFunc("GET /sgsim/v1/enis/{id}/table", h.serveTable)
	h.mux.HandleFunc("PUT /sgsim/v1/enis/{id}", h.servePutENI)
	h.mux.HandleFunc("DELETE /sgsim/v1/enis/{id}", h.serveDeleteENI)
	h.mux.HandleFunc("GET /sgsim/v1/enis/{id}", h.serveGetENI)
	h.mux.HandleFunc("GET /sgsim/v1/enis", h.serveListENIs)
	if opts.Change != nil {
		h.mux.HandleFunc("GET /sgsim/v1/changes/{rev}", h.serveChange)
	}
	h.mux.HandleFunc("GET /metrics", h.serveMetrics)
	h.mux.HandleFunc("GET /livez", h.serveLive)
	h.mux.HandleFunc("GET /readyz", h.serveReady)
	h.mux.HandleFunc("GET /healthz", h.serveReady)
	return h
}

// serveLive answers as long as the process serves HTTP at all: it reads nothing that a write can hold.
func (h *Handler) serveLive(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

// serveReady says whether the daemon can take writes (Kubernetes' readiness); reads may still work when
// it cannot, so it is not a liveness signal.
func (h *Handler) serveReady(w http.ResponseWriter, _ *http.Request) {
	gen := h.ctrl.View().Generation
	if h.opts.StoreHealth != nil {
		if err := h.opts.StoreHealth(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "reason": err.Error(), "generation": gen})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "generation": gen})
}

// ServeHTTP implements http.Handler; a panic anywhere below becomes a 500, never a dead daemon.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("panic serving request", "path", r.URL.Path, "panic", p)
			writeJSON(w, http.StatusInternalServerError, map[string]any{"code": 6000, "message": "internal error"})
		}
	}()
	r.Body = http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes)
	h.mux.ServeHTTP(w, r)
}

// NewServer wraps h in an http.Server with timeouts, so slow or stuck clients cannot hold connections.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
