package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A port taken between freePort and etcd's bind fails with EADDRINUSE, which is what Start retries on.
func TestTryStartOnATakenPortSaysAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	s := &Server{t: t, dir: filepath.Join(t.TempDir(), "etcd")}
	s.clientURL = url.URL{Scheme: "http", Host: taken.Addr().String()}
	s.peerURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	err = s.tryStart()
	require.Error(t, err)
	assert.True(t, errors.Is(err, syscall.EADDRINUSE), "%v", err)
	assert.ErrorContains(t, err, taken.Addr().String())
}

func TestFreePortIsBelowTheEphemeralRange(t *testing.T) {
	for range 20 {
		p := freePort(t)
		assert.GreaterOrEqual(t, p, portLow)
		assert.Less(t, p, portHigh)
	}
}

func TestStartServes(t *testing.T) {
	s := Start(t)
	cli := s.Client(t)
	_, err := cli.Put(t.Context(), "k", "v")
	require.NoError(t, err)
}
