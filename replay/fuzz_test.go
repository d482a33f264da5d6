package replay_test

import (
	"errors"
	"fmt"
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

	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/replay"
)

// FuzzParseFlowPattern: any string gives a pattern or an error quoting it.
func FuzzParseFlowPattern(f *testing.F) {
	for _, s := range []string{"tcp * > 198.18.1.10:80", "* 198.19.0.0/16 > *:*", "udp [2001:db8::1]:53 > *", "6 a > b", "tcp * > [::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := replay.ParseFlowPattern(s)
		if err != nil {
			require.Contains(t, err.Error(), fmt.Sprintf("flow %q", s), "the error quotes the pattern")
			return
		}
		require.NotNil(t, p)
	})
}

// FuzzFlowPatternMatches: a pattern written from a protocol, a source prefix and a destination
// address and port matches a packet of those and no packet of another protocol, destination port or
// source outside the prefix.
func FuzzFlowPatternMatches(f *testing.F) {
	f.Add(uint8(6), []byte{203, 0, 113, 7}, uint8(24), uint16(40000), []byte{198, 18, 1, 10}, uint16(80))
	f.Add(uint8(17), []byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(64), uint16(5353),
		[]byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}, uint16(53))
	f.Add(uint8(0), []byte{10, 0, 0, 1}, uint8(0), uint16(0), []byte{10, 0, 0, 2}, uint16(65535))
	f.Fuzz(func(t *testing.T, proto uint8, srcB []byte, bits uint8, sport uint16, dstB []byte, dport uint16) {
		src, ok1 := netip.AddrFromSlice(srcB)
		dst, ok2 := netip.AddrFromSlice(dstB)
		if !ok1 || !ok2 || src.Is4() != dst.Is4() {
			return
		}
		bits %= uint8(src.BitLen() + 1)
		prefix := netip.PrefixFrom(src, int(bits)).Masked()
		dstEnd := netip.AddrPortFrom(dst, dport).String() // [v6]:port for IPv6
		pattern := fmt.Sprintf("%d %s > %s", proto, prefix, dstEnd)
		p, err := replay.ParseFlowPattern(pattern)
		require.NoError(t, err, pattern)

		d := packet.Decoded{Class: packet.ClassIP}
		d.Proto, d.Src, d.Dst, d.SrcPort, d.DstPort, d.HasPorts = proto, src, dst, sport, dport, true
		require.True(t, p.Match(&d), "%s matches its own packet", pattern)
		other := d
		other.Proto++
		assert.False(t, p.Match(&other), "%s matches protocol %d", pattern, other.Proto)
		other = d
		other.DstPort++
		assert.False(t, p.Match(&other), "%s matches port %d", pattern, other.DstPort)
		other = d
		other.HasPorts = false
		assert.False(t, p.Match(&other), "%s matches a packet without ports", pattern)
		if int(bits) > 0 {
			// The address with the prefix's last bit flipped lies outside it.
			b := src.AsSlice()
			b[(bits-1)/8] ^= 0x80 >> ((bits - 1) % 8)
			other = d
			other.Src, _ = netip.AddrFromSlice(b)
			assert.False(t, p.Match(&other), "%s matches source %s", pattern, other.Src)
		}
		other = d
		other.Class = packet.ClassNotIP
		assert.False(t, p.Match(&other), "%s matches a frame that is not IP", pattern)
	})
}

// FuzzOpenCapture: any file opens as a capture or is refused naming the file; every frame read from
// one is at most the readers' snaplen, and reading ends at io.EOF or with an error naming the file
// and the index of the packet it stopped at.
func FuzzOpenCapture(f *testing.F) {
	f.Add(captureBytes(f, false, [][]byte{{1, 2, 3}, make([]byte, 60)}))
	f.Add(captureBytes(f, true, [][]byte{{1, 2, 3}, make([]byte, 60)}))
	f.Add([]byte{0xd4, 0xc3, 0xb2, 0xa1})
	f.Add([]byte("not a capture at all"))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "c.pcap")
		require.NoError(t, os.WriteFile(path, b, 0o600))
		src, err := replay.Open(path)
		if err != nil {
			require.Contains(t, err.Error(), path)
			require.Contains(t, err.Error(), "not a")
			return
		}
		defer src.Close()
		for n := 0; ; n++ {
			frame, _, _, err := src.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				require.Contains(t, err.Error(), fmt.Sprintf("%s: packet %d: ", path, n))
				return
			}
			require.LessOrEqual(t, len(frame), 256<<10)
			require.Less(t, n, len(b), "more packets than bytes")
		}
	})
}

// TestCutCaptureEveryLength: a pcap cut at any length reads its whole records, then ends cleanly only
// where the cut falls between records; anywhere else (inside a record's header, or after a header
// and before its data) it says the capture is truncated.
func TestCutCaptureEveryLength(t *testing.T) {
	full := captureBytes(t, false, [][]byte{{1, 2, 3}, make([]byte, 60), make([]byte, 14)})
	boundaries := map[int]int{24: 0, 24 + 16 + 3: 1, 24 + 16 + 3 + 16 + 60: 2, len(full): 3}
	for cut := 24; cut <= len(full); cut++ {
		path := filepath.Join(t.TempDir(), "c.pcap")
		require.NoError(t, os.WriteFile(path, full[:cut], 0o600))
		src, err := replay.Open(path)
		require.NoError(t, err, "cut at %d", cut)
		n := 0
		for {
			_, _, _, err = src.Next()
			if err != nil {
				break
			}
			n++
		}
		src.Close()
		if want, clean := boundaries[cut]; clean {
			assert.ErrorIs(t, err, io.EOF, "cut at %d, between records", cut)
			assert.Equal(t, want, n, "cut at %d", cut)
		} else {
			assert.ErrorContains(t, err, "truncated capture", "cut at %d, inside a record", cut)
		}
	}
}

// FuzzCaptureRoundTrip: frames written to a pcap or pcapng file by gopacket's writers read back
// whole, in order, with their timestamps and link type.
func FuzzCaptureRoundTrip(f *testing.F) {
	f.Add([]byte("abcdefghijklmnopqrstuvwxyz"), uint8(7), false, int64(1700000000123456))
	f.Add(make([]byte, 3000), uint8(255), true, int64(0))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8, ng bool, startMicros int64) {
		if startMicros < 0 || startMicros > 1<<50 {
			return
		}
		var frames [][]byte
		for size := int(cut%64) + 1; len(data) > 0; {
			n := min(size, len(data))
			frames = append(frames, data[:n])
			data = data[n:]
		}
		path := writeCapture(t, ng, frames, time.UnixMicro(startMicros))
		src, err := replay.Open(path)
		require.NoError(t, err)
		defer src.Close()
		for i, want := range frames {
			got, ts, link, err := src.Next()
			require.NoError(t, err, "packet %d", i)
			require.Equal(t, want, got, "packet %d", i)
			require.Equal(t, time.Duration(time.UnixMicro(startMicros+int64(i)).UnixNano()), ts, "packet %d", i)
			require.Equal(t, int(layers.LinkTypeEthernet), link)
		}
		_, _, _, err = src.Next()
		require.ErrorIs(t, err, io.EOF)
	})
}

// writeCapture writes frames (Ethernet, a microsecond apart from start) to a new pcap or pcapng file.
func writeCapture(t testing.TB, ng bool, frames [][]byte, start time.Time) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "w.pcap")
	out, err := os.Create(path)
	require.NoError(t, err)
	defer out.Close()
	var write func(gopacket.CaptureInfo, []byte) error
	if ng {
		w, err := pcapgo.NewNgWriter(out, layers.LinkTypeEthernet)
		require.NoError(t, err)
		defer func() { require.NoError(t, w.Flush()) }()
		write = w.WritePacket
	} else {
		w := pcapgo.NewWriter(out)
		require.NoError(t, w.WriteFileHeader(65535, layers.LinkTypeEthernet))
		write = w.WritePacket
	}
	for i, fr := range frames {
		ci := gopacket.CaptureInfo{Timestamp: start.Add(time.Duration(i) * time.Microsecond), CaptureLength: len(fr), Length: len(fr)}
		require.NoError(t, write(ci, fr))
	}
	return path
}

// captureBytes returns the bytes of a capture of frames, for seeds.
func captureBytes(t testing.TB, ng bool, frames [][]byte) []byte {
	t.Helper()
	b, err := os.ReadFile(writeCapture(t, ng, frames, time.Unix(1700000000, 0)))
	require.NoError(t, err)
	return b
}

// FuzzParseExpectations: any file content gives expectations or an error naming the file; each
// expectation accepted names one packet index (≥ 0) or one flow pattern that parses, and a verdict.
func FuzzParseExpectations(f *testing.F) {
	f.Add("- {index: 1, verdict: DROP}\n")
	f.Add("expect:\n  - flow: 'tcp * > *'\n    verdict: accept\n")
	f.Add("[{\"index\": -1, \"verdict\": \"DROP\"}]")
	f.Add("- {index: 2, flow: 'udp * > *', verdict: UNMANAGED}\n")
	f.Fuzz(func(t *testing.T, s string) {
		ex, err := replay.ParseExpectations("x.yaml", []byte(s))
		if err != nil {
			require.True(t, strings.HasPrefix(err.Error(), "x.yaml: "), "error does not name the file: %v", err)
			return
		}
		require.NotEmpty(t, ex.List)
		for i, e := range ex.List {
			require.NotEqual(t, e.Index != nil, e.Flow != "", "expectation %d: index or flow, exactly one", i)
			if e.Index != nil {
				require.GreaterOrEqual(t, *e.Index, 0, "expectation %d", i)
			} else {
				_, err := replay.ParseFlowPattern(e.Flow)
				require.NoError(t, err, "expectation %d", i)
			}
			_, ok := replay.ParseVerdict(e.Verdict)
			require.True(t, ok, "expectation %d: verdict %q", i, e.Verdict)
		}
	})
}
