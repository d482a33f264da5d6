package scenario

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/replay"
)

// ParseEngine reads an --engine value: go (or ""), ebpf or both.
func ParseEngine(s string) (replay.DecideWith, error) {
	switch strings.ToLower(s) {
	case "", "go":
		return replay.DecideWithGo, nil
	case "ebpf":
		return replay.DecideWithDecider, nil
	case "both":
		return replay.DecideWithBoth, nil
	}
	return 0, fmt.Errorf("--engine %q: want go, ebpf or both", s)
}

// LoadBPF loads the eBPF program, unattached, with tables, for a BPFDecider; the caller closes it.
// engine names the --engine value in errors.
func LoadBPF(ctx context.Context, engine string, tables map[string]*compiler.Tables) (*bpf.Dataplane, error) {
	d, err := bpf.Load(ctx, bpf.Options{})
	if err != nil {
		return nil, fmt.Errorf("--engine %s needs root and a BPF-capable kernel: %w", engine, err)
	}
	if err := d.Publish(ctx, 1, tables, nil); err != nil {
		d.Close()
		return nil, fmt.Errorf("--engine %s: load the tables into the eBPF program: %w", engine, err)
	}
	return d, nil
}

// BPFDecider decides replay's checks with a loaded eBPF program through BPF_PROG_TEST_RUN.
type BPFDecider struct {
	d       *bpf.Dataplane
	maxData int
	buf     []byte
}

// NewBPFDecider decides with d, which must hold the tables the replayer names rules through.
func NewBPFDecider(d *bpf.Dataplane) *BPFDecider {
	// BPF_PROG_TEST_RUN takes an skb of at most a page less its headroom (NET_SKB_PAD) and the
	// shared info (struct skb_shared_info): 384 bytes on x86-64 with 64-byte lines and the default
	// MAX_SKB_FRAGS; a kernel built with more frags refuses frames near the page with EINVAL.
	return &BPFDecider{d: d, maxData: os.Getpagesize() - 384}
}

// Decide runs frame through the program as eni sees it in direction dir.
func (b *BPFDecider) Decide(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
	if len(frame) > b.maxData {
		frame = b.trim(frame)
	}
	r, err := b.d.Run(frame, eni, dir)
	if errors.Is(err, unix.EINVAL) {
		// BPF_PROG_TEST_RUN refuses frames whose IP header is shorter than the minimum.
		return replay.Decision{}, fmt.Errorf("%w: %w", replay.ErrRefused, err)
	}
	if err != nil {
		return replay.Decision{}, err
	}
	return replay.Decision{Accept: r.Accept, Reason: r.Reason, Entry: r.Entry}, nil
}

// trim cuts an oversize frame (GRO/TSO captures, jumbo frames) to what BPF_PROG_TEST_RUN takes. Only
// payload goes: the program reads headers. IPv4 tolerates a datagram longer than its frame; an IPv6
// payload length that fitted the whole frame is shortened to fit the cut one, or the program would
// call the cut frame malformed.
func (b *BPFDecider) trim(frame []byte) []byte {
	cut := append(b.buf[:0], frame[:b.maxData]...)
	b.buf = cut
	off, et := 14, binary.BigEndian.Uint16(cut[12:14])
	for tags := 0; tags < 4 && (et == 0x8100 || et == 0x88a8 || et == 0x9100); tags++ {
		et, off = binary.BigEndian.Uint16(cut[off+2:off+4]), off+4
	}
	if et == 0x86dd {
		pl := int(binary.BigEndian.Uint16(cut[off+4 : off+6]))
		if pl != 0 && off+40+pl <= len(frame) && off+40+pl > len(cut) {
			binary.BigEndian.PutUint16(cut[off+4:off+6], uint16(len(cut)-off-40))
		}
	}
	return cut
}

// statelessDecider decides every check on an empty connection table. The program always tracks; a
// stateless scenario's few flows make forgetting them all before each check cheap (a capture's would
// not, which is why `replay --stateless` refuses the kernel engines). Fragment memory goes with them.
type statelessDecider struct{ *BPFDecider }

func (s statelessDecider) Decide(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
	if err := s.d.FlushConntrack(); err != nil {
		return replay.Decision{}, fmt.Errorf("stateless: forget the tracked flows: %w", err)
	}
	return s.BPFDecider.Decide(frame, eni, dir)
}
