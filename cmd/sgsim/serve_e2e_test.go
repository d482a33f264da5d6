package main

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/netns"
)

// e2eTopology: eni-srv (198.18.210.1) accepts tcp/8080 from members of sg-cli and has no egress rules
// (its replies live on conntrack); eni-a (.2) and eni-b (.3) are in sg-cli, may send anything and
// accept nothing; sg-out is sg-cli's twin without the membership; sg-deny drops every ingress packet.
var e2eTopology = `{
  "accounts": [` + labAccount + `],
  "securityGroups": [
    {"sgId": "sg-srv", "appId": "1", "ingress": [
       {"ipProtocol": "tcp", "portRange": "8080", "sgId": "sg-cli", "action": "ACCEPT"}], "egress": []},
    {"sgId": "sg-cli", "appId": "1", "ingress": [], "egress": [{"action": "ACCEPT"}]},
    {"sgId": "sg-out", "appId": "1", "ingress": [], "egress": [{"action": "ACCEPT"}]},
    {"sgId": "sg-deny", "appId": "1", "ingress": [{"action": "DROP"}], "egress": []}
  ],
  "networkInterfaces": [
    {"networkInterfaceId": "eni-srv", "appId": "1", "privateIpAddresses": ["198.18.210.1"],
     "sgIds": ["sg-srv"], "hostInterface": "sgs-srv"},
    {"networkInterfaceId": "eni-a", "appId": "1", "privateIpAddresses": ["198.18.210.2"],
     "sgIds": ["sg-cli"], "hostInterface": "sgs-a"},
    {"networkInterfaceId": "eni-b", "appId": "1", "privateIpAddresses": ["198.18.210.3"],
     "sgIds": ["sg-cli"], "hostInterface": "sgs-b"}
  ]
}`

// TestServeEBPFEndToEnd drives `sgsim serve --dataplane ebpf` through its APIs and checks, with real
// TCP/UDP/ICMP traffic between namespaces, that every answered call is already enforced on the host veths.
// It stays whole: each call's check of real traffic builds on the state the calls before it left.
func TestServeEBPFEndToEnd(t *testing.T) {
	requireKernel(t)
	lab := newVMLab(t)
	lab.AddVM("eni-srv", "sgs-srv", "198.18.210.1")
	lab.AddVM("eni-a", "sgs-a", "198.18.210.2")
	lab.AddVM("eni-b", "sgs-b", "198.18.210.3")
	dataDir, pin := t.TempDir(), pinDir(t)
	d := startDaemon(t, lab, dataplaneEBPF, dataDir, pin, e2eTopology)

	lab.EchoTCP("eni-srv", "198.18.210.1:8080")
	lab.EchoTCP("eni-srv", "198.18.210.1:9090")
	lab.EchoUDP("eni-srv", "198.18.210.1:5353")

	dial := func(eni, port string) (net.Conn, error) {
		return lab.DialTCP(eni, "198.18.210.1:"+port, 500*time.Millisecond)
	}
	connect := func(eni, port string) error {
		c, err := dial(eni, port)
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c, "hi "+eni)
	}
	udp := func(eni string) error {
		c, err := netns.Do(lab.VMs[eni], func() (net.Conn, error) { return net.Dial("udp4", "198.18.210.1:5353") })
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c, "udp "+eni)
	}
	seq := 0
	pingSrv := func(eni string) error { seq++; return ping(lab.VMs[eni], "198.18.210.1", seq) }

	// Start: tcp/8080 from sg-cli members only.
	connA, err := dial("eni-a", "8080")
	require.NoError(t, err, "a (sg-cli) connects to tcp/8080")
	t.Cleanup(func() { connA.Close() })
	require.NoError(t, echo(connA, "a1"))
	connB, err := dial("eni-b", "8080")
	require.NoError(t, err, "b (sg-cli) connects to tcp/8080")
	t.Cleanup(func() { connB.Close() })
	require.NoError(t, echo(connB, "b1"))
	require.Error(t, connect("eni-a", "9090"), "tcp/9090 has no rule")
	require.Error(t, udp("eni-a"), "udp/5353 has no rule")
	require.Error(t, pingSrv("eni-a"), "ICMP has no rule")
	// The kernel's counters, by rule, in /metrics: the 8080 SYNs took sg-srv's rule 0, the rest fell
	// through to the default drop.
	metrics := d.get("/metrics")
	require.Regexp(t, `sgsim_dataplane_rule_packets_total\{direction="ingress",eni="eni-srv",rule_index="0",sg_id="sg-srv",verdict="ACCEPT"\} [1-9]`, metrics)
	require.Regexp(t, `sgsim_dataplane_rule_packets_total\{direction="ingress",eni="eni-srv",rule_index="default-drop",sg_id="",verdict="DROP"\} [1-9]`, metrics)

	// Open tcp/9090, udp/5353 and ICMP: each works as soon as the call is answered; the established
	// 8080 flows survive the unrelated change.
	opened := []string{"Action", "ModifySecurityGroupPolicy", "sgId", "sg-srv",
		"ingress.0.ipProtocol", "tcp", "ingress.0.portRange", "8080", "ingress.0.sgId", "sg-cli", "ingress.0.action", "ACCEPT",
		"ingress.1.ipProtocol", "tcp", "ingress.1.portRange", "9090", "ingress.1.cidrIp", "198.18.210.0/24", "ingress.1.action", "ACCEPT",
		"ingress.2.ipProtocol", "udp", "ingress.2.portRange", "5353", "ingress.2.action", "ACCEPT",
		"ingress.3.ipProtocol", "icmp", "ingress.3.action", "ACCEPT"}
	d.tencent(opened...)
	require.NoError(t, connect("eni-a", "9090"), "tcp/9090 opened")
	require.NoError(t, udp("eni-a"), "udp/5353 opened")
	require.NoError(t, pingSrv("eni-a"), "ICMP opened")
	require.NoError(t, echo(connA, "a2"), "an unrelated change keeps a's established flow")
	require.NoError(t, echo(connB, "b2"), "an unrelated change keeps b's established flow")

	// An ICMP DROP in front denies echo; TCP is untouched.
	denyICMP := append([]string{"Action", "ModifySecurityGroupPolicy", "sgId", "sg-srv",
		"ingress.0.ipProtocol", "icmp", "ingress.0.action", "DROP"}, renumber(opened[4:], 1)...)
	d.tencent(denyICMP...)
	require.Error(t, pingSrv("eni-a"), "ICMP denied by a DROP rule")
	require.NoError(t, connect("eni-a", "9090"), "tcp/9090 still open")
	require.NoError(t, echo(connA, "a3"))

	// Move b out of sg-cli (Huawei: add to sg-out, then remove from sg-cli): the sgId rule no longer
	// covers b, so its 8080 traffic stops, established flow included; the cidr rule on 9090 still
	// admits it, and a is unaffected.
	d.huawei("sg-out", "add", "eni-b")
	d.huawei("sg-cli", "remove", "eni-b")
	require.Error(t, echo(connB, "b3"), "b's established 8080 flow is cut once b left sg-cli")
	require.Error(t, connect("eni-b", "8080"), "b no longer connects to tcp/8080")
	require.NoError(t, connect("eni-b", "9090"), "b still reaches tcp/9090 through the cidr rule")
	require.NoError(t, echo(connA, "a4"), "a is still in sg-cli")
	require.NoError(t, connect("eni-a", "8080"))

	// Reorder eni-srv's SGs so the DROP comes first: new connections fail, the established flow is cut.
	d.setENISGs("eni-srv", "sg-deny", "sg-srv")
	require.Error(t, connect("eni-a", "8080"), "DROP first: new connections fail")
	require.Error(t, echo(connA, "a5"), "DROP first: the established flow is cut")
	require.Error(t, udp("eni-a"), "DROP first: UDP dropped")

	// And back: connections succeed again.
	d.setENISGs("eni-srv", "sg-srv", "sg-deny")
	require.NoError(t, connect("eni-a", "8080"), "ACCEPT first again")
	require.NoError(t, udp("eni-a"))

	// Stopping the daemon leaves the pinned links enforcing the last tables; a restart on the same store
	// and pin path adopts them and keeps applying calls.
	require.NoError(t, d.stop())
	require.NoError(t, connect("eni-a", "8080"), "after shutdown: still admitted")
	require.Error(t, connect("eni-b", "8080"), "after shutdown: still enforced")
	d = startDaemon(t, lab, dataplaneEBPF, dataDir, pin, e2eTopology)
	require.Error(t, connect("eni-b", "8080"), "after restart: still enforced")
	d.huawei("sg-cli", "add", "eni-b")
	require.NoError(t, connect("eni-b", "8080"), "after restart: calls are enforced")
}

// renumber rewrites "ingress.N.field" names of kv (name, value pairs) to N+by.
func renumber(kv []string, by int) []string {
	out := make([]string, len(kv))
	copy(out, kv)
	for i := 0; i < len(out); i += 2 {
		var n int
		var field string
		if _, err := fmt.Sscanf(out[i], "ingress.%d.%s", &n, &field); err == nil {
			out[i] = fmt.Sprintf("ingress.%d.%s", n+by, field)
		}
	}
	return out
}
