package bpf

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/model"
)

// newNetLab makes a lab (host namespace with a bridge, one namespace per "VM") with addresses from
// 198.18.200.0/24 only; it skips without root and ip(8), and fails then under SGSIM_REQUIRE_KERNEL=1.
func newNetLab(t *testing.T) *netlab.Lab {
	if _, err := exec.LookPath("ip"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
			t.Fatalf("netns test needs root and ip(8)")
		}
		t.Skip("netns test needs root and ip(8)")
	}
	return netlab.New(t, "sgt")
}

// newSrvCliLab is a lab with the VMs of labTopology: eni-srv on sgth1 and eni-cli on sgth2.
func newSrvCliLab(t *testing.T) *netlab.Lab {
	lab := newNetLab(t)
	lab.AddVM("eni-srv", "sgth1", "198.18.200.1")
	lab.AddVM("eni-cli", "sgth2", "198.18.200.2")
	return lab
}

// testPinPath is a bpffs directory of this test run, removed when the test ends.
func testPinPath(t *testing.T, what string) string {
	pin := fmt.Sprintf("/sys/fs/bpf/sgsim-%s-test-%d", what, os.Getpid())
	t.Cleanup(func() { os.RemoveAll(pin) })
	return pin
}

// labTopology: eni-srv (198.18.200.1) accepts tcp/8080 from the lab, nothing else, and has no egress
// rules (its replies live on conntrack); eni-cli (198.18.200.2) may send anything and accepts nothing.
const labTopology = `{
  "accounts": [{"appId": "1"}],
  "securityGroups": [
    {"sgId": "sg-srv", "appId": "1", "ingress": [
       {"ipProtocol": "tcp", "portRange": "8080", "cidrIp": "198.18.200.0/24", "action": "ACCEPT"}%s], "egress": []},
    {"sgId": "sg-cli", "appId": "1", "ingress": [], "egress": [{"action": "ACCEPT"}]}
  ],
  "networkInterfaces": [
    {"networkInterfaceId": "eni-srv", "appId": "1", "macAddress": "02:00:00:00:00:01",
     "privateIpAddresses": ["198.18.200.1"], "sgIds": ["sg-srv"], "hostInterface": "sgth1"},
    {"networkInterfaceId": "eni-cli", "appId": "1", "macAddress": "02:00:00:00:00:02",
     "privateIpAddresses": ["198.18.200.2"], "sgIds": ["sg-cli"], "hostInterface": "sgth2"}
  ]
}`

func labTables(t *testing.T, extraRules string) map[string]*compiler.Tables {
	s, err := model.ParseTopology("lab.json", fmt.Appendf(nil, labTopology, extraRules))
	require.NoError(t, err)
	return compiler.New(s).CompileAll()
}

// TestNetnsEndToEnd enforces real traffic between two namespaces on TCX-attached host veths.
func TestNetnsEndToEnd(t *testing.T) {
	d := loadOrSkip(t)
	lab := newSrvCliLab(t)
	ctx := context.Background()
	require.NoError(t, d.Publish(ctx, 1, labTables(t, ""), nil))
	for eni, ifn := range map[string]string{"eni-srv": "sgth1", "eni-cli": "sgth2"} {
		_, err := netns.Do(lab.Host, func() (struct{}, error) { return struct{}{}, d.Attach(ctx, ifn, eni) })
		require.NoError(t, err)
	}

	// Servers in the srv namespace: a TCP echo on 8080 and 9090, a UDP echo on 5353.
	lab.EchoTCP("eni-srv", "198.18.200.1:8080")
	lab.EchoTCP("eni-srv", "198.18.200.1:9090")
	lab.EchoUDP("eni-srv", "198.18.200.1:5353")

	dial := func(port string) (net.Conn, error) {
		return lab.DialTCP("eni-cli", "198.18.200.1:"+port, 700*time.Millisecond)
	}
	echo := func(c net.Conn, msg string) error {
		_ = c.SetDeadline(time.Now().Add(700 * time.Millisecond))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := c.Read(buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q, got %q", msg, buf)
		}
		return nil
	}
	udpEcho := func() error {
		c, err := netns.Do(lab.VMs["eni-cli"], func() (net.Conn, error) { return net.Dial("udp4", "198.18.200.1:5353") })
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c, "ping")
	}

	// Open port: connects, and the replies (no egress rules on eni-srv, no ingress on eni-cli) pass as
	// established.
	conn, err := dial("8080")
	require.NoError(t, err, "tcp/8080 is open")
	defer conn.Close()
	require.NoError(t, echo(conn, "hello"))

	// Closed port and UDP: dropped.
	_, err = dial("9090")
	require.Error(t, err, "tcp/9090 has no rule")
	require.Error(t, udpEcho(), "udp/5353 has no rule")

	// Open udp/5353 through a table swap: it flows; the established TCP flow survives the change.
	require.NoError(t, d.Publish(ctx, 2, labTables(t, `, {"ipProtocol": "udp", "portRange": "5353", "action": "ACCEPT"}`), nil))
	require.NoError(t, udpEcho(), "udp/5353 opened")
	require.NoError(t, echo(conn, "still here"), "unrelated change keeps the TCP flow")

	// A DROP first: new connections fail and the established flow is cut.
	s, err := model.ParseTopology("lab.json", fmt.Appendf(nil, labTopology, ""))
	require.NoError(t, err)
	b := s.Edit()
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-deny", AppID: "1",
		Ingress: []model.Rule{{Action: "DROP"}}, Egress: []model.Rule{}}))
	require.NoError(t, b.SetENISGs("eni-srv", []string{"sg-deny", "sg-srv"}))
	tabs := compiler.New(b.State()).CompileAll()
	require.NoError(t, d.Publish(ctx, 4, tabs, nil))
	require.Error(t, echo(conn, "cut?"), "the established flow is cut by a DROP in front")
	_, err = dial("8080")
	require.Error(t, err, "new connections fail")
}

// srvPorts listens on eni-srv (198.18.200.1) at the TCP ports, accepting and closing every connection,
// and returns a probe that tells whether eni-cli can connect to a port.
func srvPorts(t *testing.T, l *netlab.Lab, ports ...string) func(port string) error {
	t.Helper()
	for _, port := range ports {
		ln := l.ListenTCP("eni-srv", "198.18.200.1:"+port)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	return func(port string) error {
		c, err := l.DialTCP("eni-cli", "198.18.200.1:"+port, 700*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	}
}
