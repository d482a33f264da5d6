package main

import (
	"bufio"
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
)

// kernelOrSkip skips unless the eBPF program loads: not root, or a kernel without the feature; with
// SGSIM_REQUIRE_KERNEL=1 that is a failure instead. Any other load error (a verifier rejection) fails.
func kernelOrSkip(t *testing.T) {
	t.Helper()
	d, err := bpf.Load(bpf.Options{})
	if err == nil {
		require.NoError(t, d.Close())
		return
	}
	if os.Geteuid() == 0 && !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("load BPF program: %v", err)
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		t.Fatalf("load BPF program: %v", err)
	}
	t.Skipf("kernel cannot load the BPF program: %v", err)
}

// runReplayCLI runs sgsim with args (any command) and returns stdout and stderr apart.
func runReplayCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

// TestReplayEngines replays every repository capture (in one run, so the program is loaded once per
// placement) with --engine both and --engine ebpf: no disagreement, and ebpf prints what go prints.
func TestReplayEngines(t *testing.T) {
	kernelOrSkip(t)
	files, err := filepath.Glob("../../testdata/pcaps/*.pcap*")
	require.NoError(t, err)
	require.Len(t, files, 13)
	pcaps := strings.Join(files, ",")
	for _, place := range [][]string{nil, {"--eni", "eni-web1", "--direction", "ingress"}, {"--eni", "eni-web1", "--direction", "egress"}} {
		t.Run(strings.Join(append([]string{"placement"}, place...), " "), func(t *testing.T) {
			args := append([]string{"replay", "--topology", demoTopology, "--pcap", pcaps}, place...)
			goOut, _, err := runReplayCLI(t, args...)
			require.NoError(t, err)
			require.Contains(t, goOut, "74 packets:")

			out, stderr, err := runReplayCLI(t, append(args, "--engine", "both")...)
			require.NoError(t, err, stderr)
			assert.Equal(t, goOut, out, "both prints the Go engine's output")
			assert.NotContains(t, stderr, "disagreement")
			assert.Regexp(t, `(?m)^go and ebpf engines agree on all \d+ compared check\(s\) of 74 packet\(s\)$`, stderr)
			// truncated.pcap's IPv4 frame shorter than an IP header: BPF_PROG_TEST_RUN refuses it.
			assert.Contains(t, stderr, "1 check(s) of malformed or non-IP packets were not run through the eBPF program")

			out, stderr, err = runReplayCLI(t, append(args, "--engine", "ebpf")...)
			require.NoError(t, err, stderr)
			assert.Equal(t, goOut, out, "the eBPF program decides every check as the Go engine does")
		})
	}
	out, stderr, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--expect", "../../testdata/pcaps/demo.expect.yaml", "--engine", "both")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "20 packets: 12 accepted, 7 dropped, 1 unmanaged")
	assert.Contains(t, stderr, "all 11 expectation(s) of ../../testdata/pcaps/demo.expect.yaml met\n")
	assert.Contains(t, stderr, "go and ebpf engines agree on all 21 compared check(s) of 20 packet(s)\n")
}

// TestReplayEngineIdleGap: a reply 700 s after its flow's last packet (longer than SPEC §3's 600 s for
// established TCP) is a new decision for the Go engine, which ages flows on capture time, and still
// established for the kernel, which ages them on its own clock: both reports it and exits 1.
func TestReplayEngineIdleGap(t *testing.T) {
	kernelOrSkip(t)
	client, web := netip.MustParseAddr("198.19.5.7"), netip.MustParseAddr("198.18.1.10")
	macC, macW := craft.MAC("02:00:00:00:00:99"), craft.MAC("02:00:00:00:01:01")
	frame := func(src, dst netip.Addr, sp, dp uint16, flags uint8) []byte {
		ip := craft.IPv4(src, dst, packet.ProtoTCP, craft.TCP(sp, dp, flags, nil), nil)
		from, to := macC, macW
		if src == web {
			from, to = macW, macC
		}
		return craft.Ethernet(to, from, craft.EtherTypeOf(ip), nil, ip)
	}
	path := filepath.Join(t.TempDir(), "gap.pcap")
	f, err := os.Create(path)
	require.NoError(t, err)
	bw := bufio.NewWriter(f)
	w := pcapgo.NewWriter(bw)
	require.NoError(t, w.WriteFileHeader(65535, layers.LinkTypeEthernet))
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, p := range []struct {
		at    time.Duration
		frame []byte
	}{
		{0, frame(client, web, 40000, 80, packet.TCPSyn)},
		{time.Millisecond, frame(web, client, 80, 40000, packet.TCPSyn|packet.TCPAck)},
		{2 * time.Millisecond, frame(client, web, 40000, 80, packet.TCPAck)},
		{700 * time.Second, frame(web, client, 80, 40000, packet.TCPAck)},
	} {
		require.NoError(t, w.WritePacket(gopacket.CaptureInfo{Timestamp: start.Add(p.at), CaptureLength: len(p.frame), Length: len(p.frame)}, p.frame))
	}
	require.NoError(t, bw.Flush())
	require.NoError(t, f.Close())

	goOut, _, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path)
	require.NoError(t, err)
	out, stderr, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path, "--engine", "both")
	var ee *exitError
	require.True(t, errors.As(err, &ee), "%v", err)
	assert.Equal(t, 1, ee.code)
	assert.Equal(t, goOut, out)
	assert.Contains(t, stderr, "disagreement: packet 3 tcp 198.18.1.10:80 > 198.19.5.7:40000: eni-web1 egress: go ACCEPT sg-web rule 0 (entry 0), ebpf ACCEPT established\n")
	assert.Contains(t, stderr, "go and ebpf engines disagree on 1 of 4 packet(s) (1 of them conntrack only")
	assert.Equal(t, 1, strings.Count(stderr, "disagreement:"))
}
