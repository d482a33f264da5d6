// Package kerneltest tells the tests of packages outside bpf whether this process can run the TC
// program, so that they skip only where the kernel truly lacks it.
package kerneltest

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sgsim/sgsim/bpf"
)

// LoadOrSkip skips when this process cannot load BPF programs at all (not root, or a kernel without
// the feature), and fails under SGSIM_REQUIRE_KERNEL=1; any other load error, a verifier rejection
// included, fails.
func LoadOrSkip(tb testing.TB) {
	tb.Helper()
	d, err := bpf.Load(context.Background(), bpf.Options{})
	if err == nil {
		if err := d.Close(); err != nil {
			tb.Fatalf("close the BPF program: %v", err)
		}
		return
	}
	if os.Geteuid() == 0 && !errors.Is(err, ebpf.ErrNotSupported) {
		tb.Fatalf("load the BPF program: %v", err)
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		tb.Fatalf("load the BPF program: %v", err)
	}
	tb.Skipf("cannot load the BPF program here: %v", err)
}
