package scenario_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sgsim/sgsim/scenario"
)

// FuzzParseCall: any --apply value gives a call or an error quoting it.
func FuzzParseCall(f *testing.F) {
	f.Add("tencent:ModifySecurityGroupPolicy?sgId=sg-web")
	f.Add("huawei:sg-web:add:eni-a,eni-b")
	f.Add("tencent:A?%zz")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := scenario.ParseCall(s)
		if err == nil && st.Tencent == nil && st.Huawei == nil {
			t.Fatal("call without a dialect")
		}
	})
}

// FuzzInlineFrame: any inline packet gives a frame the decoder reads, or an error; never a panic.
func FuzzInlineFrame(f *testing.F) {
	f.Add("", "tcp", "198.19.0.1", "198.18.1.10", uint16(1), uint16(80), "S", uint8(0), "", "")
	f.Add("", "icmp", "198.19.0.9", "198.18.1.20", uint16(0), uint16(0), "", uint8(3), "udp 198.18.1.20:5000 > 198.19.0.9:9999", "")
	f.Add("nd", "", "fe80::1", "2001:db8::10", uint16(0), uint16(0), "", uint8(0), "", "")
	f.Add("", "udp", "2001:db8::1", "2001:db8::10", uint16(0), uint16(0), "", uint8(0), "", "later")
	f.Fuzz(func(t *testing.T, kind, proto, src, dst string, sport, dport uint16, flags string, icmpType uint8, quote, fragment string) {
		p := scenario.InlinePacket{Kind: kind, Proto: proto, Src: src, Dst: dst, SrcPort: sport, DstPort: dport, Flags: flags,
			ICMPType: icmpType, Quote: quote, Fragment: fragment}
		frame, err := p.Frame()
		if err == nil && len(frame) < 14 {
			t.Fatalf("frame of %d bytes", len(frame))
		}
	})
}

// FuzzLoad: any scenario file gives a scenario or an error naming the file.
func FuzzLoad(f *testing.F) {
	f.Add("topology: lab.json\nsteps:\n  - advance: 30s\n")
	f.Add("{\"topology\": {\"accounts\": []}, \"steps\": [{\"packets\": [{\"proto\": \"tcp\"}]}]}")
	f.Add("steps: []\n")
	f.Fuzz(func(t *testing.T, body string) {
		path := filepath.Join(t.TempDir(), "s.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
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
