package bpf

import (
	"net/netip"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// refKey is a flow as the reference model tracks it (one ENI, the original direction's orientation).
type refKey struct {
	eni          string
	proto        uint8
	sport, dport uint16
	src, dst     netip.Addr
}

type refFrag struct {
	eni      string
	dir      model.Direction
	proto    uint8
	id       uint32
	src, dst netip.Addr
}

type refFlow struct {
	dir model.Direction
	gen uint64
}

// refModel is the Go statement of what the BPF program must do: dataplane.Linear for the rules plus the
// conntrack rules of SPEC §3 (without timeouts, which tests cannot fast-forward in the kernel).
type refModel struct {
	tables map[string]*compiler.Tables
	gen    map[string]uint64
	flows  map[refKey]refFlow
	frags  map[refFrag]Result
}

func newRefModel() *refModel {
	return &refModel{tables: map[string]*compiler.Tables{}, gen: map[string]uint64{}, flows: map[refKey]refFlow{}, frags: map[refFrag]Result{}}
}

func (m *refModel) publish(gen uint64, changed map[string]*compiler.Tables) {
	for id, t := range changed {
		m.tables[id] = t
		m.gen[id] = gen
	}
}

func (m *refModel) classify(eni string, dir model.Direction, remote netip.Addr, proto uint8, port uint16, hasPort bool) dataplane.Verdict {
	t := m.tables[eni].Get(dir)
	p := &dataplane.Packet{Remote: remote, Proto: proto, Port: port, HasPort: hasPort}
	return dataplane.VerdictOf(t, dataplane.NewLinearTable(t).Lookup(p))
}

// ports returns the conntrack ports of f and whether it is tracked at all.
func (f *frame) ctPorts() (uint16, uint16, bool) {
	if f.fragOff != 0 {
		return 0, 0, false
	}
	switch f.proto {
	case 6, 17:
		return f.sport, f.dport, true
	case 1, 58:
		if f.isICMPError() {
			return 0, 0, false
		}
		if f.isEcho() {
			s, d := refEchoPorts(f.icmpType, f.icmpID)
			return s, d, true
		}
		return 0, 0, true
	}
	return 0, 0, true
}

// refEchoPorts: an echo (or timestamp) request is tracked from its identifier to the next one, a reply
// the other way round, so that only a reply is the reverse of a request (an echo request coming back,
// whatever its identifier, is a flow of its own).
func refEchoPorts(typ uint8, id uint16) (uint16, uint16) {
	if typ == 0 || typ == 14 || typ == 129 {
		return id + 1, id
	}
	return id, id + 1
}

// isICMP: ICMP of the packet's own family (ICMP in IPv6 is just another protocol).
func (f *frame) isICMP() bool { return (f.proto == 1 && f.src.Is4()) || (f.proto == 58 && f.src.Is6()) }

func (f *frame) isEcho() bool {
	t := f.icmpType
	return f.isICMP() && ((f.proto == 1 && (t == 0 || t == 8 || t == 13 || t == 14)) || (f.proto == 58 && (t == 128 || t == 129)))
}

func (f *frame) isICMPError() bool {
	t := f.icmpType
	return f.isICMP() && ((f.proto == 1 && (t == 3 || t == 4 || t == 5 || t == 11 || t == 12)) || (f.proto == 58 && t >= 1 && t <= 4))
}

// decide returns the expected result of f at eni in direction dir and updates conntrack and the
// first-fragment memory.
func (m *refModel) decide(eni string, dir model.Direction, f frame) Result {
	if f.truncL4 && f.fragOff == 0 && (f.proto == 6 || f.proto == 17 || f.isICMP()) {
		return Result{Reason: dataplane.ReasonMalformed, Entry: -1}
	}
	if f.isICMP() && f.proto == 58 && f.fragOff == 0 && f.icmpType >= 133 && f.icmpType <= 136 {
		return Result{Accept: true, Reason: dataplane.ReasonND, Entry: -1}
	}
	fk := refFrag{eni, dir, f.proto, f.fragID, f.src, f.dst}
	if f.src.Is4() {
		fk.id &= 0xffff
	}
	if f.fragOff != 0 {
		if v, ok := m.frags[fk]; ok {
			return v
		}
	}
	res := m.decideUnfragmented(eni, dir, f)
	if f.mf && f.fragOff == 0 {
		m.frags[fk] = res
	}
	return res
}

func (m *refModel) decideUnfragmented(eni string, dir model.Direction, f frame) Result {
	if f.truncL4 && f.fragOff == 0 && (f.proto == 6 || f.proto == 17 || f.isICMP()) {
		return Result{Reason: dataplane.ReasonMalformed, Entry: -1}
	}
	if f.isICMP() && f.proto == 58 && f.fragOff == 0 && f.icmpType >= 133 && f.icmpType <= 136 {
		return Result{Accept: true, Reason: dataplane.ReasonND, Entry: -1}
	}
	sp, dp, tracked := f.ctPorts()
	var look *refKey
	switch {
	case f.fragOff == 0 && f.isICMPError() && f.quote != nil:
		q := f.quote
		qs, qd := q.sport, q.dport
		switch {
		case q.fragOff != 0:
			qs, qd = 0, 0 // a later fragment quotes no ports
		case q.proto == 6 || q.proto == 17:
		case (q.proto == 1 || q.proto == 58) && (q.icmpType == 0 || q.icmpType == 8 || q.icmpType == 128 || q.icmpType == 129):
			qs, qd = refEchoPorts(q.icmpType, q.icmpID)
		default:
			qs, qd = 0, 0
		}
		look = &refKey{eni, q.proto, qs, qd, q.src, q.dst}
		// Or the quote is a tracked flow's reply and the error travels along the flow (SPEC §3 "quote a
		// tracked flow" either way, as conntrack.Table.Related).
		if fl, ok := m.flows[*look]; !ok || fl.dir == dir {
			rev := refKey{eni, q.proto, qd, qs, q.dst, q.src}
			if fl, ok := m.flows[rev]; ok && fl.dir == dir {
				return m.established(eni, dir, rev, fl, f)
			}
		}
	case tracked:
		look = &refKey{eni, f.proto, dp, sp, f.dst, f.src}
	}
	if look != nil {
		if fl, ok := m.flows[*look]; ok && fl.dir != dir {
			return m.established(eni, dir, *look, fl, f)
		}
	}
	return m.byRules(eni, dir, f, tracked, sp, dp)
}

// established answers f from the tracked flow k after re-checking k's original packet against a newer
// table; a flow the new table drops is cut and f goes to the rules.
func (m *refModel) established(eni string, dir model.Direction, k refKey, fl refFlow, f frame) Result {
	keep := true
	if fl.gen != m.gen[eni] {
		remote := k.src
		if fl.dir == model.Egress {
			remote = k.dst
		}
		v := m.classify(eni, fl.dir, remote, k.proto, k.dport, k.proto == 6 || k.proto == 17)
		keep = v.Action == model.Accept
		fl.gen = m.gen[eni]
		m.flows[k] = fl
	}
	if keep {
		return Result{Accept: true, Reason: dataplane.ReasonEstablished, Entry: -1}
	}
	delete(m.flows, k)
	sp, dp, tracked := f.ctPorts()
	return m.byRules(eni, dir, f, tracked, sp, dp)
}

// byRules decides f by eni's table in direction dir and tracks it when accepted.
func (m *refModel) byRules(eni string, dir model.Direction, f frame, tracked bool, sp, dp uint16) Result {
	remote := f.src
	if dir == model.Egress {
		remote = f.dst
	}
	v := m.classify(eni, dir, remote, f.proto, f.dport, (f.proto == 6 || f.proto == 17) && f.fragOff == 0)
	if v.Action == model.Accept && tracked {
		m.flows[refKey{eni, f.proto, sp, dp, f.src, f.dst}] = refFlow{dir: dir, gen: m.gen[eni]}
	}
	return Result{Accept: v.Action == model.Accept, Reason: v.Reason, Entry: v.Entry}
}
