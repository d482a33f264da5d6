package replay_test

import (
	"strings"
	"testing"

	"github.com/sgsim/sgsim/replay"
)

// FuzzParseFlowPattern: no input panics, and an accepted pattern always has both endpoints.
func FuzzParseFlowPattern(f *testing.F) {
	for _, s := range []string{"tcp * > 198.18.1.10:80", "* 198.19.0.0/16 > *:*", "udp [2001:db8::1]:53 > *", "6 a > b", "tcp * > [::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := replay.ParseFlowPattern(s)
		if err == nil && p == nil {
			t.Fatal("nil pattern without error")
		}
		if err != nil && !strings.Contains(err.Error(), "flow") {
			t.Fatalf("error does not say which flow: %v", err)
		}
	})
}

// FuzzParseExpectations: any file content gives expectations or an error naming the file.
func FuzzParseExpectations(f *testing.F) {
	f.Add("- {index: 1, verdict: DROP}\n")
	f.Add("expect:\n  - flow: 'tcp * > *'\n    verdict: accept\n")
	f.Add("[{\"index\": -1, \"verdict\": \"DROP\"}]")
	f.Fuzz(func(t *testing.T, s string) {
		ex, err := replay.ParseExpectations("x.yaml", []byte(s))
		if err != nil {
			if !strings.Contains(err.Error(), "x.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(ex.List) == 0 {
			t.Fatal("no expectations accepted")
		}
	})
}
