package scenario_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/scenario"
)

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
