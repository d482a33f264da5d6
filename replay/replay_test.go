package replay_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
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

func writePcap(t testing.TB, path string, link layers.LinkType, frames ...[]byte) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	w := pcapgo.NewWriter(f)
	require.NoError(t, w.WriteFileHeader(65535, link))
	for i, fr := range frames {
		require.NoError(t, w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(int64(1700000000+i), 0), CaptureLength: len(fr), Length: len(fr)}, fr))
	}
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
