package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/node"
)

// Shared by the daemon-level kernel tests: a lab of network namespaces, a daemon started through
// runServe, and a signing API client.

// requireKernel skips (or, with SGSIM_REQUIRE_KERNEL=1, fails) unless the test can load the BPF program
// and build namespaces.
func requireKernel(t *testing.T) {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		fail = t.Fatalf
	}
	if _, err := exec.LookPath("ip"); err != nil || os.Geteuid() != 0 {
		fail("daemon netns test needs root and ip(8)")
	}
	d, err := bpf.Load(t.Context(), bpf.Options{})
	if err != nil {
		fail("kernel cannot load the BPF program: %v", err)
		return
	}
	require.NoError(t, d.Close())
}

// newVMLab makes the daemon tests' lab; its addresses come from 198.18.210.0/24 only.
func newVMLab(t *testing.T) *netlab.Lab { return netlab.New(t, "sgs") }

// Credentials of the lab topologies' account.
const (
	labSecretID  = "AKIDsgsimE2E"
	labSecretKey = "e2e-secret-key"
	labProject   = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
	labToken     = "tok-e2e"
)

// labAccount is the accounts entry of the lab topologies.
var labAccount = fmt.Sprintf(`{"appId": "1", "secretId": %q, "secretKey": %q, "huaweiProjectId": %q, "huaweiTokens": [%q]}`,
	labSecretID, labSecretKey, labProject, labToken)

// daemon is a running `sgsim serve` (runServe in this process).
type daemon struct {
	t     *testing.T
	base  string // http://host:port
	stop  func() error
	nonce atomic.Int64
	http  *http.Client
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startDaemon runs runServe with --dataplane mode, the store in dataDir (seeded from topology when
// empty), maps and links pinned under pin, host interfaces in the lab's host namespace. stop cancels it
// and returns runServe's result; Cleanup stops it if the test did not.
func startDaemon(t *testing.T, lab *netlab.Lab, mode, dataDir, pin, topology string) *daemon {
	t.Helper()
	topo := filepath.Join(dataDir, "topology.json")
	require.NoError(t, os.WriteFile(topo, []byte(topology), 0o600))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	opts := serveOptions{
		Listen: "127.0.0.1:0", Ready: func(addr string) { ready <- addr },
		Config: node.Config{DataDir: dataDir, Topology: topo,
			Logger:    slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
			Dataplane: mode, PinPath: pin, HostNetns: lab.Host},
	}
	go func() { errc <- runServe(ctx, opts) }()
	d := &daemon{t: t, http: &http.Client{Timeout: 10 * time.Second}}
	var stopped bool
	var result error
	d.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-errc
		}
		return result
	}
	t.Cleanup(func() { _ = d.stop() })
	select {
	case addr := <-ready:
		d.base = "http://" + addr
	case err := <-errc:
		stopped = true
		cancel()
		t.Fatalf("runServe: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not become ready in 20 s")
	}
	return d
}

// tencent sends a signed Tencent v2 POST and fails the test unless the answer is code 0.
func (d *daemon) tencent(kv ...string) {
	d.t.Helper()
	p := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	p.Set("SecretId", labSecretID)
	p.Set("Region", "ap-guangzhou")
	p.Set("Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	p.Set("Nonce", strconv.FormatInt(d.nonce.Add(1), 10))
	p.Set("SignatureMethod", "HmacSHA256")
	api.Sign(http.MethodPost, strings.TrimPrefix(d.base, "http://"), p, labSecretKey)
	resp, err := d.http.PostForm(d.base+api.TencentPath, p)
	require.NoError(d.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(d.t, err)
	var env struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	require.NoError(d.t, json.Unmarshal(body, &env), "%s", body)
	require.Equal(d.t, 0, env.Code, "%s %s", p.Get("Action"), body)
}

// setENISGs reorders/replaces eni's SG list with ModifySecurityGroupsOfNetworkInterface.
func (d *daemon) setENISGs(eni string, sgs ...string) {
	d.t.Helper()
	kv := []string{"Action", "ModifySecurityGroupsOfNetworkInterface", "networkInterfaceSet.0.networkInterfaceId", eni}
	for i, sg := range sgs {
		kv = append(kv, fmt.Sprintf("networkInterfaceSet.0.sgIds.%d", i), sg)
	}
	d.tencent(kv...)
}

// huawei sends a Huawei port action and fails the test unless every port was applied.
func (d *daemon) huawei(sg, action string, ports ...string) {
	d.t.Helper()
	body := struct {
		Ports  []map[string]string `json:"ports"`
		Action string              `json:"action"`
	}{Action: action}
	for _, p := range ports {
		body.Ports = append(body.Ports, map[string]string{"id": p})
	}
	b, err := json.Marshal(body)
	require.NoError(d.t, err)
	out := d.call(http.MethodPost, fmt.Sprintf("/v2.0/%s/security-groups/%s/instance/action", labProject, sg), string(b))
	require.JSONEq(d.t, `{"fail":[]}`, out)
}

// ping sends one ICMP echo from namespace ns to dst and reports whether the reply came back in time.
func ping(ns, dst string, seq int) error {
	c, err := netns.Do(ns, func() (*icmp.PacketConn, error) { return icmp.ListenPacket("ip4:icmp", "0.0.0.0") })
	if err != nil {
		return fmt.Errorf("icmp socket in %s: %w", ns, err)
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("sgsim")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	to := &net.IPAddr{IP: net.ParseIP(dst)}
	if _, err := c.WriteTo(b, to); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply || from.String() != dst {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq {
			return nil
		}
	}
}

var errEcho = errors.New("echo mismatch")

// echo writes msg on c and expects it back within 500 ms.
func echo(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("%w: sent %q, got %q", errEcho, msg, buf)
	}
	return nil
}

// pinDir returns a bpffs pin directory of this test, removed in Cleanup (the daemon leaves its links and
// maps pinned on purpose).
func pinDir(t *testing.T) string {
	t.Helper()
	pin := fmt.Sprintf("%s-test-%d-%s", bpf.DefaultPinPath, os.Getpid(), strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"))
	t.Cleanup(func() { _ = os.RemoveAll(pin) })
	return pin
}

// get fetches path from the daemon as the lab account (inspection and /metrics need a credential) and
// fails the test unless it answers 200.
func (d *daemon) get(path string) string {
	d.t.Helper()
	return d.call(http.MethodGet, path, "")
}

// call sends one request to the daemon as the lab account and fails the test unless it answers 200;
// it returns the body.
func (d *daemon) call(method, path, body string) string {
	d.t.Helper()
	req, err := http.NewRequest(method, d.base+path, strings.NewReader(body))
	require.NoError(d.t, err)
	req.Header.Set("X-Auth-Token", labToken)
	resp, err := d.http.Do(req)
	require.NoError(d.t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(d.t, err)
	require.Equal(d.t, http.StatusOK, resp.StatusCode, "%s %s: %s", method, path, out)
	return string(out)
}
