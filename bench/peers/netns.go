// Package peers measures the kernel firewalls Linux hosts use for security groups today (iptables,
// nftables) on a veth path between two network namespaces, so that sgsim's TC program can be measured on
// the very same path with the very same first-match rules.
package peers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/bpf"
)

// Path is a veth pair between a generator namespace and a firewall namespace:
//
//	[gen ns] gen0 198.18.100.1/30  <—veth—>  fw0 198.18.100.2/30 [fw ns]
//
// Rules are enforced in the fw namespace on traffic arriving on fw0; a UDP socket there counts what passes.
type Path struct {
	GenNS, FwNS   string
	GenIf, FwIf   string
	GenAddr, FwIP string

	sgsim    *bpf.Dataplane // loaded by Load(SgsimTC), closed by Flush
	sgsimGen uint64
	empty    []link.Link // Load(TCEmpty)'s attachments, closed by Flush
}

// run runs a command and returns its combined output in the error when it fails.
func run(ctx context.Context, stdin []byte, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// NewPath creates the namespaces and the veth pair. Names carry the pid so parallel runs do not collide.
func NewPath(ctx context.Context) (*Path, error) {
	id := os.Getpid() % 100000
	p := &Path{
		GenNS: fmt.Sprintf("sgp-gen-%d", id), FwNS: fmt.Sprintf("sgp-fw-%d", id),
		GenIf: "gen0", FwIf: "fw0", GenAddr: "198.18.100.1", FwIP: "198.18.100.2",
	}
	steps := [][]string{
		{"ip", "netns", "add", p.GenNS},
		{"ip", "netns", "add", p.FwNS},
		{"ip", "link", "add", "sgpg" + fmt.Sprint(id), "netns", p.GenNS, "type", "veth", "peer", "name", "sgpf" + fmt.Sprint(id), "netns", p.FwNS},
		{"ip", "-n", p.GenNS, "link", "set", "sgpg" + fmt.Sprint(id), "name", p.GenIf},
		{"ip", "-n", p.FwNS, "link", "set", "sgpf" + fmt.Sprint(id), "name", p.FwIf},
		{"ip", "-n", p.GenNS, "addr", "add", p.GenAddr + "/30", "dev", p.GenIf},
		{"ip", "-n", p.FwNS, "addr", "add", p.FwIP + "/30", "dev", p.FwIf},
		{"ip", "-n", p.GenNS, "link", "set", p.GenIf, "up"},
		{"ip", "-n", p.FwNS, "link", "set", p.FwIf, "up"},
		{"ip", "-n", p.GenNS, "link", "set", "lo", "up"},
		{"ip", "-n", p.FwNS, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(ctx, nil, s[0], s[1:]...); err != nil {
			p.Close()
			return nil, fmt.Errorf("set up veth path: %w", err)
		}
	}
	return p, nil
}

// Close removes both namespaces (and with them the veth pair and every rule loaded inside).
func (p *Path) Close() error {
	errs := []error{p.detachEmpty()}
	if p.sgsim != nil {
		errs = append(errs, p.sgsim.Close())
		p.sgsim = nil
	}
	for _, ns := range []string{p.GenNS, p.FwNS} {
		if err := run(context.Background(), nil, "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// InNetns runs fn on an OS thread switched into the named namespace. Sockets fn opens stay in that
// namespace after the thread switches back, which is how the generator and sink are placed.
func InNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so it dies with the goroutine.
		return errors.Join(fnErr, fmt.Errorf("leave netns %s: %w", name, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}
