package main

import (
	"bufio"
	"encoding/json"
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

	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
)

// synPcap writes n TCP SYNs to the demo's eni-web1 (port 80, accepted) as a pcap of link type link
// and returns its path.
func synPcap(t *testing.T, n int, link layers.LinkType) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "syn.pcap")
	f, err := os.Create(path)
	require.NoError(t, err)
	bw := bufio.NewWriter(f)
	w := pcapgo.NewWriter(bw)
	require.NoError(t, w.WriteFileHeader(65535, link))
	src, dst := netip.MustParseAddr("198.19.5.7"), netip.MustParseAddr("198.18.1.10")
	for i := range n {
		ip := craft.IPv4(src, dst, packet.ProtoTCP, craft.TCP(uint16(10000+i%50000), 80, packet.TCPSyn, nil), nil)
		fr := craft.Ethernet(craft.MAC("02:00:00:00:00:01"), craft.MAC("02:00:00:00:00:09"), 0x0800, nil, ip)
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1_700_000_000, int64(i)*1000), CaptureLength: len(fr), Length: len(fr)}
		require.NoError(t, w.WritePacket(ci, fr))
	}
	require.NoError(t, bw.Flush())
	require.NoError(t, f.Close())
	return path
}

// TestReplayStopsWhole: a capture whose last record is cut short (issue 17 item 7) fails, but only
// after every packet before it is out as a whole line (JSON objects that parse, past the output
// buffer's size) and, without --json, the summary of those packets.
func TestReplayStopsWhole(t *testing.T) {
	const n = 2000 // ~100 bytes of JSON each: several times the 64 KiB output buffer
	path := synPcap(t, n, layers.LinkTypeEthernet)
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, st.Size()-10))

	out, _, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path, "--json")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "truncated capture")
	assert.Contains(t, err.Error(), "stopped after 1999 packet(s)")
	require.True(t, strings.HasSuffix(out, "}\n"), "the output ends with a whole object")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, n-1)
	for i, line := range lines {
		var obj struct {
			Index   int    `json:"index"`
			Verdict string `json:"verdict"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &obj), "line %d: %s", i, line)
		require.Equal(t, i, obj.Index)
		require.Equal(t, "ACCEPT", obj.Verdict)
	}

	out, _, err = runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path)
	require.Error(t, err)
	assert.Contains(t, out, "\n1999 packets: 1999 accepted, 0 dropped, 0 unmanaged\n")
	assert.Regexp(t, `eni-web1\s+ingress\s+sg-web rule 1\s+ACCEPT\s+1999`, out)

	// A capture that fails before its first packet prints nothing on stdout.
	empty := filepath.Join(t.TempDir(), "empty.pcap")
	require.NoError(t, os.WriteFile(empty, []byte("not a capture at all"), 0o600))
	out, _, err = runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", empty)
	require.Error(t, err)
	assert.Empty(t, out)
}

// TestReplaySaysWhyUnmanaged: frames of a link type replay cannot read (802.11 here) are UNMANAGED,
// and stderr says so once per capture, naming the link type and the count (issue 17 item 9).
func TestReplaySaysWhyUnmanaged(t *testing.T) {
	path := synPcap(t, 3, layers.LinkTypeIEEE802_11)
	out, stderr, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path)
	require.NoError(t, err)
	assert.Contains(t, out, "3 packets: 0 accepted, 0 dropped, 3 unmanaged")
	assert.Equal(t, path+": 3 packet(s) of link type 105 ("+layers.LinkTypeIEEE802_11.String()+") are UNMANAGED: replay reads "+
		"Ethernet, Linux cooked (SLL, SLL2), raw IP and loopback captures only, so it finds no addresses in them\n", stderr)

	_, stderr, err = runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", synPcap(t, 3, layers.LinkTypeEthernet))
	require.NoError(t, err)
	assert.Empty(t, stderr, "readable captures get no warning")
}

// TestReplayNoProgressOffTerminal: with stderr a file or a pipe there is no progress bar, even on a
// replay long enough to show one on a terminal.
func TestReplayNoProgressOffTerminal(t *testing.T) {
	path := synPcap(t, 10_000, layers.LinkTypeEthernet)
	errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	require.NoError(t, err)
	defer errFile.Close()
	require.NoError(t, runReplay(t.Context(), &strings.Builder{}, errFile, replayFlags{topo: demoTopology, pcaps: []string{path}, engine: "go"}))
	got, err := os.ReadFile(errFile.Name())
	require.NoError(t, err)
	assert.Empty(t, string(got))

	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	defer pr.Close()
	defer pw.Close()
	for _, w := range []*os.File{errFile, pw} {
		assert.Nil(t, progressWriter(w, false))
		assert.Nil(t, progressWriter(w, true))
	}
}
