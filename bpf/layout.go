package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// One table version lives in one BPF array map of 64-byte records (sg.c reads it):
//
//	record 0            header (generation, counts, record offsets of every region, flags)
//	off4 …              IPv4 address intervals: 8 × {u32 start, u32 node} per record, sorted by start
//	off6 …              IPv6 address intervals: 2 × {u64 hi, u64 lo, u32 node, pad} per record
//	offNodes …          nodes: 2 × {tcpOff, tcpCnt, udpOff, udpCnt u32; tcpNoPort, udpNoPort, icmp, other i32}
//	offPorts …          destination-port intervals: 8 × {u16 start, pad, i32 entry} per record
//	offEntries …        entries: 4 × {u32 action, i32 ruleIndex, u32 sg, pad} per record
//	offSGs …            one sgId per record, NUL-padded
//
// A node is the set of entries whose remotes cover one elementary address interval; its answers are
// the first matching entry per protocol class, so a lookup is two binary searches (address, port),
// each bounded by the size of the structure, never a scan of the rules.
const (
	recSize     = 64
	hdrFlagNoSG = 1
	maxSGName   = 64
)

type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

func (a u128) inc() (u128, bool) {
	lo := a.lo + 1
	hi := a.hi
	if lo == 0 {
		hi++
		if hi == 0 {
			return u128{}, false
		}
	}
	return u128{hi, lo}, true
}

func addrKey(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// prefixRange returns the first and last address of p as keys.
func prefixRange(p netip.Prefix) (u128, u128) {
	p = p.Masked()
	first := addrKey(p.Addr())
	host := p.Addr().BitLen() - p.Bits()
	last := first
	switch {
	case host >= 128:
		last = u128{^uint64(0), ^uint64(0)}
	case host >= 64:
		last.lo = ^uint64(0)
		last.hi |= (uint64(1) << (host - 64)) - 1
	case host > 0:
		last.lo |= (uint64(1) << host) - 1
	}
	if p.Addr().Is4() {
		last.hi = 0
		if host >= 32 {
			last.lo = 0xffffffff
		}
	}
	return first, last
}

type addrIv struct {
	start u128
	node  uint32
}

type portIv struct {
	start uint16
	entry int32
}

type node struct {
	tcp, udp                  []portIv
	tcpNP, udpNP, icmp, other int32
	tcpOff, udpOff            uint32
}

// layout is the serialisable lookup structure of one table.
type layout struct {
	v4, v6 []addrIv
	nodes  []*node
	nodeID map[string]uint32
}

// entryAnswers computes the node of one candidate list (entry indexes in priority order, the implicit
// DROP last).
func entryAnswers(t *compiler.Table, cand []int, v6 bool) *node {
	n := &node{}
	first := func(proto uint8) int32 {
		for _, i := range cand {
			e := &t.Entries[i]
			if e.Protocol.Matches(proto, v6) && e.Ports.Any() {
				return int32(i)
			}
		}
		return int32(len(t.Entries) - 1)
	}
	n.tcpNP = first(model.IPProtoTCP)
	n.udpNP = first(model.IPProtoUDP)
	if v6 {
		n.icmp = first(model.IPProtoICMPv6)
	} else {
		n.icmp = first(model.IPProtoICMP)
	}
	n.other = first(255) // only protocol "all" matches any other protocol
	n.tcp = portIntervals(t, cand, model.IPProtoTCP, v6)
	n.udp = portIntervals(t, cand, model.IPProtoUDP, v6)
	return n
}

// portIntervals splits the port space at every bound of the relevant entries (those before the first
// port-agnostic one: nothing after it can match) and answers each elementary interval.
func portIntervals(t *compiler.Table, cand []int, proto uint8, v6 bool) []portIv {
	var rel []int
	for _, i := range cand {
		e := &t.Entries[i]
		if !e.Protocol.Matches(proto, v6) {
			continue
		}
		rel = append(rel, i)
		if e.Ports.Any() {
			break
		}
	}
	bounds := []int{0}
	for _, i := range rel {
		p := t.Entries[i].Ports
		if p.Any() {
			continue
		}
		bounds = append(bounds, int(p.Lo))
		if int(p.Hi) < 65535 {
			bounds = append(bounds, int(p.Hi)+1)
		}
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)
	out := make([]portIv, 0, len(bounds))
	for _, b := range bounds {
		ans := int32(len(t.Entries) - 1)
		for _, i := range rel {
			p := t.Entries[i].Ports
			if p.Any() || p.Contains(uint16(b)) {
				ans = int32(i)
				break
			}
		}
		if len(out) > 0 && out[len(out)-1].entry == ans {
			continue
		}
		out = append(out, portIv{start: uint16(b), entry: ans})
	}
	return out
}

func candKey(v6 bool, c []int) string {
	var sb strings.Builder
	if v6 {
		sb.WriteString("6:") // answers differ by family (icmp vs icmpv6)
	}
	for _, i := range c {
		sb.WriteString(strconv.Itoa(i))
		sb.WriteByte(',')
	}
	return sb.String()
}

// addrIntervals sweeps the prefixes of one family and assigns each elementary interval its node.
func (l *layout) addrIntervals(t *compiler.Table, v6 bool) []addrIv {
	type event struct {
		at    u128
		entry int
		delta int
	}
	var anyRemote []int
	var evs []event
	for i := range t.Entries {
		e := &t.Entries[i]
		if e.AnyRemote {
			anyRemote = append(anyRemote, i)
			continue
		}
		for _, p := range e.Remotes {
			if p.Addr().Is6() != v6 {
				continue
			}
			first, last := prefixRange(p)
			evs = append(evs, event{first, i, 1})
			if next, ok := last.inc(); ok && (v6 || next.lo <= 0xffffffff) {
				evs = append(evs, event{next, i, -1})
			}
		}
	}
	slices.SortFunc(evs, func(a, b event) int {
		switch {
		case a.at.less(b.at):
			return -1
		case b.at.less(a.at):
			return 1
		}
		return 0
	})
	active := map[int]int{}
	var out []addrIv
	emit := func(at u128) {
		cand := slices.Clone(anyRemote)
		for i := range active {
			cand = append(cand, i)
		}
		slices.Sort(cand)
		k := candKey(v6, cand)
		id, ok := l.nodeID[k]
		if !ok {
			id = uint32(len(l.nodes))
			l.nodeID[k] = id
			l.nodes = append(l.nodes, entryAnswers(t, cand, v6))
		}
		if len(out) > 0 && out[len(out)-1].node == id {
			return
		}
		out = append(out, addrIv{start: at, node: id})
	}
	cur := u128{}
	for i := 0; i < len(evs); {
		at := evs[i].at
		if cur.less(at) {
			emit(cur)
		}
		for ; i < len(evs) && evs[i].at == at; i++ {
			active[evs[i].entry] += evs[i].delta
			if active[evs[i].entry] == 0 {
				delete(active, evs[i].entry)
			}
		}
		cur = at
	}
	emit(cur)
	if len(out) == 0 || out[0].start != (u128{}) {
		return nil // unreachable: the sweep always starts at address 0
	}
	return out
}

// serialise builds the records of table t at generation gen.
func serialise(t *compiler.Table, gen uint64) ([]byte, error) {
	if len(t.Entries) == 0 || !t.Entries[len(t.Entries)-1].Implicit() {
		return nil, fmt.Errorf("serialise table %s/%s: it does not end with the implicit DROP", t.ENI, t.Direction)
	}
	if len(t.Entries) > 1<<30 {
		return nil, fmt.Errorf("serialise table %s/%s: %d entries is too many", t.ENI, t.Direction, len(t.Entries))
	}
	l := &layout{nodeID: map[string]uint32{}}
	l.v4 = l.addrIntervals(t, false)
	l.v6 = l.addrIntervals(t, true)
	if l.v4 == nil || l.v6 == nil {
		return nil, fmt.Errorf("serialise table %s/%s: address sweep produced no intervals", t.ENI, t.Direction)
	}
	var ports []portIv
	for _, n := range l.nodes {
		n.tcpOff = uint32(len(ports))
		ports = append(ports, n.tcp...)
		n.udpOff = uint32(len(ports))
		ports = append(ports, n.udp...)
	}
	sgIdx := map[string]uint32{}
	var sgs []string
	for _, e := range t.Entries {
		if e.SgID == "" {
			continue
		}
		if _, ok := sgIdx[e.SgID]; !ok {
			if len(e.SgID) > maxSGName {
				return nil, fmt.Errorf("serialise table %s/%s: sgId %q longer than %d bytes", t.ENI, t.Direction, e.SgID, maxSGName)
			}
			sgIdx[e.SgID] = uint32(len(sgs))
			sgs = append(sgs, e.SgID)
		}
	}
	ceil := func(n, per int) int { return (n + per - 1) / per }
	off4 := 1
	off6 := off4 + ceil(len(l.v4), 8)
	offNodes := off6 + ceil(len(l.v6), 2)
	offPorts := offNodes + ceil(len(l.nodes), 2)
	offEntries := offPorts + ceil(len(ports), 8)
	offSGs := offEntries + ceil(len(t.Entries), 4)
	total := offSGs + len(sgs)
	if total >= 1<<31 {
		return nil, fmt.Errorf("serialise table %s/%s: %d records is too many", t.ENI, t.Direction, total)
	}
	buf := make([]byte, total*recSize)
	le := binary.LittleEndian
	h := buf[:recSize]
	le.PutUint64(h[0:], gen)
	le.PutUint32(h[8:], uint32(len(l.v4)))
	le.PutUint32(h[12:], uint32(len(l.v6)))
	for i, v := range []int{off4, off6, offNodes, offPorts, offEntries, len(t.Entries), offSGs} {
		le.PutUint32(h[16+4*i:], uint32(v))
	}
	if t.NoSG {
		le.PutUint32(h[44:], hdrFlagNoSG)
	}
	for i, v := range l.v4 {
		o := off4*recSize + i*8
		le.PutUint32(buf[o:], uint32(v.start.lo))
		le.PutUint32(buf[o+4:], v.node)
	}
	for i, v := range l.v6 {
		o := off6*recSize + i*32
		le.PutUint64(buf[o:], v.start.hi)
		le.PutUint64(buf[o+8:], v.start.lo)
		le.PutUint32(buf[o+16:], v.node)
	}
	for i, n := range l.nodes {
		o := offNodes*recSize + i*32
		for j, v := range []uint32{n.tcpOff, uint32(len(n.tcp)), n.udpOff, uint32(len(n.udp)),
			uint32(n.tcpNP), uint32(n.udpNP), uint32(n.icmp), uint32(n.other)} {
			le.PutUint32(buf[o+4*j:], v)
		}
	}
	for i, p := range ports {
		o := offPorts*recSize + i*8
		le.PutUint16(buf[o:], p.start)
		le.PutUint32(buf[o+4:], uint32(p.entry))
	}
	for i, e := range t.Entries {
		o := offEntries*recSize + i*16
		if e.Action == model.Accept {
			le.PutUint32(buf[o:], 1)
		}
		le.PutUint32(buf[o+4:], uint32(int32(e.RuleIndex)))
		le.PutUint32(buf[o+8:], sgIdx[e.SgID])
	}
	for i, s := range sgs {
		copy(buf[(offSGs+i)*recSize:], s)
	}
	return buf, nil
}
