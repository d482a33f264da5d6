package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// TestFlows loads a pinned dataplane, drops a packet through it and reads the event back with
// `sgsim flows`.
func TestFlows(t *testing.T) {
	pin := fmt.Sprintf("/sys/fs/bpf/sgsim-flows-test-%d", os.Getpid())
	d, err := bpf.Load(t.Context(), bpf.Options{PinPath: pin})
	if err != nil {
		if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
			t.Fatalf("load BPF program: %v", err)
		}
		t.Skipf("kernel cannot load the BPF program: %v", err)
	}
	t.Cleanup(func() { d.Close(); os.RemoveAll(pin) })
	s, err := model.LoadTopologyFile("../../testdata/demo.json")
	require.NoError(t, err)
	require.NoError(t, d.Publish(context.Background(), 1, compiler.New(s).CompileAll(), nil))

	// An Ethernet + IPv4 + TCP frame to eni-web1:80 from the blocklisted 198.18.66.0/24.
	frame := make([]byte, 14+20+20)
	frame[12], frame[13] = 0x08, 0x00
	ip := frame[14:]
	ip[0], ip[3], ip[8], ip[9] = 0x45, 40, 64, 6
	copy(ip[12:], net.ParseIP("198.18.66.9").To4())
	copy(ip[16:], net.ParseIP("198.18.1.10").To4())
	ip[20], ip[21], ip[22], ip[23], ip[32] = 0x9c, 0x40, 0, 80, 0x50
	r, err := d.Run(frame, "eni-web1", model.Ingress)
	require.NoError(t, err)
	require.False(t, r.Accept)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	root := newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"flows", "--pin-path", pin, "--count", "1"})
	require.NoError(t, root.ExecuteContext(ctx))
	assert.Contains(t, out.String(), "DROP eni-web1 ingress proto 6 198.18.66.9:40000 → 198.18.1.10:80: sg-web rule 0")

	root = newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"flows", "--pin-path", pin + "-absent", "--count", "1"})
	err = root.ExecuteContext(ctx)
	require.ErrorContains(t, err, "no sgsim dataplane pinned under")
}
