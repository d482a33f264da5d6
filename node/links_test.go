package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/model"
)

// requireKernel skips (or, under SGSIM_REQUIRE_KERNEL=1, fails) unless this test can make namespaces
// and load the program.
func requireKernel(t *testing.T) {
	t.Helper()
	netlab.RequireRoot(t)
	d, err := bpf.Load(t.Context(), bpf.Options{})
	if err != nil {
		if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
			t.Fatalf("load BPF program: %v", err)
		}
		t.Skipf("kernel cannot load the BPF program: %v", err)
	}
	require.NoError(t, d.Close())
}

// pinDir is a bpffs directory of this test, removed when it ends.
func pinDir(t *testing.T) string {
	pin := fmt.Sprintf("%s-test-%d-%s", bpf.DefaultPinPath, os.Getpid(), strings.ToLower(t.Name()))
	t.Cleanup(func() { _ = os.RemoveAll(pin) })
	return pin
}

// linksTopology: eni-srv (198.18.211.1) accepts tcp/8080 from anyone and tcp/7070 from members of
// sg-late only; members of sg-late may send tcp/8080 and tcp/7070 and nothing else.
const linksTopology = `{
  "accounts": [{"appId": "1"}],
  "securityGroups": [
    {"sgId": "sg-srv", "appId": "1", "ingress": [
       {"ipProtocol": "tcp", "portRange": "8080", "action": "ACCEPT"},
       {"ipProtocol": "tcp", "portRange": "9090", "action": "ACCEPT"},
       {"ipProtocol": "tcp", "portRange": "7070", "sgId": "sg-late", "action": "ACCEPT"},
       {"ipProtocol": "udp", "portRange": "5353", "action": "ACCEPT"}], "egress": []},
    {"sgId": "sg-late", "appId": "1", "ingress": [], "egress": [
       {"ipProtocol": "tcp", "portRange": "8080", "action": "ACCEPT"},
       {"ipProtocol": "tcp", "portRange": "7070", "action": "ACCEPT"},
       {"ipProtocol": "udp", "portRange": "5353", "action": "ACCEPT"}]}
  ],
  "networkInterfaces": [
    {"networkInterfaceId": "eni-srv", "appId": "1", "privateIpAddresses": ["198.18.211.1"],
     "sgIds": ["sg-srv"], "hostInterface": "sgn-srv"}
  ]
}`

// TestInterfacesFollowENIs: with --dataplane ebpf, an ENI created at run time before its veth exists
// is enforced on the veth from its first packets; an unclaimed veth matching --guard passes nothing
// until an ENI claims it; a deleted ENI's veth is detached; a re-created veth is attached again; an
// sgId rule follows ENIs created and deleted at run time. Real TCP between namespaces decides each.
func TestInterfacesFollowENIs(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	lab := netlab.New(t, "nod")
	lab.AddVM("eni-srv", "sgn-srv", "198.18.211.1")
	for _, port := range []string{"8080", "9090", "7070"} {
		lab.EchoTCP("eni-srv", "198.18.211.1:"+port)
	}
	n := newLinksNode(ctx, t, lab)
	require.True(t, n.Interface("sgn-srv").Attached)

	// A refused connect waits its whole timeout; an accepted one may wait for a neighbor entry that
	// failed while the veth was guarded to be resolved again.
	connectWithin := func(eni, port string, timeout time.Duration) error {
		return lab.EchoRoundTrip(eni, "198.18.211.1:"+port, timeout)
	}
	accepted := func(eni, port string) error { return connectWithin(eni, port, 3*time.Second) }
	refused := func(eni, port string) error { return connectWithin(eni, port, 300*time.Millisecond) }
	late := model.NetworkInterface{NetworkInterfaceID: "eni-late", AppID: "1", PrivateIPAddresses: []string{"198.18.211.2"},
		SgIDs: []string{"sg-late"}, HostInterface: "sgn-late"}
	_, err := n.Controller().PutENI(ctx, late)
	require.NoError(t, err)
	require.Equal(t, 0, n.Interface("sgn-late").Ifindex, "accepted before its interface exists")

	t.Run("veth appears after its ENI", func(t *testing.T) {
		lab.AddVM("eni-late", "sgn-late", "198.18.211.2")
		require.Eventually(t, func() bool { return n.Interface("sgn-late").Attached }, 2*time.Second, time.Millisecond)
		require.NoError(t, accepted("eni-late", "8080"), "its egress allows tcp/8080")
		require.Error(t, refused("eni-late", "9090"), "its egress drops tcp/9090, which eni-srv would accept")
		require.NoError(t, accepted("eni-late", "7070"), "eni-srv's sgId rule names eni-late's SG")
	})
	t.Run("guarded until an ENI claims it", func(t *testing.T) {
		lab.AddVM("eni-x", "sgq-x", "198.18.211.3")
		require.Error(t, refused("eni-x", "8080"), "an unclaimed guarded veth passes nothing")
		x := late
		x.NetworkInterfaceID, x.PrivateIPAddresses, x.HostInterface = "eni-x", []string{"198.18.211.3"}, "sgq-x"
		_, err := n.Controller().PutENI(ctx, x)
		require.NoError(t, err)
		require.True(t, n.Interface("sgq-x").Attached, "attached when PutENI returns")
		require.NoError(t, accepted("eni-x", "8080"))
		require.Error(t, refused("eni-x", "9090"))
	})
	t.Run("veth re-created", func(t *testing.T) {
		old := n.Interface("sgq-x").Ifindex
		lab.IP("-n", lab.Host, "link", "del", "sgq-x")
		require.Eventually(t, func() bool { return !n.Interface("sgq-x").Attached }, 2*time.Second, time.Millisecond)
		lab.IP("-n", lab.Host, "link", "add", "sgq-x", "type", "veth", "peer", "name", "eth0", "netns", lab.VMs["eni-x"])
		lab.IP("-n", lab.Host, "link", "set", "sgq-x", "master", "br0", "up")
		lab.IP("-n", lab.VMs["eni-x"], "addr", "add", "198.18.211.3/24", "dev", "eth0")
		lab.IP("-n", lab.VMs["eni-x"], "link", "set", "eth0", "up")
		require.Eventually(t, func() bool { return n.Interface("sgq-x").Attached }, 2*time.Second, time.Millisecond)
		require.NotEqual(t, old, n.Interface("sgq-x").Ifindex)
		require.NoError(t, accepted("eni-x", "8080"))
		require.Error(t, refused("eni-x", "9090"))
	})
	t.Run("ENI deleted", func(t *testing.T) {
		require.NoError(t, n.Controller().DeleteENI(ctx, "eni-late"))
		require.NoError(t, accepted("eni-late", "9090"), "detached: nothing filters eni-late's veth any more")
		require.Error(t, refused("eni-late", "7070"), "eni-srv's sgId rule no longer matches eni-late's address")
		require.NoError(t, accepted("eni-x", "7070"), "but still eni-x's, a member of sg-late")
	})
}

// TestENILimitIsAClear409: at the host's ENI limit (the program's slots; lowered here) the next PUT
// is refused with 409 naming the limit, and nothing of it is made: no state, no slot, no table.
func TestENILimitIsAClear409(t *testing.T) {
	requireKernel(t)
	lim := control.DefaultLimits()
	lim.ENIsPerHost = 2
	n, c := newUnattachedNode(t, DataplaneBoth, &lim)
	ctx := context.Background()
	_, err := c.PutENI(ctx, client.ENISpec{NetworkInterfaceID: "eni-2", AppID: "1", PrivateIPAddresses: []string{"198.18.211.2"}, SgIDs: []string{"sg-late"}})
	require.NoError(t, err)
	before := n.Controller().View()
	_, err = c.PutENI(ctx, client.ENISpec{NetworkInterfaceID: "eni-3", AppID: "1", PrivateIPAddresses: []string{"198.18.211.3"}, SgIDs: []string{"sg-late"}})
	var se *client.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusConflict, se.Status)
	assert.Contains(t, se.Message, "this host enforces at most 2 network interfaces")
	assert.Same(t, before, n.Controller().View(), "nothing committed")
	_, err = n.BPF().Run(make([]byte, 64), "eni-3", model.Ingress)
	assert.Error(t, err, "no slot was taken for it")
	// Replacing an ENI that exists is no new ENI: still allowed at the limit.
	_, err = c.PutENI(ctx, client.ENISpec{NetworkInterfaceID: "eni-2", AppID: "1", PrivateIPAddresses: []string{"198.18.211.4"}, SgIDs: []string{"sg-late"}})
	require.NoError(t, err)
	assert.Equal(t, bpf.MaxENIs, 4096, "the documented slot count")
}

// TestGuardHandover: a UDP stream from a VM whose veth is guarded, while its ENI arrives: every packet
// sent is either dropped by the guard (counted, reason no-eni) or decided by the ENI's own rules — none
// by neither — and every packet its rules accepted arrives.
func TestGuardHandover(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	lab := netlab.New(t, "ngh")
	lab.AddVM("eni-srv", "sgn-srv", "198.18.211.1")
	n := newLinksNode(ctx, t, lab)
	lab.AddVM("eni-y", "sgq-y", "198.18.211.5")
	// Only the stream crosses sgq-y: no IPv6 chatter (router and neighbour solicitations, MLD) from the VM.
	_, err := netns.Do(lab.VMs["eni-y"], func() (struct{}, error) {
		return struct{}{}, os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0o644)
	})
	require.NoError(t, err)

	rx, err := netns.Do(lab.VMs["eni-srv"], func() (*net.UDPConn, error) {
		return net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("198.18.211.1"), Port: 5353})
	})
	require.NoError(t, err)
	defer rx.Close()
	var received atomic.Int64
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := rx.Read(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	tx, err := netns.Do(lab.VMs["eni-y"], func() (*net.UDPConn, error) {
		return net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("198.18.211.5")})
	})
	require.NoError(t, err)
	defer tx.Close()
	// The neighbour entry the guard kept from resolving would hold the first packets back: give the VM
	// a static one, so each packet sent reaches the tap at once.
	lab.IP("-n", lab.VMs["eni-y"], "neigh", "replace", "198.18.211.1", "lladdr", macOf(t, lab, "eni-srv"), "dev", "eth0")
	guardBefore, err := n.BPF().GuardDrops(model.Egress)
	require.NoError(t, err)
	sent := 0
	send := func(k int) {
		for range k {
			if _, err := tx.WriteToUDP([]byte("y"), &net.UDPAddr{IP: net.ParseIP("198.18.211.1"), Port: 5353}); err == nil {
				sent++
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	send(200)
	put := make(chan error, 1)
	go func() {
		_, err := n.Controller().PutENI(ctx, model.NetworkInterface{NetworkInterfaceID: "eni-y", AppID: "1",
			PrivateIPAddresses: []string{"198.18.211.5"}, SgIDs: []string{"sg-late"}, HostInterface: "sgq-y"})
		put <- err
	}()
	send(400) // the handover happens while these go
	require.NoError(t, <-put)
	send(200)
	time.Sleep(100 * time.Millisecond)
	guardAfter, err := n.BPF().GuardDrops(model.Egress)
	require.NoError(t, err)
	hits, err := n.BPF().Hits()
	require.NoError(t, err)
	var byRules, accepted uint64
	for _, h := range hits {
		if h.ENI == "eni-y" && h.Direction == model.Egress {
			byRules += h.Packets
			if h.Decision != nil && h.Decision.Verdict == model.Accept {
				accepted += h.Packets
			}
		}
	}
	guarded := guardAfter - guardBefore
	t.Logf("sent %d: %d dropped by the guard, %d decided by eni-y's rules (%d accepted), %d received", sent, guarded, byRules, accepted, received.Load())
	require.Greater(t, guarded, uint64(0), "the guard dropped the first packets")
	require.Greater(t, byRules, uint64(0), "the ENI's rules decided the last ones")
	require.Equal(t, uint64(sent), guarded+byRules, "no packet decided by neither")
	require.Equal(t, int64(accepted), received.Load(), "every accepted packet arrived")
}

// macOf is the MAC of eni's eth0.
func macOf(t *testing.T, lab *netlab.Lab, eni string) string {
	t.Helper()
	mac, err := netns.Do(lab.VMs[eni], func() (string, error) {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return "", err
		}
		return ifc.HardwareAddr.String(), nil
	})
	require.NoError(t, err)
	return mac
}

// newLinksNode runs a node on linksTopology in lab's host namespace, enforcing with the eBPF
// dataplane and guarding sgq-* interfaces, until the test ends.
func newLinksNode(ctx context.Context, t *testing.T, lab *netlab.Lab) *Node {
	t.Helper()
	seed, err := model.ParseTopology("links", []byte(linksTopology))
	require.NoError(t, err)
	n, err := New(ctx, Config{Seed: seed, Dataplane: DataplaneEBPF, PinPath: pinDir(t), HostNetns: lab.Host,
		Guard: []string{"sgq-*"}, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	return n
}

// TestSecondNodeOnAPinPathIsRefused: a second daemon on the pin path a running one holds is refused,
// with an error that names the path and the holder, not the root-and-BTF hint of a failed load.
func TestSecondNodeOnAPinPathIsRefused(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	lab := netlab.New(t, "npr")
	seed, err := model.ParseTopology("links", []byte(linksTopology))
	require.NoError(t, err)
	pin := pinDir(t)
	cfg := Config{Seed: seed, Dataplane: DataplaneEBPF, PinPath: pin, HostNetns: lab.Host,
		Logger: slog.New(slog.DiscardHandler)}
	first, err := New(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, first.Close()) })

	second, err := New(ctx, cfg)
	if second != nil {
		second.Close()
	}
	require.ErrorIs(t, err, bpf.ErrPinPathInUse)
	assert.ErrorContains(t, err, "--dataplane ebpf")
	assert.ErrorContains(t, err, pin)
	assert.ErrorContains(t, err, fmt.Sprintf("process %d", os.Getpid()))
	assert.NotContains(t, err.Error(), "needs root")
}

// TestEBPFOnlyNodeReportsTableGeneration: a node with the eBPF dataplane alone (no Go engine) still
// says, per ENI, at which generation its tables in force were made (SPEC §8: table generation).
func TestEBPFOnlyNodeReportsTableGeneration(t *testing.T) {
	requireKernel(t)
	n, c := newUnattachedNode(t, DataplaneEBPF, nil)
	ctx := context.Background()
	put, err := c.PutENI(ctx, client.ENISpec{NetworkInterfaceID: "eni-2", AppID: "1", PrivateIPAddresses: []string{"198.18.211.2"}, SgIDs: []string{"sg-late"}})
	require.NoError(t, err)
	gen := n.Controller().View().Generation
	assert.Equal(t, gen, put.TableGeneration, "made by the PUT")
	got, err := c.GetENI(ctx, "eni-2")
	require.NoError(t, err)
	assert.Equal(t, gen, got.TableGeneration)
}

// newUnattachedNode runs a node on linksTopology with dataplane dp and limits lim (nil: the defaults),
// attached to no interface, behind an HTTP server, until the test ends; c is a client of its admin API
// (token "t").
func newUnattachedNode(t *testing.T, dp string, lim *control.Limits) (n *Node, c *client.Native) {
	t.Helper()
	seed, err := model.ParseTopology("links", []byte(linksTopology))
	require.NoError(t, err)
	n, err = New(context.Background(), Config{Seed: seed, Dataplane: dp, NoAttach: true,
		Control: control.Options{Limits: lim}, API: api.Options{AdminTokens: []string{"t"}}, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	return n, &client.Native{Endpoint: srv.URL, Token: "t"}
}
