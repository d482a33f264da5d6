// Package conntrack tracks connections for stateful security groups (SPEC §3): replies of accepted
// flows pass as established, ICMP errors quoting a tracked flow pass as related, flows time out by
// protocol and state, and flows are re-checked against new tables before their next packet. Time is
// whatever the caller says (capture timestamps in replay, the clock in the daemon), so it is
// deterministic under test. A Table is not safe for concurrent use: give each worker its own, or lock.
package conntrack

import (
	"net/netip"
	"time"

	"github.com/sgsim/sgsim/packet"
)

// Timeouts of SPEC §3.
const (
	TCPEstablished = 600 * time.Second
	TCPClosing     = 30 * time.Second
	ICMPTimeout    = 30 * time.Second
	OtherBoth      = 180 * time.Second
	OtherOneWay    = 30 * time.Second
)

// DefaultMaxEntries bounds a table's memory when the caller does not choose.
const DefaultMaxEntries = 1 << 20

// Direction of the check that admitted a flow's first packet, as the caller numbers it (the dataplane
// uses 0 ingress, 1 egress). Reply-direction packets are seen in the other direction.
type Direction uint8

// Key identifies a flow as its first packet was seen: at which zone (ENI) and direction, with which
// 5-tuple.
type Key struct {
	Zone             uint32
	Dir              Direction
	Proto            uint8
	SrcPort, DstPort uint16
	Src, Dst         netip.Addr
}

// KeyOf builds the key of tuple t seen at zone in direction dir.
func KeyOf(zone uint32, dir Direction, t *packet.Tuple) Key {
	return Key{Zone: zone, Dir: dir, Proto: t.Proto, SrcPort: t.SrcPort, DstPort: t.DstPort, Src: t.Src, Dst: t.Dst}
}

// reply returns the key the flow would have been tracked under if k is its reply-direction packet.
func (k Key) reply() Key {
	return Key{Zone: k.Zone, Dir: k.Dir ^ 1, Proto: k.Proto, SrcPort: k.DstPort, DstPort: k.SrcPort, Src: k.Dst, Dst: k.Src}
}

// Recheck tells whether the original packet of the flow k would still be accepted by the tables now
// in force. It is called at most once per flow per generation.
type Recheck func(k *Key) bool

// Stats counts what the table did.
type Stats struct {
	Tracked, Established, Related, Expired, Cut, Evicted uint64
}

const (
	stReply   = 1 << iota // a reply-direction packet was seen
	stClosing             // FIN or RST seen
)

type entry struct {
	key        Key
	lastSeen   int64
	gen        uint64
	state      uint8
	prev, next int32 // LRU list by last packet: head is the most recent
}

// Table is a bounded connection-tracking table. Entries live in one slice linked into an LRU list so
// steady-state tracking does not allocate; when full, the least recently seen flow is evicted.
type Table struct {
	max        int
	index      map[Key]int32
	entries    []entry
	free       []int32
	head, tail int32
	stats      Stats
}

// New returns a table holding at most maxEntries flows (DefaultMaxEntries when ≤ 0).
func New(maxEntries int) *Table {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	return &Table{max: maxEntries, index: make(map[Key]int32), head: -1, tail: -1}
}

// Len returns the number of tracked flows (expired ones not yet swept included).
func (t *Table) Len() int { return len(t.index) }

// Stats returns the counters.
func (t *Table) Stats() Stats { return t.stats }

func timeout(e *entry) time.Duration {
	switch e.key.Proto {
	case packet.ProtoTCP:
		if e.state&stClosing != 0 {
			return TCPClosing
		}
		return TCPEstablished
	case packet.ProtoICMP, packet.ProtoICMPv6:
		return ICMPTimeout
	}
	if e.state&stReply != 0 {
		return OtherBoth
	}
	return OtherOneWay
}

// live finds k's entry, dropping it when expired or when a table change since its last check now
// rejects its original packet.
func (t *Table) live(k *Key, now int64, gen uint64, recheck Recheck) (int32, bool) {
	i, ok := t.index[*k]
	if !ok {
		return 0, false
	}
	e := &t.entries[i]
	if now-e.lastSeen > int64(timeout(e)) {
		t.stats.Expired++
		t.remove(i)
		return 0, false
	}
	if e.gen != gen {
		if recheck != nil && !recheck(&e.key) {
			t.stats.Cut++
			t.remove(i)
			return 0, false
		}
		e.gen = gen
	}
	return i, true
}

// Reply reports whether a packet with key k (zone, direction and tuple as seen now) is the reply of a
// tracked flow, and if so refreshes that flow: the packet is then accepted as established.
func (t *Table) Reply(k Key, tcpFlags uint8, now time.Duration, gen uint64, recheck Recheck) bool {
	r := k.reply()
	i, ok := t.live(&r, int64(now), gen, recheck)
	if !ok {
		return false
	}
	e := &t.entries[i]
	e.state |= stReply
	t.touch(i, int64(now), k.Proto, tcpFlags)
	t.stats.Established++
	return true
}

// Related reports whether an ICMP error seen at zone in direction dir quotes a tracked flow (the quoted
// packet travelled the other way: it is the flow's original or its reply).
func (t *Table) Related(zone uint32, dir Direction, inner *packet.Tuple, now time.Duration, gen uint64, recheck Recheck) bool {
	k := KeyOf(zone, dir^1, inner) // the quote is the flow's own original packet
	if _, ok := t.live(&k, int64(now), gen, recheck); ok {
		t.stats.Related++
		return true
	}
	k = KeyOf(zone, dir, inner).reply() // or the flow's reply
	k.Dir = dir
	if _, ok := t.live(&k, int64(now), gen, recheck); ok {
		t.stats.Related++
		return true
	}
	return false
}

// Track records that the original-direction packet k was accepted by the rules: it starts a flow or
// refreshes the existing one.
func (t *Table) Track(k Key, tcpFlags uint8, now time.Duration, gen uint64) {
	if i, ok := t.index[k]; ok {
		e := &t.entries[i]
		newSYN := k.Proto == packet.ProtoTCP && tcpFlags&(packet.TCPSyn|packet.TCPAck) == packet.TCPSyn
		if newSYN || int64(now)-e.lastSeen > int64(timeout(e)) {
			e.state = 0 // a new connection reusing the tuple: forget the old one's FIN and replies
		}
		e.gen = gen
		t.touch(i, int64(now), k.Proto, tcpFlags)
		return
	}
	if len(t.index) >= t.max {
		t.stats.Evicted++
		t.remove(t.tail)
	}
	var i int32
	if n := len(t.free); n > 0 {
		i, t.free = t.free[n-1], t.free[:n-1]
	} else {
		t.entries = append(t.entries, entry{})
		i = int32(len(t.entries) - 1)
	}
	t.entries[i] = entry{key: k, gen: gen, prev: -1, next: -1, lastSeen: int64(now)}
	t.index[k] = i
	t.pushFront(i)
	t.touch(i, int64(now), k.Proto, tcpFlags)
	t.stats.Tracked++
}

// Cut forgets the flow whose original packet is k (the rules now drop it).
func (t *Table) Cut(k Key) bool {
	i, ok := t.index[k]
	if ok {
		t.stats.Cut++
		t.remove(i)
	}
	return ok
}

// Expire removes flows idle past their timeout, oldest first, and returns how many it removed. The
// LRU order is by last packet, so it stops at the first flow still alive from the tail; timeouts
// differ by protocol, so a few expired flows may wait for their lookup or a later sweep.
func (t *Table) Expire(now time.Duration) int {
	n := 0
	for t.tail >= 0 {
		e := &t.entries[t.tail]
		if int64(now)-e.lastSeen <= int64(timeout(e)) {
			break
		}
		t.remove(t.tail)
		t.stats.Expired++
		n++
	}
	return n
}

func (t *Table) touch(i int32, now int64, proto uint8, tcpFlags uint8) {
	e := &t.entries[i]
	if now > e.lastSeen {
		e.lastSeen = now
	}
	if proto == packet.ProtoTCP && tcpFlags&(packet.TCPFin|packet.TCPRst) != 0 {
		e.state |= stClosing
	}
	if t.head != i {
		t.unlink(i)
		t.pushFront(i)
	}
}

func (t *Table) pushFront(i int32) {
	e := &t.entries[i]
	e.prev, e.next = -1, t.head
	if t.head >= 0 {
		t.entries[t.head].prev = i
	}
	t.head = i
	if t.tail < 0 {
		t.tail = i
	}
}

func (t *Table) unlink(i int32) {
	e := &t.entries[i]
	if e.prev >= 0 {
		t.entries[e.prev].next = e.next
	} else if t.head == i {
		t.head = e.next
	}
	if e.next >= 0 {
		t.entries[e.next].prev = e.prev
	} else if t.tail == i {
		t.tail = e.prev
	}
	e.prev, e.next = -1, -1
}

func (t *Table) remove(i int32) {
	t.unlink(i)
	delete(t.index, t.entries[i].key)
	t.entries[i] = entry{prev: -1, next: -1}
	t.free = append(t.free, i)
}
