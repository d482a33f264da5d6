// Package etcdtest runs an etcd server inside a test process, on free ports of 127.0.0.1, for the tests
// of the packages that keep a fleet's state in etcd.
package etcdtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one embedded etcd server with its data directory and ports, kept across a restart so its
// clients reconnect on their own.
type Server struct {
	t                  testing.TB
	dir                string
	clientURL, peerURL url.URL
	e                  *embed.Etcd
}

// portTries bounds Start's choices of ports: a port found free can be taken by another process before
// etcd binds it.
const portTries = 5

// Start runs a server with default limits until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, dir: filepath.Join(t.TempDir(), "etcd")}
	for try := 1; ; try++ {
		s.clientURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		s.peerURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		err := s.tryStart()
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || try == portTries {
			t.Fatal(err)
		}
	}
	t.Cleanup(s.Stop)
	return s
}

// Endpoint is the server's client URL.
func (s *Server) Endpoint() string { return s.clientURL.String() }

// Stop stops the server; its data directory stays for Restart.
func (s *Server) Stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// Resume starts a stopped server again on the same data directory and ports.
func (s *Server) Resume() { s.start() }

// Wipe stops the server, deletes its data and starts it again empty on the same ports: another
// history behind the same endpoint, its revisions starting over.
func (s *Server) Wipe() {
	s.Stop()
	if err := os.RemoveAll(s.dir); err != nil {
		s.t.Fatalf("wipe etcd data: %v", err)
	}
	s.start()
}

// Restart stops the server, waits down, and resumes it.
func (s *Server) Restart(down time.Duration) {
	s.Stop()
	time.Sleep(down)
	s.Resume()
}

// Client is a new client of the server's, closed when t ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Counters are what a server has done since it started: what a benchmark divides by its changes.
type Counters struct {
	Writes      uint64 // raft entries applied: every write (put, delete, transaction, lease grant or revoke) is one
	WatchEvents uint64 // events sent to watchers, over every watch of every client
}

// Counters reads the server's counters. WatchEvents comes from etcd's metric in the process's default
// Prometheus registry, which every embedded server of the process adds to: compare two readings
// taken while only this server runs.
func (s *Server) Counters() (Counters, error) {
	c := Counters{Writes: s.e.Server.AppliedIndex()}
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return c, fmt.Errorf("etcd metrics: %w", err)
	}
	for _, f := range families {
		if f.GetName() == "etcd_debugging_mvcc_events_total" && len(f.GetMetric()) == 1 {
			c.WatchEvents = uint64(f.GetMetric()[0].GetCounter().GetValue())
			return c, nil
		}
	}
	return c, errors.New("etcd metrics: no etcd_debugging_mvcc_events_total")
}

func (s *Server) start() {
	if err := s.tryStart(); err != nil {
		s.t.Fatal(err)
	}
}

func (s *Server) tryStart() error {
	cfg := embed.NewConfig()
	cfg.Dir = s.dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{s.clientURL}, []url.URL{s.clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{s.peerURL}, []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start embedded etcd on %s and %s: %w", s.clientURL.Host, s.peerURL.Host, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Close()
		return fmt.Errorf("embedded etcd on %s not ready after 20 s", s.clientURL.Host)
	}
	s.e = e
	return nil
}

// Ports are picked below the kernel's ephemeral range (ip_local_port_range, from 32768 by default), where
// "127.0.0.1:0" would pick them: there every outgoing connection of every test process takes ports too,
// and one took a port between freePort's check and etcd's bind.
const portLow, portHigh = 20000, 32768

// freePort returns a port of 127.0.0.1 below the ephemeral range that nothing listens on.
func freePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := portLow + rand.IntN(portHigh-portLow)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatalf("find a free port: none of 100 tried in %d-%d", portLow, portHigh-1)
	return 0
}
