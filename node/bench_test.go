package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/model"
)

// benchNode is an enforcing node in a fresh lab, its state in bbolt (fsync per commit), whose one SG
// has rules ingress rules.
func benchNode(b *testing.B, rules int, clsact bool, guard ...string) (*Node, *netlab.Lab) {
	b.Helper()
	netlab.RequireRoot(b)
	lab := netlab.New(b, "nbn")
	g := model.SecurityGroup{SgID: "sg-b", AppID: "1", Egress: []model.Rule{{Action: "ACCEPT"}}}
	for i := range rules {
		g.Ingress = append(g.Ingress, model.Rule{IPProtocol: "tcp", PortRange: fmt.Sprint(1 + i%60000),
			CidrIP: fmt.Sprintf("10.%d.%d.0/24", i/256%256, i%256), Action: []string{"ACCEPT", "DROP"}[i%2]})
	}
	seed, err := model.NewState(model.Topology{Accounts: []model.Account{{AppID: "1"}}, SecurityGroups: []model.SecurityGroup{g}})
	if err != nil {
		b.Fatal(err)
	}
	pin := ""
	if clsact {
		pin = fmt.Sprintf("%s-bench-%d", bpf.DefaultPinPath, os.Getpid()) // tc(8) users see the pinned program
		b.Cleanup(func() { _ = os.RemoveAll(pin) })
	}
	n, err := New(context.Background(), Config{DataDir: b.TempDir(), Seed: seed, Dataplane: DataplaneEBPF, HostNetns: lab.Host, Guard: guard,
		Clsact: clsact, PinPath: pin,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Skipf("kernel cannot run the BPF dataplane: %v", err)
	}
	b.Cleanup(func() { n.Close() })
	return n, lab
}

// reportQuantiles reports the p50 and p99 of ds in milliseconds under name.
func reportQuantiles(b *testing.B, name string, ds []time.Duration) {
	slices.Sort(ds)
	q := func(p float64) float64 { return float64(ds[int(p*float64(len(ds)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
}

// BenchmarkENIPut: an ENI PUT on an interface that exists, until it is answered, which is when its
// tables are in force and the program is attached (SPEC §8); each iteration creates one ENI and then
// (untimed) deletes it. guarded: the interface matches --guard, so the program stays on it and the
// ENI takes it over in one map update (how a host runs); unguarded: each PUT attaches the program with
// TCX and each delete detaches it, each waiting for the kernel's RCU grace period; clsact: unguarded,
// with serve --clsact's cls_bpf filters, which wait for none.
func BenchmarkENIPut(b *testing.B) {
	for _, mode := range []string{"guarded", "unguarded", "clsact"} {
		for _, rules := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/rules=%d", mode, rules), func(b *testing.B) { benchENIPut(b, mode, rules) })
		}
	}
}

func benchENIPut(b *testing.B, mode string, rules int) {
	var guard []string
	if mode == "guarded" {
		guard = []string{"sgb-*"}
	}
	n, lab := benchNode(b, rules, mode == "clsact", guard...)
	lab.IP("-n", lab.Host, "link", "add", "sgb-0", "type", "veth", "peer", "name", "pb-0")
	ctx := context.Background()
	eni := model.NetworkInterface{NetworkInterfaceID: "eni-b", AppID: "1", PrivateIPAddresses: []string{"198.18.213.1"},
		SgIDs: []string{"sg-b"}, HostInterface: "sgb-0"}
	ds := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := n.Controller().PutENI(ctx, eni); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		if !n.Interface("sgb-0").Attached {
			b.Fatal("answered before its interface was attached")
		}
		b.StopTimer()
		if err := n.Controller().DeleteENI(ctx, "eni-b"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportQuantiles(b, "put", ds)
}

// BenchmarkLinkAttach: from the netlink call that creates an ENI's veth returning until the program is
// attached to it, the ENI having been PUT before; each iteration removes the veth again (untimed).
// tcx: the default attachment (each TCX attachment waits for an RCU grace period); clsact: serve
// --clsact's cls_bpf filters, made through netlink, which wait for none.
func BenchmarkLinkAttach(b *testing.B) {
	for _, mode := range []string{"tcx", "clsact"} {
		b.Run(mode, func(b *testing.B) { benchLinkAttach(b, mode == "clsact") })
	}
}

func benchLinkAttach(b *testing.B, clsact bool) {
	n, lab := benchNode(b, 10, clsact)
	ctx := context.Background()
	if _, err := n.Controller().PutENI(ctx, model.NetworkInterface{NetworkInterfaceID: "eni-l", AppID: "1",
		PrivateIPAddresses: []string{"198.18.213.2"}, SgIDs: []string{"sg-b"}, HostInterface: "sgl-0"}); err != nil {
		b.Fatal(err)
	}
	ns, err := vnetns.GetFromPath(netns.Path(lab.Host))
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sgl-0"}, PeerName: "sglp-0"}
		start := time.Now()
		if err := h.LinkAdd(veth); err != nil {
			b.Fatal(err)
		}
		for !n.Interface("sgl-0").Attached {
			time.Sleep(20 * time.Microsecond)
			if time.Since(start) > 5*time.Second {
				b.Fatal("not attached within 5 s")
			}
		}
		ds = append(ds, time.Since(start))
		b.StopTimer()
		if err := h.LinkDel(veth); err != nil {
			b.Fatal(err)
		}
		for n.Interface("sgl-0").Ifindex != 0 {
			time.Sleep(20 * time.Microsecond)
		}
		b.StartTimer()
	}
	reportQuantiles(b, "attach", ds)
}

// BenchmarkENIChurn: ENIs created and deleted back to back (no interface), as ENIs per second.
func BenchmarkENIChurn(b *testing.B) {
	n, _ := benchNode(b, 10, false)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("eni-c%d", i)
		if _, err := n.Controller().PutENI(ctx, model.NetworkInterface{NetworkInterfaceID: id, AppID: "1",
			PrivateIPAddresses: []string{"198.18.214.1"}, SgIDs: []string{"sg-b"}}); err != nil {
			b.Fatal(err)
		}
		if err := n.Controller().DeleteENI(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enis/s")
}
