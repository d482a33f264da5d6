package replay_test

import (
	"bufio"
	"context"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
	"github.com/sgsim/sgsim/replay"
)

func sharedRoot(tb testing.TB) string {
	tb.Helper()
	root := filepath.Join("..", "..", "shared", "data", "pcaps")
	if _, err := os.Stat(root); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("shared data missing under CI: %v", err)
		}
		tb.Skipf("shared data absent: %v", err)
	}
	return root
}

// TestReplaySharedCaptures replays every shared capture checked on one ENI: no file may crash the run,
// every packet gets exactly one verdict, unreadable files give an error naming the file, and captures
// known to hold VLAN-tagged or fragmented IP decode to IP.
func TestReplaySharedCaptures(t *testing.T) {
	root := sharedRoot(t)
	var files []string
	require.NoError(t, filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() && (strings.HasSuffix(p, ".pcap") || strings.HasSuffix(p, ".pcapng") || strings.HasSuffix(p, ".cap")) {
			files = append(files, p)
		}
		return err
	}))
	require.Greater(t, len(files), 800)
	r, _, _ := setup(t, replay.Options{ForceENI: "eni-web", ForceDirection: model.Ingress})
	var ok, failed, packets, ipPackets int
	perFile := map[string]int{} // IP packets per file
	for _, f := range files {
		n := 0
		sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{f}, OnResult: func(res *replay.Result) {
			if res.Packet.Class == packet.ClassIP {
				n++
			}
		}})
		if err != nil {
			t.Logf("%v", err)
			failed++
			assert.Contains(t, err.Error(), f, "error names the file")
		} else {
			ok++
		}
		if sum != nil {
			assert.Equal(t, sum.Packets, sum.ByVerdict[0]+sum.ByVerdict[1]+sum.ByVerdict[2], f)
			assert.Zero(t, sum.ByVerdict[replay.Unmanaged], "forced ENI: every packet is checked (%s)", f)
			packets += sum.Packets
		}
		ipPackets += n
		perFile[filepath.Base(f)] = n
	}
	t.Logf("%d files replayed, %d gave errors; %d packets, %d IP", ok, failed, packets, ipPackets)
	assert.Greater(t, ok, len(files)*9/10)
	for _, name := range []string{"http-qinq-0.pcap", "http-vlan-0.pcap", "vlan-qinqinq.pcap", "icmp_dot1q.pcap", "ipv4-fragmented-1.pcap", "ipv6-fragmented-dns.pcap", "tcpreplay-fragroute.pcap", "gopacket-test_loopback.pcap"} {
		if n, seen := perFile[name]; seen {
			assert.Positive(t, n, "%s decodes to IP", name)
		}
	}
}

// genCapture builds n Ethernet frames of traffic to and from eni-web: 1024 client flows (v4 and v6),
// each a handshake-like exchange, so stateful replay sees new flows and replies.
func genCapture(n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	frames := make([][]byte, 0, 4096)
	for i := 0; len(frames) < 4096; i++ {
		client := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		sp := uint16(1024 + rng.IntN(60000))
		dp := []uint16{80, 443, 22, 8080, 5432}[rng.IntN(5)]
		frames = append(frames,
			tcp(client, web, sp, dp, packet.TCPSyn),
			tcp(web, client, dp, sp, packet.TCPSyn|packet.TCPAck),
			tcp(client, web, sp, dp, packet.TCPAck),
			eth(craft.IPv4(client, web, packet.ProtoUDP, craft.UDP(sp, 53, nil), nil)))
	}
	out := make([][]byte, n)
	for i := range out {
		out[i] = frames[i%len(frames)]
	}
	return out
}

// bigTopology gives eni-web 1000 ingress rules (ClassBench-like mixes of prefixes and ports) ahead of
// the http rule.
func bigTopology(tb testing.TB) *model.State {
	rng := rand.New(rand.NewPCG(3, 4))
	var rules []model.Rule
	for i := 0; i < 1000; i++ {
		pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(10 + rng.IntN(100)), byte(rng.IntN(256)), 0, 0}), 8+rng.IntN(17)).Masked()
		proto := []string{"tcp", "udp", "icmp", ""}[rng.IntN(4)]
		r := model.Rule{IPProtocol: proto, CidrIP: pfx.String(), Action: []string{"ACCEPT", "DROP"}[i%2]}
		if proto == "tcp" || proto == "udp" {
			lo := 1 + rng.IntN(60000)
			r.PortRange = strconv.Itoa(lo) + "-" + strconv.Itoa(lo+rng.IntN(100))
		}
		rules = append(rules, r)
	}
	rules = append(rules, model.Rule{IPProtocol: "tcp", PortRange: "80", Action: "ACCEPT"})
	st, err := model.NewState(model.Topology{
		Accounts: []model.Account{{AppID: "1"}},
		SecurityGroups: []model.SecurityGroup{{SgID: "sg-big", AppID: "1", Ingress: rules,
			Egress: []model.Rule{{Action: "ACCEPT"}}}},
		NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: "eni-web", AppID: "1",
			PrivateIPAddresses: []string{"198.18.1.10"}, SgIDs: []string{"sg-big"}}},
	})
	require.NoError(tb, err)
	return st
}

// BenchmarkReplay measures whole-replay throughput (read pcap, decode, map, conntrack, match; JSON off)
// on one core against a 1k-rule table, reported as packets/s.
func BenchmarkReplay(b *testing.B) {
	const n = 1 << 20
	path := filepath.Join(b.TempDir(), "big.pcap")
	f, err := os.Create(path)
	require.NoError(b, err)
	bw := bufio.NewWriterSize(f, 1<<20)
	w := pcapgo.NewWriter(bw)
	require.NoError(b, w.WriteFileHeader(65535, layers.LinkTypeEthernet))
	for i, fr := range genCapture(n) {
		require.NoError(b, w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, int64(i)*1000), CaptureLength: len(fr), Length: len(fr)}, fr))
	}
	require.NoError(b, bw.Flush())
	require.NoError(b, f.Close())
	st := bigTopology(b)
	for _, fac := range []struct {
		name string
		f    dataplane.MatcherFactory
	}{{"classifier", dataplane.ClassifierFactory}} {
		b.Run(fac.name, func(b *testing.B) {
			e := dataplane.NewEngine(fac.f)
			e.Publish(1, compiler.New(st).CompileAll(), nil)
			b.ReportAllocs()
			var total int
			start := time.Now()
			for b.Loop() {
				r, err := replay.New(st, e, replay.Options{})
				require.NoError(b, err)
				sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{path}})
				require.NoError(b, err)
				total += sum.Packets
			}
			b.ReportMetric(float64(total)/time.Since(start).Seconds(), "pkts/s")
		})
	}
}
