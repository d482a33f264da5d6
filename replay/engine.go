package replay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
)

// DecideWith says what decides each check of a packet.
type DecideWith uint8

const (
	// DecideWithGo decides with the Go classifier, replay's connection tracker and fragment memory.
	DecideWithGo DecideWith = iota
	// DecideWithDecider hands every check to Options.Decider, which keeps its own connection and fragment
	// state; replay's own are not used.
	DecideWithDecider
	// DecideWithBoth decides with the Go engine (its verdicts are the results) and also asks
	// Options.Decider about every check the Go engine makes, recording its verdict in Check.Other.
	DecideWithBoth
)

// Decision is a Decider's answer for one check.
type Decision struct {
	Accept bool
	Reason dataplane.Reason
	// Entry is the deciding entry of the ENI's compiled table for the direction, -1 when no table entry
	// decided (established, arp, nd, not-ip, malformed).
	Entry int
}

// ErrRefused is what a Decider's error wraps when it cannot run a frame at all (BPF_PROG_TEST_RUN
// refuses IP frames shorter than an IP header). For a frame the decoder calls malformed or not-ip, the
// decoder's verdict then stands; for any other it is a failure of the replay.
var ErrRefused = errors.New("decider cannot run this frame")

// Decider decides checks outside the Go engine: the CLI plugs the eBPF program in through
// BPF_PROG_TEST_RUN. It must hold the same compiled tables as the Replayer's TableSource (replay names
// the rule from Decision.Entry through them) and tracks connections and fragments itself.
type Decider interface {
	// Decide decides frame, an Ethernet frame, as ENI eni sees it in direction dir.
	Decide(frame []byte, eni string, dir model.Direction) (Decision, error)
}

// toEthernet returns frame (of pcap link type link) as an Ethernet frame, built in buf when the link
// type is not Ethernet, or nil when it has none: link header truncated, or a link type replay does not
// read. Cooked (SLL) and loopback captures keep their payload and ethertype; addresses the capture
// lacks are zero (the program finds the ENI from the interface, not the MACs).
func toEthernet(link int, frame, buf []byte) []byte {
	var et uint16
	var src []byte
	switch link {
	case packet.LinkEthernet:
		if len(frame) < 14 {
			return nil
		}
		return frame
	case packet.LinkSLL:
		if len(frame) < 16 {
			return nil
		}
		if binary.BigEndian.Uint16(frame[2:4]) == 1 && binary.BigEndian.Uint16(frame[4:6]) == 6 {
			src = frame[6:12]
		}
		et, frame = binary.BigEndian.Uint16(frame[14:16]), frame[16:]
	case packet.LinkSLL2:
		if len(frame) < 20 {
			return nil
		}
		if binary.BigEndian.Uint16(frame[8:10]) == 1 && frame[11] == 6 {
			src = frame[12:18]
		}
		et, frame = binary.BigEndian.Uint16(frame[0:2]), frame[20:]
	case packet.LinkRaw, packet.LinkRawBSD, packet.LinkRawBSD2:
		et = 0x0800 // an unknown version nibble is malformed IP on both sides
		if len(frame) > 0 && frame[0]>>4 == 6 {
			et = 0x86dd
		}
	case packet.LinkIPv4:
		et = 0x0800
	case packet.LinkIPv6:
		et = 0x86dd
	case packet.LinkNull, packet.LinkLoop:
		if len(frame) < 4 {
			return nil
		}
		fam := binary.LittleEndian.Uint32(frame[:4])
		if link == packet.LinkLoop || fam > 0xffff {
			fam = binary.BigEndian.Uint32(frame[:4])
		}
		switch fam {
		case 2:
			et = 0x0800
		case 24, 28, 30: // AF_INET6 on NetBSD/OpenBSD, FreeBSD, Darwin
			et = 0x86dd
		default:
			et = 0x88b5 // IEEE local experimental: not IP, as the decoder says
		}
		frame = frame[4:]
	default:
		return nil
	}
	buf = append(buf[:0], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(et>>8), byte(et))
	copy(buf[6:12], src)
	return append(buf, frame...)
}

// explain turns a Decider's decision into a verdict named like the Go engine's: rule provenance from
// the ENI's compiled table, action and reason as the decider gave them (so a decider that names an
// entry but acts otherwise still shows as different).
func explain(tabs *dataplane.ENITables, eni string, dir model.Direction, d Decision) (dataplane.Verdict, error) {
	a := model.Drop
	if d.Accept {
		a = model.Accept
	}
	if d.Entry < 0 {
		return noRule(a, d.Reason), nil
	}
	if tabs == nil {
		return dataplane.Verdict{}, fmt.Errorf("%s %s: decider named entry %d, but the ENI has no tables", eni, dir, d.Entry)
	}
	t := tabs.Tables.Get(dir)
	if d.Entry >= len(t.Entries) {
		return dataplane.Verdict{}, fmt.Errorf("%s %s: decider named entry %d, the table has %d", eni, dir, d.Entry, len(t.Entries))
	}
	v := dataplane.VerdictOf(t, d.Entry)
	v.Action, v.Reason = a, d.Reason
	return v, nil
}

// Disagrees tells whether the Go engine and the Decider differ on this check (DecideWithBoth): action,
// reason or deciding entry.
func (c *Check) Disagrees() bool {
	return c.Compared && (c.Verdict.Action != c.Other.Action || c.Verdict.Reason != c.Other.Reason || c.Verdict.Entry != c.Other.Entry)
}

// Disagrees tells whether any check of the packet disagrees.
func (res *Result) Disagrees() bool {
	for i := 0; i < res.NChecks; i++ {
		if res.Checks[i].Disagrees() {
			return true
		}
	}
	return false
}

// VerdictString renders a verdict with what decided it: "ACCEPT sg-web rule 1" or "DROP default-drop".
func VerdictString(v *dataplane.Verdict) string {
	if v.Reason == dataplane.ReasonRule {
		return v.Action.String() + " " + v.SgID + " rule " + strconv.Itoa(v.RuleIndex)
	}
	return v.Action.String() + " " + v.Reason.String()
}

func verdictWithEntry(v *dataplane.Verdict) string {
	if v.Entry < 0 {
		return VerdictString(v)
	}
	return VerdictString(v) + " (entry " + strconv.Itoa(v.Entry) + ")"
}

// Disagreements renders each disagreeing check of res, naming the two engines goName and otherName:
// "packet 4 tcp 198.18.1.10:40000 > 198.18.2.20:80: eni-db ingress: go ACCEPT sg-db rule 0 (entry 0),
// ebpf DROP default-drop (entry 3)".
func Disagreements(r *Replayer, res *Result, goName, otherName string) []string {
	var out []string
	for i := 0; i < res.NChecks; i++ {
		c := &res.Checks[i]
		if c.Disagrees() {
			out = append(out, fmt.Sprintf("packet %d %s: %s %s: %s %s, %s %s", res.Index, FlowString(&res.Packet), r.enis[c.ENI], c.Direction,
				goName, verdictWithEntry(&c.Verdict), otherName, verdictWithEntry(&c.Other)))
		}
	}
	return out
}

// ConntrackOnly tells whether every disagreeing check of res has exactly one engine answering from its
// connection tracker (established): what differing flow ages give (see Options.DecideWith).
func (res *Result) ConntrackOnly() bool {
	found := false
	for i := 0; i < res.NChecks; i++ {
		c := &res.Checks[i]
		if !c.Disagrees() {
			continue
		}
		if (c.Verdict.Reason == dataplane.ReasonEstablished) == (c.Other.Reason == dataplane.ReasonEstablished) {
			return false
		}
		found = true
	}
	return found
}
