package scenario_test

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/kerneltest"
	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/scenario"
)

// scenarioFiles lists every scenario in testdata/scenarios: each encodes a SPEC §2/§3 case or a case
// ported from OpenStack Neutron's security group tests.
func scenarioFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "testdata", "scenarios", "*.yaml"))
	require.NoError(t, err)
	jsonFiles, err := filepath.Glob(filepath.Join("..", "testdata", "scenarios", "*.json"))
	require.NoError(t, err)
	for _, f := range jsonFiles {
		if filepath.Base(f) != "lab.json" { // the shared topology, not a scenario
			files = append(files, f)
		}
	}
	require.GreaterOrEqual(t, len(files), 12)
	return files
}

// TestScenarios runs every scenario under each engine: the Go classifier, the eBPF program alone, and
// both compared check by check (a disagreement fails the scenario).
func TestScenarios(t *testing.T) {
	files := scenarioFiles(t)
	for _, engine := range []string{"go", "ebpf", "both"} {
		t.Run(engine, func(t *testing.T) {
			if engine != "go" {
				kerneltest.LoadOrSkip(t)
			}
			for _, f := range files {
				t.Run(filepath.Base(f), func(t *testing.T) {
					var log strings.Builder
					fails, err := scenario.Run(context.Background(), f, &log, scenario.Options{Engine: engine})
					require.NoError(t, err, log.String())
					assert.Empty(t, fails, log.String())
				})
			}
		})
	}
}

func TestScenarioErrors(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"no topology", "steps: []\n", "no topology"},
		{"unknown field", "topology: x.json\nbogus: 1\n", "bogus"},
		{"bad verdict", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - packets: [{proto: tcp, src: 198.19.0.1, dst: 198.18.1.10, expect: MAYBE}]\n", "MAYBE"},
		{"bad address", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - packets: [{proto: tcp, src: nope, dst: 198.18.1.10, expect: DROP}]\n", "src \"nope\""},
		{"empty step", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - name: x\n", "empty step"},
		{"two actions in a step", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - packets: [{proto: tcp, src: 198.19.0.1, dst: 198.18.1.10, expect: DROP}]\n    pcap: x.pcap\n",
			"a step does one thing"},
		{"a port out of range", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - packets: [{proto: tcp, src: 198.19.0.1, sport: 70000, dst: 198.18.1.10, expect: DROP}]\n",
			"steps[0].packets[0].sport: 70000 is out of range"},
		{"an unknown key in a step", "topology: ../../main/testdata/scenarios/lab.json\nsteps:\n  - packet: []\n", `steps[0]: unknown field "packet"`},
	}
	lab, err := filepath.Abs(filepath.Join("..", "testdata", "scenarios", "lab.json"))
	require.NoError(t, err)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testkit.WriteFile(t, "s.yaml", strings.ReplaceAll(tc.body, "../../main/testdata/scenarios/lab.json", lab))
			_, err := scenario.Run(context.Background(), p, &strings.Builder{}, scenario.Options{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), p)
		})
	}
}

// TestScenarioAbsolutePcap: a pcap step's absolute path is taken as it is, not under the scenario's
// directory.
func TestScenarioAbsolutePcap(t *testing.T) {
	demo, err := filepath.Abs(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	pcap, err := filepath.Abs(filepath.Join("..", "testdata", "pcaps", "demo.pcap"))
	require.NoError(t, err)
	p := testkit.WriteFile(t, "s.yaml", "topology: "+demo+"\nsteps:\n  - pcap: "+pcap+"\n")
	fails, err := scenario.Run(context.Background(), p, &strings.Builder{}, scenario.Options{})
	require.NoError(t, err)
	assert.Zero(t, fails)
}

func TestScenarioReportsFailures(t *testing.T) {
	lab, err := filepath.Abs(filepath.Join("..", "testdata", "scenarios", "lab.json"))
	require.NoError(t, err)
	p := testkit.WriteFile(t, "s.yaml", "topology: "+lab+`
steps:
  - packets: [{proto: tcp, src: 198.19.0.1, sport: 1, dst: 198.18.1.10, dport: 22, expect: ACCEPT}]
  - tencent: {action: ModifySecurityGroupPolicy, params: {sgId: sg-nope}}
`)
	fails, err := scenario.Run(context.Background(), p, &strings.Builder{}, scenario.Options{})
	require.NoError(t, err)
	require.Len(t, fails, 2)
	assert.Contains(t, fails[0], "want ACCEPT, got DROP")
	assert.Contains(t, fails[1], "want code 0")
}

func TestParseCall(t *testing.T) {
	tests := []struct{ in, err string }{
		{"tencent:ModifySecurityGroupPolicy?sgId=sg-web&ingress.0.action=ACCEPT", ""},
		{"huawei:sg-web:add:eni-a,eni-b", ""},
		{"tencent:?x=1", "no Action"},
		{"tencent:A?x=1&x=2", "2 times"},
		{"huawei:sg-web:add", "want huawei"},
		{"aws:Foo", "unknown dialect"},
		{"nothing", "want tencent"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			s, err := scenario.ParseCall(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.True(t, s.Tencent != nil || s.Huawei != nil)
		})
	}
}

func TestDiffDemo(t *testing.T) {
	calls := []string{
		"tencent:ModifySecurityGroupsOfNetworkInterface?networkInterfaceSet.0.networkInterfaceId=eni-web2&networkInterfaceSet.0.sgIds.0=sg-web&networkInterfaceSet.0.sgIds.1=sg-ssh",
		"tencent:ModifySecurityGroupPolicy?sgId=sg-web&ingress.0.ipProtocol=tcp&ingress.0.portRange=443&ingress.0.action=ACCEPT&egress.0.action=ACCEPT",
	}
	var steps []scenario.Step
	for _, c := range calls {
		s, err := scenario.ParseCall(c)
		require.NoError(t, err)
		steps = append(steps, s)
	}
	changes, err := scenario.Diff(context.Background(), filepath.Join("..", "testdata", "demo.json"),
		[]string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")}, steps, false, &strings.Builder{})
	require.NoError(t, err)
	got := map[string]string{}
	for _, c := range changes {
		got[c.Flow] = c.Before.String() + " (" + c.BeforeBy + ") -> " + c.After.String() + " (" + c.AfterBy + ")"
	}
	assert.Equal(t, map[string]string{
		"tcp 198.19.5.7:40000 > 198.18.1.10:80":            "ACCEPT (eni-web1 ingress ACCEPT sg-web rule 1) -> DROP (eni-web1 ingress DROP default-drop)",
		"tcp 198.19.5.7:40400 > 198.18.1.11:22":            "DROP (eni-web2 ingress DROP sg-lockdown rule 0) -> ACCEPT (eni-web2 ingress ACCEPT sg-ssh rule 0)",
		"icmp 198.19.5.7 > 198.18.1.10 type 8 code 0":      "ACCEPT (eni-web1 ingress ACCEPT sg-web rule 4) -> DROP (eni-web1 ingress DROP default-drop)",
		"tcp [2001:db8:ff::7]:40600 > [2001:db8:1::10]:80": "ACCEPT (eni-web1 ingress ACCEPT sg-web rule 3) -> DROP (eni-web1 ingress DROP default-drop)",
	}, got)

	bad, err := scenario.ParseCall("tencent:ModifySecurityGroupPolicy?sgId=sg-nope")
	require.NoError(t, err)
	_, err = scenario.Diff(context.Background(), filepath.Join("..", "testdata", "demo.json"),
		[]string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")}, []scenario.Step{bad}, false, &strings.Builder{})
	require.ErrorContains(t, err, "want code 0")
}

// FuzzParseCall: any --apply value gives a call or an error quoting it; a call is the value it was
// read from: its dialect's prefix, the Tencent action before the query and each parameter once, or
// the Huawei SG, action and ports between the colons.
func FuzzParseCall(f *testing.F) {
	f.Add("tencent:ModifySecurityGroupPolicy?sgId=sg-web")
	f.Add("huawei:sg-web:add:eni-a,eni-b")
	f.Add("tencent:A?%zz")
	f.Add("tencent:A?x=1&x=2")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := scenario.ParseCall(s)
		if err != nil {
			require.Contains(t, err.Error(), fmt.Sprintf("call %q: ", s))
			return
		}
		require.Equal(t, s, st.Name)
		switch {
		case st.Tencent != nil:
			require.Nil(t, st.Huawei)
			action, query, _ := strings.Cut(strings.TrimPrefix(s, "tencent:"), "?")
			require.True(t, strings.HasPrefix(s, "tencent:"))
			require.Equal(t, action, st.Tencent.Action)
			vals, err := url.ParseQuery(query)
			require.NoError(t, err)
			require.Len(t, st.Tencent.Params, len(vals))
			for k, v := range vals {
				require.Equal(t, []string{st.Tencent.Params[k]}, v, k)
			}
		case st.Huawei != nil:
			require.Equal(t, "huawei:"+st.Huawei.SgID+":"+st.Huawei.Action+":"+strings.Join(st.Huawei.Ports, ","), s)
		default:
			t.Fatal("call without a dialect")
		}
	})
}

// FuzzInlineFrame: any inline packet gives a frame the decoder reads back as the kind it names (for
// IP: its addresses and protocol, and the ports of TCP and UDP but in a later fragment), or an error
// naming the field at fault.
func FuzzInlineFrame(f *testing.F) {
	f.Add("", "tcp", "198.19.0.1", "198.18.1.10", uint16(1), uint16(80), "S", uint8(0), "", "")
	f.Add("", "icmp", "198.19.0.9", "198.18.1.20", uint16(0), uint16(0), "", uint8(3), "udp 198.18.1.20:5000 > 198.19.0.9:9999", "")
	f.Add("nd", "", "fe80::1", "2001:db8::10", uint16(0), uint16(0), "", uint8(0), "", "")
	f.Add("", "udp", "2001:db8::1", "2001:db8::10", uint16(0), uint16(0), "", uint8(0), "", "later")
	f.Add("arp", "", "198.19.0.1", "", uint16(0), uint16(0), "", uint8(0), "", "")
	f.Fuzz(func(t *testing.T, kind, proto, src, dst string, sport, dport uint16, flags string, icmpType uint8, quote, fragment string) {
		p := scenario.InlinePacket{Kind: kind, Proto: proto, Src: src, Dst: dst, SrcPort: sport, DstPort: dport, Flags: flags,
			ICMPType: icmpType, Quote: quote, Fragment: fragment}
		frame, err := p.Frame()
		if err != nil {
			require.Regexp(t, `^(kind|src|dst|proto|flags|fragment|fragId|quote) `, err.Error())
			return
		}
		var d packet.Decoded
		packet.Decode(packet.LinkEthernet, frame, &d)
		want := map[string]packet.Class{"arp": packet.ClassARP, "not-ip": packet.ClassNotIP,
			"malformed": packet.ClassMalformed, "nd": packet.ClassND}
		if c, ok := want[kind]; ok {
			require.Equal(t, c, d.Class, d.Detail)
			return
		}
		require.Equal(t, packet.ClassIP, d.Class, d.Detail)
		s, dd := netip.MustParseAddr(src).WithZone(""), netip.MustParseAddr(dst).WithZone("")
		require.Equal(t, s, d.Src)
		require.Equal(t, dd, d.Dst)
		if n, err := model.ParseIPProtocol(proto); err == nil {
			require.Equal(t, n, d.Proto)
		}
		if (d.Proto == packet.ProtoTCP || d.Proto == packet.ProtoUDP) && fragment != "later" {
			require.True(t, d.HasPorts)
			require.Equal(t, [2]uint16{sport, dport}, [2]uint16{d.SrcPort, d.DstPort})
		}
	})
}

// FuzzLoad: any scenario file gives a scenario or an error naming the file.
func FuzzLoad(f *testing.F) {
	f.Add("topology: lab.json\nsteps:\n  - advance: 30s\n")
	f.Add("{\"topology\": {\"accounts\": []}, \"steps\": [{\"packets\": [{\"proto\": \"tcp\"}]}]}")
	f.Add("steps: []\n")
	f.Fuzz(func(t *testing.T, body string) {
		path := testkit.WriteFile(t, "s.yaml", body)
		s, err := scenario.Load(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(s.Topology) == 0 {
			t.Fatal("a scenario without a topology loaded")
		}
	})
}

// TestInlineFrames: every kind of inline packet becomes a frame the decoder reads back as described.
func TestInlineFrames(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name string
		p    scenario.InlinePacket
		want func(t *testing.T, d *packet.Decoded)
	}{
		{"tcp syn", scenario.InlinePacket{Proto: "tcp", Src: "198.19.0.1", SrcPort: 1, Dst: "198.18.1.10", DstPort: 80, Flags: "S"},
			func(t *testing.T, d *packet.Decoded) {
				assert.Equal(t, packet.ClassIP, d.Class)
				assert.Equal(t, packet.Tuple{Src: a("198.19.0.1"), Dst: a("198.18.1.10"), SrcPort: 1, DstPort: 80, Proto: packet.ProtoTCP, HasPorts: true}, d.Tuple)
				assert.Equal(t, uint8(packet.TCPSyn), d.TCPFlags)
			}},
		{"udp v6", scenario.InlinePacket{Proto: "udp", Src: "2001:db8::1", SrcPort: 5, Dst: "2001:db8::10", DstPort: 53},
			func(t *testing.T, d *packet.Decoded) {
				assert.Equal(t, packet.Tuple{Src: a("2001:db8::1"), Dst: a("2001:db8::10"), SrcPort: 5, DstPort: 53, Proto: packet.ProtoUDP, HasPorts: true}, d.Tuple)
			}},
		{"echo", scenario.InlinePacket{Proto: "icmp", Src: "198.18.1.20", Dst: "198.19.0.1", ICMPType: 8, SrcPort: 5},
			func(t *testing.T, d *packet.Decoded) {
				assert.True(t, d.IsICMP)
				assert.Equal(t, uint16(5), d.ICMPID)
				assert.Equal(t, uint8(8), d.ICMPType)
			}},
		{"icmp error quoting udp", scenario.InlinePacket{Proto: "icmp", Src: "198.19.0.9", Dst: "198.18.1.20", ICMPType: 3, ICMPCode: 3,
			Quote: "udp 198.18.1.20:5000 > 198.19.0.9:9999"},
			func(t *testing.T, d *packet.Decoded) {
				require.True(t, d.ICMPError)
				require.True(t, d.HasInner)
				assert.Equal(t, packet.Tuple{Src: a("198.18.1.20"), Dst: a("198.19.0.9"), SrcPort: 5000, DstPort: 9999, Proto: packet.ProtoUDP, HasPorts: true}, d.Inner)
			}},
		{"first fragment", scenario.InlinePacket{Proto: "tcp", Src: "198.19.0.1", SrcPort: 1, Dst: "198.18.1.10", DstPort: 80, Fragment: "first", FragID: 7},
			func(t *testing.T, d *packet.Decoded) {
				assert.True(t, d.Fragment && d.FirstFragment && d.HasPorts)
				assert.Equal(t, uint32(7), d.FragID)
			}},
		{"later fragment v6", scenario.InlinePacket{Proto: "tcp", Src: "2001:db8::1", Dst: "2001:db8::10", Fragment: "later", FragID: 70000},
			func(t *testing.T, d *packet.Decoded) {
				assert.True(t, d.Fragment)
				assert.False(t, d.FirstFragment || d.HasPorts)
				assert.Equal(t, uint32(70000), d.FragID)
			}},
		{"arp", scenario.InlinePacket{Kind: "arp"}, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, packet.ClassARP, d.Class) }},
		{"nd", scenario.InlinePacket{Kind: "nd", Src: "fe80::1", Dst: "2001:db8::10"},
			func(t *testing.T, d *packet.Decoded) { assert.Equal(t, packet.ClassND, d.Class) }},
		{"not-ip", scenario.InlinePacket{Kind: "not-ip"}, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, packet.ClassNotIP, d.Class) }},
		{"malformed", scenario.InlinePacket{Kind: "malformed"}, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, packet.ClassMalformed, d.Class) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame, err := tt.p.Frame()
			require.NoError(t, err)
			var d packet.Decoded
			packet.Decode(packet.LinkEthernet, frame, &d)
			tt.want(t, &d)
		})
	}
}

func TestInlineFrameErrors(t *testing.T) {
	tests := []struct {
		name string
		p    scenario.InlinePacket
		want string
	}{
		{"kind", scenario.InlinePacket{Kind: "tcp"}, `kind "tcp"`},
		{"src", scenario.InlinePacket{Proto: "tcp", Src: "x", Dst: "198.18.1.10"}, `src "x"`},
		{"families", scenario.InlinePacket{Proto: "tcp", Src: "::1", Dst: "198.18.1.10"}, "different address families"},
		{"proto", scenario.InlinePacket{Proto: "sctpx", Src: "198.18.1.1", Dst: "198.18.1.10"}, `proto "sctpx"`},
		{"flags", scenario.InlinePacket{Proto: "tcp", Src: "198.18.1.1", Dst: "198.18.1.10", Flags: "SX"}, `flags "SX"`},
		{"fragment", scenario.InlinePacket{Proto: "tcp", Src: "198.18.1.1", Dst: "198.18.1.10", Fragment: "middle"}, `fragment "middle"`},
		{"v4 frag id", scenario.InlinePacket{Proto: "tcp", Src: "198.18.1.1", Dst: "198.18.1.10", Fragment: "later", FragID: 1 << 16}, "16 bits"},
		{"quote", scenario.InlinePacket{Proto: "icmp", Src: "198.18.1.1", Dst: "198.18.1.10", ICMPType: 3, Quote: "udp a > b"}, `quote "udp a > b"`},
		{"nd v4", scenario.InlinePacket{Kind: "nd", Src: "198.18.1.1", Dst: "198.18.1.10"}, "not IPv6"},
		{"arp v6", scenario.InlinePacket{Kind: "arp", Src: "::1"}, "want an IPv4 address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.p.Frame()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}
