package bpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/internal/netns"
)

// hook is one TC attachment point of a host interface.
type hook struct {
	name   string // pin-file suffix
	attach ebpf.AttachType
	tcDir  string // tc(8)'s name of the clsact hook
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
// where the kernel has them, else clsact + cls_bpf (through netlink). With a pin path, an already pinned
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

// link puts the program on both hooks of ifname, where this process has not already. The two hooks
// are attached at once: each TCX attachment waits for an RCU grace period, and two waits side by side
// end together.
func (d *Dataplane) link(ctx context.Context, ifname string, ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.links == nil {
		d.links = map[string]link.Link{}
	}
	var todo []hook
	for _, h := range hooks {
		if _, ok := d.links[fmt.Sprintf("%d-%s", ifindex, h.name)]; !ok {
			todo = append(todo, h)
		}
	}
	type attached struct {
		l      link.Link // nil for a cls_bpf filter
		clsact bool      // a cls_bpf filter was made: the kernel has no TCX, or clsact was asked for
		err    error
	}
	res := make([]attached, len(todo))
	err := sideBySide(len(todo), func(i int) {
		res[i].l, res[i].clsact, res[i].err = d.linkHook(ctx, ifname, ifindex, todo[i])
	})
	if err != nil {
		return err
	}
	var errs []error
	for i, h := range todo {
		r := res[i]
		if r.clsact {
			d.clsact = true // Detach must remove tc filters
		}
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.name, r.err))
			continue
		}
		if r.l != nil {
			d.replaceLink(fmt.Sprintf("%d-%s", ifindex, h.name), r.l)
		}
	}
	return errors.Join(errs...)
}

// linkHook attaches the program to one hook of ifname: a pinned link of an earlier run updated in
// place, a new TCX link (pinned when d pins), or a cls_bpf filter where the kernel has no TCX (then
// it returns a nil link and clsact true). Caller holds mu, which guards only d's fields read here.
func (d *Dataplane) linkHook(ctx context.Context, ifname string, ifindex int, h hook) (link.Link, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	prog := d.progFor(h)
	if d.clsact {
		return nil, true, d.attachClsact(ctx, ifname, h, prog)
	}
	if d.pinPath != "" {
		if l, err := link.LoadPinnedLink(d.linkPin(ifindex, h), nil); err == nil {
			if err := l.Update(prog); err != nil {
				l.Close()
				return nil, false, fmt.Errorf("replace pinned program: %w", err)
			}
			return l, false, nil
		}
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.attach})
	if errors.Is(err, ebpf.ErrNotSupported) {
		slog.Info("TCX unavailable, attaching with clsact and cls_bpf", "interface", ifname)
		return nil, true, d.attachClsact(ctx, ifname, h, prog)
	}
	if err != nil {
		return nil, false, err
	}
	if d.pinPath != "" {
		if err := l.Pin(d.linkPin(ifindex, h)); err != nil {
			l.Close()
			return nil, false, fmt.Errorf("pin link: %w", err)
		}
	}
	return l, false, nil
}

// sideBySide runs fn(0) … fn(n-1) at once, each on its own OS thread in the caller's network namespace
// (the interfaces are named and indexed there), and waits for all of them.
func sideBySide(n int, fn func(i int)) error {
	ns, err := netns.Here()
	if err != nil {
		return err
	}
	defer ns.Close()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = netns.Do(netns.HerePath(ns), func() (struct{}, error) { fn(i); return struct{}{}, nil })
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// replaceLink remembers l, closing the handle it replaces. Caller holds mu.
func (d *Dataplane) replaceLink(key string, l link.Link) {
	if old, ok := d.links[key]; ok {
		old.Close()
	}
	d.links[key] = l
}

// attachClsact is the attachment for kernels without TCX (and --clsact): a direct-action cls_bpf
// filter under a clsact qdisc, made through netlink. Unlike a TCX attachment it waits for no RCU grace
// period, so an interface is filtered within a millisecond of appearing. The program is pinned too, so
// tc(8) users see which program runs and a restarted daemon replaces the filter with its own.
func (d *Dataplane) attachClsact(ctx context.Context, ifname string, h hook, prog *ebpf.Program) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.pinPath == "" {
		return fmt.Errorf("clsact attachment needs a pin path")
	}
	pin := d.pinFile("prog-" + h.name)
	if !prog.IsPinned() { // pinned once per process; what is there before is an older loader's program
		_ = os.Remove(pin)
		if err := prog.Pin(pin); err != nil {
			return fmt.Errorf("pin program for tc: %w", err)
		}
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("clsact on %s: %w", ifname, err)
	}
	q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to %s: %w", ifname, err)
	}
	if err := netlink.FilterReplace(clsactFilter(l.Attrs().Index, h, prog.FD())); err != nil {
		return fmt.Errorf("cls_bpf filter on %s %s: %w", ifname, h.tcDir, err)
	}
	return nil
}

// clsactFilter is the cls_bpf filter attachClsact puts on one hook (pref 1, handle 1, every protocol).
func clsactFilter(ifindex int, h hook, fd int) *netlink.BpfFilter {
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if h.attach == ebpf.AttachTCXEgress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1, Priority: 1,
		Protocol: unix.ETH_P_ALL}, Fd: fd, Name: "sgsim-" + h.name, DirectAction: true}
}

// Detach removes the program from ifname (links and their pins, or its cls_bpf filters) and unbinds it.
func (d *Dataplane) Detach(ifname string) error {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("detach %s: %w", ifname, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	errs := make([]error, 2*len(hooks))
	held := make([]link.Link, len(hooks))
	for i, h := range hooks {
		key := fmt.Sprintf("%d-%s", ifc.Index, h.name)
		l, ok := d.links[key]
		if !ok && d.pinPath != "" {
			l, _ = link.LoadPinnedLink(d.linkPin(ifc.Index, h), nil)
		}
		held[i] = l
		delete(d.links, key)
	}
	// Side by side, like link: each detachment waits for a grace period.
	err = sideBySide(len(hooks), func(i int) {
		h, l := hooks[i], held[i]
		if l != nil {
			if d.pinPath != "" {
				if err := l.Unpin(); err != nil {
					errs[2*i] = fmt.Errorf("unpin %s link: %w", h.name, err)
				}
			}
			if err := l.Close(); err != nil {
				errs[2*i+1] = fmt.Errorf("close %s link: %w", h.name, err)
			}
		}
		if d.clsact {
			errs[2*i+1] = errors.Join(errs[2*i+1], detachClsact(ifname, h))
		}
	})
	errs = append(errs, err)
	if err := d.deleteBinding(uint32(ifc.Index)); err != nil {
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
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("clsact on %s: %w", ifname, err)
	}
	if err := netlink.FilterDel(clsactFilter(l.Attrs().Index, h, 0)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete cls_bpf filter on %s %s: %w", ifname, h.tcDir, err)
	}
	return nil
}
