package api

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

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// ServeConfig is what `sgsim serve` needs.
type ServeConfig struct {
	Listen   string // host:port; port 0 picks a free one
	DataDir  string // holds sgsim.db
	Topology string // seeds an empty store; ignored once the store holds a state
	Logger   *slog.Logger
	// Ready, if set, is called with the bound address once the server accepts connections.
	Ready func(addr string)
	// Controller options (limits, matcher).
	Control control.Options
	// Dataplanes are kept in step with the state besides the built-in Go engine (e.g. eBPF).
	Dataplanes []control.Dataplane
	// RuleCounts, if set, feeds an enforcing dataplane's per-rule counters into /metrics.
	RuleCounts func() ([]RuleCount, error)
	// Loaded, if set, runs once every dataplane holds the current tables and before the API accepts a
	// call, with the committed view (e.g. to attach the eBPF program to host interfaces); its error
	// stops Serve.
	Loaded func(ctx context.Context, v *control.View) error
	// CommitStallAfter is how long a commit may take before /readyz says the store is stuck; 0 = 2 s.
	CommitStallAfter time.Duration
}

// DBFile is the name of the bbolt file inside the data directory.
const DBFile = store.DBFile

// Serve runs the daemon until ctx is cancelled, then shuts down gracefully.
func Serve(ctx context.Context, cfg ServeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir %s: %w", cfg.DataDir, err)
	}
	// The seeding decision is made on the file before bbolt opens it: bbolt re-initialises an empty file.
	seedIt, err := store.SeedDecision(cfg.DataDir, cfg.Topology != "")
	if err != nil {
		return err
	}
	st, err := store.OpenBolt(filepath.Join(cfg.DataDir, DBFile))
	if err != nil {
		return err
	}
	defer st.Close()
	existing, gen, err := st.Load(ctx)
	if err != nil {
		return err
	}
	var seed *model.State
	switch {
	case seedIt:
		if seed, err = model.LoadTopologyFile(cfg.Topology); err != nil {
			return err
		}
	case existing == nil:
		return fmt.Errorf("store: %s holds no state: restore it from a backup, or move it aside and start with --topology", filepath.Join(cfg.DataDir, DBFile))
	case cfg.Topology != "":
		log.Info("store already holds a state; --topology ignored", "generation", gen, "topology", cfg.Topology)
	}
	cfg.Control.Logger = log
	monitored := store.NewMonitored(st, store.MonitorOptions{StallAfter: cfg.CommitStallAfter, ProbeDir: cfg.DataDir})
	ctrl, err := control.New(ctx, monitored, seed, cfg.Control)
	if err != nil {
		return err
	}
	for _, dp := range cfg.Dataplanes {
		if err := ctrl.AddDataplane(ctx, dp); err != nil {
			return err
		}
	}
	if cfg.Loaded != nil {
		if err := cfg.Loaded(ctx, ctrl.View()); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	srv := NewServer(cfg.Listen, NewHandler(ctrl, Options{Logger: log, Nonces: st, RuleCounts: cfg.RuleCounts,
		StoreHealth: monitored.Health}))
	log.Info("serving", "addr", ln.Addr().String(), "generation", ctrl.View().Generation)
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}
