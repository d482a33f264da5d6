package replay_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
	"github.com/sgsim/sgsim/replay"
)

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
