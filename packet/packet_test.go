package packet_test

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"testing"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
)

var (
	a4   = netip.MustParseAddr("198.18.1.10")
	b4   = netip.MustParseAddr("198.18.2.20")
	a6   = netip.MustParseAddr("2001:db8:1::10")
	b6   = netip.MustParseAddr("2001:db8:2::20")
	macA = craft.MAC("02:00:00:00:00:01")
	macB = craft.MAC("02:00:00:00:00:02")
)

func eth(ip []byte, tags ...[2]uint16) []byte {
	return craft.Ethernet(macB, macA, craft.EtherTypeOf(ip), tags, ip)
}

// TestDecode decodes crafted frames of every class and layout packet.Decode reads; most of its length
// is the table of cases, whose frames share the packets built at its top.
func TestDecode(t *testing.T) {
	tcp4 := craft.IPv4(a4, b4, packet.ProtoTCP, craft.TCP(40000, 80, packet.TCPSyn, nil), nil)
	udp6 := craft.IPv6(a6, b6, packet.ProtoUDP, craft.UDP(5353, 53, []byte("q")),
		[]craft.Ext{{Type: 0}, {Type: 43, Len: 1}, {Type: 60}}, nil)
	quoted := craft.IPv4(b4, a4, packet.ProtoUDP, craft.UDP(5000, 9999, nil), nil)
	unreach := craft.IPv4(a4, b4, packet.ProtoICMP, craft.ICMPError(3, 3, quoted), nil)
	quoted6 := craft.IPv6(b6, a6, packet.ProtoTCP, craft.TCP(1, 2, 0, nil), nil, nil)
	unreach6 := craft.IPv6(a6, b6, packet.ProtoICMPv6, craft.ICMPError(1, 4, quoted6), nil, nil)

	tests := []struct {
		name  string
		link  int
		frame []byte
		check func(t *testing.T, d *packet.Decoded)
	}{
		{"ethernet tcp4", packet.LinkEthernet, eth(tcp4), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.Equal(t, a4, d.Src)
			assert.Equal(t, b4, d.Dst)
			assert.Equal(t, uint8(packet.ProtoTCP), d.Proto)
			assert.True(t, d.HasPorts)
			assert.Equal(t, uint16(40000), d.SrcPort)
			assert.Equal(t, uint16(80), d.DstPort)
			assert.Equal(t, uint8(packet.TCPSyn), d.TCPFlags)
			assert.True(t, d.HasMAC)
			assert.Equal(t, macA, d.SrcMAC)
			assert.Equal(t, macB, d.DstMAC)
		}},
		{"802.1Q", packet.LinkEthernet, eth(tcp4, [2]uint16{craft.TPID8021Q, 10}), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.Equal(t, uint8(1), d.VLANs)
			assert.Equal(t, uint16(80), d.DstPort)
		}},
		{"QinQ 88a8+8100", packet.LinkEthernet, eth(tcp4, [2]uint16{craft.TPID8021AD, 100}, [2]uint16{craft.TPID8021Q, 10}), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.Equal(t, uint8(2), d.VLANs)
		}},
		{"QinQ 9100", packet.LinkEthernet, eth(tcp4, [2]uint16{craft.TPID9100, 100}, [2]uint16{craft.TPID8021Q, 10}), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
		}},
		{"sll", packet.LinkSLL, craft.SLL(macA, 0x0800, tcp4), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.Equal(t, macA, d.SrcMAC)
			assert.Equal(t, uint16(80), d.DstPort)
		}},
		{"sll2", packet.LinkSLL2, craft.SLL2(macA, 0x86dd, 3, udp6), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.Equal(t, a6, d.Src)
			assert.Equal(t, uint16(53), d.DstPort)
		}},
		{"raw 101 v6 ext headers", packet.LinkRaw, udp6, func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, uint8(packet.ProtoUDP), d.Proto)
			assert.Equal(t, uint16(5353), d.SrcPort)
		}},
		{"raw 228", packet.LinkIPv4, tcp4, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, b4, d.Dst) }},
		{"raw 229", packet.LinkIPv6, udp6, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, b6, d.Dst) }},
		{"raw 12", packet.LinkRawBSD, tcp4, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, packet.ClassIP, d.Class) }},
		{"null loopback", packet.LinkNull, append([]byte{2, 0, 0, 0}, tcp4...), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
		}},
		{"arp", packet.LinkEthernet, craft.Ethernet(macB, macA, 0x0806, nil, craft.ARP(macA, a4, b4)), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassARP, d.Class)
		}},
		{"nd", packet.LinkEthernet, eth(craft.IPv6(a6, b6, packet.ProtoICMPv6, craft.ICMP(135, 0, make([]byte, 20)), nil, nil)), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassND, d.Class)
		}},
		{"icmpv6 echo is not nd", packet.LinkIPv6, craft.IPv6(a6, b6, packet.ProtoICMPv6, craft.Echo(128, 7, 1), nil, nil), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.Equal(t, uint16(7), d.ICMPID)
		}},
		{"mpls", packet.LinkEthernet, craft.Ethernet(macB, macA, 0x8847, nil, append([]byte{0, 0, 1, 64}, tcp4...)), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassNotIP, d.Class)
		}},
		{"pppoe", packet.LinkEthernet, craft.Ethernet(macB, macA, 0x8864, nil, make([]byte, 30)), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassNotIP, d.Class)
		}},
		{"lldp", packet.LinkEthernet, craft.Ethernet(macB, macA, 0x88cc, nil, make([]byte, 30)), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassNotIP, d.Class)
		}},
		{"802.3 llc", packet.LinkEthernet, craft.Ethernet(macB, macA, 38, nil, make([]byte, 38)), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassNotIP, d.Class)
			assert.Contains(t, d.Detail, "LLC")
		}},
		{"truncated ip", packet.LinkEthernet, eth(tcp4)[:14+12], func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassMalformed, d.Class)
		}},
		{"truncated tcp", packet.LinkEthernet, eth(tcp4)[:14+20+6], func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassMalformed, d.Class)
			assert.Contains(t, d.Detail, "TCP")
		}},
		{"bad ihl", packet.LinkIPv4, append([]byte{0x41}, tcp4[1:]...), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassMalformed, d.Class)
		}},
		{"v4 first fragment", packet.LinkIPv4, craft.IPv4(a4, b4, packet.ProtoUDP, craft.UDP(1, 53, make([]byte, 16)), &craft.Frag{ID: 77, More: true}), func(t *testing.T, d *packet.Decoded) {
			assert.True(t, d.Fragment)
			assert.True(t, d.FirstFragment)
			assert.True(t, d.HasPorts)
			assert.Equal(t, uint32(77), d.FragID)
		}},
		{"v4 later fragment", packet.LinkIPv4, craft.IPv4(a4, b4, packet.ProtoUDP, make([]byte, 16), &craft.Frag{ID: 77, Offset: 3}), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.True(t, d.Fragment)
			assert.False(t, d.FirstFragment)
			assert.False(t, d.HasPorts)
			assert.Equal(t, uint8(packet.ProtoUDP), d.Proto)
		}},
		{"v6 first fragment", packet.LinkIPv6, craft.IPv6(a6, b6, packet.ProtoTCP, craft.TCP(1, 443, 0, nil), []craft.Ext{{Type: 0}}, &craft.Frag{ID: 9, More: true}), func(t *testing.T, d *packet.Decoded) {
			assert.True(t, d.FirstFragment)
			assert.Equal(t, uint16(443), d.DstPort)
		}},
		{"v6 later fragment", packet.LinkIPv6, craft.IPv6(a6, b6, packet.ProtoTCP, make([]byte, 16), nil, &craft.Frag{ID: 9, Offset: 2}), func(t *testing.T, d *packet.Decoded) {
			assert.True(t, d.Fragment)
			assert.False(t, d.FirstFragment)
			assert.False(t, d.HasPorts)
			assert.Equal(t, uint8(packet.ProtoTCP), d.Proto)
			assert.Equal(t, uint32(9), d.FragID)
		}},
		{"icmp error quotes udp", packet.LinkIPv4, unreach, func(t *testing.T, d *packet.Decoded) {
			assert.True(t, d.ICMPError)
			require.True(t, d.HasInner)
			assert.Equal(t, packet.Tuple{Src: b4, Dst: a4, SrcPort: 5000, DstPort: 9999, Proto: packet.ProtoUDP, HasPorts: true}, d.Inner)
		}},
		{"icmpv6 error quotes tcp", packet.LinkIPv6, unreach6, func(t *testing.T, d *packet.Decoded) {
			assert.True(t, d.ICMPError)
			require.True(t, d.HasInner)
			assert.Equal(t, uint16(2), d.Inner.DstPort)
			assert.Equal(t, b6, d.Inner.Src)
		}},
		{"other protocol", packet.LinkIPv4, craft.IPv4(a4, b4, 47, make([]byte, 8), nil), func(t *testing.T, d *packet.Decoded) {
			assert.Equal(t, packet.ClassIP, d.Class)
			assert.Equal(t, uint8(47), d.Proto)
			assert.False(t, d.HasPorts)
		}},
		{"unknown link type", 9999, tcp4, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, packet.ClassNotIP, d.Class) }},
		{"empty", packet.LinkEthernet, nil, func(t *testing.T, d *packet.Decoded) { assert.Equal(t, packet.ClassMalformed, d.Class) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var d packet.Decoded
			packet.Decode(tc.link, tc.frame, &d)
			tc.check(t, &d)
		})
	}
}

func TestDecodeAllocatesNothing(t *testing.T) {
	frames := [][]byte{
		eth(craft.IPv4(a4, b4, packet.ProtoTCP, craft.TCP(1, 80, packet.TCPSyn, nil), nil), [2]uint16{craft.TPID8021Q, 5}),
		craft.IPv6(a6, b6, packet.ProtoUDP, craft.UDP(1, 53, nil), []craft.Ext{{Type: 0}}, &craft.Frag{ID: 1, More: true}),
		craft.IPv4(a4, b4, packet.ProtoICMP, craft.ICMPError(3, 3, craft.IPv4(b4, a4, packet.ProtoUDP, craft.UDP(1, 2, nil), nil)), nil),
	}
	links := []int{packet.LinkEthernet, packet.LinkRaw, packet.LinkIPv4}
	var d packet.Decoded
	allocs := testing.AllocsPerRun(1000, func() {
		for i, f := range frames {
			packet.Decode(links[i], f, &d)
		}
	})
	assert.Zero(t, allocs)
}

// FuzzDecode checks that no frame of any link type makes the decoder panic, and that what it reports
// is self-consistent. Seeds: the first frames of every shared capture.
func FuzzDecode(f *testing.F) {
	perFile := map[string]int{}
	sharedFrames(f, func(file string, link int, frame []byte) {
		if perFile[file] < 4 {
			perFile[file]++
			f.Add(link, bytes.Clone(frame))
		}
	})
	f.Add(packet.LinkEthernet, eth(craft.IPv4(a4, b4, packet.ProtoTCP, craft.TCP(1, 80, 2, nil), nil)))
	f.Fuzz(func(t *testing.T, link int, frame []byte) {
		var d packet.Decoded
		packet.Decode(link, frame, &d)
		requireWellFormed(t, &d)
	})
}

// requireWellFormed checks what every decoding promises: an IP or ND packet has two addresses of one
// family, a later fragment no ports, an ICMP error's quoted tuple (when read) addresses of one family,
// and a frame the rules never see (not-ip, malformed) says why.
func requireWellFormed(t testing.TB, d *packet.Decoded) {
	t.Helper()
	switch d.Class {
	case packet.ClassIP, packet.ClassND:
		require.True(t, d.Src.IsValid() && d.Dst.IsValid() && d.Src.Is4() == d.Dst.Is4(),
			"class %v with addresses %v %v", d.Class, d.Src, d.Dst)
		require.False(t, d.Fragment && !d.FirstFragment && d.HasPorts, "a later fragment with ports")
		if d.ICMPError && d.HasInner {
			require.True(t, d.Inner.Src.IsValid() && d.Inner.Dst.IsValid() && d.Inner.Src.Is4() == d.Inner.Dst.Is4(),
				"quoted addresses %v %v", d.Inner.Src, d.Inner.Dst)
		}
	case packet.ClassMalformed, packet.ClassNotIP:
		require.NotEmpty(t, d.Detail, "no detail for a frame the rules never see")
	}
}

// sharedFrames calls fn with every frame of the shared captures that pcapgo reads (pcap and pcapng),
// with its link type, up to each file's first damaged record.
func sharedFrames(tb testing.TB, fn func(file string, link int, frame []byte)) {
	tb.Helper()
	for _, p := range testkit.SharedPcaps(tb) {
		fh, err := os.Open(p)
		require.NoError(tb, err)
		if r, err := pcapgo.NewReader(fh); err == nil {
			for {
				data, _, err := r.ZeroCopyReadPacketData()
				if err != nil {
					break
				}
				fn(p, int(r.LinkType()), data)
			}
		} else if _, err := fh.Seek(0, io.SeekStart); err == nil {
			if ng, err := pcapgo.NewNgReader(fh, pcapgo.NgReaderOptions{WantMixedLinkType: true}); err == nil {
				for {
					data, ci, err := ng.ZeroCopyReadPacketData()
					if err != nil {
						break
					}
					if intf, err := ng.Interface(ci.InterfaceIndex); err == nil {
						fn(p, int(intf.LinkType), data)
					}
				}
			}
		}
		fh.Close()
	}
}

// TestSharedCapturesDecode decodes every frame of the shared captures (tcpdump's test suite, Zeek's
// and tcpreplay's traces): each decoding is well formed and the same when repeated, most frames are
// IP, and the corpus's ARP, neighbour discovery, non-IP and malformed frames are each recognised.
func TestSharedCapturesDecode(t *testing.T) {
	classes := map[packet.Class]int{}
	total := 0
	sharedFrames(t, func(file string, link int, frame []byte) {
		var d, again packet.Decoded
		packet.Decode(link, frame, &d)
		requireWellFormed(t, &d)
		packet.Decode(link, frame, &again)
		require.Equal(t, d, again, "%s: frame %d decodes the same twice", file, total)
		classes[d.Class]++
		total++
	})
	t.Logf("%d frames: %v", total, classes)
	assert.Greater(t, classes[packet.ClassIP], total/4, "most shared frames are IP")
	for _, c := range []packet.Class{packet.ClassARP, packet.ClassND, packet.ClassNotIP, packet.ClassMalformed} {
		assert.Positive(t, classes[c], "class %v in the corpus", c)
	}
}

func BenchmarkDecode(b *testing.B) {
	f := eth(craft.IPv4(a4, b4, packet.ProtoTCP, craft.TCP(1, 80, packet.TCPSyn, nil), nil), [2]uint16{craft.TPID8021Q, 5})
	var d packet.Decoded
	b.ReportAllocs()
	for b.Loop() {
		packet.Decode(packet.LinkEthernet, f, &d)
	}
}
