package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/replay"
)

// TestCapturesMatchDecode runs every Ethernet frame of the repository's captures and the shared real
// captures through the BPF program (as eni-web1 ingress and egress) and through packet.Decode + the
// linear matcher: same class, and for IP the same deciding entry (replies the program answers from
// conntrack excepted: the Go side here is stateless).
// It stays whole: both engines and the loaded program walk the same frames in one pass.
func TestCapturesMatchDecode(t *testing.T) {
	d := loadOrSkip(t)
	s := demoState(t)
	tables := compiler.New(s).CompileAll()
	require.NoError(t, d.Publish(context.Background(), 1, tables, nil))
	files, _ := filepath.Glob("../testdata/pcaps/*.pcap*")
	if _, err := os.Stat("../../shared/data/pcaps"); err == nil {
		require.NoError(t, filepath.WalkDir("../../shared/data/pcaps", func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() && strings.Contains(filepath.Base(p), ".pcap") {
				files = append(files, p)
			}
			return err
		}))
	} else if os.Getenv("CI") == "true" {
		t.Fatalf("../shared is absent under CI")
	}
	require.NotEmpty(t, files)
	const perFile = 5000 // enough of each real capture to cover its mix, while keeping the test fast
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			src, err := replay.Open(path)
			if err != nil {
				t.Skipf("unreadable capture (some shared captures are deliberately broken): %v", err)
			}
			defer src.Close()
			require.NoError(t, d.FlushConntrack())
			var n, skipped int
			// First-fragment verdicts, which later fragments of the datagram take (SPEC §2, as replay).
			type fragKey struct {
				dir      model.Direction
				proto    uint8
				id       uint32
				src, dst netip.Addr
			}
			frags := map[fragKey]Result{}
			for n < perFile {
				fr, _, link, err := src.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Logf("stopping at a damaged record: %v", err)
					break
				}
				fr = asEthernet(fr, link)
				if fr == nil {
					continue
				}
				var dec packet.Decoded
				packet.Decode(packet.LinkEthernet, fr, &dec)
				if dec.VLANs > 4 {
					continue
				}
				for _, dir := range []model.Direction{model.Ingress, model.Egress} {
					got, err := d.Run(fr, "eni-web1", dir)
					if err != nil {
						skipped++ // frames BPF_PROG_TEST_RUN itself refuses (IP shorter than its header, oversize)
						continue
					}
					n++
					fk := fragKey{dir, dec.Proto, dec.FragID, dec.Src, dec.Dst}
					if dec.Class == packet.ClassIP && dec.Fragment && dec.FirstFragment {
						frags[fk] = got // checked below like any packet
					}
					if v, ok := frags[fk]; ok && dec.Class == packet.ClassIP && dec.Fragment && !dec.FirstFragment {
						require.Equal(t, v, got, "%s frame %d %s: a later fragment takes the first one's verdict", path, n, dir)
						continue
					}
					want := Result{Entry: -1}
					switch dec.Class {
					case packet.ClassARP:
						want = Result{Accept: true, Reason: dataplane.ReasonARP, Entry: -1}
					case packet.ClassND:
						want = Result{Accept: true, Reason: dataplane.ReasonND, Entry: -1}
					case packet.ClassNotIP:
						want.Reason = dataplane.ReasonNotIP
					case packet.ClassMalformed:
						want.Reason = dataplane.ReasonMalformed
					case packet.ClassIP:
						if got.Reason == dataplane.ReasonEstablished {
							continue
						}
						remote := dec.Src
						if dir == model.Egress {
							remote = dec.Dst
						}
						p := dataplane.Packet{Remote: remote, Proto: dec.Proto, Port: dec.DstPort, HasPort: dec.HasPorts && (dec.Proto == 6 || dec.Proto == 17)}
						tab := tables["eni-web1"].Get(dir)
						v := dataplane.VerdictOf(tab, dataplane.NewLinearTable(tab).Lookup(&p))
						want = Result{Accept: v.Action == model.Accept, Reason: v.Reason, Entry: v.Entry}
					}
					require.Equal(t, want, got, "%s frame %d %s (decoder: %+v)", path, n, dir, dec)
				}
			}
			t.Logf("%d checks agreed, %d frames refused by BPF_PROG_TEST_RUN", n, skipped)
		})
	}
}

// asEthernet returns frame as an Ethernet frame: raw IP captures get a header whose ethertype follows
// the IP version; other link types (and runts) give nil.
func asEthernet(frame []byte, link int) []byte {
	switch link {
	case packet.LinkEthernet:
		if len(frame) < 14 {
			return nil
		}
		return frame
	case packet.LinkRaw, packet.LinkRawBSD, packet.LinkRawBSD2, packet.LinkIPv4, packet.LinkIPv6:
		if len(frame) == 0 {
			return nil
		}
		eth := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00}
		if frame[0]>>4 == 6 {
			eth[12], eth[13] = 0x86, 0xdd
		}
		return append(eth, frame...)
	}
	return nil
}

// FuzzRunMatchesDecode feeds arbitrary frames to the BPF program (ingress of eni-web1) and to the Go
// decoder + linear matcher: the class of frame and, for IP, the deciding entry must agree.
func FuzzRunMatchesDecode(f *testing.F) {
	web := netip.MustParseAddr("198.18.1.10")
	for _, fr := range []frame{
		{src: netip.MustParseAddr("203.0.113.7"), dst: web, proto: 6, sport: 1, dport: 80},
		{vlans: 2, src: netip.MustParseAddr("198.18.66.1"), dst: web, proto: 17, dport: 53},
		{src: netip.MustParseAddr("2001:db8::1"), dst: netip.MustParseAddr("2001:db8:1::10"), proto: 6, dport: 80, extHdrs: 2},
		{src: netip.MustParseAddr("2001:db8::1"), dst: netip.MustParseAddr("2001:db8:1::10"), proto: 6, dport: 80}, // parse6
		{src: netip.MustParseAddr("2001:db8::1"), dst: netip.MustParseAddr("2001:db8:1::10"), proto: 17, dport: 53},
		{src: netip.MustParseAddr("2001:db8::1"), dst: netip.MustParseAddr("2001:db8:1::10"), proto: 58, icmpType: 135},
		{src: netip.MustParseAddr("203.0.113.7"), dst: web, proto: 6, fragOff: 5},
		{src: netip.MustParseAddr("203.0.113.7"), dst: web, proto: 1, icmpType: 8},
	} {
		f.Add(fr.build())
	}
	f.Add(rawFrame(0x0806, 28))
	f.Add(rawFrame(0x88cc, 20))
	d := loadOrSkip(f)
	s := demoState(f)
	tables := compiler.New(s).CompileAll()
	require.NoError(f, d.Publish(context.Background(), 1, tables, nil))
	t := tables["eni-web1"].Ingress
	f.Fuzz(func(tt *testing.T, b []byte) {
		if len(b) < 14 || len(b) > 1500 {
			return
		}
		var dec packet.Decoded
		packet.Decode(packet.LinkEthernet, b, &dec)
		got, err := d.Run(b, "eni-web1", model.Ingress)
		et := uint16(b[12])<<8 | uint16(b[13])
		if err != nil && ((et == 0x0800 && len(b) < 34) || (et == 0x86dd && len(b) < 54)) {
			return // BPF_PROG_TEST_RUN itself refuses an IP frame shorter than the IP header
		}
		require.NoError(tt, err)
		if dec.VLANs > 4 {
			return // the program looks through at most 4 tags and calls deeper stacks malformed
		}
		switch dec.Class {
		case packet.ClassARP:
			require.Equal(tt, dataplane.ReasonARP, got.Reason)
		case packet.ClassND:
			require.Equal(tt, dataplane.ReasonND, got.Reason)
		case packet.ClassNotIP:
			require.Equal(tt, dataplane.ReasonNotIP, got.Reason)
		case packet.ClassMalformed:
			require.Equal(tt, dataplane.ReasonMalformed, got.Reason, "decoder: %s", dec.Detail)
		case packet.ClassIP:
			if got.Reason == dataplane.ReasonEstablished || (dec.Fragment && !dec.FirstFragment) {
				return // state from earlier inputs: a reply of their flow, or a later fragment of theirs
			}
			p := dataplane.Packet{Remote: dec.Src, Proto: dec.Proto, Port: dec.DstPort, HasPort: dec.HasPorts}
			want := dataplane.VerdictOf(t, dataplane.NewLinearTable(t).Lookup(&p))
			require.Equal(tt, Result{Accept: want.Action == model.Accept, Reason: want.Reason, Entry: want.Entry}, got)
		}
	})
}

// FuzzDecodeDrop: any ring buffer record shorter than a drop event is refused with an error giving
// its size; any other decodes (bytes past the event ignored) into the event's fields: the ENI its slot
// names, the direction's bit, each address as its family says (none for another family), and the SG
// and rule index only for a rule's drop.
func FuzzDecodeDrop(f *testing.F) {
	f.Add(make([]byte, 160))
	f.Add([]byte{1, 2, 3})
	sgOff := int(unsafe.Offsetof(sgDropEvent{}.Sg))
	rule := make([]byte, binary.Size(sgDropEvent{})+5)
	rule[unsafe.Offsetof(sgDropEvent{}.Reason)] = byte(dataplane.ReasonRule)
	rule[unsafe.Offsetof(sgDropEvent{}.Fam)] = 4
	copy(rule[sgOff:], "sg-web")
	f.Add(rule)
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := decodeDrop(b, func(slot uint32) string { return fmt.Sprintf("eni-%d", slot) })
		size := binary.Size(sgDropEvent{})
		if len(b) < size {
			require.ErrorContains(t, err, fmt.Sprintf("drop event of %d bytes", len(b)))
			return
		}
		require.NoError(t, err)
		var raw sgDropEvent
		require.NoError(t, binary.Read(bytes.NewReader(b), binary.NativeEndian, &raw))
		assert.Equal(t, fmt.Sprintf("eni-%d", raw.Slot), ev.ENI)
		assert.Equal(t, raw.Ts, ev.KernelNS)
		assert.Equal(t, raw.Gen, ev.Generation)
		assert.Equal(t, raw.Ifindex, ev.Ifindex)
		assert.Equal(t, model.Direction(raw.Dir&1), ev.Direction)
		assert.Equal(t, dataplane.Reason(raw.Reason), ev.Reason)
		assert.Equal(t, [3]int{int(raw.Proto), int(raw.Sport), int(raw.Dport)}, [3]int{int(ev.Proto), int(ev.Sport), int(ev.Dport)})
		assert.Equal(t, int(raw.Entry), ev.Entry)
		assert.Equal(t, raw.Suppressed, ev.Suppressed)
		switch raw.Fam {
		case 4:
			assert.Equal(t, raw.Src[:4], ev.Src.AsSlice())
			assert.Equal(t, raw.Dst[:4], ev.Dst.AsSlice())
		case 6:
			assert.Equal(t, raw.Src[:], ev.Src.AsSlice())
			assert.Equal(t, raw.Dst[:], ev.Dst.AsSlice())
		default:
			assert.False(t, ev.Src.IsValid() || ev.Dst.IsValid(), "family %d has no addresses", raw.Fam)
		}
		if ev.Reason != dataplane.ReasonRule {
			assert.Nil(t, ev.RuleIndex)
			assert.Empty(t, ev.SgID)
			return
		}
		require.NotNil(t, ev.RuleIndex)
		assert.Equal(t, int(raw.RuleIndex), *ev.RuleIndex)
		sg := b[sgOff : sgOff+len(raw.Sg)]
		if n := bytes.IndexByte(sg, 0); n >= 0 {
			sg = sg[:n]
		}
		assert.Equal(t, string(sg), ev.SgID)
	})
}
