package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/model"
)

// bigTCPSize is the GSO/GRO limit set on the lab's devices: above 64 KiB, so TCP hands the veths (and
// TC) IPv4 GSO packets whose total length field is 0.
const bigTCPSize = 185000

// enableBigTCP raises the IPv4 GSO and GRO limits of the devices in namespace ns; it skips when the
// kernel has no IPv4 BIG TCP (before 6.3).
func enableBigTCP(t *testing.T, ns string, devs ...string) {
	t.Helper()
	_, err := netns.Do(ns, func() (struct{}, error) {
		for _, name := range devs {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return struct{}{}, fmt.Errorf("%s: %w", name, err)
			}
			for _, set := range []func(netlink.Link, int) error{netlink.LinkSetGSOMaxSize, netlink.LinkSetGROMaxSize,
				netlink.LinkSetGSOIPv4MaxSize, netlink.LinkSetGROIPv4MaxSize} {
				if err := set(l, bigTCPSize); err != nil {
					return struct{}{}, fmt.Errorf("%s: %w", name, err)
				}
			}
		}
		return struct{}{}, nil
	})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		skipIfNotSupported(t, fmt.Errorf("IPv4 BIG TCP: %w (%w)", err, ebpf.ErrNotSupported))
	}
	require.NoError(t, err)
}

// TestNetnsBigTCP streams large writes over veths with IPv4 BIG TCP on: the data packets reach TC as
// GSO packets of total length 0, and the rules decide them: an ACCEPT rule lets the stream through, a
// DROP rule put in front of it stops it, and the kernel counters show those rules, never malformed.
func TestNetnsBigTCP(t *testing.T) {
	d := loadOrSkip(t)
	lab := newNetLab(t)
	lab.AddVM("eni-srv", "sgth1", "198.18.200.1")
	lab.AddVM("eni-cli", "sgth2", "198.18.200.2")
	enableBigTCP(t, lab.Host, "br0", "sgth1", "sgth2")
	enableBigTCP(t, lab.VMs["eni-srv"], "eth0")
	enableBigTCP(t, lab.VMs["eni-cli"], "eth0")
	ctx := context.Background()
	require.NoError(t, d.Publish(ctx, 1, labTables(t, ""), nil))
	for eni, ifn := range map[string]string{"eni-srv": "sgth1", "eni-cli": "sgth2"} {
		_, err := netns.Do(lab.Host, func() (struct{}, error) { return struct{}{}, d.Attach(ctx, ifn, eni) })
		require.NoError(t, err)
	}
	malformed := watchMalformed(t, d)
	ln, err := netns.Do(lab.VMs["eni-srv"], func() (net.Listener, error) { return net.Listen("tcp4", "198.18.200.1:8080") })
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	}()
	conn, err := netns.Do(lab.VMs["eni-cli"], func() (net.Conn, error) {
		return net.DialTimeout("tcp4", "198.18.200.1:8080", 2*time.Second)
	})
	require.NoError(t, err)
	defer conn.Close()
	const total = 64 << 20
	chunk := make([]byte, 4<<20)
	require.NoError(t, conn.SetWriteDeadline(time.Now().Add(20*time.Second)))
	for sent := 0; sent < total; sent += len(chunk) {
		_, err := conn.Write(chunk)
		require.NoError(t, err, "the ACCEPT rule lets the stream through")
	}

	accept := ruleHits(t, d, "eni-srv", model.Ingress, "sg-srv")
	require.NotZero(t, accept, "the ACCEPT rule decided the stream's packets")
	// Fewer packets than 64 KiB pieces of the stream: some were bigger than an IPv4 length can say.
	assert.Less(t, accept*65535, uint64(total), "%d packets for %d bytes: no IPv4 BIG TCP packet reached TC", accept, total)

	// A DROP in front of the ACCEPT: the stream's next packets are dropped by that rule.
	s, err := model.ParseTopology("lab.json", fmt.Appendf(nil, labTopology, ""))
	require.NoError(t, err)
	b := s.Edit()
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-deny", AppID: "1",
		Ingress: []model.Rule{{IPProtocol: "tcp", PortRange: "8080", CidrIP: "198.18.200.0/24", Action: "DROP"}}, Egress: []model.Rule{}}))
	require.NoError(t, b.SetENISGs("eni-srv", []string{"sg-deny", "sg-srv"}))
	require.NoError(t, d.Publish(ctx, 2, compiler.New(b.State()).CompileAll(), nil))
	require.NoError(t, conn.SetWriteDeadline(time.Now().Add(time.Second)))
	for sent := 0; sent < total; sent += len(chunk) {
		if _, err = conn.Write(chunk); err != nil {
			break
		}
	}
	require.Error(t, err, "the DROP rule stops the stream")
	dropped := ruleHits(t, d, "eni-srv", model.Ingress, "sg-deny")
	require.NotZero(t, dropped, "the DROP rule decided the stream's packets")
	require.Zero(t, malformed(), "packets the program called malformed")
	t.Logf("accepted %d packets for %d bytes, then %d dropped by the rule", accept, total, dropped)
}

// watchMalformed counts d's drop events of reason malformed until the test ends; the returned func
// reads the count so far.
func watchMalformed(t *testing.T, d *Dataplane) func() int {
	t.Helper()
	rd, err := d.DropReader()
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := rd.Read(ctx)
			if err != nil {
				return
			}
			if ev.Reason == dataplane.ReasonMalformed {
				n.Add(1)
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; rd.Close() })
	return func() int {
		time.Sleep(100 * time.Millisecond) // let the reader drain what the ring buffer holds
		return int(n.Load())
	}
}

// ruleHits is the packet count of eni's entries in direction dir that are rules of sg.
func ruleHits(t *testing.T, d *Dataplane, eni string, dir model.Direction, sg string) uint64 {
	t.Helper()
	hits, err := d.Hits()
	require.NoError(t, err)
	var n uint64
	for _, h := range hits {
		if h.ENI == eni && h.Direction == dir && h.Decision != nil && h.Decision.Reason == dataplane.ReasonRule && h.Decision.SgID == sg {
			n += h.Packets
		}
	}
	return n
}

// An IPv4 packet whose total length says 0 is malformed unless it is a GSO packet (IPv4 BIG TCP), which
// the rules decide by its real length.
func TestIPv4TotalLengthZero(t *testing.T) {
	d := loadOrSkip(t)
	require.NoError(t, d.Publish(context.Background(), 1, compiler.New(demoState(t)).CompileAll(), nil))
	f := (&frame{src: netip.MustParseAddr("203.0.113.7"), dst: netip.MustParseAddr("198.18.1.10"), proto: 6,
		sport: 40000, dport: 80, tcpFlags: 0x10}).build()
	f[14+2], f[14+3] = 0, 0 // total length 0
	r, err := d.Run(f, "eni-web1", model.Ingress)
	require.NoError(t, err)
	assert.Equal(t, Result{Reason: dataplane.ReasonMalformed, Entry: -1}, r, "not GSO: malformed")

	spec, err := loadSg()
	require.NoError(t, err)
	var skb *btf.Struct
	require.NoError(t, spec.Types.TypeByName("__sk_buff", &skb))
	ctx := make([]byte, unsafe.Sizeof(skbCtx{}))
	for _, m := range skb.Members {
		switch m.Name {
		case "mark":
			binary.NativeEndian.PutUint32(ctx[m.Offset.Bytes():], d.slots["eni-web1"]+1)
		case "gso_segs":
			binary.NativeEndian.PutUint32(ctx[m.Offset.Bytes():], 2)
		case "gso_size":
			binary.NativeEndian.PutUint32(ctx[m.Offset.Bytes():], 1448)
		}
	}
	out := make([]byte, len(ctx))
	ret, err := d.objs.SgHostEgress.Run(&ebpf.RunOptions{Data: f, Context: ctx, ContextOut: out})
	require.NoError(t, err)
	var res skbCtx
	require.NoError(t, binary.Read(bytes.NewReader(out), binary.NativeEndian, &res))
	assert.Equal(t, uint32(0), ret, "accepted")
	assert.Equal(t, dataplane.ReasonRule, dataplane.Reason(res.Cb[1]), "GSO: the rules decide")
}
