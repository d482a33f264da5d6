// Package dataplane decides packets against compiled tables: the Matcher contract, explained verdicts,
// the reference linear first-match matcher that faster engines are tested against, the fast
// classifier, and the per-ENI Engine that swaps tables atomically.
package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// Packet is what rule matching looks at, already oriented by direction: Remote is the source address for
// ingress and the destination for egress; Port is the destination port.
type Packet struct {
	Remote netip.Addr
	Proto  uint8 // IP protocol number
	Port   uint16
	// HasPort is false when the ports are unknown (non-first fragments, protocols without ports):
	// a rule with a portRange then never matches.
	HasPort bool
}

// Reason says why a verdict was given (SPEC §2).
type Reason uint8

const (
	ReasonRule Reason = iota
	ReasonDefaultDrop
	ReasonEstablished
	ReasonNoSG
	ReasonARP
	ReasonND
	ReasonNotIP
	ReasonMalformed
	// ReasonNoENI is the kernel's only: a guarded interface no ENI claims (SPEC §8).
	ReasonNoENI
)

var reasonNames = [...]string{"rule", "default-drop", "established", "no-sg", "arp", "nd", "not-ip", "malformed", "no-eni"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// MarshalText writes the SPEC's reason name.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Verdict is an explained decision. SgID and RuleIndex are meaningful only when Reason is ReasonRule;
// Entry is the index of the deciding row in the flattened table (-1 when no table decided).
type Verdict struct {
	Action    model.Action
	Reason    Reason
	SgID      string
	RuleIndex int
	Entry     int
}

// VerdictOf is the verdict of entry i of t: the rule it came from, or why no rule decided.
func VerdictOf(t *compiler.Table, entry int) Verdict {
	e := &t.Entries[entry]
	switch {
	case !e.Implicit():
		return Verdict{Action: e.Action, Reason: ReasonRule, SgID: e.SgID, RuleIndex: e.RuleIndex, Entry: entry}
	case t.NoSG:
		return Verdict{Action: model.Drop, Reason: ReasonNoSG, RuleIndex: -1, Entry: entry}
	}
	return Verdict{Action: model.Drop, Reason: ReasonDefaultDrop, RuleIndex: -1, Entry: entry}
}

// Explained is a verdict as SPEC §2 shows it to people and clients: the deciding rule itself when a
// rule decided.
type Explained struct {
	Verdict   model.Action    `json:"verdict"`
	ENI       string          `json:"eni"`
	Direction model.Direction `json:"direction"`
	SgID      string          `json:"sgId,omitempty"`
	RuleIndex *int            `json:"ruleIndex,omitempty"`
	Reason    Reason          `json:"reason"`
	Rule      *model.Rule     `json:"rule,omitempty"`
}

// Explain gives v, decided on eni in direction d by table t, in its SPEC §2 form.
func (v Verdict) Explain(eni string, d model.Direction, t *compiler.Table) Explained {
	out := Explained{Verdict: v.Action, ENI: eni, Direction: d, Reason: v.Reason}
	if v.Reason == ReasonRule {
		idx := v.RuleIndex
		r := t.Entries[v.Entry].Rule.Rule()
		out.SgID, out.RuleIndex, out.Rule = v.SgID, &idx, &r
	}
	return out
}

// TableMatcher finds the first matching entry of one compiled table. Every implementation returns a
// valid index: the implicit DROP matches everything.
type TableMatcher interface {
	Lookup(p *Packet) int
}

// Matcher decides packets for the ENIs it holds. ok is false when it holds no tables for eni.
type Matcher interface {
	Match(eni string, d model.Direction, p *Packet) (v Verdict, ok bool)
}

// EntryMatches is the definition of a match (SPEC §2), used by the reference matcher and by tests.
func EntryMatches(e *compiler.Entry, p *Packet) bool {
	v6 := p.Remote.Is6()
	if !e.Protocol.Matches(p.Proto, v6) {
		return false
	}
	if !e.Ports.Any() && (!p.HasPort || !e.Ports.Contains(p.Port)) {
		return false
	}
	if e.AnyRemote {
		return true
	}
	for _, pre := range e.Remotes {
		if pre.Contains(p.Remote) {
			return true
		}
	}
	return false
}

// LinearTable is the reference matcher of one table: a scan in priority order.
type LinearTable struct {
	t *compiler.Table
}

// NewLinearTable wraps t.
func NewLinearTable(t *compiler.Table) *LinearTable { return &LinearTable{t: t} }

// Lookup returns the first entry that matches p.
func (l *LinearTable) Lookup(p *Packet) int {
	for i := range l.t.Entries {
		if EntryMatches(&l.t.Entries[i], p) {
			return i
		}
	}
	return len(l.t.Entries) - 1 // unreachable: the implicit DROP matches all
}

// Linear is the reference Matcher over a fixed set of compiled tables. It is deliberately simple.
type Linear struct {
	tables map[string]*compiler.Tables
}

// NewLinear builds the reference matcher over tables (keyed by ENI ID).
func NewLinear(tables map[string]*compiler.Tables) *Linear { return &Linear{tables: tables} }

// Match decides p for eni in direction d.
func (l *Linear) Match(eni string, d model.Direction, p *Packet) (Verdict, bool) {
	ts, ok := l.tables[eni]
	if !ok {
		return Verdict{}, false
	}
	t := ts.Get(d)
	return VerdictOf(t, NewLinearTable(t).Lookup(p)), true
}

// NewPacket builds a Packet from the fields people type (CLI flags, the daemon's /check body): protocol
// as ParseIPProtocol reads it, the remote address, and an optional destination port (tcp/udp only).
// Errors name the field: `remote "1.2.3.300": not an IPv4 or IPv6 address`.
func NewPacket(protocol, remote string, port *int) (Packet, error) {
	var p Packet
	addr, err := netip.ParseAddr(remote)
	if err != nil || addr.Zone() != "" {
		return p, fmt.Errorf("remote %q: not an IPv4 or IPv6 address", remote)
	}
	// An IPv4-mapped IPv6 address stays IPv6: on the wire it is an IPv6 packet's, which no IPv4 rule
	// matches (SPEC §1), and the engines decide real frames so.
	p.Remote = addr
	if p.Proto, err = model.ParseIPProtocol(protocol); err != nil {
		return p, err
	}
	if port != nil {
		if p.Proto != model.IPProtoTCP && p.Proto != model.IPProtoUDP {
			return p, fmt.Errorf("port %d: ports exist only for tcp and udp", *port)
		}
		if *port < 0 || *port > 65535 {
			return p, fmt.Errorf("port %d: out of range 0-65535", *port)
		}
		p.Port, p.HasPort = uint16(*port), true
	}
	return p, nil
}
