// Command demohost is `make demo-host`: what a host operator sees in a minute. Two network namespaces
// play VMs on veths in a host namespace; `sgsim serve --dataplane ebpf --guard` follows the veths;
// ENIs arrive through the admin API after the veths; real TCP is allowed and refused; `sgsim flows`
// names the rule that dropped each refused packet; a rule change takes effect; everything is removed
// at the end. It runs the real binary (bin/sgsim) and prints every command with its output. Root only;
// addresses from 198.18.0.0/15.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sgsim/sgsim/internal/netns"
)

const (
	hostNS   = "sgdemo-host"
	vm1NS    = "sgdemo-vm1"
	vm2NS    = "sgdemo-vm2"
	vm1IP    = "198.18.250.1"
	vm2IP    = "198.18.250.2"
	token    = "demo-host-admin"
	listen   = "127.0.0.1:18480"
	pinPath  = "/sys/fs/bpf/sgsim-demo-host"
	secretID = "AKIDdemohost"
	secret   = "demo-host-secret"
)

// topology: the account and its SGs; no ENI yet — they arrive at run time.
const topology = `{
  "adminTokens": ["` + token + `"],
  "accounts": [{"appId": "1250000001", "secretId": "` + secretID + `", "secretKey": "` + secret + `"}],
  "securityGroups": [
    {"sgId": "sg-web", "appId": "1250000001", "sgName": "web", "ingress": [
       {"ipProtocol": "tcp", "portRange": "8080", "sgId": "sg-client", "action": "ACCEPT", "desc": "app port from clients"}],
     "egress": []},
    {"sgId": "sg-client", "appId": "1250000001", "sgName": "client", "ingress": [],
     "egress": [{"action": "ACCEPT", "desc": "anything out"}]}
  ],
  "networkInterfaces": []
}`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo-host:", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces and the eBPF dataplane)")
	}
	bin, err := filepath.Abs("bin/sgsim")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sgsim-demo-host-")
	if err != nil {
		return err
	}
	defer cleanup(dir)
	cleanup("") // leftovers of an interrupted run

	if err := makeHost(); err != nil {
		return err
	}
	tryTCP("before sgsim", "8080", "22")

	topo := filepath.Join(dir, "topology.json")
	if err := os.WriteFile(topo, []byte(topology), 0o600); err != nil {
		return err
	}
	step("sgsim serve --dataplane ebpf --guard 'sgtap*': the taps exist, their ENIs do not yet")
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	serve := exec.CommandContext(ctx, bin, "serve", "--dataplane", "ebpf", "--guard", "sgtap*", "--host-netns", hostNS,
		"--pin-path", pinPath, "--data-dir", filepath.Join(dir, "data"), "--topology", topo, "--listen", listen)
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	log, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		return err
	}
	serve.Stdout, serve.Stderr = log, log
	if err := serve.Start(); err != nil {
		return err
	}
	if err := waitHTTP("http://"+listen+"/healthz", 30*time.Second); err != nil {
		return fmt.Errorf("%w (serve.log: %s)", err, tail(log.Name()))
	}
	env := []string{"SGSIM_ADMIN_TOKEN=" + token, "SGSIM_SECRET_ID=" + secretID, "SGSIM_SECRET_KEY=" + secret}
	ep := "--endpoint=http://" + listen
	show(env, bin, "eni", "list", ep)
	tryTCP("guarded: no ENI claims the taps, so nothing crosses them", "8080")

	step("the ENIs arrive through the admin API (PUT /sgsim/v1/enis/{id}); each answer says attached once its tap is filtered")
	show(env, bin, "eni", "put", "eni-vm1", ep, "--app-id", "1250000001", "--ip", vm1IP, "--sg", "sg-web", "--host-interface", "sgtap1")
	show(env, bin, "eni", "put", "eni-vm2", ep, "--app-id", "1250000001", "--ip", vm2IP, "--sg", "sg-client", "--host-interface", "sgtap2")
	show(env, bin, "eni", "list", ep)

	if err := showFlows(bin); err != nil {
		return err
	}

	step("a rule change: sg-web also accepts tcp/22 from sg-client (ModifySecurityGroupPolicy); in force when answered")
	show(env, bin, "call", "tencent", ep, "Action=ModifySecurityGroupPolicy", "sgId=sg-web",
		"ingress.0.ipProtocol=tcp", "ingress.0.portRange=8080", "ingress.0.sgId=sg-client", "ingress.0.action=ACCEPT",
		"ingress.1.ipProtocol=tcp", "ingress.1.portRange=22", "ingress.1.sgId=sg-client", "ingress.1.action=ACCEPT",
		"ingress.1.desc=ssh from clients")
	tryTCP("after the change", "8080", "22")

	step("eni-vm1 deleted: its tap is guarded again")
	show(env, bin, "eni", "delete", "eni-vm1", ep)
	tryTCP("after the delete", "8080")

	step("stop serve and remove everything (namespaces, pins, data)")
	stop()
	_ = serve.Wait()
	return nil
}

// showFlows runs `sgsim flows` while vm2 tries vm1's ports, then prints the drops it reported.
func showFlows(bin string) error {
	flows := exec.Command(bin, "flows", "--pin-path", pinPath, "--count", "2")
	var flowOut strings.Builder
	flows.Stdout, flows.Stderr = &flowOut, &flowOut
	if err := flows.Start(); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond) // its ring-buffer reader is open
	tryTCP("vm2 (sg-client) → vm1 (sg-web): tcp/8080 from sg-client members is allowed, tcp/22 is not", "8080", "22")
	done := make(chan error, 1)
	go func() { done <- flows.Wait() }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = flows.Process.Kill()
		<-done
	}
	step("sgsim flows --count 2: which rule dropped each refused packet")
	fmt.Print(indent(flowOut.String()))

	return nil
}

// makeHost builds the host namespace with its bridge and the two VMs on their taps, with echo servers
// on vm1's tcp/8080 and tcp/22.
func makeHost() error {
	step("a host with two VMs: namespaces %s (%s) and %s (%s) on veths sgtap1 and sgtap2, nothing filtering", vm1NS, vm1IP, vm2NS, vm2IP)
	for _, args := range [][]string{
		{"netns", "add", hostNS}, {"-n", hostNS, "link", "add", "br0", "type", "bridge"}, {"-n", hostNS, "link", "set", "br0", "up"},
	} {
		if err := ip(args...); err != nil {
			return err
		}
	}
	for _, vm := range []struct{ ns, tap, addr string }{{vm1NS, "sgtap1", vm1IP}, {vm2NS, "sgtap2", vm2IP}} {
		for _, args := range [][]string{
			{"netns", "add", vm.ns},
			{"-n", hostNS, "link", "add", vm.tap, "type", "veth", "peer", "name", "eth0", "netns", vm.ns},
			{"-n", hostNS, "link", "set", vm.tap, "master", "br0", "up"},
			{"-n", vm.ns, "addr", "add", vm.addr + "/24", "dev", "eth0"},
			{"-n", vm.ns, "link", "set", "eth0", "up"}, {"-n", vm.ns, "link", "set", "lo", "up"},
		} {
			if err := ip(args...); err != nil {
				return err
			}
		}
	}
	for _, port := range []string{"8080", "22"} {
		if err := echoServer(vm1NS, vm1IP+":"+port); err != nil {
			return err
		}
	}
	return nil
}

func step(format string, args ...any) { fmt.Printf("\n== "+format+"\n", args...) }

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// shellQuote returns a as a shell reads it back: as it is when it holds nothing the shell would
// split or expand, else in single quotes.
func shellQuote(a string) string {
	if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=,@%+-") == "" {
		return a
	}
	return "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
}

// show runs bin with args as an operator would and prints the command line and its output.
func show(env []string, bin string, args ...string) {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	fmt.Printf("$ sgsim %s\n", strings.Join(quoted, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(string(out)))
	if err != nil {
		fmt.Printf("   (exit: %v)\n", err)
	}
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "   " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n   ") + "\n"
}

// echoServer serves a TCP echo on addr inside ns for the rest of the demo.
func echoServer(ns, addr string) error {
	ln, err := netns.Do(ns, func() (net.Listener, error) { return net.Listen("tcp4", addr) })
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return nil
}

// tryTCP connects from vm2 to vm1 on each port and prints whether the echo came back.
func tryTCP(what string, ports ...string) {
	fmt.Printf("-- %s\n", what)
	for _, port := range ports {
		start := time.Now()
		c, err := netns.Do(vm2NS, func() (net.Conn, error) { return net.DialTimeout("tcp4", vm1IP+":"+port, 2*time.Second) })
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, err = c.Write([]byte("hi"))
			if err == nil {
				_, err = io.ReadFull(c, make([]byte, 2))
			}
			c.Close()
		}
		verdict := "accepted"
		if err != nil {
			verdict = "refused (" + shortErr(err) + ")"
		}
		fmt.Printf("   tcp %s → %s:%s  %s  [%v]\n", vm2IP, vm1IP, port, verdict, time.Since(start).Round(time.Millisecond))
	}
}

func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer: dropped"
	}
	return err.Error()
}

func waitHTTP(url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("serve did not answer %s within %v", url, within)
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}

// cleanup removes the demo's namespaces and pins, and dir when set.
func cleanup(dir string) {
	for _, ns := range []string{vm1NS, vm2NS, hostNS} {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
	_ = os.RemoveAll(pinPath)
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
}
