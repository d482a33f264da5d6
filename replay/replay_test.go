package replay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
	"github.com/sgsim/sgsim/replay"
)

const topo = `{
 "accounts": [{"appId": "1"}],
 "securityGroups": [
  {"sgId": "sg-web", "appId": "1", "ingress": [
     {"ipProtocol": "tcp", "portRange": "80", "action": "ACCEPT"},
     {"ipProtocol": "icmp", "sgId": "sg-db", "action": "ACCEPT"}],
   "egress": [{"action": "ACCEPT"}]},
  {"sgId": "sg-db", "appId": "1", "ingress": [{"ipProtocol": "tcp", "sgId": "sg-web", "portRange": "5432", "action": "ACCEPT"}],
   "egress": [{"ipProtocol": "udp", "action": "ACCEPT"}, {"ipProtocol": "icmp", "action": "ACCEPT"}, {"ipProtocol": "tcp", "portRange": "80", "action": "ACCEPT"}]}
 ],
 "networkInterfaces": [
  {"networkInterfaceId": "eni-web", "appId": "1", "macAddress": "02:00:00:00:00:01", "privateIpAddresses": ["198.18.1.10", "2001:db8::10"], "sgIds": ["sg-web"]},
  {"networkInterfaceId": "eni-db", "appId": "1", "macAddress": "02:00:00:00:00:02", "privateIpAddresses": ["198.18.2.10"], "sgIds": ["sg-db"]}
 ]}`

var (
	web    = netip.MustParseAddr("198.18.1.10")
	web6   = netip.MustParseAddr("2001:db8::10")
	db     = netip.MustParseAddr("198.18.2.10")
	out    = netip.MustParseAddr("198.19.0.1")
	out6   = netip.MustParseAddr("2001:db8:ff::1")
	macWeb = craft.MAC("02:00:00:00:00:01")
	macDB  = craft.MAC("02:00:00:00:00:02")
	macX   = craft.MAC("02:00:00:00:00:99")
)

func setup(t testing.TB, opts replay.Options) (*replay.Replayer, *model.State, *dataplane.Engine) {
	t.Helper()
	st, err := model.ParseTopology("topo.json", []byte(topo))
	require.NoError(t, err)
	e := dataplane.NewEngine(dataplane.ClassifierFactory)
	e.Publish(1, compiler.New(st).CompileAll(), nil)
	r, err := replay.New(st, e, opts)
	require.NoError(t, err)
	return r, st, e
}

func eth(ip []byte) []byte { return craft.Ethernet(macX, macX, craft.EtherTypeOf(ip), nil, ip) }

func tcp(src, dst netip.Addr, sp, dp uint16, flags uint8) []byte {
	return eth(craft.IPv4(src, dst, packet.ProtoTCP, craft.TCP(sp, dp, flags, nil), nil))
}

type step struct {
	name    string
	frame   []byte
	verdict replay.Verdict
	checks  string // CheckStrings joined by "; "
}

func runSteps(t *testing.T, r *replay.Replayer, steps []step) {
	t.Helper()
	var res replay.Result
	for i, s := range steps {
		r.Decide(i, time.Duration(i)*time.Second, packet.LinkEthernet, s.frame, &res)
		var got []string
		for j := 0; j < res.NChecks; j++ {
			got = append(got, replay.CheckString(r, &res.Checks[j]))
		}
		assert.Equal(t, s.verdict, res.Verdict, "%s", s.name)
		assert.Equal(t, s.checks, strings.Join(got, "; "), "%s", s.name)
	}
}

func TestDecide(t *testing.T) {
	r, _, _ := setup(t, replay.Options{})
	quoted := craft.IPv4(db, out, packet.ProtoUDP, craft.UDP(5000, 53, nil), nil)
	runSteps(t, r, []step{
		{"inbound http", tcp(out, web, 40000, 80, packet.TCPSyn), replay.Accept, "eni-web ingress ACCEPT sg-web rule 0"},
		{"reply established", tcp(web, out, 80, 40000, packet.TCPSyn|packet.TCPAck), replay.Accept, "eni-web egress ACCEPT established"},
		{"inbound ssh", tcp(out, web, 40001, 22, packet.TCPSyn), replay.Drop, "eni-web ingress DROP default-drop"},
		{"web to db both checked", tcp(web, db, 40002, 5432, packet.TCPSyn), replay.Accept, "eni-web egress ACCEPT sg-web rule 0; eni-db ingress ACCEPT sg-db rule 0"},
		{"db reply established both sides", tcp(db, web, 5432, 40002, packet.TCPAck), replay.Accept, "eni-db egress ACCEPT established; eni-web ingress ACCEPT established"},
		{"db to web tcp dropped on db egress", tcp(db, web, 40003, 22, packet.TCPSyn), replay.Drop, "eni-db egress DROP default-drop"},
		{"unmanaged", tcp(out, netip.MustParseAddr("198.18.7.7"), 1, 2, 0), replay.Unmanaged, ""},
		{"db udp out", eth(craft.IPv4(db, out, packet.ProtoUDP, craft.UDP(5000, 53, nil), nil)), replay.Accept, "eni-db egress ACCEPT sg-db rule 0"},
		{"port unreachable related", eth(craft.IPv4(out, db, packet.ProtoICMP, craft.ICMPError(3, 3, quoted), nil)), replay.Accept, "eni-db ingress ACCEPT established"},
		{"unrelated icmp error", eth(craft.IPv4(out, db, packet.ProtoICMP, craft.ICMPError(3, 3, craft.IPv4(db, out, packet.ProtoUDP, craft.UDP(5001, 53, nil), nil)), nil)), replay.Drop, "eni-db ingress DROP default-drop"},
		{"arp", craft.Ethernet(macX, macWeb, 0x0806, nil, craft.ARP(macWeb, web, db)), replay.Accept, "eni-web egress ACCEPT arp"},
		{"lldp from web", craft.Ethernet(macX, macWeb, 0x88cc, nil, make([]byte, 20)), replay.Drop, "eni-web egress DROP not-ip"},
		{"malformed to db", craft.Ethernet(macDB, macX, 0x0800, nil, make([]byte, 10)), replay.Drop, "eni-db ingress DROP malformed"},
		{"nd", eth(craft.IPv6(out6, web6, packet.ProtoICMPv6, craft.ICMP(135, 0, make([]byte, 20)), nil, nil)), replay.Accept, "eni-web ingress ACCEPT nd"},
		{"nd from link-local, by MAC", craft.Ethernet(craft.MAC("33:33:ff:00:00:01"), macWeb, 0x86dd, nil, craft.IPv6(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1:ff00:1"), packet.ProtoICMPv6, craft.ICMP(135, 0, make([]byte, 20)), nil, nil)), replay.Accept, "eni-web egress ACCEPT nd"},
		{"first fragment http", eth(craft.IPv4(out, web, packet.ProtoTCP, craft.TCP(41000, 80, packet.TCPSyn, make([]byte, 8)), &craft.Frag{ID: 5, More: true})), replay.Accept, "eni-web ingress ACCEPT sg-web rule 0"},
		{"later fragment follows", eth(craft.IPv4(out, web, packet.ProtoTCP, make([]byte, 8), &craft.Frag{ID: 5, Offset: 4})), replay.Accept, "eni-web ingress ACCEPT sg-web rule 0"},
		{"orphan fragment has no port", eth(craft.IPv4(out, web, packet.ProtoTCP, make([]byte, 8), &craft.Frag{ID: 6, Offset: 4})), replay.Drop, "eni-web ingress DROP default-drop"},
	})
}

func TestStatelessDropsReplies(t *testing.T) {
	r, _, _ := setup(t, replay.Options{Stateless: true})
	runSteps(t, r, []step{
		{"db udp out", eth(craft.IPv4(db, out, packet.ProtoUDP, craft.UDP(5000, 53, nil), nil)), replay.Accept, "eni-db egress ACCEPT sg-db rule 0"},
		{"reply dropped", eth(craft.IPv4(out, db, packet.ProtoUDP, craft.UDP(53, 5000, nil), nil)), replay.Drop, "eni-db ingress DROP default-drop"},
	})
}

func TestForcedENI(t *testing.T) {
	r, _, _ := setup(t, replay.Options{ForceENI: "eni-db", ForceDirection: model.Ingress})
	runSteps(t, r, []step{
		{"forced", tcp(out, netip.MustParseAddr("10.9.9.9"), 1, 80, packet.TCPSyn), replay.Drop, "eni-db ingress DROP default-drop"},
	})
	st, err := model.ParseTopology("topo.json", []byte(topo))
	require.NoError(t, err)
	_, err = replay.New(st, dataplane.NewEngine(dataplane.LinearFactory), replay.Options{ForceENI: "eni-nope"})
	require.ErrorContains(t, err, "eni-nope")
}

// TestTableChangeCutsFlow: removing the rule cuts the established flow before its next packet.
func TestTableChangeCutsFlow(t *testing.T) {
	r, st, e := setup(t, replay.Options{})
	var res replay.Result
	r.Decide(0, 0, packet.LinkEthernet, tcp(web, db, 40000, 5432, packet.TCPSyn), &res)
	require.Equal(t, replay.Accept, res.Verdict)
	r.Decide(1, time.Second, packet.LinkEthernet, tcp(db, web, 5432, 40000, packet.TCPAck), &res)
	require.Equal(t, replay.Accept, res.Verdict)
	require.Equal(t, "eni-db egress ACCEPT established", replay.CheckString(r, &res.Checks[0]))

	b := st.Edit()
	g, _ := st.SG("sg-db")
	ng := *g
	ng.Ingress = nil
	require.NoError(t, b.PutSG(ng))
	st2 := b.State()
	e.Publish(2, compiler.New(st2).CompileAll(), nil)
	require.NoError(t, r.SetState(st2))
	r.Decide(2, 2*time.Second, packet.LinkEthernet, tcp(db, web, 5432, 40000, packet.TCPAck), &res)
	assert.Equal(t, replay.Drop, res.Verdict, "the reply is no longer established")
	assert.Equal(t, "eni-db egress DROP default-drop", replay.CheckString(r, &res.Checks[0]))
	assert.Equal(t, uint64(1), r.ConnStats().Cut)
}

func TestJSONLine(t *testing.T) {
	r, _, _ := setup(t, replay.Options{})
	var res replay.Result
	r.Decide(7, 0, packet.LinkEthernet, tcp(web, db, 1, 5432, packet.TCPSyn), &res)
	line := replay.AppendJSON(nil, r, &res)
	assert.JSONEq(t, `{"index":7,"verdict":"ACCEPT","checks":[
	  {"eni":"eni-web","direction":"egress","verdict":"ACCEPT","sgId":"sg-web","ruleIndex":0,"reason":"rule"},
	  {"eni":"eni-db","direction":"ingress","verdict":"ACCEPT","sgId":"sg-db","ruleIndex":0,"reason":"rule"}]}`, string(line))
	r.Decide(8, 0, packet.LinkEthernet, tcp(out, web, 1, 22, packet.TCPSyn), &res)
	var obj map[string]any
	require.NoError(t, json.Unmarshal(replay.AppendJSON(nil, r, &res), &obj))
	c := obj["checks"].([]any)[0].(map[string]any)
	assert.NotContains(t, c, "sgId")
	assert.NotContains(t, c, "ruleIndex")
	assert.Equal(t, "default-drop", c["reason"])
	r.Decide(9, 0, packet.LinkEthernet, tcp(out, out, 1, 22, 0), &res)
	assert.Equal(t, `{"index":9,"verdict":"UNMANAGED","checks":[]}`, string(replay.AppendJSON(nil, r, &res)))
}

// writePcap writes frames to path a second apart.
func writePcap(t testing.TB, path string, link layers.LinkType, frames ...[]byte) {
	t.Helper()
	testkit.WritePcap(t, path, link, frames, func(i int) time.Time { return time.Unix(int64(1700000000+i), 0) })
}

func TestRunExpectAndWrite(t *testing.T) {
	dir := t.TempDir()
	pc := filepath.Join(dir, "in.pcap")
	writePcap(t, pc, layers.LinkTypeEthernet,
		tcp(out, web, 40000, 80, packet.TCPSyn), tcp(web, out, 80, 40000, packet.TCPAck), tcp(out, web, 40001, 22, packet.TCPSyn))
	r, _, _ := setup(t, replay.Options{})
	ex, err := replay.ParseExpectations("x.yaml", []byte(`
- index: 0
  verdict: ACCEPT
- flow: "tcp * > 198.18.1.10:22"
  verdict: ACCEPT
- flow: "udp * > *"
  verdict: DROP
`))
	require.NoError(t, err)
	var buf strings.Builder
	acc, drp := filepath.Join(dir, "acc.pcap"), filepath.Join(dir, "drop.pcap")
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{pc}, Out: &buf, JSON: true,
		WriteAccepted: acc, WriteDropped: drp, OnResult: func(res *replay.Result) { ex.Observe(r, res) }})
	require.NoError(t, err)
	assert.Equal(t, 3, sum.Packets)
	assert.Equal(t, [3]int{2, 1, 0}, sum.ByVerdict)
	assert.Len(t, strings.Split(strings.TrimSpace(buf.String()), "\n"), 3)
	fails := ex.Failures()
	require.Len(t, fails, 2)
	assert.Contains(t, fails[0], "packet 2")
	assert.Contains(t, fails[0], "want ACCEPT, got DROP")
	assert.Contains(t, fails[1], "no packet of that flow")
	assert.Equal(t, 2, countPcap(t, acc))
	assert.Equal(t, 1, countPcap(t, drp))
}

func countPcap(t *testing.T, path string) int {
	s, err := replay.Open(path)
	require.NoError(t, err)
	defer s.Close()
	n := 0
	for {
		_, _, _, err := s.Next()
		if errors.Is(err, io.EOF) {
			return n
		}
		require.NoError(t, err)
		n++
	}
}

func TestCorruptFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pcap")
	require.NoError(t, os.WriteFile(bad, []byte("this is not a capture at all"), 0o600))
	r, _, _ := setup(t, replay.Options{})
	_, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{bad}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), bad)

	good := filepath.Join(dir, "trunc.pcap")
	writePcap(t, good, layers.LinkTypeEthernet, tcp(out, web, 1, 80, 2), tcp(out, web, 2, 80, 2))
	data, err := os.ReadFile(good)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(good, data[:len(data)-10], 0o600))
	_, err = replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{good}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "trunc.pcap: packet 1")
}

func TestParseFlowPattern(t *testing.T) {
	tests := []struct {
		in      string
		err     string
		matches bool
	}{
		{"tcp * > 198.18.1.10:80", "", true},
		{"* 198.19.0.0/16 > *:*", "", true},
		{"6 198.19.0.1:40000 > 198.18.1.10", "", true},
		{"udp * > *", "", false},
		{"tcp * > 198.18.1.10:81", "", false},
		{"tcp * 198.18.1.10", "want", false},
		{"gre * > *", "protocol", false},
		{"tcp nope > *", "source", false},
		{"tcp * > 1.2.3.4:99999", "port", false},
	}
	var d packet.Decoded
	packet.Decode(packet.LinkEthernet, tcp(out, web, 40000, 80, packet.TCPSyn), &d)
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			p, err := replay.ParseFlowPattern(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.matches, p.Match(&d))
		})
	}
}

// TestReplaySharedCaptures replays every shared capture checked on one ENI: no file may crash the run,
// every packet gets exactly one verdict, unreadable files give an error naming the file, and captures
// known to hold VLAN-tagged or fragmented IP decode to IP.
func TestReplaySharedCaptures(t *testing.T) {
	files := testkit.SharedPcaps(t)
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
	testkit.WritePcap(b, path, layers.LinkTypeEthernet, genCapture(n), func(i int) time.Time { return time.Unix(1700000000, int64(i)*1000) })
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

// TestPcapngSnaplenExceeded: a pcapng interface claiming a snaplen smaller than its packets still
// replays every packet with its link type.
func TestPcapngSnaplenExceeded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "small-snap.pcapng")
	f, err := os.Create(path)
	require.NoError(t, err)
	w, err := pcapgo.NewNgWriterInterface(f, pcapgo.NgInterface{LinkType: layers.LinkTypeEthernet, SnapLength: 64}, pcapgo.NgWriterOptions{})
	require.NoError(t, err)
	raw6, err := w.AddInterface(pcapgo.NgInterface{LinkType: layers.LinkType(packet.LinkIPv6), SnapLength: 64})
	require.NoError(t, err)
	big := eth(craft.IPv4(out, web, packet.ProtoUDP, craft.UDP(1, 53, make([]byte, 300)), nil))
	v6 := craft.IPv6(out6, web6, packet.ProtoUDP, craft.UDP(1, 53, make([]byte, 300)), nil, nil)
	require.NoError(t, w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: len(big), Length: len(big)}, big))
	require.NoError(t, w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(2, 0), CaptureLength: len(v6), Length: len(v6), InterfaceIndex: raw6}, v6))
	require.NoError(t, w.Flush())
	require.NoError(t, f.Close())

	s, err := replay.Open(path)
	require.NoError(t, err)
	defer s.Close()
	var links []int
	for {
		frame, _, link, err := s.Next()
		if err != nil {
			break
		}
		var d packet.Decoded
		packet.Decode(link, frame, &d)
		assert.Equal(t, packet.ClassIP, d.Class)
		assert.Equal(t, uint16(53), d.DstPort)
		links = append(links, link)
	}
	assert.Equal(t, []int{packet.LinkEthernet, packet.LinkIPv6}, links)
}

// TestGeneratedCaptures replays every capture testdata/gen writes and checks what each was made to hold.
func TestGeneratedCaptures(t *testing.T) {
	tests := []struct {
		file                          string
		packets, ip, malformed, nonIP int
		links                         []int
	}{
		{"ethernet.pcap", 9, 4, 0, 3, []int{packet.LinkEthernet}},
		{"vlan.pcap", 12, 12, 0, 0, []int{packet.LinkEthernet}},
		{"sll.pcap", 4, 4, 0, 0, []int{packet.LinkSLL}},
		{"sll2.pcap", 4, 4, 0, 0, []int{packet.LinkSLL2}},
		{"raw101.pcap", 4, 4, 0, 0, []int{packet.LinkRaw}},
		{"raw228.pcap", 2, 2, 0, 0, []int{packet.LinkIPv4}},
		{"raw229.pcap", 2, 2, 0, 0, []int{packet.LinkIPv6}},
		{"null.pcap", 4, 4, 0, 0, []int{packet.LinkNull}},
		{"fragments.pcap", 5, 5, 0, 0, []int{packet.LinkEthernet}},
		{"truncated.pcap", 3, 1, 2, 0, []int{packet.LinkEthernet}},
		{"bigsnap.pcap", 1, 1, 0, 0, []int{packet.LinkEthernet}},
		{"mixed-linktypes.pcapng", 4, 4, 0, 0, []int{packet.LinkEthernet, packet.LinkIPv4}},
	}
	r, _, _ := setup(t, replay.Options{ForceENI: "eni-web", ForceDirection: model.Ingress})
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			var ip, mal, nonIP int
			links := map[int]bool{}
			src, err := replay.Open(filepath.Join("..", "testdata", "pcaps", tc.file))
			require.NoError(t, err)
			for {
				_, _, link, err := src.Next()
				if err != nil {
					break
				}
				links[link] = true
			}
			src.Close()
			for _, l := range tc.links {
				assert.True(t, links[l], "link type %d present", l)
			}
			sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{filepath.Join("..", "testdata", "pcaps", tc.file)},
				OnResult: func(res *replay.Result) {
					switch res.Packet.Class {
					case packet.ClassIP:
						ip++
					case packet.ClassMalformed:
						mal++
						assert.Equal(t, dataplane.ReasonMalformed, res.Checks[0].Verdict.Reason)
					case packet.ClassNotIP:
						nonIP++
					}
				}})
			require.NoError(t, err)
			assert.Equal(t, tc.packets, sum.Packets)
			assert.Equal(t, tc.ip, ip, "IP packets")
			assert.Equal(t, tc.malformed, mal, "malformed")
			assert.Equal(t, tc.nonIP, nonIP, "not-ip")
		})
	}
}

// TestDemoCapture replays the demo capture against the demo topology and checks its expectations.
func TestDemoCapture(t *testing.T) {
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	e := dataplane.NewEngine(dataplane.ClassifierFactory)
	e.Publish(1, compiler.New(st).CompileAll(), nil)
	r, err := replay.New(st, e, replay.Options{})
	require.NoError(t, err)
	ex, err := replay.LoadExpectations(filepath.Join("..", "testdata", "pcaps", "demo.expect.yaml"))
	require.NoError(t, err)
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")},
		OnResult: func(res *replay.Result) { ex.Observe(r, res) }})
	require.NoError(t, err)
	assert.Empty(t, ex.Failures())
	assert.Equal(t, [3]int{12, 7, 1}, sum.ByVerdict)
	assert.Equal(t, 1, sum.Rows[replay.SummaryKey{ENI: "eni-web2", Direction: model.Ingress, Reason: dataplane.ReasonRule, Action: model.Drop, SgID: "sg-lockdown", RuleIndex: 0}])
	assert.Equal(t, 2, sum.Rows[replay.SummaryKey{ENI: "eni-web1", Direction: model.Ingress, Reason: dataplane.ReasonDefaultDrop, Action: model.Drop, RuleIndex: -1}])
	assert.Equal(t, 2, sum.Rows[replay.SummaryKey{ENI: "eni-web1", Direction: model.Egress, Reason: dataplane.ReasonEstablished, Action: model.Accept, RuleIndex: -1}])
	total := 0
	for _, n := range sum.Rows {
		total += n
	}
	assert.Equal(t, 21, total, "19 managed packets; #4 and #5 are checked on two ENIs")
}

// statelessDecider decides each Ethernet frame against the compiled tables with no connection
// tracking: a Decider that differs from the Go engine exactly where the Go engine answers from conntrack.
type statelessDecider struct {
	tables map[string]*compiler.Tables
	calls  int
}

func (s *statelessDecider) Decide(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
	s.calls++
	var d packet.Decoded
	packet.Decode(packet.LinkEthernet, frame, &d)
	switch d.Class {
	case packet.ClassARP:
		return replay.Decision{Accept: true, Reason: dataplane.ReasonARP, Entry: -1}, nil
	case packet.ClassND:
		return replay.Decision{Accept: true, Reason: dataplane.ReasonND, Entry: -1}, nil
	case packet.ClassNotIP:
		return replay.Decision{Reason: dataplane.ReasonNotIP, Entry: -1}, nil
	case packet.ClassMalformed:
		return replay.Decision{Reason: dataplane.ReasonMalformed, Entry: -1}, nil
	}
	remote := d.Src
	if dir == model.Egress {
		remote = d.Dst
	}
	p := dataplane.Packet{Remote: remote, Proto: d.Proto, Port: d.DstPort, HasPort: d.HasPorts && (d.Proto == packet.ProtoTCP || d.Proto == packet.ProtoUDP)}
	tab := s.tables[eni].Get(dir)
	v := dataplane.VerdictOf(tab, dataplane.NewLinearTable(tab).Lookup(&p))
	return replay.Decision{Accept: v.Action == model.Accept, Reason: v.Reason, Entry: v.Entry}, nil
}

type decideFunc func(frame []byte, eni string, dir model.Direction) (replay.Decision, error)

func (f decideFunc) Decide(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
	return f(frame, eni, dir)
}

func demoReplayer(t *testing.T, opts replay.Options) (*replay.Replayer, map[string]*compiler.Tables) {
	t.Helper()
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	tables := compiler.New(st).CompileAll()
	e := dataplane.NewEngine(dataplane.ClassifierFactory)
	e.Publish(1, tables, nil)
	r, err := replay.New(st, e, opts)
	require.NoError(t, err)
	return r, tables
}

var demoPcap = []string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")}

// TestCompareReportsDisagreements: DecideWithBoth keeps the Go verdicts and marks exactly the checks
// where the Decider differs; here the stateless decider differs on the two replies the Go engine
// answers from conntrack.
func TestCompareReportsDisagreements(t *testing.T) {
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	dec := &statelessDecider{tables: compiler.New(st).CompileAll()}
	r, _ := demoReplayer(t, replay.Options{DecideWith: replay.DecideWithBoth, Decider: dec})
	goOnly, _ := demoReplayer(t, replay.Options{})

	var lines []string
	var verdicts []replay.Verdict
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap, OnResult: func(res *replay.Result) {
		verdicts = append(verdicts, res.Verdict)
		lines = append(lines, replay.Disagreements(r, res, "go", "stub")...)
	}})
	require.NoError(t, err)
	var want []replay.Verdict
	var estPackets, estChecks int
	goSum, err := replay.Run(context.Background(), goOnly, replay.RunConfig{Pcaps: demoPcap, OnResult: func(res *replay.Result) {
		want = append(want, res.Verdict)
		n := 0
		for i := 0; i < res.NChecks; i++ {
			if res.Checks[i].Verdict.Reason == dataplane.ReasonEstablished {
				n++
			}
		}
		estChecks += n
		if n > 0 {
			estPackets++
		}
	}})
	require.NoError(t, err)
	assert.Equal(t, want, verdicts, "the results are the Go engine's")
	assert.Equal(t, goSum.Rows, sum.Rows)

	require.Equal(t, [2]int{4, 5}, [2]int{estPackets, estChecks}, "the demo's replies answered from conntrack")
	assert.Equal(t, estPackets, sum.Disagreements)
	assert.Equal(t, estPackets, sum.ConntrackDisagreements, "only conntrack answers differ")
	require.Len(t, lines, estChecks)
	for _, l := range lines {
		assert.Regexp(t, `^packet \d+ (tcp|icmp) .*: eni-\w+ (ingress|egress): go ACCEPT established, stub (ACCEPT sg-\w+ rule \d+|DROP default-drop) \(entry \d+\)$`, l)
	}
	assert.Contains(t, lines, "packet 5 tcp 198.18.2.10:5432 > 198.18.1.10:40200: eni-web1 ingress: go ACCEPT established, stub DROP default-drop (entry 6)")
	assert.Equal(t, 21, dec.calls, "every Go check is asked")
	assert.Equal(t, replay.DeciderStats{Asked: 21}, r.DeciderStats())
}

// TestDeciderEngineNamesRules: with DecideWithDecider every check is the Decider's, named through the
// compiled table like the Go engine's; the stateless decider gives what the Go engine gives stateless.
func TestDeciderEngineNamesRules(t *testing.T) {
	_, tables := demoReplayer(t, replay.Options{})
	r, _ := demoReplayer(t, replay.Options{DecideWith: replay.DecideWithDecider, Decider: &statelessDecider{tables: tables}})
	stateless, _ := demoReplayer(t, replay.Options{Stateless: true})
	var got, want []string
	collect := func(r *replay.Replayer, into *[]string) func(*replay.Result) {
		return func(res *replay.Result) { *into = append(*into, string(replay.AppendHuman(nil, r, res))) }
	}
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap, OnResult: collect(r, &got)})
	require.NoError(t, err)
	wantSum, err := replay.Run(context.Background(), stateless, replay.RunConfig{Pcaps: demoPcap, OnResult: collect(stateless, &want)})
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Equal(t, wantSum.Rows, sum.Rows)
	assert.Zero(t, r.ConnStats(), "the Decider tracks, not replay")
}

// TestCompareDisagreementKinds: action, reason and entry each count as a disagreement.
func TestCompareDisagreementKinds(t *testing.T) {
	_, tables := demoReplayer(t, replay.Options{})
	honest := &statelessDecider{tables: tables}
	tests := []struct {
		name   string
		change func(*replay.Decision)
	}{
		{"action", func(d *replay.Decision) { d.Accept = !d.Accept }},
		{"reason", func(d *replay.Decision) { d.Reason = dataplane.ReasonNoSG }},
		{"entry", func(d *replay.Decision) {
			if d.Entry > 0 {
				d.Entry--
			} else if d.Entry == 0 {
				d.Entry++
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Ingress, DecideWith: replay.DecideWithBoth,
				Decider: decideFunc(func(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
					d, err := honest.Decide(frame, eni, dir)
					if d.Reason == dataplane.ReasonRule {
						tc.change(&d)
					}
					return d, err
				})})
			sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap})
			require.NoError(t, err)
			assert.Positive(t, sum.Disagreements)
			assert.Zero(t, sum.ConntrackDisagreements)
		})
	}
}

func TestDeciderFailures(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		engine  replay.DecideWith
		decide  decideFunc
		wantErr string
		notRun  int
	}{
		{"error", replay.DecideWithDecider, func([]byte, string, model.Direction) (replay.Decision, error) { return replay.Decision{}, boom },
			"demo.pcap: packet 0: eni-web1 ingress: boom", 0},
		{"refused IP frame", replay.DecideWithBoth, func([]byte, string, model.Direction) (replay.Decision, error) {
			return replay.Decision{}, fmt.Errorf("too big: %w", replay.ErrRefused)
		}, "packet 0: eni-web1 ingress: too big: decider cannot run this frame", 0},
		{"entry beyond the table", replay.DecideWithDecider, func([]byte, string, model.Direction) (replay.Decision, error) {
			return replay.Decision{Reason: dataplane.ReasonRule, Entry: 1 << 20}, nil
		}, "eni-web1 ingress: decider named entry 1048576, the table has", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Ingress, DecideWith: tc.engine, Decider: tc.decide})
			_, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap})
			require.ErrorContains(t, err, tc.wantErr)
		})
	}

	// A refused frame the decoder calls malformed keeps the decoder's verdict, and is counted.
	_, tables := demoReplayer(t, replay.Options{})
	honest := &statelessDecider{tables: tables}
	r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Ingress, DecideWith: replay.DecideWithDecider,
		Decider: decideFunc(func(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
			var d packet.Decoded
			packet.Decode(packet.LinkEthernet, frame, &d)
			if d.Class == packet.ClassMalformed {
				return replay.Decision{}, fmt.Errorf("short IP header: %w", replay.ErrRefused)
			}
			return honest.Decide(frame, eni, dir)
		})})
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{filepath.Join("..", "testdata", "pcaps", "truncated.pcap")}})
	require.NoError(t, err)
	assert.Equal(t, replay.DeciderStats{Asked: 1, NotRun: 2}, r.DeciderStats())
	assert.Equal(t, 2, sum.Rows[replay.SummaryKey{ENI: "eni-web1", Direction: model.Ingress, Reason: dataplane.ReasonMalformed, Action: model.Drop, RuleIndex: -1}])
}

func TestEngineOptions(t *testing.T) {
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	e := dataplane.NewEngine(dataplane.ClassifierFactory)
	_, err = replay.New(st, e, replay.Options{DecideWith: replay.DecideWithDecider})
	require.ErrorContains(t, err, "needs a Decider")
	_, err = replay.New(st, e, replay.Options{DecideWith: 9, Decider: decideFunc(nil)})
	require.ErrorContains(t, err, "unknown")
}

// TestDeciderSeesEthernet: every link type replay reads reaches the Decider as an Ethernet frame
// that decodes to the same packet.
func TestDeciderSeesEthernet(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "pcaps", "*.pcap*"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var seen packet.Decoded
			r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Egress, DecideWith: replay.DecideWithBoth,
				Decider: decideFunc(func(frame []byte, _ string, _ model.Direction) (replay.Decision, error) {
					packet.Decode(packet.LinkEthernet, frame, &seen)
					return replay.Decision{Entry: -1}, nil
				})})
			_, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{f}, OnResult: func(res *replay.Result) {
				if !res.Checks[0].Compared {
					assert.Equal(t, packet.ClassMalformed, res.Packet.Class, "only a frame without an Ethernet form is not asked")
					return
				}
				want := res.Packet
				// What only the link header carried: the cooked and loopback headers have no destination MAC.
				want.HasMAC, want.SrcMAC, want.DstMAC = seen.HasMAC, seen.SrcMAC, seen.DstMAC
				assert.Equal(t, want, seen, "packet %d", res.Index)
			}})
			require.NoError(t, err)
		})
	}
}

// TestRunProgress: given a writer, a replay long enough shows the bar (packets, rate) and ends with a
// line saying how many packets it replayed; the per-packet output is not touched by it.
func TestRunProgress(t *testing.T) {
	frames := make([][]byte, 10_000)
	for i := range frames {
		frames[i] = tcp(out, web, uint16(10000+i), 80, packet.TCPSyn)
	}
	pc := filepath.Join(t.TempDir(), "long.pcap")
	writePcap(t, pc, layers.LinkTypeEthernet, frames...)
	r, _, _ := setup(t, replay.Options{})
	var progress, lines strings.Builder
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{pc}, Out: &lines, JSON: true, Progress: &progress})
	require.NoError(t, err)
	assert.Equal(t, 10_000, sum.Packets)
	assert.Contains(t, progress.String(), "long.pcap: 4096 packets")
	assert.Contains(t, progress.String(), "pkt/s")
	assert.True(t, strings.HasSuffix(progress.String(), "replay: 10000 packets done\n"), progress.String())
	assert.NotContains(t, lines.String(), "pkt/s")
	assert.Equal(t, 10_000, strings.Count(lines.String(), "\n"))
}

// TestRunWriteErrors: a --write-* file that cannot be written fails the replay, naming the file
// (it used to count the packets as skipped).
func TestRunWriteErrors(t *testing.T) {
	pc := filepath.Join(t.TempDir(), "in.pcap")
	writePcap(t, pc, layers.LinkTypeEthernet, tcp(out, web, 40000, 80, packet.TCPSyn))
	r, _, _ := setup(t, replay.Options{})
	_, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{pc}, WriteAccepted: "/dev/full"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "write /dev/full")
}

// TestWriteFilesCheckedFirst: a run whose capture does not open, or whose --write-* file is a capture
// or the other output, fails before any output file is created or emptied.
func TestWriteFilesCheckedFirst(t *testing.T) {
	dir := t.TempDir()
	capture, err := os.ReadFile(filepath.Join("..", "testdata", "pcaps", "demo.pcap"))
	require.NoError(t, err)
	in, keep := filepath.Join(dir, "in.pcap"), filepath.Join(dir, "keep.pcap")
	require.NoError(t, os.WriteFile(in, capture, 0o600))
	require.NoError(t, os.WriteFile(keep, capture, 0o600))
	for _, tc := range []struct {
		name      string
		cfg       replay.RunConfig
		want      string
		untouched string
	}{
		{"a capture that does not open", replay.RunConfig{Pcaps: []string{filepath.Join(dir, "missing.pcap")}, WriteAccepted: keep},
			"no such file", keep},
		{"an output that is the capture", replay.RunConfig{Pcaps: []string{in}, WriteDropped: in},
			"--write-dropped " + in + ": is the capture " + in, in},
		{"one file for both outputs", replay.RunConfig{Pcaps: []string{in}, WriteAccepted: keep, WriteDropped: dir + "/./keep.pcap"},
			"--write-accepted " + keep + ": is --write-dropped's file too", keep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := demoReplayer(t, replay.Options{})
			_, err := replay.Run(context.Background(), r, tc.cfg)
			require.ErrorContains(t, err, tc.want)
			got, err := os.ReadFile(tc.untouched)
			require.NoError(t, err)
			assert.Equal(t, capture, got, "left as it was")
		})
	}
}

// TestParseExpectationsSaysWhere: a fault in an expectations file is named by its place in whichever
// form the file takes.
func TestParseExpectationsSaysWhere(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"expect: [{index: 1, verdit: ACCEPT}]\n", `x.yaml: want a list of {index|flow, verdict} or {expect: [...]}: expect[0]: unknown field "verdit"`},
		{"- {index: 1, verdict: ACCEPT}\n- {index: x, verdict: DROP}\n", "[1].index: expected an integer, got a string"},
		{"expect: {index: 1}\n", "expect: expected an array, got an object"},
	} {
		_, err := replay.ParseExpectations("x.yaml", []byte(tc.in))
		assert.ErrorContains(t, err, tc.want, "%q", tc.in)
	}
}

// TestReplayFromAPipe: a capture read from a pipe (a shell's <(…)) is read once, with --write-* files
// too: nothing is read from it ahead of the run.
func TestReplayFromAPipe(t *testing.T) {
	capture, err := os.ReadFile(filepath.Join("..", "testdata", "pcaps", "demo.pcap"))
	require.NoError(t, err)
	fifo := filepath.Join(t.TempDir(), "capture")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer f.Close()
		_, _ = f.Write(capture)
	}()
	r, _ := demoReplayer(t, replay.Options{})
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{fifo}, WriteAccepted: filepath.Join(t.TempDir(), "acc.pcap")})
	require.NoError(t, err)
	assert.Positive(t, sum.Packets)
}
