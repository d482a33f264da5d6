// Package netlab builds throwaway network labs for tests: a host namespace with a bridge, and one "VM"
// namespace per ENI joined to it by a veth pair whose host end is the ENI's host interface. Everything
// is created by the test and removed when it ends.
package netlab

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/netns"
)

// Lab is one test's namespaces.
type Lab struct {
	t    testing.TB
	name string
	Host string            // the host namespace, holding the bridge br0 and the host interfaces
	VMs  map[string]string // ENI → its namespace
}

// New creates the host namespace; prefix keeps the names of concurrently running test binaries apart
// (the process ID is added too).
func New(t testing.TB, prefix string) *Lab {
	l := &Lab{t: t, name: prefix, Host: HostNamespace(prefix), VMs: map[string]string{}}
	t.Cleanup(func() {
		for _, ns := range l.VMs {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
		_ = exec.Command("ip", "netns", "del", l.Host).Run()
	})
	l.IP("netns", "add", l.Host)
	l.IP("-n", l.Host, "link", "add", "br0", "type", "bridge")
	l.IP("-n", l.Host, "link", "set", "br0", "up")
	return l
}

// HostNamespace is the name New(t, prefix) gives its host namespace, for a test that hands it to the
// code under test before the namespace exists.
func HostNamespace(prefix string) string { return fmt.Sprintf("%s-host-%d", prefix, os.Getpid()) }

// AddVM creates a namespace for eni with address addr (a /24) on its eth0, whose veth peer hostIf is in
// the host namespace on the bridge.
func (l *Lab) AddVM(eni, hostIf, addr string) {
	ns := fmt.Sprintf("%s-%s-%d", l.name, hostIf, os.Getpid())
	l.IP("netns", "add", ns)
	l.VMs[eni] = ns
	l.IP("-n", l.Host, "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.IP("-n", l.Host, "link", "set", hostIf, "master", "br0", "up")
	l.IP("-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
	l.IP("-n", ns, "link", "set", "eth0", "up")
	l.IP("-n", ns, "link", "set", "lo", "up")
}

// IP runs ip(8) with args and fails the test if it fails.
func (l *Lab) IP(args ...string) {
	l.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(l.t, err, "ip %s: %s", strings.Join(args, " "), out)
}

// ListenTCP listens on addr (host:port) inside eni's namespace until the test ends.
func (l *Lab) ListenTCP(eni, addr string) net.Listener {
	l.t.Helper()
	return listenIn(l, eni, func() (net.Listener, error) { return net.Listen("tcp4", addr) })
}

// ListenUDP listens on addr (host:port) inside eni's namespace until the test ends.
func (l *Lab) ListenUDP(eni, addr string) net.PacketConn {
	l.t.Helper()
	return listenIn(l, eni, func() (net.PacketConn, error) { return net.ListenPacket("udp4", addr) })
}

// listenIn runs listen inside eni's namespace and closes what it opened when the test ends.
func listenIn[C io.Closer](l *Lab, eni string, listen func() (C, error)) C {
	l.t.Helper()
	c, err := netns.Do(l.VMs[eni], listen)
	require.NoError(l.t, err)
	l.t.Cleanup(func() { c.Close() })
	return c
}

// EchoTCP serves a TCP echo on addr (host:port) inside eni's namespace until the test ends.
func (l *Lab) EchoTCP(eni, addr string) {
	l.t.Helper()
	ln := l.ListenTCP(eni, addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// DialTCP connects from eni's namespace to addr (host:port), giving up after timeout.
func (l *Lab) DialTCP(eni, addr string, timeout time.Duration) (net.Conn, error) {
	return netns.Do(l.VMs[eni], func() (net.Conn, error) { return net.DialTimeout("tcp4", addr, timeout) })
}

// EchoRoundTrip connects from eni's namespace to the TCP echo at addr, sends two bytes and reads them
// back, all within timeout; nil means the whole round trip got through.
func (l *Lab) EchoRoundTrip(eni, addr string, timeout time.Duration) error {
	c, err := l.DialTCP(eni, addr, timeout)
	if err != nil {
		return err
	}
	return echoOnce(c, "tcp", addr, timeout)
}

// echoOnce sends two bytes on c, reads them back within timeout and closes c.
func echoOnce(c net.Conn, network, addr string, timeout time.Duration) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hi")); err != nil {
		return err
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "hi" {
		return fmt.Errorf("%s echo from %s: got %q, want %q", network, addr, buf, "hi")
	}
	return nil
}

// EchoUDP serves a UDP echo on addr (host:port) inside eni's namespace until the test ends.
func (l *Lab) EchoUDP(eni, addr string) {
	l.t.Helper()
	pc := l.ListenUDP(eni, addr)
	go func() {
		buf := make([]byte, 64)
		for {
			n, a, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], a)
		}
	}()
}

// EchoRoundTripUDP sends two bytes from eni's namespace to the UDP echo at addr and reads them back,
// all within timeout; nil means the datagram and its echo both got through.
func (l *Lab) EchoRoundTripUDP(eni, addr string, timeout time.Duration) error {
	c, err := netns.Do(l.VMs[eni], func() (net.Conn, error) { return net.Dial("udp4", addr) })
	if err != nil {
		return err
	}
	return echoOnce(c, "udp", addr, timeout)
}

// RequireRoot skips the test unless it can make network namespaces (root and ip(8)); under
// SGSIM_REQUIRE_KERNEL=1 (CI) it fails instead, since there the namespace tests must run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err == nil && os.Geteuid() == 0 {
		return
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		t.Fatal("network namespace test needs root and ip(8)")
	}
	t.Skip("network namespace test needs root and ip(8)")
}
