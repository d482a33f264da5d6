package bpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// hook is one TC attachment point of a host interface.
type hook struct {
	name   string // pin-file suffix
	attach ebpf.AttachType
	tcDir  string // tc(8) direction for the clsact fallback
}

var hooks = [2]hook{
	{"ingress", ebpf.AttachTCXIngress, "ingress"},
	{"egress", ebpf.AttachTCXEgress, "egress"},
}

func (d *Dataplane) progFor(h hook) *ebpf.Program {
	if h.attach == ebpf.AttachTCXIngress {
		return d.objs.SgHostIngress // host ingress = ENI egress
	}
	return d.objs.SgHostEgress
}

func (d *Dataplane) linkPin(ifindex int, h hook) string {
	return d.pinFile(fmt.Sprintf("link-%d-%s", ifindex, h.name))
}

// Attach enforces eni's tables on the host interface ifname: TC ingress and egress, with TCX links
// where the kernel has them, else clsact + cls_bpf (through tc(8)). With a pin path, an already pinned
// link is updated in place to this program, so a restarted daemon never leaves the interface unfiltered.
// The interface is bound to the ENI before any program sees its traffic; until the ENI's tables are
// published, its packets are dropped. On an interface this process attached already (to another ENI,
// or as a guard) only the binding changes: one map update, so no packet meets neither.
func (d *Dataplane) Attach(ctx context.Context, ifname, eni string) error {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", eni, ifname, err)
	}
	if err := d.Bind(ifc.Index, eni); err != nil {
		return fmt.Errorf("attach %s to %s: %w", eni, ifname, err)
	}
	if err := d.link(ctx, ifname, ifc.Index); err != nil {
		return fmt.Errorf("attach %s to %s %w", eni, ifname, err)
	}
	return nil
}

// link puts the program on both hooks of ifname, where this process has not already.
func (d *Dataplane) link(ctx context.Context, ifname string, ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.links == nil {
		d.links = map[string]link.Link{}
	}
	for _, h := range hooks {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
		prog := d.progFor(h)
		key := fmt.Sprintf("%d-%s", ifindex, h.name)
		if _, ok := d.links[key]; ok {
			continue
		}
		if d.clsact {
			if err := d.attachClsact(ctx, ifname, h, prog); err != nil {
				return fmt.Errorf("%s: %w", h.name, err)
			}
			continue
		}
		if d.pinPath != "" {
			if l, err := link.LoadPinnedLink(d.linkPin(ifindex, h), nil); err == nil {
				if err := l.Update(prog); err != nil {
					l.Close()
					return fmt.Errorf("%s: replace pinned program: %w", h.name, err)
				}
				d.replaceLink(key, l)
				continue
			}
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.attach})
		if errors.Is(err, ebpf.ErrNotSupported) {
			slog.Info("TCX unavailable, attaching with clsact and cls_bpf", "interface", ifname)
			if err := d.attachClsact(ctx, ifname, h, prog); err != nil {
				return fmt.Errorf("%s: %w", h.name, err)
			}
			d.clsact = true // Detach must remove tc filters
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
		if d.pinPath != "" {
			if err := l.Pin(d.linkPin(ifindex, h)); err != nil {
				l.Close()
				return fmt.Errorf("%s: pin link: %w", h.name, err)
			}
		}
		d.replaceLink(key, l)
	}
	return nil
}

// replaceLink remembers l, closing the handle it replaces. Caller holds mu.
func (d *Dataplane) replaceLink(key string, l link.Link) {
	if old, ok := d.links[key]; ok {
		old.Close()
	}
	d.links[key] = l
}

// attachClsact is the fallback for kernels without TCX: the program is pinned and tc(8) attaches it as
// a direct-action cls_bpf filter under a clsact qdisc.
func (d *Dataplane) attachClsact(ctx context.Context, ifname string, h hook, prog *ebpf.Program) error {
	dir := d.pinPath
	if dir == "" {
		return fmt.Errorf("clsact attachment needs a pin path")
	}
	pin := d.pinFile("prog-" + h.name)
	if !prog.IsPinned() { // pinned once per process; what is there before is an older loader's program
		_ = os.Remove(pin)
		if err := prog.Pin(pin); err != nil {
			return fmt.Errorf("pin program for tc: %w", err)
		}
	}
	_ = exec.CommandContext(ctx, "tc", "qdisc", "add", "dev", ifname, "clsact").Run() // exists already is fine
	out, err := exec.CommandContext(ctx, "tc", "filter", "replace", "dev", ifname, h.tcDir, "pref", "1", "handle", "1",
		"bpf", "direct-action", "pinned", pin).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tc filter replace on %s %s: %w: %s", ifname, h.tcDir, err, out)
	}
	return nil
}

// Detach removes the program from ifname (links and their pins, or its cls_bpf filters) and unbinds it.
func (d *Dataplane) Detach(ifname string) error {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("detach %s: %w", ifname, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, h := range hooks {
		key := fmt.Sprintf("%d-%s", ifc.Index, h.name)
		l, ok := d.links[key]
		if !ok && d.pinPath != "" {
			l, _ = link.LoadPinnedLink(d.linkPin(ifc.Index, h), nil)
		}
		if l != nil {
			if d.pinPath != "" {
				if err := l.Unpin(); err != nil {
					errs = append(errs, fmt.Errorf("unpin %s link: %w", h.name, err))
				}
			}
			if err := l.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s link: %w", h.name, err))
			}
			delete(d.links, key)
		}
		if d.clsact {
			errs = append(errs, detachClsact(ifname, h))
		}
	}
	if err := d.objs.Ifaces.Delete(uint32(ifc.Index)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("unbind: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach %s: %w", ifname, err)
	}
	return nil
}

// detachClsact deletes the cls_bpf filter attachClsact made (the clsact qdisc stays: other filters may
// use it).
func detachClsact(ifname string, h hook) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tc", "filter", "del", "dev", ifname, h.tcDir, "pref", "1", "handle", "1", "bpf").CombinedOutput()
	if err != nil {
		return fmt.Errorf("tc filter del on %s %s: %w: %s", ifname, h.tcDir, err, out)
	}
	return nil
}
