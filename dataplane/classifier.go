package dataplane

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// Classifier is the fast matcher of one compiled table: two flat stages, both bounded-depth binary
// searches over sorted arrays, so the eBPF dataplane can load the same arrays into maps.
//
//  1. Address stage, per family: the remote prefixes of all entries cut the address space into
//     elementary intervals; Starts (sorted) maps an address by binary search to an answer ID. IPv4
//     first takes a direct-indexed slot (V4Index) that narrows the search to a few intervals.
//  2. Answer stage: each answer holds the first-match entry index per protocol class, with tcp and udp
//     answered per elementary destination-port interval (sorted PortStarts within [Off, Off+Len)).
//
// Identical answers are stored once. Every stored value is an index into the compiled table's Entries,
// so Explain gives provenance. A Classifier is immutable; Lookup allocates nothing and takes no lock.
type Classifier struct {
	a ClassifierArrays
}

// ClassifierAnswer is the first-match result for every packet whose remote address falls in one
// address interval. TCP/UDP packets with a known port search PortStarts[Off:Off+Len] for the last start
// ≤ port and take the PortEntries value at the same position.
type ClassifierAnswer struct {
	TCPOff, TCPLen uint32
	UDPOff, UDPLen uint32
	TCPNoPort      int32 // tcp packets whose ports are unknown (non-first fragments)
	UDPNoPort      int32
	ICMP           int32 // icmp for IPv4 intervals, icmpv6 for IPv6 intervals
	Other          int32 // every other protocol number
}

// ClassifierArrays is the whole Classifier as flat arrays, for serialisation into BPF maps (the
// starts arrays as sorted array maps searched with a bounded loop, or the prefixes re-expanded into an LPM
// trie keyed to answer IDs). Callers must not modify the slices. Invariants: V4Starts[0] == 0 and the
// first IPv6 start is ::; each starts array is strictly increasing; answer IDs index Answers; every port
// run starts at port 0 and runs may be shared between answers; the last two Answers are the IPv4 and IPv6
// answers of addresses no prefix can hold (the zero address, zoned IPv6), i.e. of AnyRemote entries only.
// Every search is a binary search: at most ceil(log2(n))+1 steps for n intervals (17 for port runs).
type ClassifierArrays struct {
	V4Starts []uint32 // interval starts, IPv4 as a big-endian uint32
	V4Answer []int32  // answer ID of each IPv4 interval
	// V4Index narrows the IPv4 search: for x, with j = x>>V4Shift, the interval of x is within
	// V4Starts[V4Index[j] : V4Index[j+1]+1]. It has 1<<(32-V4Shift) + 1 entries, sized to the table.
	V4Index   []uint32
	V4Shift   uint8
	V6Hi      []uint64 // interval starts, IPv6: high 64 bits …
	V6Lo      []uint64 // … and low 64 bits (compare Hi first)
	V6Answer  []int32
	Answers   []ClassifierAnswer
	PortStart []uint16
	PortEntry []int32 // entry index of each port interval
	Entries   int     // length of the compiled table
}

// ClassifierFactory builds a Classifier; it is a MatcherFactory for Engine.
func ClassifierFactory(t *compiler.Table) TableMatcher { return NewClassifier(t) }

// Arrays exposes the flat arrays (read-only) for serialisation.
func (c *Classifier) Arrays() *ClassifierArrays { return &c.a }

// SizeBytes is the memory held by the flat arrays.
func (c *Classifier) SizeBytes() int {
	a := &c.a
	return len(a.V4Starts)*4 + len(a.V4Answer)*4 + len(a.V4Index)*4 + len(a.V6Hi)*8 + len(a.V6Lo)*8 + len(a.V6Answer)*4 +
		len(a.Answers)*int(unsafe.Sizeof(ClassifierAnswer{})) + len(a.PortStart)*2 + len(a.PortEntry)*4
}

// Lookup returns the index of the first entry matching p.
func (c *Classifier) Lookup(p *Packet) int {
	a := &c.a
	var ans *ClassifierAnswer
	switch {
	case p.Remote.Is4():
		b := p.Remote.As4()
		x := binary.BigEndian.Uint32(b[:])
		s := a.V4Starts
		j := x >> a.V4Shift
		lo, hi := int(a.V4Index[j]), int(a.V4Index[j+1])+1 // the last start ≤ x is s[lo:hi]; s[lo] ≤ x
		for hi-lo > 1 {
			m := int(uint(lo+hi) >> 1)
			if s[m] <= x {
				lo = m
			} else {
				hi = m
			}
		}
		ans = &a.Answers[a.V4Answer[lo]]
	case p.Remote.Is6() && p.Remote.Zone() == "":
		b := p.Remote.As16()
		xh, xl := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
		sh, sl := a.V6Hi, a.V6Lo
		lo, hi := 0, len(sh)
		for hi-lo > 1 {
			m := int(uint(lo+hi) >> 1)
			if sh[m] < xh || sh[m] == xh && sl[m] <= xl {
				lo = m
			} else {
				hi = m
			}
		}
		ans = &a.Answers[a.V6Answer[lo]]
	case p.Remote.Is6():
		// A zoned address is in no prefix (netip.Prefix.Contains): only AnyRemote entries match.
		return c.rootV6(p)
	default:
		// The zero Addr is in no prefix and counts as not IPv6, as in EntryMatches.
		return c.rootV4(p)
	}
	return classAnswer(a, ans, p, p.Remote.Is6())
}

// classAnswer picks the protocol class of p within one answer.
func classAnswer(a *ClassifierArrays, ans *ClassifierAnswer, p *Packet, v6 bool) int {
	var off, n uint32
	switch p.Proto {
	case model.IPProtoTCP:
		if !p.HasPort {
			return int(ans.TCPNoPort)
		}
		off, n = ans.TCPOff, ans.TCPLen
	case model.IPProtoUDP:
		if !p.HasPort {
			return int(ans.UDPNoPort)
		}
		off, n = ans.UDPOff, ans.UDPLen
	case model.IPProtoICMP:
		if v6 {
			return int(ans.Other)
		}
		return int(ans.ICMP)
	case model.IPProtoICMPv6:
		if !v6 {
			return int(ans.Other)
		}
		return int(ans.ICMP)
	default:
		return int(ans.Other)
	}
	s := a.PortStart[off : off+n]
	lo, hi := 0, len(s)
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if s[m] <= p.Port {
			lo = m
		} else {
			hi = m
		}
	}
	return int(a.PortEntry[int(off)+lo])
}

// rootV4/rootV6 answer for addresses no prefix can contain (zero or zoned): only AnyRemote entries match.
// Those answers are kept as the last Answers entries by the builder.
func (c *Classifier) rootV4(p *Packet) int {
	return classAnswer(&c.a, &c.a.Answers[len(c.a.Answers)-2], p, false)
}

func (c *Classifier) rootV6(p *Packet) int {
	return classAnswer(&c.a, &c.a.Answers[len(c.a.Answers)-1], p, true)
}

// u128 is an address as an unsigned integer (IPv4 in the low 32 bits).
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

func (a u128) inc() (u128, bool) {
	lo := a.lo + 1
	hi := a.hi
	if lo == 0 {
		hi++
	}
	return u128{hi, lo}, lo == 0 && hi == 0
}

func addrU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// prefixEnd is the last address of p (p masked).
func prefixEnd(start u128, bits, bitLen int) (end u128, top bool) {
	host := bitLen - bits // host bits
	end = start
	switch {
	case host == 0:
	case host <= 64:
		end.lo |= ^uint64(0) >> (64 - host)
	default:
		end.lo = ^uint64(0)
		end.hi |= ^uint64(0) >> (128 - host)
	}
	if bitLen == 32 {
		return end, end.lo == 0xffffffff
	}
	return end, end.hi == ^uint64(0) && end.lo == ^uint64(0)
}

// portSeg is one run of a port function: from Start up to the next run's start, entry Val.
type portSeg struct {
	Start uint32
	Val   int32
}

// answer is a node's first-match answer while building.
type answer struct {
	tcp, udp                          []portSeg
	tcpNoPort, udpNoPort, icmp, other int32
}

// minRange lowers the port function segs to at most v on [lo, hi], returning a new slice when it changes.
func minRange(segs []portSeg, lo, hi uint32, v int32) []portSeg {
	changed := false
	for i, s := range segs {
		end := uint32(65535)
		if i+1 < len(segs) {
			end = segs[i+1].Start - 1
		}
		if s.Val > v && end >= lo && s.Start <= hi {
			changed = true
			break
		}
	}
	if !changed {
		return segs
	}
	out := make([]portSeg, 0, len(segs)+2)
	push := func(start uint32, val int32) {
		if n := len(out); n > 0 && out[n-1].Val == val {
			return
		}
		out = append(out, portSeg{start, val})
	}
	for i, s := range segs {
		end := uint32(65535)
		if i+1 < len(segs) {
			end = segs[i+1].Start - 1
		}
		if end < lo || s.Start > hi || s.Val <= v {
			push(s.Start, s.Val)
			continue
		}
		if s.Start < lo {
			push(s.Start, s.Val)
		}
		push(max(s.Start, lo), v)
		if end > hi {
			push(hi+1, s.Val)
		}
	}
	return out
}

// apply lowers ans by entry idx for the packets of family v6 that e matches (remote aside).
func (ans *answer) apply(e *compiler.Entry, idx int32, v6 bool) {
	lo, hi := uint32(0), uint32(65535)
	if !e.Ports.Any() {
		lo, hi = uint32(e.Ports.Lo), uint32(e.Ports.Hi)
	}
	switch e.Protocol {
	case model.ProtoAll:
		ans.tcp = minRange(ans.tcp, 0, 65535, idx)
		ans.udp = minRange(ans.udp, 0, 65535, idx)
		ans.tcpNoPort = min(ans.tcpNoPort, idx)
		ans.udpNoPort = min(ans.udpNoPort, idx)
		ans.icmp = min(ans.icmp, idx)
		ans.other = min(ans.other, idx)
	case model.ProtoTCP:
		ans.tcp = minRange(ans.tcp, lo, hi, idx)
		if e.Ports.Any() {
			ans.tcpNoPort = min(ans.tcpNoPort, idx)
		}
	case model.ProtoUDP:
		ans.udp = minRange(ans.udp, lo, hi, idx)
		if e.Ports.Any() {
			ans.udpNoPort = min(ans.udpNoPort, idx)
		}
	case model.ProtoICMP:
		if !v6 {
			ans.icmp = min(ans.icmp, idx)
		}
	case model.ProtoICMPv6:
		if v6 {
			ans.icmp = min(ans.icmp, idx)
		}
	}
}

type classifierBuilder struct {
	t      *compiler.Table
	a      ClassifierArrays
	ids    map[ClassifierAnswer]int32
	runs   map[string]uint32 // port function → offset in PortStart
	keyBuf []byte
}

// intern stores ans once and returns its ID.
func (b *classifierBuilder) intern(ans *answer) int32 {
	a := ClassifierAnswer{TCPLen: uint32(len(ans.tcp)), UDPLen: uint32(len(ans.udp)),
		TCPNoPort: ans.tcpNoPort, UDPNoPort: ans.udpNoPort, ICMP: ans.icmp, Other: ans.other}
	a.TCPOff = b.internPorts(ans.tcp)
	a.UDPOff = b.internPorts(ans.udp)
	if id, ok := b.ids[a]; ok {
		return id
	}
	id := int32(len(b.a.Answers))
	b.ids[a] = id
	b.a.Answers = append(b.a.Answers, a)
	return id
}

// internPorts stores a port function once (tcp and udp runs share storage) and returns its offset.
func (b *classifierBuilder) internPorts(segs []portSeg) uint32 {
	k := b.keyBuf[:0]
	for _, s := range segs {
		k = binary.LittleEndian.AppendUint16(k, uint16(s.Start))
		k = binary.LittleEndian.AppendUint32(k, uint32(s.Val))
	}
	b.keyBuf = k
	if off, ok := b.runs[string(k)]; ok {
		return off
	}
	off := uint32(len(b.a.PortStart))
	b.runs[string(k)] = off
	for _, s := range segs {
		b.a.PortStart = append(b.a.PortStart, uint16(s.Start))
		b.a.PortEntry = append(b.a.PortEntry, s.Val)
	}
	return off
}

type pfx struct {
	start, end u128
	bits       int
	top        bool  // end is the family's last address
	head, tail int32 // the prefix's entries: a list through family's occ, in entry order
}

// occurrence is one entry on a prefix's list.
type occurrence struct {
	entry, next int32
}

// family builds the address stage of one family and returns interval starts with answer IDs, plus the
// root answer (AnyRemote entries only).
func (b *classifierBuilder) family(v6 bool) (starts []u128, ids []int32, root answer) {
	bitLen := 32
	if v6 {
		bitLen = 128
	}
	last := int32(len(b.t.Entries) - 1) // the implicit DROP matches everything
	root = answer{tcp: []portSeg{{0, last}}, udp: []portSeg{{0, last}}, tcpNoPort: last, udpNoPort: last, icmp: last, other: last}
	// Sized for a prefix per entry, the common shape: a 10k-rule table otherwise regrows these a dozen times.
	byPrefix := make(map[netip.Prefix]int, len(b.t.Entries))
	ps := make([]pfx, 0, len(b.t.Entries))
	// Every prefix's entries in one array rather than a slice each.
	occ := make([]occurrence, 0, len(b.t.Entries))
	for i := range b.t.Entries {
		e := &b.t.Entries[i]
		if e.AnyRemote {
			root.apply(e, int32(i), v6)
			continue
		}
		for _, p := range e.Remotes {
			if p.Addr().Is6() != v6 {
				continue
			}
			p = p.Masked()
			k, ok := byPrefix[p]
			if !ok {
				k = len(ps)
				byPrefix[p] = k
				s := addrU128(p.Addr())
				end, top := prefixEnd(s, p.Bits(), bitLen)
				ps = append(ps, pfx{start: s, end: end, bits: p.Bits(), top: top, head: -1, tail: -1})
			}
			switch q := &ps[k]; {
			case q.tail >= 0 && occ[q.tail].entry == int32(i):
			case q.tail < 0:
				q.head, q.tail = int32(len(occ)), int32(len(occ))
				occ = append(occ, occurrence{entry: int32(i), next: -1})
			default:
				occ[q.tail].next = int32(len(occ))
				q.tail = int32(len(occ))
				occ = append(occ, occurrence{entry: int32(i), next: -1})
			}
		}
	}
	slices.SortFunc(ps, func(x, y pfx) int {
		switch {
		case x.start.less(y.start):
			return -1
		case y.start.less(x.start):
			return 1
		}
		return x.bits - y.bits
	})
	// Boundaries: every prefix start and the address after every prefix end.
	bounds := make([]u128, 0, 2*len(ps)+1)
	bounds = append(bounds, u128{})
	for i := range ps {
		bounds = append(bounds, ps[i].start)
		if !ps[i].top {
			n, _ := ps[i].end.inc()
			bounds = append(bounds, n)
		}
	}
	slices.SortFunc(bounds, func(x, y u128) int {
		switch {
		case x.less(y):
			return -1
		case y.less(x):
			return 1
		}
		return 0
	})
	bounds = slices.Compact(bounds)
	// Sweep: prefixes are nested or disjoint, so the open ones form a stack whose top is the longest
	// match; each pushed prefix's answer is its parent's lowered by its own entries.
	type open struct {
		end u128
		ans answer
		id  int32
	}
	rootID := b.intern(&root)
	var stack []open
	next := 0
	starts, ids = make([]u128, 0, len(bounds)), make([]int32, 0, len(bounds))
	for _, s := range bounds {
		for len(stack) > 0 && stack[len(stack)-1].end.less(s) {
			stack = stack[:len(stack)-1]
		}
		for next < len(ps) && ps[next].start == s {
			par := root
			if len(stack) > 0 {
				par = stack[len(stack)-1].ans
			}
			ans := par
			for o := ps[next].head; o >= 0; o = occ[o].next {
				ei := occ[o].entry
				ans.apply(&b.t.Entries[ei], ei, v6)
			}
			stack = append(stack, open{end: ps[next].end, ans: ans, id: b.intern(&ans)})
			next++
		}
		id := rootID
		if len(stack) > 0 {
			id = stack[len(stack)-1].id
		}
		if n := len(ids); n > 0 && ids[n-1] == id {
			continue // same answer as the interval before: merge
		}
		starts = append(starts, s)
		ids = append(ids, id)
	}
	return starts, ids, root
}

// NewClassifier compiles t into a Classifier.
func NewClassifier(t *compiler.Table) *Classifier {
	b := &classifierBuilder{t: t, ids: make(map[ClassifierAnswer]int32, len(t.Entries)), runs: map[string]uint32{}}
	b.a.Entries = len(t.Entries)
	s4, id4, root4 := b.family(false)
	b.a.V4Starts = make([]uint32, len(s4))
	for i, s := range s4 {
		b.a.V4Starts[i] = uint32(s.lo)
	}
	b.a.V4Answer = id4
	b.a.V4Index, b.a.V4Shift = v4Index(b.a.V4Starts)
	s6, id6, root6 := b.family(true)
	b.a.V6Hi, b.a.V6Lo = make([]uint64, len(s6)), make([]uint64, len(s6))
	for i, s := range s6 {
		b.a.V6Hi[i], b.a.V6Lo[i] = s.hi, s.lo
	}
	b.a.V6Answer = id6
	// Roots appended last and unshared so Lookup finds them at fixed places for zero/zoned addresses.
	for _, r := range []*answer{&root4, &root6} {
		b.ids = map[ClassifierAnswer]int32{}
		b.intern(r)
	}
	b.a.Answers = slices.Clip(b.a.Answers)
	return &Classifier{a: b.a}
}

// v4Index builds the first stage of the IPv4 search: about one slot per interval, so the binary search
// that follows covers a handful of intervals while the index costs at most 8 bytes per interval.
func v4Index(starts []uint32) ([]uint32, uint8) {
	k := 0
	for k < 20 && 1<<(k+1) <= len(starts) {
		k++
	}
	shift := uint8(32 - k)
	idx := make([]uint32, 1<<k+1)
	i := 0
	for j := 0; j < 1<<k; j++ {
		base := uint64(j) << shift
		for i+1 < len(starts) && uint64(starts[i+1]) <= base {
			i++
		}
		idx[j] = uint32(i)
	}
	idx[1<<k] = uint32(len(starts) - 1)
	return idx, shift
}
