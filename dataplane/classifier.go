package dataplane

import (
	"cmp"
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
	return cap(a.V4Starts)*4 + cap(a.V4Answer)*4 + cap(a.V4Index)*4 + cap(a.V6Hi)*8 + cap(a.V6Lo)*8 + cap(a.V6Answer)*4 +
		cap(a.Answers)*int(unsafe.Sizeof(ClassifierAnswer{})) + cap(a.PortStart)*2 + cap(a.PortEntry)*4
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
		ans = &a.Answers[a.V4Answer[lastAtMost(s[lo:hi], x)+lo]]
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
	return int(a.PortEntry[int(off)+lastAtMost(a.PortStart[off:off+n], p.Port)])
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

// inc is a+1; callers never pass the last address (prefixes ending there are marked top).
func (a u128) inc() u128 {
	lo := a.lo + 1
	hi := a.hi
	if lo == 0 {
		hi++
	}
	return u128{hi, lo}
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

// portFn is a port function while building: run i covers the ports from start[i] up to the next run's
// start with entry val[i]. Interned functions are views of PortStart/PortEntry.
type portFn struct {
	start []uint16
	val   []int32
}

// push appends a run, merged into the previous one when the entry is the same.
func (f *portFn) push(start uint32, val int32) {
	if n := len(f.val); n > 0 && f.val[n-1] == val {
		return
	}
	f.start = append(f.start, uint16(start))
	f.val = append(f.val, val)
}

// minRange writes into dst the function src lowered to at most v on [lo, hi]. It reports false, leaving
// dst alone, when that changes nothing.
func minRange(dst *portFn, src portFn, lo, hi uint32, v int32) bool {
	n := len(src.start)
	changed := false
	for i := 0; i < n && uint32(src.start[i]) <= hi; i++ {
		end := uint32(65535)
		if i+1 < n {
			end = uint32(src.start[i+1]) - 1
		}
		if src.val[i] > v && end >= lo {
			changed = true
			break
		}
	}
	if !changed {
		return false
	}
	dst.start, dst.val = dst.start[:0], dst.val[:0]
	for i := 0; i < n; i++ {
		s, val := uint32(src.start[i]), src.val[i]
		end := uint32(65535)
		if i+1 < n {
			end = uint32(src.start[i+1]) - 1
		}
		if end < lo || s > hi || val <= v {
			dst.push(s, val)
			continue
		}
		if s < lo {
			dst.push(s, val)
		}
		dst.push(max(s, lo), v)
		if end > hi {
			dst.push(hi+1, val) // hi < end ≤ 65535, so it fits a port
		}
	}
	return true
}

// portWork follows one port function through a prefix's entries: the parent's interned function until an
// entry lowers it, then two scratch buffers in turn, so lowering allocates only while the buffers grow.
type portWork struct {
	cur     portFn
	buf     [2]portFn
	flip    int
	changed bool
}

func (w *portWork) reset(f portFn) { w.cur, w.changed = f, false }

func (w *portWork) lower(lo, hi uint32, v int32) {
	dst := &w.buf[w.flip]
	if minRange(dst, w.cur, lo, hi, v) {
		w.cur, w.flip, w.changed = *dst, w.flip^1, true
	}
}

// apply lowers ans, whose port functions are in b.tcp and b.udp, by entry idx for the packets of family
// v6 that e matches (remote aside).
func (b *classifierBuilder) apply(ans *ClassifierAnswer, e *compiler.Entry, idx int32, v6 bool) {
	lo, hi := uint32(0), uint32(65535)
	if !e.Ports.Any() {
		lo, hi = uint32(e.Ports.Lo), uint32(e.Ports.Hi)
	}
	switch e.Protocol {
	case model.ProtoAll:
		b.tcp.lower(0, 65535, idx)
		b.udp.lower(0, 65535, idx)
		ans.TCPNoPort = min(ans.TCPNoPort, idx)
		ans.UDPNoPort = min(ans.UDPNoPort, idx)
		ans.ICMP = min(ans.ICMP, idx)
		ans.Other = min(ans.Other, idx)
	case model.ProtoTCP:
		b.tcp.lower(lo, hi, idx)
		if e.Ports.Any() {
			ans.TCPNoPort = min(ans.TCPNoPort, idx)
		}
	case model.ProtoUDP:
		b.udp.lower(lo, hi, idx)
		if e.Ports.Any() {
			ans.UDPNoPort = min(ans.UDPNoPort, idx)
		}
	case model.ProtoICMP:
		if !v6 {
			ans.ICMP = min(ans.ICMP, idx)
		}
	case model.ProtoICMPv6:
		if v6 {
			ans.ICMP = min(ans.ICMP, idx)
		}
	}
}

// internTable is an open-addressing hash set of stored values (port functions or answers) by index; the
// caller hashes and confirms equality against the stored value, so no key is built or kept twice.
type internTable struct {
	slots  []uint32 // value index + 1; 0 marks an empty slot
	hashes []uint32 // by value index
}

// newInternTable is sized for expect values at a load of at most 1/2.
func newInternTable(expect int) internTable {
	n := 16
	for n < 2*expect {
		n *= 2
	}
	return internTable{slots: make([]uint32, n), hashes: make([]uint32, 0, expect)}
}

// reserve keeps room for one more value at a load of at most 1/2.
func (t *internTable) reserve() {
	if 2*(len(t.hashes)+1) <= len(t.slots) {
		return
	}
	t.slots = make([]uint32, 2*len(t.slots))
	mask := uint32(len(t.slots) - 1)
	for v, h := range t.hashes {
		i := h & mask
		for t.slots[i] != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = uint32(v) + 1
	}
}

// add records a new value of hash h in the empty slot i and returns its index.
func (t *internTable) add(i, h uint32) uint32 {
	t.hashes = append(t.hashes, h)
	t.slots[i] = uint32(len(t.hashes))
	return uint32(len(t.hashes) - 1)
}

func mixHash(h, x uint64) uint64 {
	h = (h ^ x) * 0x9e3779b97f4a7c15
	return h ^ h>>32
}

type classifierBuilder struct {
	t        *compiler.Table
	a        ClassifierArrays
	answers  internTable // over a.Answers
	runs     internTable // over runOff; tcp and udp runs share storage
	runOff   []uint32    // offset of each stored port function; they are stored back to back
	tcp, udp portWork
}

// internRun stores a port function once and returns its offset.
func (b *classifierBuilder) internRun(f portFn) uint32 {
	h64 := uint64(len(f.start))
	for i := range f.start {
		h64 = mixHash(h64, uint64(f.start[i])<<32|uint64(uint32(f.val[i])))
	}
	h := uint32(h64)
	t := &b.runs
	t.reserve()
	mask := uint32(len(t.slots) - 1)
	n := uint32(len(f.start))
	for i := h & mask; ; i = (i + 1) & mask {
		v := t.slots[i]
		if v == 0 {
			t.add(i, h)
			off := uint32(len(b.a.PortStart))
			b.runOff = append(b.runOff, off)
			if need := len(b.a.PortStart) + len(f.start); need > cap(b.a.PortStart) {
				// Doubled: append grows large slices by about 1.25×, which copied and dropped several
				// times the final arrays on tables with long port runs.
				b.a.PortStart = slices.Grow(b.a.PortStart, max(need, 2*cap(b.a.PortStart))-len(b.a.PortStart))
				b.a.PortEntry = slices.Grow(b.a.PortEntry, max(need, 2*cap(b.a.PortEntry))-len(b.a.PortEntry))
			}
			b.a.PortStart = append(b.a.PortStart, f.start...)
			b.a.PortEntry = append(b.a.PortEntry, f.val...)
			return off
		}
		if t.hashes[v-1] != h {
			continue
		}
		off, end := b.runOff[v-1], uint32(len(b.a.PortStart))
		if int(v) < len(b.runOff) {
			end = b.runOff[v]
		}
		if end-off == n && slices.Equal(b.a.PortStart[off:end], f.start) && slices.Equal(b.a.PortEntry[off:end], f.val) {
			return off
		}
	}
}

// internAnswer stores a once and returns its ID.
func (b *classifierBuilder) internAnswer(a ClassifierAnswer) int32 {
	h := uint32(mixHash(mixHash(mixHash(mixHash(0, uint64(a.TCPOff)<<32|uint64(a.TCPLen)), uint64(a.UDPOff)<<32|uint64(a.UDPLen)),
		uint64(uint32(a.TCPNoPort))<<32|uint64(uint32(a.UDPNoPort))), uint64(uint32(a.ICMP))<<32|uint64(uint32(a.Other))))
	t := &b.answers
	t.reserve()
	mask := uint32(len(t.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		v := t.slots[i]
		if v == 0 {
			b.a.Answers = append(b.a.Answers, a)
			return int32(t.add(i, h))
		}
		if t.hashes[v-1] == h && b.a.Answers[v-1] == a {
			return int32(v - 1)
		}
	}
}

// internPorts stores the port functions of b.tcp and b.udp that differ from ans's (all of them when force)
// into ans.
func (b *classifierBuilder) internPorts(ans *ClassifierAnswer, force bool) {
	if force || b.tcp.changed {
		ans.TCPOff, ans.TCPLen = b.internRun(b.tcp.cur), uint32(len(b.tcp.cur.start))
	}
	if force || b.udp.changed {
		ans.UDPOff, ans.UDPLen = b.internRun(b.udp.cur), uint32(len(b.udp.cur.start))
	}
}

// stored is the interned port function at off.
func (b *classifierBuilder) stored(off, n uint32) portFn {
	return portFn{b.a.PortStart[off : off+n], b.a.PortEntry[off : off+n]}
}

// remote is one remote prefix (masked) of one entry.
type remote struct {
	hi, lo uint64 // prefix start; IPv4 in lo
	entry  int32
	bits   uint8
}

func (r *remote) start() u128 { return u128{r.hi, r.lo} }

// sortRemotesV4 sorts IPv4 remotes by (start, bits), keeping entry order among equal prefixes: an LSD
// radix sort, bytewise, that skips the bytes all remotes share (the common case for bits and the first
// octet). It returns the sorted slice, which is rs or tmp.
func sortRemotesV4(rs, tmp []remote) []remote {
	digit := func(r *remote, d int) uint8 {
		if d == 0 {
			return r.bits
		}
		return uint8(r.lo >> (8 * (d - 1)))
	}
	var count [5][256]int32
	for i := range rs {
		for d := range count {
			count[d][digit(&rs[i], d)]++
		}
	}
	for d := range count {
		c := &count[d]
		if len(rs) == 0 || int(c[digit(&rs[0], d)]) == len(rs) {
			continue
		}
		sum := int32(0)
		for k := range c {
			c[k], sum = sum, sum+c[k]
		}
		for i := range rs {
			k := digit(&rs[i], d)
			tmp[c[k]] = rs[i]
			c[k]++
		}
		rs, tmp = tmp, rs
	}
	return rs
}

// family builds the address stage of one family into b.a and returns its root answer (AnyRemote entries
// only).
func (b *classifierBuilder) family(v6 bool) ClassifierAnswer {
	root, n := b.rootAnswer(v6)
	rootID := b.internAnswer(root)
	b.sweep(v6, b.sortedRemotes(v6, n), root, rootID)
	return root
}

// rootAnswer is the answer for an address no prefix of the family covers: the entries that match every
// address, lowered in order. n counts the family's (prefix, entry) pairs.
func (b *classifierBuilder) rootAnswer(v6 bool) (root ClassifierAnswer, n int) {
	entries := b.t.Entries
	last := int32(len(entries) - 1) // the implicit DROP matches everything
	root = ClassifierAnswer{TCPNoPort: last, UDPNoPort: last, ICMP: last, Other: last}
	b.tcp.reset(portFn{[]uint16{0}, []int32{last}})
	b.udp.reset(portFn{[]uint16{0}, []int32{last}})
	for i := range entries {
		e := &entries[i]
		if e.AnyRemote {
			b.apply(&root, e, int32(i), v6)
			continue
		}
		for _, p := range e.Remotes {
			if p.IsValid() && p.Addr().Is6() == v6 {
				n++
			}
		}
	}
	b.internPorts(&root, true)
	return root, n
}

// sortedRemotes is every (prefix, entry) pair of the family sorted by prefix start, then length, then
// entry. A sorted list rather than a map from prefix to entries: hashing netip.Prefix keys was most of
// the build.
func (b *classifierBuilder) sortedRemotes(v6 bool, n int) []remote {
	entries := b.t.Entries
	rs := make([]remote, 0, n)
	for i := range entries {
		e := &entries[i]
		if e.AnyRemote {
			continue
		}
		for _, p := range e.Remotes {
			// An invalid prefix contains no address (netip.Prefix.Contains).
			if !p.IsValid() || p.Addr().Is6() != v6 {
				continue
			}
			p = p.Masked()
			s := addrU128(p.Addr())
			rs = append(rs, remote{hi: s.hi, lo: s.lo, entry: int32(i), bits: uint8(p.Bits())})
		}
	}
	if !v6 {
		return sortRemotesV4(rs, make([]remote, len(rs)))
	}
	slices.SortFunc(rs, func(x, y remote) int {
		switch {
		case x.hi != y.hi:
			return cmp.Compare(x.hi, y.hi)
		case x.lo != y.lo:
			return cmp.Compare(x.lo, y.lo)
		case x.bits != y.bits:
			return int(x.bits) - int(y.bits)
		}
		return int(x.entry - y.entry)
	})
	return rs
}

// openPrefix is a prefix of the sweep whose end has not been passed yet.
type openPrefix struct {
	end u128
	top bool // end is the family's last address
	ans ClassifierAnswer
	id  int32
}

// intervals collects the sweep's output: the start of every address interval and its answer id.
type intervals struct {
	v6       bool
	s4       []uint32
	s6h, s6l []uint64
	ids      []int32
}

// add starts an interval at bound with answer id, or extends the one before when its answer is the same.
func (iv *intervals) add(bound u128, id int32) {
	if n := len(iv.ids); n > 0 && iv.ids[n-1] == id {
		return
	}
	if iv.v6 {
		iv.s6h, iv.s6l = append(iv.s6h, bound.hi), append(iv.s6l, bound.lo)
	} else {
		iv.s4 = append(iv.s4, uint32(bound.lo))
	}
	iv.ids = append(iv.ids, id)
}

// sweep visits the boundaries of rs (every prefix start and the address after every prefix end) in
// order and writes the family's intervals into b.a. Prefixes are nested or disjoint, so the open ones
// form a stack whose top is the longest match and whose top ends first; each pushed prefix's answer is
// its parent's lowered by its own entries.
func (b *classifierBuilder) sweep(v6 bool, rs []remote, root ClassifierAnswer, rootID int32) {
	bitLen, prefixes := 32, 0
	if v6 {
		bitLen = 128
	}
	for i := range rs {
		if i == 0 || rs[i].lo != rs[i-1].lo || rs[i].hi != rs[i-1].hi || rs[i].bits != rs[i-1].bits {
			prefixes++
		}
	}
	iv := intervals{v6: v6, ids: make([]int32, 0, 2*prefixes+1)}
	if v6 {
		iv.s6h, iv.s6l = make([]uint64, 0, 2*prefixes+1), make([]uint64, 0, 2*prefixes+1)
	} else {
		iv.s4 = make([]uint32, 0, 2*prefixes+1)
	}
	stack := make([]openPrefix, 0, bitLen+1)
	var bound u128
	for next := 0; ; {
		for len(stack) > 0 && stack[len(stack)-1].end.less(bound) {
			stack = stack[:len(stack)-1]
		}
		parent, id := root, rootID
		if len(stack) > 0 {
			parent, id = stack[len(stack)-1].ans, stack[len(stack)-1].id
		}
		for next < len(rs) && rs[next].start() == bound {
			var top openPrefix
			top, next = b.push(rs, next, bound, bitLen, parent, id, v6)
			parent, id = top.ans, top.id
			stack = append(stack, top)
		}
		iv.add(bound, id)
		switch {
		case len(stack) > 0 && !stack[len(stack)-1].top && (next == len(rs) || stack[len(stack)-1].end.less(rs[next].start())):
			bound = stack[len(stack)-1].end.inc()
		case next < len(rs):
			bound = rs[next].start()
		default:
			if v6 {
				b.a.V6Hi, b.a.V6Lo, b.a.V6Answer = iv.s6h, iv.s6l, iv.ids
			} else {
				b.a.V4Starts, b.a.V4Answer = iv.s4, iv.ids
			}
			return
		}
	}
}

// push opens the prefix that starts at rs[next] (bound): its answer is parent's lowered by every entry
// of that prefix. It returns the open prefix and the index of the first pair after it.
func (b *classifierBuilder) push(rs []remote, next int, bound u128, bitLen int, parent ClassifierAnswer, parentID int32, v6 bool) (openPrefix, int) {
	bits := rs[next].bits
	end, top := prefixEnd(bound, int(bits), bitLen)
	ans, id := parent, parentID
	b.tcp.reset(b.stored(parent.TCPOff, parent.TCPLen))
	b.udp.reset(b.stored(parent.UDPOff, parent.UDPLen))
	for ; next < len(rs) && rs[next].start() == bound && rs[next].bits == bits; next++ {
		ei := rs[next].entry
		b.apply(&ans, &b.t.Entries[ei], ei, v6)
	}
	b.internPorts(&ans, false)
	if ans != parent { // a prefix whose entries change nothing keeps its parent's answer
		id = b.internAnswer(ans)
	}
	return openPrefix{end: end, top: top, ans: ans, id: id}, next
}

// NewClassifier compiles t into a Classifier.
func NewClassifier(t *compiler.Table) *Classifier {
	// Sized up front, as a 10k-rule table otherwise regrows these a dozen times: Answers for the most it
	// can hold (an answer per distinct prefix and family root); the rest for what tables show, about half
	// as many answers and port runs as prefixes and two port segments per prefix.
	remotes := 0
	for i := range t.Entries {
		if !t.Entries[i].AnyRemote {
			remotes += len(t.Entries[i].Remotes)
		}
	}
	b := &classifierBuilder{t: t, answers: newInternTable(remotes/2 + 2), runs: newInternTable(remotes/2 + 4)}
	b.a.Entries = len(t.Entries)
	b.a.Answers = make([]ClassifierAnswer, 0, remotes+4)
	b.runOff = make([]uint32, 0, remotes/2+4)
	b.a.PortStart, b.a.PortEntry = make([]uint16, 0, 2*remotes+4), make([]int32, 0, 2*remotes+4)
	root4 := b.family(false)
	b.a.V4Index, b.a.V4Shift = v4Index(b.a.V4Starts)
	root6 := b.family(true)
	// Roots appended last and unshared so Lookup finds them at fixed places for zero/zoned addresses.
	b.a.Answers = append(b.a.Answers, root4, root6)
	// The arrays were sized for the worst case; a Classifier may live as long as its table.
	a := &b.a
	a.Answers, a.PortStart, a.PortEntry = shrink(a.Answers), shrink(a.PortStart), shrink(a.PortEntry)
	a.V4Starts, a.V4Answer = shrink(a.V4Starts), shrink(a.V4Answer)
	a.V6Hi, a.V6Lo, a.V6Answer = shrink(a.V6Hi), shrink(a.V6Lo), shrink(a.V6Answer)
	return &Classifier{a: b.a}
}

// shrink returns s in an exactly sized array when more than a fifth of its capacity is unused.
func shrink[T any](s []T) []T {
	if cap(s)-len(s) > cap(s)/5 {
		return slices.Clone(s)
	}
	return s
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

// lastAtMost returns the index of the last element of s (sorted, s[0] ≤ x) that is ≤ x. Each step halves
// the range without a branch on the comparison (the compiler keeps a branch for an if here): a search's
// branches go either way at random, and their mispredictions cost more than the steps themselves.
func lastAtMost[T uint16 | uint32](s []T, x T) int {
	base, n := 0, len(s)
	for n > 1 {
		half := n / 2
		d := int64(x) - int64(s[base+half]) // ≥ 0 where s[base+half] ≤ x
		base += half &^ int(d>>63)
		n -= half
	}
	return base
}
