package bpf

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
)

// FuzzRunMatchesDecode feeds arbitrary frames to the BPF program (ingress of eni-web1) and to the Go
// decoder + linear matcher: the class of frame and, for IP, the deciding entry must agree.
func FuzzRunMatchesDecode(f *testing.F) {
	web := netip.MustParseAddr("198.18.1.10")
	for _, fr := range []frame{
		{src: netip.MustParseAddr("203.0.113.7"), dst: web, proto: 6, sport: 1, dport: 80},
		{vlans: 2, src: netip.MustParseAddr("198.18.66.1"), dst: web, proto: 17, dport: 53},
		{src: netip.MustParseAddr("2001:db8::1"), dst: netip.MustParseAddr("2001:db8:1::10"), proto: 6, dport: 80, extHdrs: 2},
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

// FuzzDecodeDrop: any ring buffer record decodes or is refused with an error, never a panic; a
// well-formed record round-trips its fields.
func FuzzDecodeDrop(f *testing.F) {
	f.Add(make([]byte, 160))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := decodeDrop(b, func(slot uint32) string { return "eni-x" })
		if len(b) < binary.Size(sgDropEvent{}) {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		require.Equal(t, "eni-x", ev.ENI)
		require.Equal(t, ev.Reason == dataplane.ReasonRule, ev.RuleIndex != nil)
	})
}
