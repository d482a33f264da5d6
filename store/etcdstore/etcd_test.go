package etcdstore

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// testEtcd is an etcd server in the test process with etcd's default limits, on ports of 127.0.0.1
// free when it first started (kept across a restart, so clients reconnect).
type testEtcd struct {
	t                  *testing.T
	dir                string
	clientURL, peerURL url.URL
	e                  *embed.Etcd
	prefixes           atomic.Int64
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startEtcd(t *testing.T) *testEtcd {
	te := &testEtcd{t: t, dir: filepath.Join(t.TempDir(), "etcd")}
	te.clientURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	te.peerURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	te.start()
	t.Cleanup(te.stop)
	return te
}

func (te *testEtcd) start() {
	cfg := embed.NewConfig()
	cfg.Dir = te.dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{te.clientURL}, []url.URL{te.clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{te.peerURL}, []url.URL{te.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	require.NoError(te.t, err)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Close()
		te.t.Fatal("embedded etcd not ready")
	}
	te.e = e
}

func (te *testEtcd) stop() {
	if te.e != nil {
		te.e.Close()
		te.e = nil
	}
}

// client returns a new client of its own, closed with the test.
func (te *testEtcd) client(t *testing.T) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{te.clientURL.String()}, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// prefix returns a prefix no other test of this etcd uses.
func (te *testEtcd) prefix() string { return fmt.Sprintf("/t%d", te.prefixes.Add(1)) }

func openStore(t *testing.T, te *testEtcd, prefix string, opts ...Option) *Store {
	s, err := Open(context.Background(), te.client(t), prefix, opts...)
	require.NoError(t, err)
	return s
}
