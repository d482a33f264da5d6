// Command gen writes the project's own test captures into testdata/pcaps: every link type the replay
// decoder reads, VLAN and QinQ tags, IPv4 and IPv6 with extension headers, fragments, truncated
// packets, a mixed-link-type pcapng, a pcap whose packets exceed its header's snaplen, and the demo
// capture for testdata/demo.json. Output is deterministic: run `go run ./testdata/gen` from the repo
// root and commit the result.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
)

var (
	client  = netip.MustParseAddr("198.19.5.7")
	client2 = netip.MustParseAddr("198.19.5.8")
	blocked = netip.MustParseAddr("198.18.66.9")
	web1    = netip.MustParseAddr("198.18.1.10")
	web2    = netip.MustParseAddr("198.18.1.11")
	db1     = netip.MustParseAddr("198.18.2.10")
	spare   = netip.MustParseAddr("198.18.3.10")
	client6 = netip.MustParseAddr("2001:db8:ff::7")
	web16   = netip.MustParseAddr("2001:db8:1::10")
	macWeb1 = craft.MAC("02:00:00:00:01:01")
	macWeb2 = craft.MAC("02:00:00:00:01:02")
	macDB1  = craft.MAC("02:00:00:00:02:01")
	macSpr  = craft.MAC("02:00:00:00:03:01")
	macGW   = craft.MAC("02:00:00:00:ff:fe")
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

type frame struct {
	link int
	data []byte
	orig int // original length when the capture truncated the frame (0 = not truncated)
}

func main() {
	out := flag.String("out", "testdata/pcaps", "output directory")
	flag.Parse()
	if err := run(*out); err != nil {
		slog.Error("gen failed", "err", err)
		os.Exit(1)
	}
}

func ip4tcp(src, dst netip.Addr, sp, dp uint16, fl uint8) []byte {
	return craft.IPv4(src, dst, packet.ProtoTCP, craft.TCP(sp, dp, fl, nil), nil)
}

func ethTo(dst, src [6]byte, ip []byte, tags ...[2]uint16) []byte {
	return craft.Ethernet(dst, src, craft.EtherTypeOf(ip), tags, ip)
}

func run(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tcp4 := ip4tcp(client, web1, 40000, 80, packet.TCPSyn)
	udp6 := craft.IPv6(client6, web16, packet.ProtoUDP, craft.UDP(5353, 53, []byte("query")),
		[]craft.Ext{{Type: 0}, {Type: 43, Len: 1}, {Type: 60}}, nil)
	ping := craft.IPv4(client, web1, packet.ProtoICMP, craft.Echo(8, 1, 1), nil)
	icmp6 := craft.IPv6(client6, web16, packet.ProtoICMPv6, craft.Echo(128, 1, 1), nil, nil)
	mixed := [][]byte{tcp4, udp6, ping, icmp6}

	files := map[string][]frame{}
	for _, ip := range mixed {
		files["ethernet.pcap"] = append(files["ethernet.pcap"], frame{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, ip)})
		files["sll.pcap"] = append(files["sll.pcap"], frame{link: packet.LinkSLL, data: craft.SLL(macGW, craft.EtherTypeOf(ip), ip)})
		files["sll2.pcap"] = append(files["sll2.pcap"], frame{link: packet.LinkSLL2, data: craft.SLL2(macGW, craft.EtherTypeOf(ip), 2, ip)})
		files["raw101.pcap"] = append(files["raw101.pcap"], frame{link: packet.LinkRaw, data: ip})
		files["null.pcap"] = append(files["null.pcap"], frame{link: packet.LinkNull, data: append(nullHdr(ip), ip...)})
		files["vlan.pcap"] = append(files["vlan.pcap"],
			frame{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, ip, [2]uint16{craft.TPID8021Q, 10})},
			frame{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, ip, [2]uint16{craft.TPID8021AD, 100}, [2]uint16{craft.TPID8021Q, 10})},
			frame{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, ip, [2]uint16{craft.TPID9100, 100}, [2]uint16{craft.TPID8021Q, 10})})
		if ip[0]>>4 == 4 {
			files["raw228.pcap"] = append(files["raw228.pcap"], frame{link: packet.LinkIPv4, data: ip})
		} else {
			files["raw229.pcap"] = append(files["raw229.pcap"], frame{link: packet.LinkIPv6, data: ip})
		}
	}
	files["ethernet.pcap"] = append(files["ethernet.pcap"],
		frame{link: packet.LinkEthernet, data: craft.Ethernet([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macGW, 0x0806, nil, craft.ARP(macGW, client, web1))},
		frame{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, craft.IPv6(client6, web16, packet.ProtoICMPv6, craft.ICMP(135, 0, make([]byte, 20)), nil, nil))},
		frame{link: packet.LinkEthernet, data: craft.Ethernet(macWeb1, macGW, 0x88cc, nil, make([]byte, 32))},
		frame{link: packet.LinkEthernet, data: craft.Ethernet(macWeb1, macGW, 0x8847, nil, append([]byte{0, 0, 1, 64}, tcp4...))},
		frame{link: packet.LinkEthernet, data: craft.Ethernet(macWeb1, macGW, 46, nil, make([]byte, 46))})

	// Fragments: a UDP datagram (v4) and a TCP segment (v6) in two pieces each, plus an orphan.
	files["fragments.pcap"] = []frame{
		{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoUDP, craft.UDP(5000, 53, make([]byte, 16)), &craft.Frag{ID: 0x1234, More: true}))},
		{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoUDP, make([]byte, 24), &craft.Frag{ID: 0x1234, Offset: 3}))},
		{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, craft.IPv6(client6, web16, packet.ProtoTCP, craft.TCP(40001, 80, packet.TCPSyn, make([]byte, 12)), []craft.Ext{{Type: 0}}, &craft.Frag{ID: 77, More: true}))},
		{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, craft.IPv6(client6, web16, packet.ProtoTCP, make([]byte, 32), nil, &craft.Frag{ID: 77, Offset: 4}))},
		{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoTCP, make([]byte, 24), &craft.Frag{ID: 0x9999, Offset: 10}))},
	}

	// Truncated by the capture (snaplen): the IP or TCP header is cut.
	whole := ethTo(macWeb1, macGW, tcp4)
	files["truncated.pcap"] = []frame{
		{link: packet.LinkEthernet, data: whole[:14+10], orig: len(whole)},
		{link: packet.LinkEthernet, data: whole[:14+20+8], orig: len(whole)},
		{link: packet.LinkEthernet, data: whole},
	}
	files["demo.pcap"] = demoFrames()

	for name, frames := range files {
		snap := uint32(65535)
		if name == "truncated.pcap" {
			snap = 42
		}
		if err := writePcap(filepath.Join(dir, name), snap, frames); err != nil {
			return err
		}
	}
	// Packets longer than the header's snaplen claims (writers that do not truncate).
	big := []frame{{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoUDP, craft.UDP(1, 53, make([]byte, 200)), nil))}}
	if err := writePcap(filepath.Join(dir, "bigsnap.pcap"), 64, big); err != nil {
		return err
	}
	// One pcapng file, two interfaces with different link types.
	ng := []frame{
		{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, tcp4)},
		{link: packet.LinkIPv4, data: ip4tcp(client, web1, 40002, 22, packet.TCPSyn)},
		{link: packet.LinkEthernet, data: ethTo(macWeb1, macGW, udp6)},
		{link: packet.LinkIPv4, data: ping},
	}
	return writeNg(filepath.Join(dir, "mixed-linktypes.pcapng"), ng)
}

func nullHdr(ip []byte) []byte {
	if ip[0]>>4 == 6 {
		return []byte{30, 0, 0, 0} // AF_INET6 on Darwin, little-endian host order
	}
	return []byte{2, 0, 0, 0}
}

// demoFrames is the capture `make demo` replays against testdata/demo.json: one example of each kind of
// decision the demo topology makes.
func demoFrames() []frame {
	e := func(dst, src [6]byte, ip []byte) frame {
		return frame{link: packet.LinkEthernet, data: ethTo(dst, src, ip)}
	}
	quoted := craft.IPv4(web1, client, packet.ProtoUDP, craft.UDP(5000, 9999, nil), nil)
	return []frame{
		e(macWeb1, macGW, ip4tcp(client, web1, 40000, 80, packet.TCPSyn)),                                                                                      // 0 http in: sg-web rule 1
		e(macGW, macWeb1, ip4tcp(web1, client, 80, 40000, packet.TCPSyn|packet.TCPAck)),                                                                        // 1 reply: established
		e(macWeb1, macGW, ip4tcp(client, web1, 40000, 80, packet.TCPAck)),                                                                                      // 2 http in again: rule 1
		e(macWeb1, macGW, ip4tcp(blocked, web1, 40100, 80, packet.TCPSyn)),                                                                                     // 3 blocklisted: sg-web rule 0 DROP
		e(macDB1, macWeb1, ip4tcp(web1, db1, 40200, 5432, packet.TCPSyn)),                                                                                      // 4 web→db: egress + ingress
		e(macWeb1, macDB1, ip4tcp(db1, web1, 5432, 40200, packet.TCPSyn|packet.TCPAck)),                                                                        // 5 db reply: established twice
		e(macDB1, macSpr, ip4tcp(spare, db1, 40300, 5432, packet.TCPSyn)),                                                                                      // 6 spare has no SG: no-sg
		e(macWeb2, macGW, ip4tcp(client, web2, 40400, 22, packet.TCPSyn)),                                                                                      // 7 lockdown: sg-lockdown rule 0
		e(macWeb1, macGW, ip4tcp(client, web1, 40500, 22, packet.TCPSyn)),                                                                                      // 8 ssh to web1: sg-ssh rule 0
		e(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoICMP, craft.Echo(8, 9, 1), nil)),                                                                // 9 ping: sg-web rule 4
		e(macGW, macWeb1, craft.IPv4(web1, client, packet.ProtoICMP, craft.Echo(0, 9, 1), nil)),                                                                // 10 pong: established
		e(macGW, macDB1, craft.IPv4(db1, client, packet.ProtoUDP, craft.UDP(5353, 53, nil), nil)),                                                              // 11 db dns out: sg-db egress rule 1
		e(macWeb1, macGW, craft.IPv6(client6, web16, packet.ProtoTCP, craft.TCP(40600, 80, packet.TCPSyn, nil), nil, nil)),                                     // 12 v6 http: rule 3
		e(macGW, macWeb1, craft.IPv4(web1, client, packet.ProtoUDP, craft.UDP(5000, 9999, nil), nil)),                                                          // 13 web udp out
		e(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoICMP, craft.ICMPError(3, 3, quoted), nil)),                                                      // 14 port unreachable: related
		{link: packet.LinkEthernet, data: craft.Ethernet([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macWeb1, 0x0806, nil, craft.ARP(macWeb1, web1, client))}, // 15 arp
		{link: packet.LinkEthernet, data: craft.Ethernet(macGW, macWeb1, 0x88cc, nil, make([]byte, 32))},                                                       // 16 lldp: not-ip
		e(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoUDP, craft.UDP(5001, 161, make([]byte, 16)), &craft.Frag{ID: 42, More: true})),                  // 17 udp first fragment: default-drop
		e(macWeb1, macGW, craft.IPv4(client, web1, packet.ProtoUDP, make([]byte, 24), &craft.Frag{ID: 42, Offset: 3})),                                         // 18 its second fragment: same
		e(macGW, macGW, ip4tcp(client, client2, 1, 2, packet.TCPSyn)),                                                                                          // 19 touches no ENI: unmanaged
	}
}

func writePcap(path string, snap uint32, frames []frame) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	bw := bufio.NewWriter(f)
	w := pcapgo.NewWriterNanos(bw)
	if err := w.WriteFileHeader(snap, layers.LinkType(frames[0].link)); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	for i, fr := range frames {
		ci := gopacket.CaptureInfo{Timestamp: epoch.Add(time.Duration(i) * 10 * time.Millisecond), CaptureLength: len(fr.data), Length: max(fr.orig, len(fr.data))}
		if err := w.WritePacket(ci, fr.data); err != nil {
			f.Close()
			return fmt.Errorf("%s: packet %d: %w", path, i, err)
		}
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

func writeNg(path string, frames []frame) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer f.Close()
	w, err := pcapgo.NewNgWriterInterface(f, pcapgo.NgInterface{Name: "eth0", LinkType: layers.LinkTypeEthernet, SnapLength: 65535},
		pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "sgsim testdata/gen"}})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	raw, err := w.AddInterface(pcapgo.NgInterface{Name: "tun0", LinkType: layers.LinkType(packet.LinkIPv4), SnapLength: 65535})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for i, fr := range frames {
		ci := gopacket.CaptureInfo{Timestamp: epoch.Add(time.Duration(i) * 10 * time.Millisecond), CaptureLength: len(fr.data), Length: len(fr.data)}
		if fr.link != packet.LinkEthernet {
			ci.InterfaceIndex = raw
		}
		if err := w.WritePacket(ci, fr.data); err != nil {
			return fmt.Errorf("%s: packet %d: %w", path, i, err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
