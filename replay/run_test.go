package replay_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/replay"
)

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
