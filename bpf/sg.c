//go:build ignore

// SPDX-License-Identifier: GPL-2.0
// sgsim security-group TC program: parses a frame, finds the ENI and direction from the interface it runs
// on, answers reply-direction packets of tracked flows from conntrack, and classifies the rest against the
// map-resident flattened first-match table of that ENI and direction (layout: see bpf/layout.go).
//
// Host side (SPEC §2): TC ingress on the host veth/tap sees what the ENI sends (ENI egress); TC egress sees
// what is sent to it (ENI ingress).

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sg.h"

char __license[] SEC("license") = "GPL";

#define DIR_INGRESS 0
#define DIR_EGRESS 1

enum reason {
	R_RULE = 0,
	R_DEFAULT_DROP = 1,
	R_ESTABLISHED = 2,
	R_NO_SG = 3,
	R_ARP = 4,
	R_ND = 5,
	R_NOT_IP = 6,
	R_MALFORMED = 7,
	R_NO_ENI = 8, // a guarded interface no ENI claims (SPEC §8)
};

#define CHUNK_SHIFT SG_CHUNK_SHIFT
#define CHUNK_SIZE SG_CHUNK_SIZE

// At byte 0 of every table. Offsets are in bytes from the start of the table.
struct hdr {
	__u64 gen;
	__u32 n4, n6;
	__u32 off4, off6, off_nodes, off_ports;
	__u32 off_entries, n_entries, off_sgs, flags;
	__u32 off_v4idx, v4shift;
	__u32 off_counts; // per-entry packet counters (u64), 0 in tables of builds that had none
	__u32 pad;
};

struct v4iv {
	__u32 start;
	__u32 node;
}; // 8 bytes

struct v6iv {
	__u64 hi, lo;
	__u32 node, pad;
	__u64 pad2;
}; // 32 bytes

struct node {
	__u32 tcp_off, tcp_cnt, udp_off, udp_cnt;
	__s32 tcp_np, udp_np, icmp, other;
}; // 32 bytes

struct portiv {
	__u16 start, pad;
	__s32 entry;
}; // 8 bytes

struct entry {
	__u32 action; // 1 accept, 0 drop
	__s32 rule_index;
	__u32 sg;
	__u32 pad;
}; // 16 bytes

// tables[slot*2+dir] is the live table of one ENI direction; replacing the inner map is the atomic swap.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SG_MAX_TABLES);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, 1);
		__uint(map_flags, BPF_F_INNER_MAP);
		__type(key, __u32);
		__type(value, __u8[CHUNK_SIZE]);
	});
} tables SEC(".maps");

// table_gens[slot*2+dir] is the generation of the table in force there, plus one (0: unknown, read the
// table's header): directly addressed, so a tracked flow's check that its table did not change costs
// no map lookup call. Switch zeroes an entry before it replaces the table and sets it after.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SG_MAX_TABLES);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} table_gens SEC(".maps");

struct ifcfg {
	__u32 slot;
	__u32 flags;
};

// ifaces binds an interface (ifindex) to its ENI slot; the Go side writes it, and copies each binding of
// an ifindex below SG_IFSLOTS into ifslots (slot + 1, 0: not bound), which is what the program reads
// for those: a directly addressed array, whose lookup the verifier inlines, instead of a hash lookup
// call on every packet.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct ifcfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SG_IFSLOTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} ifslots SEC(".maps");

// Packets dropped on guarded interfaces (SPEC §8) by ENI direction (what the VM sent: egress), counted
// beside the rate-limited drop events.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} guard_drops SEC(".maps");

struct eniname {
	char name[SG_NAME_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SG_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct eniname);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} eni_names SEC(".maps");

#define CT_REPLY_SEEN 1
#define CT_CLOSING 2
#define CT_LIVE SG_CT_LIVE // the half holds a flow
#define CT_SWAPPED 8 // the half's flow runs from the key's dst endpoint to its src endpoint

// One entry per pair of endpoints: the key puts the lower endpoint (address, port) first, and each half of
// the value is one tracked flow as first seen, in either orientation. A packet's own flow and the flow it
// would be a reply to share the key, so one lookup answers both "is this a reply?" and "refresh my flow".
struct ct_key {
	__u32 slot;
	__u8 fam, proto;
	__u16 sport, dport;
	__u16 pad;
	__u8 src[16], dst[16];
};

struct ct_half {
	__u64 last;
	__u64 gen;
	__u8 dir, flags;
	__u16 pad;
	__u32 entry; // 1 + the entry of table generation gen that accepts the flow, 0: unknown
};

// Two struct ct_half, spelled out so the Go type keeps the first half's fields as Last, Gen, Dir, Flags.
struct ct_val {
	__u64 last;
	__u64 gen;
	__u8 dir, flags;
	__u16 pad;
	__u32 entry;
	__u64 last2;
	__u64 gen2;
	__u8 dir2, flags2;
	__u16 pad2;
	__u32 entry2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} ct6 SEC(".maps"); // IPv6 flows; named ct6, not conntrack as before, since last counts ticks, not ns (clock.go)

// IPv4 flows have a table of their own with a key of 16 bytes instead of 44 (same values otherwise):
// ct4_sets, a set-associative table the program addresses itself, where the kernel's LRU hash (ct6) costs
// helper calls, a jhash of the key and a memcmp call per lookup and, per new flow, a bucket lock, LRU
// list upkeep and, once full, a shrink's cold evictions.
//
// SG_CT4_WAYS ways make a set (an element of the array, whose lookup the verifier inlines): the ways'
// keys in one cache line, their values after it, so that a lookup compares keys in one line per
// candidate set and reads a value only where its key matched (a new flow's miss reads two lines). A
// key's state byte says whether its value holds a flow (SG_CT4_LIVE), so that choosing a free way also
// reads only keys; values are read for a choice only when both sets are full, and then a miss in two
// full sets reads a word of each of their values' lines (ct4_warm) before the rules decide, so that an
// insert finds them in the cache. A key hashes (ct4_hash, inline, seeded by ct4_seed) to two
// candidate sets; a flow is in one of them, and a new one goes into the one with fewer live ways (the
// first on a tie): with one choice, sets of four overflow early (a live flow evicted while the table has
// room), with two far later (bpf/README.md has the rates). When both sets are full, the way least
// recently seen of the eight is taken over.
//
// Concurrency (several CPUs run the program, and the Go side writes the table through its mmap):
//   - A way's first word (its key's slot, protocol, state byte, ports) says whether it can match: its
//     state byte (the key's pad) is SG_CT4_BUSY while a writer fills the way, SG_CT4_LIVE while its
//     value holds a flow. A writer claims a way by a compare-and-swap of that word (the one it read
//     when choosing the way) to busy and not live, with the state's write count one more, so that two
//     writers cannot take one way and a word read before a claim never equals one read after it. It
//     then writes the rest of the key and the value and publishes the word, key, live and count, not
//     busy, with an atomic xor of the bits that change (which leaves the lock bit, below, as another
//     CPU may have set or cleared it meanwhile, and sets live whatever a late clear of live did to the
//     busy word).
//   - A reader compares the first word (masked of the count and the lock bit: a busy way, or one not
//     live, matches nothing) and the addresses, then reads the first word again: if it changed but for
//     the lock bit, a writer took the way meanwhile and the addresses it read may be the new key's, so
//     the way is not taken for a match.
//   - Live follows the value's halves: set by the publish of a new flow; cleared when a flow's last
//     half ends (ct_forget, the Go side's forget, flush and aging) by a compare-and-swap from a word
//     holding the same key, so a way taken over meanwhile stays live. A half started by another CPU
//     between that end and the clear is lost with the way (its next packet starts it again), as a
//     packet racing a takeover may refresh the new flow's half (below). A way left live with no live
//     half (a clear that lost its compare-and-swap) is found by its key and joined, or is taken first
//     in an eviction: it holds nothing.
//   - Two CPUs starting the same flow: inserts take the lock of the key's first set (SG_CT4_LOCK in the
//     first word of its first way: a compare-and-swap, tried a bounded number of times, on a line the
//     lookup has just read, where a lock array of its own cost each new flow a cold cache line) and look
//     for the key again under it, so the second joins the first one's way instead of making another. A re-scan after claiming without a
//     lock cannot promise that: the CPU that claims second sees the first's way, but the first sees the
//     second's only sometimes, and no rule on the ways' positions makes exactly one of them give way. A
//     writer that cannot take the lock inserts without it (at worst two ways of one key, the first
//     found is used and the other ages out).
//   - Values are updated in place, field by field, by every packet of their flow, as the kernel's
//     preallocated hash maps do: a packet that matched a way just before another CPU took it over for a
//     new flow may refresh the new flow's half, as a lookup of a reused hash element may.
//   - The readers' second read relies on loads not passing loads, which x86 guarantees; the writers'
//     atomic operations fetch, which makes them full barriers on every JIT.
struct ct_key4 {
	__u16 slot;
	__u8 proto, pad;
	__u16 sport, dport;
	__u8 src[4], dst[4];
} __attribute__((aligned(8))); // read as two words (ct4_words)

struct ct4_set {
	struct ct_key4 k[SG_CT4_WAYS]; // k[i].pad is way i's state byte; 0 in a lookup key
	struct ct_val v[SG_CT4_WAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SG_CT4_SETS);
	__uint(map_flags, BPF_F_MMAPABLE); // the Go side follows the same protocol through its mmap
	__type(key, __u32);
	__type(value, struct ct4_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} ct4_sets SEC(".maps");

// ct4_layout holds SG_CT4_LAYOUT (the loader writes it as the map is made), pinned beside ct4_sets: the
// table's layouts share map type and sizes, so a pinned table says its layout only here.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct4_layout SEC(".maps");

// ct4_seed keys ct4_hash, so that flows cannot be picked to land in one set without knowing it. The
// loader keeps it with the table (ct4_meta, pinned beside it: the table's placement depends on it) and
// sets it here.
volatile const __u64 ct4_seed = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct4_meta SEC(".maps");

// Verdicts of first fragments, which later fragments of the same datagram take (SPEC §2).
struct frag_key {
	__u32 slot;
	__u8 dir, fam, proto, pad;
	__u32 id;
	__u8 src[16], dst[16];
};

struct frag_val {
	__s32 entry, rule_index;
	__u8 reason, accept;
	__u8 pad[6];
	__u64 gen;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
} frags SEC(".maps");

struct drop_event {
	__u64 ts;
	__u64 gen;
	__u32 slot, ifindex;
	__u8 dir, reason, fam, proto;
	__u16 sport, dport;
	__s32 entry, rule_index;
	__u32 suppressed; // events lost to the rate limit on this CPU just before this one
	__u8 src[16], dst[16];
	char sg[SG_NAME_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} drops SEC(".maps");

struct rate {
	__u64 window;
	__u32 count, suppressed;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rate);
	__uint(pinning, LIBBPF_PIN_BY_NAME); // survives the daemon (Load with a pin path)
} drop_rate SEC(".maps");

// Drop events per CPU per second; the rest are counted in the next event's suppressed field.
#define DROP_EVENTS_PER_SEC 1000

struct pkt {
	__u8 fam; // 4 or 6, 0 for non-IP
	__u8 proto;
	__u8 has_port;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 trackable;
	__u8 is_icmp_err;
	__u8 frag;	 // 1: first fragment, 2: a later one
	__u32 frag_id;
	__u16 sport, dport;
	__u8 src[16], dst[16];
	// Quoted flow of an ICMP error.
	__u8 q_ok, q_proto;
	__u16 q_sport, q_dport;
	__u8 q_src[16], q_dst[16];
	__u32 scratch; // see forget
};

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_QINQ1_ 0x9100
#define ETH_P_ARP_ 0x0806
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD

// parse's answer when a header lies past the linear part of the skb: the caller pulls and parses again.
#define R_PULL 255
// Headers are only looked for in the first MAX_HDR_OFF bytes (a bound the verifier needs for offsets).
#define MAX_HDR_OFF 0x3fff

// A frame read in place (direct packet access). at() returns its n bytes at off, or 0 when they are not
// there; pull records that they are in the frame but outside its linear part.
struct cursor {
	void *data, *end;
	__u32 len;
	__u32 pull;
};

static __always_inline __u8 *at(struct cursor *c, __u32 off, __u32 n)
{
	if (off > MAX_HDR_OFF)
		return 0;
	// The same bound again, in the register that is added (clang may add a copy the check did not see).
	__u64 o = off;
	asm volatile("%0 &= 0x3fff" : "+r"(o));
	__u8 *b = c->data + o;
	if ((void *)(b + n) > c->end) {
		if (off + n <= c->len)
			c->pull = 1;
		return 0;
	}
	return b;
}

// forget returns v as the verifier sees a value read from memory it does not track (p is a global
// function's argument): an unknown number. Header walks pass their offset through it at every step, so the
// verifier's states at the loop head converge instead of splitting by every possible offset range.
static __always_inline __u32 forget(struct pkt *p, __u32 v)
{
	*(volatile __u32 *)&p->scratch = v;
	return *(volatile __u32 *)&p->scratch;
}

static __always_inline __u16 be16(const __u8 *b)
{
	return ((__u16)b[0] << 8) | b[1];
}

// is_ext6 tells whether nh is an IPv6 extension header the parsers walk through.
static __always_inline int is_ext6(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44;
}

// echo_ports sets the ports an ICMP echo (or timestamp) message of type t and identifier id is tracked
// by, as packet.EchoPorts does: a request from id to id+1, a reply the other way, so a reply is its
// request's flow reversed and no request reversed is another request's, whatever the identifiers.
static __always_inline void echo_ports(__u8 t, __u16 id, __u16 *sport, __u16 *dport)
{
	__u16 other = id + 1;
	int reply = t == 0 || t == 14 || t == 129;
	*sport = reply ? other : id;
	*dport = reply ? id : other;
}

// parse_icmp reads the ICMP (IPv4) or ICMPv6 header at off; returns 0, 1 for neighbour discovery, or -1
// when it is truncated.
static __always_inline int parse_icmp(struct cursor *c, __u32 off, __u32 end, struct pkt *p)
{
	if (off + 4 > end)
		return -1;
	__u8 *b = at(c, off, 4);
	if (!b)
		return -1;
	__u8 t = b[0];
	int echo = 0;
	p->icmp_type = t;
	if (p->fam == 6) {
		if (t >= 133 && t <= 136)
			return 1;
		if (t >= 1 && t <= 4)
			p->is_icmp_err = 1;
		echo = t == 128 || t == 129;
	} else {
		if (t == 3 || t == 4 || t == 5 || t == 11 || t == 12)
			p->is_icmp_err = 1;
		echo = t == 0 || t == 8 || t == 13 || t == 14;
	}
	if (echo && off + 8 <= end) {
		b = at(c, off, 8);
		if (!b)
			return -1;
		echo_ports(t, be16(b + 4), &p->sport, &p->dport);
	}
	if (p->is_icmp_err)
		p->trackable = 0;
	return 0;
}

// parse_l4 reads ports/type at off. Returns 0, 1 for ICMPv6 neighbour discovery, or -1 when the header is
// truncated (end: end of the IP datagram as its header says, or of the frame if that comes first; Ethernet
// padding beyond the datagram is not header). The minimum lengths are those of packet.Decode, the Go
// decoder replay uses, so both engines call the same frames malformed.
static __always_inline int parse_l4(struct cursor *c, __u32 off, __u32 end, struct pkt *p)
{
	__u8 *b;
	p->trackable = 1;
	switch (p->proto) {
	case 6:
		if (off + 14 > end || !(b = at(c, off, 14)))
			return -1;
		p->sport = be16(b);
		p->dport = be16(b + 2);
		p->tcp_flags = b[13];
		p->has_port = 1;
		return 0;
	case 17:
		if (off + 8 > end || !(b = at(c, off, 8)))
			return -1;
		p->sport = be16(b);
		p->dport = be16(b + 2);
		p->has_port = 1;
		return 0;
	case 1:
	case 58:
		// ICMP inside IPv6 (and ICMPv6 inside IPv4) is just another protocol.
		if ((p->proto == 1) != (p->fam == 4))
			return 0;
		return parse_icmp(c, off, end, p);
	}
	return 0;
}

// quoted_ext6 walks the extension headers of an IPv6 packet quoted by an ICMPv6 error as packet.Decode
// does (no AH), stopping where the quote ends; returns the offset of the quoted L4 header, or 0 when it is
// a later fragment (no ports).
static __always_inline __u32 quoted_ext6(struct cursor *c, __u32 l4, __u32 end, __u8 nh, struct pkt *p)
{
	for (int i = 0; i < 8; i++) {
		if (nh != 0 && nh != 43 && nh != 60 && nh != 44)
			break;
		l4 = forget(p, l4);
		__u8 *x;
		if (l4 + 8 > end || !(x = at(c, l4, 4)))
			break;
		if (nh == 44) {
			if ((be16(x + 2) >> 3) != 0) {
				p->q_proto = x[0];
				return 0;
			}
			nh = x[0];
			l4 += 8;
			continue;
		}
		if (l4 + (x[1] + 1) * 8 > end)
			break;
		nh = x[0];
		l4 += (x[1] + 1) * 8;
	}
	p->q_proto = nh;
	return l4;
}

// parse_quoted reads the IP header and ports of the packet quoted by an ICMP error at off (up to end).
static __always_inline void parse_quoted(struct cursor *c, __u32 off, __u32 end, struct pkt *p)
{
	__u8 *b;
	__u32 l4;
	if (p->fam == 4) {
		if (off + 20 > end || !(b = at(c, off, 20)))
			return;
		if ((b[0] >> 4) != 4 || (b[0] & 0xf) < 5)
			return;
		l4 = off + (b[0] & 0xf) * 4;
		if (l4 > end)
			return;
		p->q_proto = b[9];
		__builtin_memcpy(p->q_src, b + 12, 4);
		__builtin_memcpy(p->q_dst, b + 16, 4);
		p->q_ok = 1;
		if ((be16(b + 6) & 0x1fff) != 0)
			return; // a later fragment: no ports
	} else {
		if (off + 40 > end || !(b = at(c, off, 40)))
			return;
		if ((b[0] >> 4) != 6)
			return;
		__builtin_memcpy(p->q_src, b + 8, 16);
		__builtin_memcpy(p->q_dst, b + 24, 16);
		p->q_ok = 1;
		l4 = quoted_ext6(c, off + 40, end, b[6], p);
		if (!l4)
			return;
	}
	if ((p->q_proto == 6 || p->q_proto == 17) && l4 + 4 <= end && (b = at(c, l4, 4))) {
		p->q_sport = be16(b);
		p->q_dport = be16(b + 2);
	}
	if ((p->q_proto == 1 || p->q_proto == 58) && l4 + 8 <= end && (b = at(c, l4, 8)) &&
	    (b[0] == 8 || b[0] == 0 || b[0] == 128 || b[0] == 129))
		echo_ports(b[0], be16(b + 4), &p->q_sport, &p->q_dport);
}

// parse_quote is parse_quoted on a cursor of its own over skb; it returns whether a header of the quote
// lies past the linear part (the caller's cursor.pull). A global function: the verifier checks the quote's
// walk once, not once for each IP version and header path that reaches it.
__noinline int parse_quote(struct __sk_buff *skb, __u32 off, __u32 end, struct pkt *p)
{
	if (!p)
		return 0;
	struct cursor c = {.data = (void *)(long)skb->data, .end = (void *)(long)skb->data_end, .len = skb->len};
	parse_quoted(&c, off, end, p);
	return c.pull;
}

// parse_ipv4 parses the IPv4 datagram at off.
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct cursor *c, __u32 off, struct pkt *p)
{
	__u8 *h = at(c, off, 20);
	if (!h)
		return R_MALFORMED;
	__u32 ihl = (h[0] & 0xf) * 4;
	if ((h[0] >> 4) != 4 || ihl < 20)
		return R_MALFORMED;
	p->fam = 4;
	p->proto = h[9];
	__builtin_memcpy(p->src, h + 12, 4);
	__builtin_memcpy(p->dst, h + 16, 4);
	__u16 frag = be16(h + 6) & 0x1fff;
	if (frag != 0 || (h[6] & 0x20)) {
		p->frag = frag != 0 ? 2 : 1;
		p->frag_id = be16(h + 4);
	}
	__u32 tot = be16(h + 2);
	// IPv4 BIG TCP: a GSO packet over 64 KiB says total length 0 and is as long as the skb (a non-GSO one
	// saying 0 is malformed, as in packet.Decode).
	if (tot == 0 && skb->gso_size != 0)
		tot = c->len - off;
	__u32 end = off + tot;
	if (tot < ihl || off + ihl > c->len)
		return R_MALFORMED;
	if (end > c->len)
		end = c->len; // as packet.Decode: a short frame keeps what it has
	off += ihl;
	if (frag != 0)
		return -1; // non-first fragment: no ports, not tracked
	if (parse_l4(c, off, end, p) < 0)
		return R_MALFORMED;
	if (p->is_icmp_err)
		c->pull |= parse_quote(skb, off + 8, end, p);
	return -1;
}

// parse_ipv6 parses the IPv6 packet at off, walking up to 8 extension headers.
static __always_inline int parse_ipv6(struct __sk_buff *skb, struct cursor *c, __u32 off, struct pkt *p)
{
	__u8 *h = at(c, off, 40);
	if (!h)
		return R_MALFORMED;
	if ((h[0] >> 4) != 6)
		return R_MALFORMED;
	__u32 plen = be16(h + 4);
	__u32 end = off + 40 + plen;
	if (plen == 0 || end > c->len)
		end = c->len; // jumbogram or short frame: keep what there is, as packet.Decode
	p->fam = 6;
	__builtin_memcpy(p->src, h + 8, 16);
	__builtin_memcpy(p->dst, h + 24, 16);
	__u8 nh = h[6];
	off += 40;
	for (int i = 0; i < 8 && is_ext6(nh); i++) {
		off = forget(p, off);
		__u8 *x;
		if (off + 8 > end || !(x = at(c, off, 8)))
			return R_MALFORMED;
		if (nh == 44) {
			__u16 fo = be16(x + 2) & 0xfff8;
			// An atomic fragment (offset 0, no more) is a whole datagram.
			if (fo != 0 || (x[3] & 1)) {
				p->frag = fo != 0 ? 2 : 1;
				p->frag_id = ((__u32)x[4] << 24) | ((__u32)x[5] << 16) | ((__u32)x[6] << 8) | x[7];
			} else {
				p->frag = 0;
			}
			nh = x[0];
			off += 8;
			if (fo != 0) {
				p->proto = nh;
				return -1; // non-first fragment
			}
			continue;
		}
		// AH counts its length in 4-byte units minus 2, the others in 8-byte units minus 1.
		off += nh == 51 ? (x[1] + 2) * 4 : (x[1] + 1) * 8;
		if (off > end)
			return R_MALFORMED;
		nh = x[0];
	}
	if (is_ext6(nh))
		return R_MALFORMED; // too many extension headers
	p->proto = nh;
	int l = parse_l4(c, off, end, p);
	if (l < 0)
		return R_MALFORMED;
	if (l == 1)
		return R_ND;
	if (p->is_icmp_err)
		c->pull |= parse_quote(skb, off + 8, end, p);
	return -1;
}

// parse fills p; returns a reason >= 0 when the frame is decided without rules, -1 to classify, R_PULL
// when a header lies outside the skb's linear part. A global function: the verifier checks it once,
// whatever the state of its callers.
__noinline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (!p)
		return R_MALFORMED;
	struct cursor c = {.data = (void *)(long)skb->data, .end = (void *)(long)skb->data_end, .len = skb->len};
	__u32 off = 12;
	__u8 *b = at(&c, off, 2);
	int r = R_MALFORMED;
	if (!b)
		goto out;
	__u16 et = be16(b);
	off += 2;
	for (int i = 0; i < 4; i++) {
		if (et != ETH_P_8021Q_ && et != ETH_P_8021AD_ && et != ETH_P_QINQ1_)
			break;
		if (!(b = at(&c, off + 2, 2)))
			goto out;
		et = be16(b);
		off += 4;
	}
	if (et == ETH_P_8021Q_ || et == ETH_P_8021AD_ || et == ETH_P_QINQ1_)
		r = R_MALFORMED; // more tags than the program looks through (4)
	else if (et == ETH_P_ARP_)
		r = R_ARP;
	else if (et == ETH_P_IP_)
		r = parse_ipv4(skb, &c, off, p);
	else if (et == ETH_P_IPV6_)
		r = parse_ipv6(skb, &c, off, p);
	else
		r = R_NOT_IP;
out:
	return c.pull ? R_PULL : r;
}

// fast_ports fills what parse4 and parse6 share of a TCP or UDP packet whose header starts at l4 (in
// the linear part, checked by the caller) and returns 1.
static __always_inline int fast_ports(struct pkt *p, __u8 fam, __u8 proto, const __u8 *l4)
{
	p->fam = fam;
	p->proto = proto;
	p->sport = be16(l4);
	p->dport = be16(l4 + 2);
	p->tcp_flags = proto == 6 ? l4[13] : 0;
	p->has_port = 1;
	p->trackable = 1;
	return 1;
}

// parse4 parses the commonest frame (untagged Ethernet, IPv4 without options, not a fragment, TCP or
// UDP, all in the linear part) in a few straight-line checks, inlined in run, and returns 1; it returns 0,
// having filled nothing, for any other frame, which parse decodes in full. What it accepts, parse
// decodes the same way (its minimum lengths hold, nothing is clipped).
static __always_inline int parse4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 *b = (void *)(long)skb->data;
	if ((void *)(b + 14 + 20 + 14) > (void *)(long)skb->data_end)
		return 0;
	__u8 proto = b[23];
	if (b[12] != 0x08 || b[13] != 0x00 || b[14] != 0x45 || (proto != 6 && proto != 17))
		return 0;
	if ((be16(b + 20) & 0x3fff) != 0 || be16(b + 16) < (proto == 6 ? 20 + 14 : 20 + 8))
		return 0; // a fragment (more fragments, or an offset), or a datagram too short for its header
	__builtin_memcpy(p->src, b + 26, 4);
	__builtin_memcpy(p->dst, b + 30, 4);
	return fast_ports(p, 4, proto, b + 34);
}

// parse6 is parse4's IPv6 counterpart: untagged Ethernet, IPv6 whose next header is TCP or UDP (no
// extension header), a payload length that holds that header, all in the linear part.
static __always_inline int parse6(struct __sk_buff *skb, struct pkt *p)
{
	__u8 *b = (void *)(long)skb->data;
	if ((void *)(b + 14 + 40 + 14) > (void *)(long)skb->data_end)
		return 0;
	__u8 proto = b[14 + 6];
	if (b[12] != 0x86 || b[13] != 0xdd || (b[14] >> 4) != 6 || (proto != 6 && proto != 17))
		return 0;
	if (be16(b + 14 + 4) < (proto == 6 ? 14 : 8))
		return 0; // a jumbogram (0) or a payload too short for its header
	__builtin_memcpy(p->src, b + 22, 16);
	__builtin_memcpy(p->dst, b + 38, 16);
	return fast_ports(p, 6, proto, b + 54);
}

static __always_inline __u64 be64(const __u8 *a)
{
	__u64 v = 0;
#pragma unroll
	for (int i = 0; i < 8; i++)
		v = (v << 8) | a[i];
	return v;
}

// A table is read through a one-chunk cache: the chunk of the last access is kept, so a lookup costs one
// map lookup per chunk it touches (one in all for tables of up to CHUNK_SIZE bytes) and every binary-search
// step is a plain load. Masking the offset with CHUNK_SIZE - sz is what lets the verifier prove each load is
// inside the chunk; elements are power-of-two sized and aligned, so the mask never changes an offset.
struct tmem {
	void *t;
	void *p; // chunk cur of t
	__u32 cur;
};

static __always_inline void *tm_at(struct tmem *m, __u32 off, __u32 sz)
{
	__u32 c = off >> CHUNK_SHIFT;
	if (c != m->cur) {
		void *p = bpf_map_lookup_elem(m->t, &c);
		if (!p)
			return 0;
		m->p = p;
		m->cur = c;
	}
	return m->p + (off & (CHUNK_SIZE - sz));
}

// The searched interval [lo, hi) lives in the query: a global function's argument, memory the verifier
// does not track, so every step looks the same to it and a plain bounded loop verifies in steps × body
// instead of one state per path through all steps. No step makes a helper call.
struct query {
	__u8 fam, proto, has_port, pad;
	__u16 port, pad2;
	__u8 remote[16];
	__u32 lo, hi;
	__u32 count; // count the decision on its entry's counter
	__u32 zero;  // 0, read as a number the verifier does not know (see search)
};

#define UNTRACKED(x) (*(volatile __u32 *)&(x))

// in_chunk tells whether the elements [lo, hi) of size sz at byte base lie in one chunk.
static __always_inline int in_chunk(__u32 base, __u32 lo, __u32 hi, __u32 sz)
{
	return (base + lo * sz) >> CHUNK_SHIFT == (base + (hi - 1) * sz) >> CHUNK_SHIFT;
}

// A search narrows [q->lo, q->hi) to the interval whose start is the last one <= key; base is the byte
// offset of the searched region. It steps through the chunk cache only while the interval spans chunks
// (rarely: the IPv4 index leaves a few intervals, a node's ports are few); then the rest of the steps
// read one chunk, keeping the bounds in registers. Each step hides the bounds from the verifier with an
// xor by q->zero, which it cannot know is 0, so both branches of a step reach the next in one state and
// the loop verifies in steps × body, like the steps through memory, at one instruction's cost. A chunk
// holds at most CHUNK_SIZE / 8 elements, so SEARCH_IN_CHUNK steps end any search in it.
#define SEARCH_IN_CHUNK (CHUNK_SHIFT - 3 + 1)

// search_step is one step of a search across chunks: the element of size sz in the middle, or 0 when
// the interval is down to one element or lies in one chunk (or on an inconsistent table: *bad).
static __always_inline void *search_step(struct tmem *m, struct query *q, __u32 base, __u32 sz, __u32 *mid,
					 int *bad)
{
	__u32 lo = UNTRACKED(q->lo), hi = UNTRACKED(q->hi);
	if (hi - lo <= 1 || in_chunk(base, lo, hi, sz))
		return 0;
	*mid = (lo + hi) / 2;
	void *v = tm_at(m, base + *mid * sz, sz);
	if (!v)
		*bad = 1;
	return v;
}

// search_chunk returns the chunk holding the rest of the search (every element of [q->lo, q->hi)), or 0
// on an inconsistent table.
static __always_inline void *search_chunk(struct tmem *m, struct query *q, __u32 base, __u32 sz)
{
	if (!tm_at(m, base + UNTRACKED(q->lo) * sz, sz))
		return 0;
	return m->p;
}

// SEARCH narrows [q->lo, q->hi) over the elements of type T (sz bytes each) at byte offset base to the
// one interval whose start is the last at or below the key, le(v) telling whether element v's start
// is: up to steps steps through the chunk cache while the interval spans chunks, then inside one chunk
// with the bounds in registers. It evaluates to 0, or -1 when the table is inconsistent. One macro for
// the three searches (IPv4, IPv6, ports): they differ only in the element and its comparison.
#define SEARCH(m, q, base, sz, T, steps, le)                                                            \
	({                                                                                             \
		int bad_ = 0, ret_ = 0;                                                                \
		__u32 mid_;                                                                            \
		for (int i = 0; i < (steps); i++) {                                                    \
			T *v = search_step(m, q, base, sz, &mid_, &bad_);                              \
			if (!v)                                                                        \
				break;                                                                 \
			if (le)                                                                        \
				UNTRACKED((q)->lo) = mid_;                                             \
			else                                                                           \
				UNTRACKED((q)->hi) = mid_;                                             \
		}                                                                                      \
		void *c_ = bad_ ? 0 : search_chunk(m, q, base, sz);                                    \
		if (!c_) {                                                                             \
			ret_ = -1;                                                                     \
		} else {                                                                               \
			__u32 lo = UNTRACKED((q)->lo), hi = UNTRACKED((q)->hi), z = UNTRACKED((q)->zero); \
			for (int i = 0; i < SEARCH_IN_CHUNK && hi - lo > 1; i++) {                     \
				__u32 mid = (lo + hi) / 2;                                             \
				T *v = c_ + (((base) + mid * (sz)) & (CHUNK_SIZE - (sz)));             \
				if (le)                                                                \
					lo = mid;                                                      \
				else                                                                   \
					hi = mid;                                                      \
				lo ^= z;                                                               \
				hi ^= z;                                                               \
			}                                                                              \
			UNTRACKED((q)->lo) = lo;                                                       \
		}                                                                                      \
		ret_;                                                                                  \
	})

static __always_inline int search_v4(struct tmem *m, struct query *q, __u32 base, __u32 key)
{
	return SEARCH(m, q, base, 8, struct v4iv, 33, v->start <= key);
}

static __always_inline int search_v6(struct tmem *m, struct query *q, __u32 base, __u64 khi, __u64 klo)
{
	return SEARCH(m, q, base, 32, struct v6iv, 33, v->hi < khi || (v->hi == khi && v->lo <= klo));
}

// search_ports returns the entry of q->port in the elementary port intervals [off, off+cnt) (the first
// starts at 0), or -1.
static __always_inline __s32 search_ports(struct tmem *m, struct hdr *h, struct query *q, __u32 off, __u32 cnt)
{
	__u32 base = h->off_ports, port = q->port;
	UNTRACKED(q->lo) = off;
	UNTRACKED(q->hi) = off + cnt;
	if (SEARCH(m, q, base, 8, struct portiv, 18, v->start <= port) < 0)
		return -1;
	// The chunk of the found interval is the cache's: the in-chunk search ended in it.
	struct portiv *v = tm_at(m, base + UNTRACKED(q->lo) * 8, 8);
	return v ? v->entry : -1;
}

// address_node returns the node (ClassifierAnswer) of q->remote's address interval, or -1.
static __always_inline __s64 address_node(struct tmem *m, struct hdr *h, struct query *q)
{
	if (q->fam == 4) {
		__u32 key = ((__u32)q->remote[0] << 24) | ((__u32)q->remote[1] << 16) | ((__u32)q->remote[2] << 8) |
			    q->remote[3];
		// The index narrows the search to the intervals of key's top bits (dataplane.ClassifierArrays).
		__u32 j = (__u32)((__u64)key >> (h->v4shift & 63));
		__u32 *ix = tm_at(m, h->off_v4idx + j * 4, 4);
		if (!ix)
			return -1;
		UNTRACKED(q->lo) = *ix;
		ix = tm_at(m, h->off_v4idx + (j + 1) * 4, 4);
		if (!ix)
			return -1;
		UNTRACKED(q->hi) = *ix + 1;
		if (search_v4(m, q, h->off4, key) < 0)
			return -1;
		struct v4iv *v = tm_at(m, h->off4 + UNTRACKED(q->lo) * 8, 8);
		return v ? v->node : -1;
	}
	UNTRACKED(q->lo) = 0;
	UNTRACKED(q->hi) = h->n6;
	if (search_v6(m, q, h->off6, be64(q->remote), be64(q->remote + 8)) < 0)
		return -1;
	struct v6iv *v = tm_at(m, h->off6 + UNTRACKED(q->lo) * 32, 32);
	return v ? v->node : -1;
}

// table_of returns the live table of slot*2+dir and its chunk 0 (which starts with the header).
static __always_inline void *table_of(__u32 ti, struct hdr **h)
{
	void *t = bpf_map_lookup_elem(&tables, &ti);
	if (!t)
		return 0;
	__u32 z = 0;
	*h = bpf_map_lookup_elem(t, &z);
	if (!*h)
		return 0;
	return t;
}

#define CLS_BAD -1
#define CLS_NO_TABLE -2

// classify's answer: the deciding entry's fields and the table's generation.
struct cls {
	__u64 gen;
	__s32 rule_index;
	__u32 action, sg, nosg;
};

// classify returns the index of the first entry of table ti (slot*2+dir) matching the packet oriented to
// q->remote and copies that entry to out, CLS_NO_TABLE when ti has no table, or CLS_BAD when the table is
// inconsistent (the caller drops). out->gen is the table's generation whenever there is a table. A global
// function: the verifier checks it once, not once per caller.
__noinline int classify(__u32 ti, struct query *q, struct cls *out)
{
	if (!q || !out)
		return CLS_BAD;
	struct hdr *h;
	void *t = table_of(ti, &h);
	if (!t)
		return CLS_NO_TABLE;
	out->gen = h->gen;
	out->nosg = h->flags & SG_HDR_FLAG_NOSG;
	struct tmem m = {.t = t, .p = h, .cur = 0};
	__s64 nodeid = address_node(&m, h, q);
	if (nodeid < 0)
		return CLS_BAD;
	struct node *nd = tm_at(&m, h->off_nodes + (__u32)nodeid * 32, 32);
	if (!nd)
		return CLS_BAD;
	__s32 e;
	if (q->proto == 6)
		e = q->has_port ? search_ports(&m, h, q, nd->tcp_off, nd->tcp_cnt) : nd->tcp_np;
	else if (q->proto == 17)
		e = q->has_port ? search_ports(&m, h, q, nd->udp_off, nd->udp_cnt) : nd->udp_np;
	else if ((q->fam == 4 && q->proto == 1) || (q->fam == 6 && q->proto == 58))
		e = nd->icmp;
	else
		e = nd->other;
	if (e < 0 || (__u32)e >= h->n_entries)
		return CLS_BAD;
	struct entry *en = tm_at(&m, h->off_entries + (__u32)e * 16, 16);
	if (!en)
		return CLS_BAD;
	out->action = en->action;
	out->rule_index = en->rule_index;
	out->sg = en->sg;
	if (q->count && h->off_counts) {
		// Counters live in the table beside its entries: a table version's counts go with it, and
		// counting is an atomic add in a map value, no map update.
		__u64 *c = tm_at(&m, h->off_counts + (__u32)e * 8, 8);
		if (c)
			__sync_fetch_and_add(c, 1);
	}
	return e;
}

// Conntrack's clock is jiffies (bpf_jiffies64, which the verifier inlines: no helper call per packet), so
// its timeouts are in ticks: the loader sets ct_hz to the kernel's CONFIG_HZ.
volatile const __u32 ct_hz = 0;

// ct_expired tells whether the flow in half v has been idle for longer than its timeout (SPEC §3). A
// flow refreshed by another CPU after this packet read the clock looks idle for less than no time.
static __always_inline int ct_expired(struct ct_half *v, __u8 proto, __u64 now)
{
	__u64 s = ct_hz, timeout;
	if (proto == 6)
		timeout = (v->flags & CT_CLOSING) ? 30 * s : 600 * s;
	else if (proto == 1 || proto == 58)
		timeout = 30 * s;
	else
		timeout = (v->flags & CT_REPLY_SEEN) ? 180 * s : 30 * s;
	return now > v->last && now - v->last > timeout;
}

struct decision {
	__s32 entry;
	__s32 rule_index;
	__u8 reason;
	__u8 accept;
	__u64 gen;
	__u32 sg;
};

// ct_flow is a packet's conntrack key and its own orientation (the entry, looked up once, is beside it);
// and the scratch space of decide_flow's classifications and IPv4 keys and of run's fragment verdicts,
// kept in one place so that the stack of the call chain stays within the verifier's 512 bytes.
struct ct_flow {
	struct ct_key k;
	int o;
	struct ct_key4 k4;
	__u32 ct4_at; // a ct4_sets index or way number (ct4_value), in memory the verifier does not track
	__u32 ct4_way; // the way number of the IPv4 entry ct4_value returned last (ct_forget)
	__u32 found;   // decide_fast's: whether its lookup found an entry, in memory the verifier does not track
	struct query q;
	struct cls c;
	struct ct_val nv; // a new entry's value
	struct frag_key fk; // run's: a fragment's key, and a first fragment's verdict
	struct frag_val fv;
};

// decide_flow's ct_flow lives here, not on the stack: with it there the call chain run → decide_flow →
// classify would pass the verifier's 512-byte stack limit. One per CPU; a program runs to the end on its
// CPU before another starts there.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[sizeof(struct ct_flow)]); // raw bytes: its pointer field has no Go type
} ct_scratch SEC(".maps");

// decide_rules classifies p at table slot*2+dir, oriented for dir.
static __always_inline void decide_rules(__u32 slot, __u8 dir, struct pkt *p, struct decision *d, struct ct_flow *f)
{
	struct query *q = &f->q;
	struct cls *cp = &f->c;
	__builtin_memset(q, 0, sizeof(*q));
	__builtin_memset(cp, 0, sizeof(*cp));
	q->fam = p->fam;
	q->proto = p->proto;
	q->has_port = p->has_port;
	q->port = p->dport;
	q->count = 1;
	__builtin_memcpy(q->remote, dir == DIR_INGRESS ? p->src : p->dst, 16);
	int e = classify(slot * 2 + dir, q, cp);
	struct cls c = *cp;
	d->entry = -1;
	d->rule_index = -1;
	d->accept = 0;
	d->gen = c.gen;
	if (e == CLS_NO_TABLE) {
		d->reason = R_NO_SG; // no table loaded yet for a managed interface: drop
		return;
	}
	if (e < 0) {
		d->reason = R_MALFORMED;
		return;
	}
	d->entry = e;
	d->rule_index = c.rule_index;
	d->accept = c.action == 1;
	d->sg = c.sg;
	if (c.rule_index >= 0)
		d->reason = R_RULE;
	else
		d->reason = c.nosg ? R_NO_SG : R_DEFAULT_DROP;
}

// table_current tells whether the table a tracked flow was last checked against is still in force.
static __always_inline int table_current(__u32 slot, struct ct_half *h)
{
	__u32 ti = slot * 2 + h->dir;
	__u64 *g = bpf_map_lookup_elem(&table_gens, &ti);
	return g && *g == h->gen + 1;
}

// recheck re-classifies a tracked flow's original packet (slot, fam, proto, src -> dst:dport) when its
// table changed since it was last checked; returns 1 when the flow may continue.
static __always_inline int recheck(__u32 slot, __u8 fam, __u8 proto, const __u8 *src, const __u8 *dst, __u16 dport,
				   struct ct_half *v, struct ct_flow *f)
{
	__u32 ti = slot * 2 + v->dir;
	if (table_current(slot, v))
		return 1;
	struct hdr *h;
	if (!table_of(ti, &h))
		return 0;
	if (h->gen == v->gen)
		return 1;
	struct query *q = &f->q;
	__builtin_memset(q, 0, sizeof(*q));
	q->fam = fam;
	q->proto = proto;
	q->has_port = proto == 6 || proto == 17;
	q->port = dport;
	__builtin_memcpy(q->remote, v->dir == DIR_INGRESS ? src : dst, 16);
	__builtin_memset(&f->c, 0, sizeof(f->c));
	int e = classify(ti, q, &f->c);
	if (e < 0 || f->c.action != 1)
		return 0;
	v->gen = f->c.gen;
	v->entry = e + 1;
	return 1;
}

// ct_key_of fills k with the endpoints of flow src:sport -> dst:dport, lower first (any fixed total order
// does), and returns the orientation of that flow in k: 1 when it runs from k's dst to k's src.
static __always_inline int ct_key_of(struct ct_key *k, __u32 slot, __u8 fam, __u8 proto, const __u8 *src,
				     __u16 sport, const __u8 *dst, __u16 dport)
{
	__u64 s0, s1, d0, d1;
	__builtin_memcpy(&s0, src, 8);
	__builtin_memcpy(&s1, src + 8, 8);
	__builtin_memcpy(&d0, dst, 8);
	__builtin_memcpy(&d1, dst + 8, 8);
	int swap = s0 > d0 || (s0 == d0 && (s1 > d1 || (s1 == d1 && sport > dport)));
	__builtin_memset(k, 0, sizeof(*k));
	k->slot = slot;
	k->fam = fam;
	k->proto = proto;
	if (!swap) {
		k->sport = sport;
		k->dport = dport;
		__builtin_memcpy(k->src, src, 16);
		__builtin_memcpy(k->dst, dst, 16);
	} else {
		k->sport = dport;
		k->dport = sport;
		__builtin_memcpy(k->src, dst, 16);
		__builtin_memcpy(k->dst, src, 16);
	}
	return swap;
}

// ct_same_ends tells whether a flow's two endpoints are one (its reply is the flow itself).
static __always_inline int ct_same_ends(struct ct_key *k)
{
	__u64 s0, s1, d0, d1;
	__builtin_memcpy(&s0, k->src, 8);
	__builtin_memcpy(&s1, k->src + 8, 8);
	__builtin_memcpy(&d0, k->dst, 8);
	__builtin_memcpy(&d1, k->dst + 8, 8);
	return k->sport == k->dport && s0 == d0 && s1 == d1;
}

// ct_half_of returns v's live half holding the flow of orientation o, or 0.
static __always_inline struct ct_half *ct_half_of(struct ct_val *v, int o)
{
	struct ct_half *h = (struct ct_half *)v;
	__u8 want = CT_LIVE | (o ? CT_SWAPPED : 0);
	if ((h[0].flags & (CT_LIVE | CT_SWAPPED)) == want)
		return &h[0];
	if ((h[1].flags & (CT_LIVE | CT_SWAPPED)) == want)
		return &h[1];
	return 0;
}

// ct4_key_set writes k4 as the two words ct4_words reads back (see struct ct_key4; pad 0), each in one
// store: a word read back from stores of its fields one by one cannot be forwarded from the store
// buffer and waits for them to reach the cache, on every packet's conntrack lookup.
static __always_inline void ct4_key_set(struct ct_key4 *k4, __u16 slot, __u8 proto, __u16 sport, __u16 dport,
					__u32 src, __u32 dst)
{
	__u64 *w = (__u64 *)k4;
	w[0] = (__u64)slot | (__u64)proto << 16 | (__u64)sport << 32 | (__u64)dport << 48;
	w[1] = (__u64)src | (__u64)dst << 32;
}

// ct_key4_of is k in ct4's layout (k is an IPv4 flow's key).
static __always_inline void ct_key4_of(struct ct_key4 *k4, const struct ct_key *k)
{
	__u32 s, d;
	__builtin_memcpy(&s, k->src, 4);
	__builtin_memcpy(&d, k->dst, 4);
	ct4_key_set(k4, k->slot, k->proto, k->sport, k->dport, s, d);
}

// The bits of a way's first word that hold its state byte's write count, and its state bits.
#define CT4_COUNT (((__u64)0xff & ~(SG_CT4_BUSY | SG_CT4_LOCK | SG_CT4_LIVE)) << 24)
#define CT4_BUSY_BIT ((__u64)SG_CT4_BUSY << 24)
#define CT4_LOCK_BIT ((__u64)SG_CT4_LOCK << 24)
#define CT4_LIVE_BIT ((__u64)SG_CT4_LIVE << 24)

// ct4_xor and ct4_and are atomic operations on a way's first word; they fetch (the old value is used,
// if only by an empty asm), which makes them full barriers on every JIT.
static __always_inline void ct4_xor(__u64 *word, __u64 x)
{
	__u64 old = __sync_fetch_and_xor(word, x);
	asm volatile("" : : "r"(old));
}

static __always_inline void ct4_and(__u64 *word, __u64 x)
{
	__u64 old = __sync_fetch_and_and(word, x);
	asm volatile("" : : "r"(old));
}

// ct4_words reads k (pad 0) as the two words ways are compared by: slot, protocol, pad and ports; the
// addresses.
static __always_inline void ct4_words(const struct ct_key4 *k, __u64 *a, __u64 *b)
{
	*a = ((const __u64 *)k)[0];
	*b = ((const __u64 *)k)[1];
}

// ct4_hash mixes a key's two words (a multiply-xorshift, keyed by ct4_seed): its low bits pick the key's
// first set, its high half the second. bpf/conntrack.go computes the same.
static __always_inline __u64 ct4_hash(__u64 a, __u64 b)
{
	__u64 h = (a ^ ct4_seed) * 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h = (h ^ b) * 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	return h ^ (h >> 33);
}

// ct4_find returns the way of set s holding key (a, b) and a live flow, or -1 (see ct4_sets: the first
// word is read again, so a way a writer took meanwhile is no match). It reads only the keys' line.
static __always_inline int ct4_find(struct ct4_set *s, __u64 a, __u64 b)
{
#pragma unroll
	for (int i = 0; i < SG_CT4_WAYS; i++) {
		volatile __u64 *word = (volatile __u64 *)&s->k[i];
		__u64 w0 = word[0];
		if ((w0 & ~(CT4_COUNT | CT4_LOCK_BIT)) != (a | CT4_LIVE_BIT) || word[1] != b)
			continue;
		if ((word[0] ^ w0) & ~CT4_LOCK_BIT)
			continue;
		return i;
	}
	return -1;
}

// ct4_value returns the value of way n (set * SG_CT4_WAYS + way) of ct4_sets. n goes through f's memory,
// which the verifier does not track, so every way a lookup may find continues as one state (not one
// each, with the rest of the packet's path checked once per way).
static __always_inline struct ct_val *ct4_value(struct ct_flow *f, __u32 n)
{
	*(volatile __u32 *)&f->ct4_at = n;
	n = *(volatile __u32 *)&f->ct4_at;
	f->ct4_way = n;
	f->ct4_at = n / SG_CT4_WAYS;
	struct ct4_set *s = bpf_map_lookup_elem(&ct4_sets, &f->ct4_at);
	if (!s)
		return 0;
	// Else clang adds the offset before the null check, which the verifier refuses.
	asm volatile("" : "+r"(s));
	return &s->v[n & (SG_CT4_WAYS - 1)];
}

// ct4_full tells whether set s has no free way, from its keys.
static __always_inline __u64 ct4_full(struct ct4_set *s)
{
	__u64 full = 1;
#pragma unroll
	for (int i = 0; i < SG_CT4_WAYS; i++) {
		__u64 w0 = *(volatile __u64 *)&s->k[i];
		full &= (w0 / CT4_BUSY_BIT) | (w0 / CT4_LIVE_BIT);
	}
	return full & 1;
}

// ct4_warm reads a word of each line of set s's values, so that an insert evicting one of them (both
// candidate sets full) finds them in the cache: read on the lookup's miss, they arrive while the rules
// decide instead of after.
static __always_inline void ct4_warm(struct ct4_set *s)
{
	__u64 x = *(volatile __u64 *)&s->v[0].last;
	x += *(volatile __u64 *)&s->v[1].last2;
	x += *(volatile __u64 *)&s->v[3].last;
	asm volatile("" : : "r"(x));
}

// ct4_lookup returns the entry of f->k4 in ct4_sets (in either candidate set), or 0.
static __always_inline struct ct_val *ct4_lookup(struct ct_flow *f)
{
	__u64 a, b;
	ct4_words(&f->k4, &a, &b);
	__u64 h = ct4_hash(a, b);
	f->ct4_at = h & (SG_CT4_SETS - 1);
	struct ct4_set *s1 = bpf_map_lookup_elem(&ct4_sets, &f->ct4_at);
	struct ct4_set *s = s1;
	int w = s ? ct4_find(s, a, b) : -1;
	if (w < 0) {
		f->ct4_at = (h >> 32) & (SG_CT4_SETS - 1);
		s = bpf_map_lookup_elem(&ct4_sets, &f->ct4_at);
		w = s ? ct4_find(s, a, b) : -1;
		if (w < 0) {
			if (s1 && s && ct4_full(s1) & ct4_full(s)) {
				ct4_warm(s1);
				ct4_warm(s);
			}
			return 0;
		}
	}
	return ct4_value(f, f->ct4_at * SG_CT4_WAYS + w);
}

// Choices of a way a new flow makes before it goes untracked: each fails only when another CPU took
// the way chosen between the choice and the claim.
#define CT4_CLAIM_TRIES 4

// Tries at an insert lock another CPU holds (it holds it for one insert).
#define CT4_LOCK_TRIES 64

// Tries at a compare-and-swap of a way's first word that lost only to a move of its set's insert lock
// (ct4_claim_moved): a single retry lost whole claims while other keys' inserts kept the lock moving.
#define CT4_LOCK_MOVES 16

// ct4_claim_moved retries a claim's compare-and-swap of *word (which read old, not bw0) while only the
// set's lock moved (other keys' inserts took or left it): the way is still the one chosen, claimed
// with the lock bit as it is now. Returns the busy word written, or 0 when another writer took the way.
// A global function, called only after a lost compare-and-swap: the verifier checks its retries once,
// not once for each of ct4_claim's tries.
__noinline __u64 ct4_claim_moved(__u64 *word, __u64 old, __u64 bw0, __u64 busy)
{
	if (!word)
		return 0;
	for (int n = 0; n < CT4_LOCK_MOVES && old != bw0 && !((old ^ bw0) & ~CT4_LOCK_BIT); n++) {
		busy ^= old ^ bw0;
		bw0 = old;
		old = __sync_val_compare_and_swap(word, bw0, busy);
	}
	return old == bw0 ? busy : 0;
}

// ct4_claim writes key (a, b) and value f->nv into a way of set s1 or s2 (ct4_sets indexes i1, i2) it
// claims (see ct4_sets: a free way of the set with fewer live ways, the first on a tie, else the way
// least recently seen of both) and returns 1 + its way number; 0 when other writers took each way it
// chose. Values are read only when both sets are full.
static __always_inline int ct4_claim(struct ct_flow *f, struct ct4_set *s1, struct ct4_set *s2, __u32 i1, __u32 i2,
				     __u64 a, __u64 b)
{
	for (int t = 0; t < CT4_CLAIM_TRIES; t++) {
		// Live ways of each set (a busy one counts: it is being filled), without a branch, from the
		// keys alone.
		__u32 n1 = 0, n2 = 0;
#pragma unroll
		for (int i = 0; i < SG_CT4_WAYS; i++) {
			__u64 w1 = *(volatile __u64 *)&s1->k[i], w2 = *(volatile __u64 *)&s2->k[i];
			n1 += ((w1 / CT4_BUSY_BIT) | (w1 / CT4_LIVE_BIT)) & 1;
			n2 += ((w2 / CT4_BUSY_BIT) | (w2 / CT4_LIVE_BIT)) & 1;
		}
		__u64 bw0 = 0;
		__u32 pick = 2 * SG_CT4_WAYS;
		if (n1 < SG_CT4_WAYS || n2 < SG_CT4_WAYS) {
			// The first free way of the set with fewer live ways (the first set on a tie), which has
			// one: its keys' line alone says so.
			__u32 second = n2 < n1;
			struct ct4_set *s = second ? s2 : s1;
#pragma unroll
			for (int i = 0; i < SG_CT4_WAYS; i++) {
				__u64 w0 = *(volatile __u64 *)&s->k[i];
				if (!(w0 & (CT4_LIVE_BIT | CT4_BUSY_BIT))) {
					bw0 = w0;
					pick = second * SG_CT4_WAYS + i;
					break;
				}
			}
		} else {
			// Both full: the way least recently seen of both (busy ways are not taken), by the values.
			__u64 best = ~0ULL;
#pragma unroll
			for (int i = 0; i < 2 * SG_CT4_WAYS; i++) {
				struct ct4_set *s = i < SG_CT4_WAYS ? s1 : s2;
				__u64 w0 = *(volatile __u64 *)&s->k[i & (SG_CT4_WAYS - 1)];
				if (w0 & CT4_BUSY_BIT)
					continue;
				struct ct_val *v = &s->v[i & (SG_CT4_WAYS - 1)];
				__u64 l1 = (v->flags & CT_LIVE) ? v->last : 0;
				__u64 l2 = (v->flags2 & CT_LIVE) ? v->last2 : 0;
				__u64 seen = l1 > l2 ? l1 : l2;
				if (seen < best) {
					best = seen;
					bw0 = w0;
					pick = i;
				}
			}
		}
		// pick goes through f's memory, which the verifier does not track: the scan's branches then
		// meet in one state at each way instead of one per choice made so far.
		*(volatile __u32 *)&f->ct4_at = pick;
		pick = *(volatile __u32 *)&f->ct4_at;
		if (pick >= 2 * SG_CT4_WAYS)
			continue; // the set filled between the count and the scan: choose again
		struct ct4_set *s = pick < SG_CT4_WAYS ? s1 : s2;
		__u32 way = pick & (SG_CT4_WAYS - 1);
		__u64 *word = (__u64 *)&s->k[way];
		__u64 count = ((bw0 & CT4_COUNT) + ((__u64)SG_CT4_WRITE << 24)) & CT4_COUNT;
		// The lock bit as it was; not live, so that the publish's xor sets live.
		__u64 busy = (bw0 & ~(CT4_COUNT | CT4_BUSY_BIT | CT4_LIVE_BIT)) | count | CT4_BUSY_BIT;
		__u64 old = __sync_val_compare_and_swap(word, bw0, busy);
		if (old != bw0 && !(busy = ct4_claim_moved(word, old, bw0, busy)))
			continue; // another writer took it: choose again
		((volatile __u64 *)word)[1] = b;
		__builtin_memcpy(&s->v[way], &f->nv, sizeof(f->nv));
		ct4_xor(word, (busy ^ (a | count | CT4_LIVE_BIT)) & ~CT4_LOCK_BIT);
		return 1 + (pick < SG_CT4_WAYS ? i1 : i2) * SG_CT4_WAYS + way;
	}
	return 0;
}

// ct4_insert puts entry f->nv at f->k4 into ct4_sets, under the lock of the key's first set, unless the
// key is there already (another CPU inserted it meanwhile). Returns 1 + the way number (ct4_value)
// where f->nv went in, -(1 + the way number) of the entry found there to join, 0 when no way could be
// taken (the flow goes untracked). A global function: the verifier checks its choice of a way once, not
// once for each state its callers reach it in; only new flows pay its call.
__noinline int ct4_insert(struct ct_flow *f)
{
	if (!f)
		return 0;
	__u64 a, b;
	ct4_words(&f->k4, &a, &b);
	__u64 h = ct4_hash(a, b);
	__u32 i1 = h & (SG_CT4_SETS - 1), i2 = (h >> 32) & (SG_CT4_SETS - 1);
	struct ct4_set *s1 = bpf_map_lookup_elem(&ct4_sets, &i1);
	struct ct4_set *s2 = bpf_map_lookup_elem(&ct4_sets, &i2);
	if (!s1 || !s2)
		return 0;
	__u64 *lock = (__u64 *)&s1->k[0];
	int locked = 0;
	for (int n = 0; n < CT4_LOCK_TRIES && !locked; n++) {
		__u64 w0 = *(volatile __u64 *)lock;
		locked = !(w0 & CT4_LOCK_BIT) && __sync_val_compare_and_swap(lock, w0, w0 | CT4_LOCK_BIT) == w0;
	}
	int r;
	int w = ct4_find(s1, a, b);
	if (w >= 0) {
		r = -(1 + (int)(i1 * SG_CT4_WAYS) + w);
	} else if ((w = ct4_find(s2, a, b)) >= 0) {
		r = -(1 + (int)(i2 * SG_CT4_WAYS) + w);
	} else {
		r = ct4_claim(f, s1, s2, i1, i2, a, b);
	}
	if (locked)
		ct4_and(lock, ~CT4_LOCK_BIT);
	return r;
}

// ct_lookup returns k's entry in its family's table (only ct6 is a map the helpers look up, so each
// helper call site sees one map and the verifier binds it to that map's lookup, not the generic
// helper's indirect call).
static __always_inline struct ct_val *ct_lookup(struct ct_flow *f, const struct ct_key *k)
{
	if (k->fam == 4) {
		ct_key4_of(&f->k4, k);
		return ct4_lookup(f);
	}
	return bpf_map_lookup_elem(&ct6, k);
}


// ct4_unlive clears the live bit of way fl->ct4_way (the entry of key fl->k4 whose last half ended), if
// the way still holds that key (see ct4_sets: a way taken over meanwhile stays live). A global function,
// checked once: only a flow's end pays its call.
__noinline int ct4_unlive(struct ct_flow *fl)
{
	if (!fl)
		return 0;
	__u64 a, b;
	ct4_words(&fl->k4, &a, &b);
	__u32 n = fl->ct4_way;
	fl->ct4_at = n / SG_CT4_WAYS;
	struct ct4_set *s = bpf_map_lookup_elem(&ct4_sets, &fl->ct4_at);
	if (!s)
		return 0;
	asm volatile("" : "+r"(s)); // as in ct4_value
	__u64 *word = (__u64 *)&s->k[n & (SG_CT4_WAYS - 1)];
	__u64 w0 = *(volatile __u64 *)word;
	// Tried again while only the set's lock bit (in its first way) moved under the compare-and-swap, as
	// it does whenever another key's insert takes or leaves it: that alone is no reason to leave the
	// way live.
	for (int t = 0; t < CT4_LOCK_MOVES; t++) {
		if ((w0 & ~(CT4_COUNT | CT4_LOCK_BIT)) != (a | CT4_LIVE_BIT) || ((volatile __u64 *)word)[1] != b)
			return 0;
		__u64 old = __sync_val_compare_and_swap(word, w0, w0 & ~CT4_LIVE_BIT);
		if (old == w0)
			return 1;
		if ((old ^ w0) & ~CT4_LOCK_BIT)
			return 0; // taken over meanwhile: it stays live for its new flow
		w0 = old;
	}
	return 0;
}

// ct_forget ends the flow in half hf of fl's entry v (key fl->k); returns 1 when the entry itself was
// deleted (an IPv4 way: no longer live).
static __always_inline int ct_forget(struct ct_flow *fl, struct ct_val *v, struct ct_half *hf)
{
	struct ct_half *h = (struct ct_half *)v;
	hf->flags = 0;
	if ((h[0].flags | h[1].flags) & CT_LIVE)
		return 0;
	if (fl->k.fam == 4)
		ct4_unlive(fl);
	else
		bpf_map_delete_elem(&ct6, &fl->k);
	return 1;
}

// established tells whether p is a reply (or related ICMP error) of a live tracked flow at slot. For a
// trackable packet it leaves in f the entry of p's own flow for track.
static __always_inline int established(__u32 slot, __u8 dir, struct pkt *p, __u64 now, struct ct_flow *f,
				       struct ct_val **vp)
{
	*vp = 0;
	if (p->is_icmp_err) {
		// Related (as conntrack.Table.Related): the quoted packet is a tracked flow's original packet and
		// the error comes back the other way, or the quote is the flow's reply and the error travels
		// along the flow (its originator refusing a reply).
		if (!p->q_ok)
			return 0;
		struct ct_key *k = &f->k; // the error itself is not tracked: its own key is not needed
		int o = ct_key_of(k, slot, p->fam, p->q_proto, p->q_src, p->q_sport, p->q_dst, p->q_dport);
		struct ct_val *v = ct_lookup(f, k);
		if (!v)
			return 0;
		struct ct_half *h = ct_half_of(v, o);
		int reply_quoted = 0;
		if (!h || h->dir == dir) {
			h = ct_half_of(v, ct_same_ends(k) ? o : !o);
			if (!h || h->dir != dir)
				return 0;
			reply_quoted = 1;
		}
		int ok = !ct_expired(h, k->proto, now);
		if (ok && !reply_quoted)
			ok = recheck(slot, p->fam, p->q_proto, p->q_src, p->q_dst, p->q_dport, h, f);
		else if (ok)
			ok = recheck(slot, p->fam, p->q_proto, p->q_dst, p->q_src, p->q_sport, h, f);
		if (!ok) {
			ct_forget(f, v, h);
			return 0;
		}
		return 1;
	}
	if (!p->trackable)
		return 0;
	f->o = ct_key_of(&f->k, slot, p->fam, p->proto, p->src, p->sport, p->dst, p->dport);
	*vp = ct_lookup(f, &f->k);
	if (!*vp)
		return 0;
	// The flow p would reply to runs the other way, unless both ends are one.
	struct ct_half *h = ct_half_of(*vp, ct_same_ends(&f->k) ? f->o : !f->o);
	if (!h || h->dir == dir)
		return 0;
	if (ct_expired(h, p->proto, now) ||
	    !recheck(slot, p->fam, p->proto, p->dst, p->src, p->sport, h, f)) {
		if (ct_forget(f, *vp, h))
			*vp = 0;
		return 0;
	}
	h->last = now;
	h->flags |= CT_REPLY_SEEN;
	if (p->proto == 6 && (p->tcp_flags & 0x05))
		h->flags |= CT_CLOSING;
	return 1;
}

// track_half refreshes the flow of orientation o in entry v (first seen going dir), or starts it there,
// as accepted by entry d->entry of table generation d->gen.
static __always_inline void track_half(struct ct_val *v, int o, __u8 dir, struct pkt *p, struct decision *d,
				       __u64 now)
{
	__u8 closing = (p->proto == 6 && (p->tcp_flags & 0x05)) ? CT_CLOSING : 0;
	struct ct_half *h = ct_half_of(v, o);
	if (h && h->dir == dir) {
		h->last = now;
		h->gen = d->gen;
		h->entry = d->entry + 1;
		h->flags |= closing;
		return;
	}
	if (!h) {
		h = (struct ct_half *)v;
		if (h->flags & CT_LIVE)
			h++; // the other orientation's flow is in the first half
	}
	// A new flow, or one first seen the other way round on this ENI: start over as this packet.
	h->last = now;
	h->gen = d->gen;
	h->entry = d->entry + 1;
	h->dir = dir;
	h->flags = closing | CT_LIVE | (o ? CT_SWAPPED : 0);
}

// new_flow is the value of an entry whose only flow is p's, of orientation o.
static __always_inline void new_flow(struct ct_val *nv, int o, __u8 dir, struct pkt *p, struct decision *d,
				     __u64 now)
{
	__builtin_memset(nv, 0, sizeof(*nv));
	nv->last = now;
	nv->gen = d->gen;
	nv->entry = d->entry + 1;
	nv->dir = dir;
	nv->flags = ((p->proto == 6 && (p->tcp_flags & 0x05)) ? CT_CLOSING : 0) | CT_LIVE | (o ? CT_SWAPPED : 0);
}

// ct4_track inserts entry f->nv (a new IPv4 flow of orientation o) at f->k4, or joins the entry another
// CPU put there meanwhile.
static __always_inline void ct4_track(struct ct_flow *f, int o, __u8 dir, struct pkt *p, struct decision *d,
				      __u64 now)
{
	int n = ct4_insert(f);
	if (n >= 0)
		return;
	struct ct_val *v = ct4_value(f, -n - 1);
	if (v)
		track_half(v, o, dir, p, d, now);
}

// track starts or refreshes p's own flow in entry f (from established). Returns 1 when the flow is a new
// IPv4 one, its entry f->nv to be inserted at f->k4 by run (ct4_track): decide_flow's call chain has no
// stack left for ct4_insert's.
static __always_inline int track(__u8 dir, struct pkt *p, struct ct_flow *f, struct ct_val **vp,
				 struct decision *d, __u64 now)
{
	if (!*vp) {
		new_flow(&f->nv, f->o, dir, p, d, now);
		if (f->k.fam == 4) {
			ct_key4_of(&f->k4, &f->k);
			return 1;
		}
		if (bpf_map_update_elem(&ct6, &f->k, &f->nv, BPF_NOEXIST) == 0)
			return 0;
		// Another CPU created the entry meanwhile: join it.
		*vp = bpf_map_lookup_elem(&ct6, &f->k);
		if (!*vp)
			return 0;
	}
	track_half(*vp, f->o, dir, p, d, now);
	return 0;
}

static __always_inline void report_drop(struct __sk_buff *skb, __u32 slot, __u8 dir, struct pkt *p,
					struct decision *d)
{
	// Drop events keep the coarse monotonic clock (a helper call, on drops only): KernelNS in ns.
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 z = 0;
	struct rate *rt = bpf_map_lookup_elem(&drop_rate, &z);
	if (!rt)
		return;
	if (now - rt->window >= 1000000000ULL) {
		rt->window = now;
		rt->count = 0;
	}
	if (rt->count >= DROP_EVENTS_PER_SEC) {
		rt->suppressed++;
		return;
	}
	struct drop_event *ev = bpf_ringbuf_reserve(&drops, sizeof(*ev), 0);
	if (!ev) {
		rt->suppressed++;
		return;
	}
	rt->count++;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts = now;
	ev->gen = d->gen;
	ev->slot = slot;
	ev->ifindex = skb->ifindex;
	ev->dir = dir;
	ev->reason = d->reason;
	ev->fam = p->fam;
	ev->proto = p->proto;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->entry = d->entry;
	ev->rule_index = d->rule_index;
	ev->suppressed = rt->suppressed;
	rt->suppressed = 0;
	__builtin_memcpy(ev->src, p->src, 16);
	__builtin_memcpy(ev->dst, p->dst, 16);
	struct hdr *h;
	void *t;
	if (d->reason == R_RULE && (t = table_of(slot * 2 + dir, &h)) && h->gen == d->gen) {
		struct tmem m = {.t = t, .p = h, .cur = 0};
		__u8 *name = tm_at(&m, h->off_sgs + d->sg * SG_NAME_SIZE, SG_NAME_SIZE);
		if (name)
			__builtin_memcpy(ev->sg, name, SG_NAME_SIZE);
	}
	bpf_ringbuf_submit(ev, 0);
}

// ct4_key_of fills k with the ct4 key of p (IPv4 TCP or UDP) as ct_key_of and ct_key4_of order
// it, and returns p's orientation in k.
static __always_inline int ct4_key_of(struct ct_key4 *k, __u32 slot, const struct pkt *p)
{
	__u32 s, d;
	__builtin_memcpy(&s, p->src, 4);
	__builtin_memcpy(&d, p->dst, 4);
	int swap = s > d || (s == d && p->sport > p->dport);
	ct4_key_set(k, slot, p->proto, swap ? p->dport : p->sport, swap ? p->sport : p->dport, swap ? d : s,
		    swap ? s : d);
	return swap;
}

// cached_verdict decides a packet of a tracked flow's own direction as the rules did when they last
// accepted the flow (entry h->entry - 1 of table generation h->gen), while that table is in force: the
// packet's fields the rules look at are the flow's, so classifying it again would find the same entry.
// The decision is counted on that entry's counter, as classify counts it. Returns 0, having changed
// nothing, when the table changed (or the entry is unknown: a flow tracked by an older build).
static __always_inline int cached_verdict(__u32 slot, __u8 dir, struct ct_half *h, struct decision *d)
{
	__u32 e = h->entry - 1;
	if (!h->entry || !table_current(slot, h))
		return 0;
	struct hdr *hd;
	void *t = table_of(slot * 2 + dir, &hd);
	// The generation again: a switch may have replaced the table since table_gens was read.
	if (!t || hd->gen != h->gen || e >= hd->n_entries)
		return 0;
	if (hd->off_counts) {
		struct tmem m = {.t = t, .p = hd, .cur = 0};
		__u64 *c = tm_at(&m, hd->off_counts + e * 8, 8);
		if (c)
			__sync_fetch_and_add(c, 1);
	}
	d->entry = e;
	d->reason = R_RULE;
	d->accept = 1;
	d->gen = h->gen;
	return 1;
}

// decide_fast decides a trackable packet (TCP, UDP, ICMP echo, other protocols without ports; not an
// ICMP error, not a later fragment), most of the traffic, with one lookup in its family's
// conntrack map (v6 is a constant of each inlined copy: ct4 and ct6 get call sites of their own) and no
// call but classify's: a reply of a live tracked flow whose table is unchanged is established, a packet
// of its own direction takes the entry that accepted it (cached_verdict); else the rules decide, and an
// accepted packet's flow is started or refreshed in the entry already found. Returns 1 when decided, 2
// when decided and a new IPv4 flow is to be inserted (f->nv at f->k4, orientation f->o: run's
// ct4_track, one inlined copy for both deciders), and 0, having changed nothing, for a reply whose flow
// timed out or whose table changed since: decide_flow rechecks or forgets it.
static __always_inline int decide_fast(__u32 slot, __u8 dir, struct pkt *p, __u64 now, struct decision *d,
				       struct ct_flow *f, const int v6)
{
	int o, same;
	struct ct_val *v;
	if (v6) {
		o = ct_key_of(&f->k, slot, 6, p->proto, p->src, p->sport, p->dst, p->dport);
		v = bpf_map_lookup_elem(&ct6, &f->k);
		same = ct_same_ends(&f->k);
	} else {
		o = ct4_key_of(&f->k4, slot, p);
		v = ct4_lookup(f);
		same = f->k4.sport == f->k4.dport && *(__u32 *)f->k4.src == *(__u32 *)f->k4.dst;
	}
	if (v) {
		struct ct_half *h = ct_half_of(v, same ? o : !o);
		if (h && h->dir != dir) {
			if (ct_expired(h, p->proto, now) || !table_current(slot, h))
				return 0;
			h->last = now;
			h->flags |= CT_REPLY_SEEN;
			if (p->proto == 6 && (p->tcp_flags & 0x05))
				h->flags |= CT_CLOSING;
			d->reason = R_ESTABLISHED;
			d->accept = 1;
			return 1;
		}
		struct ct_half *own = ct_half_of(v, o);
		if (own && own->dir == dir && !p->frag && cached_verdict(slot, dir, own, d)) {
			own->last = now;
			if (p->proto == 6 && (p->tcp_flags & 0x05))
				own->flags |= CT_CLOSING;
			return 1;
		}
	}
	// From here on the entry found and the orientation are read back from f's memory, which the
	// verifier does not track: every path above continues in one state, not one per way the lookup and
	// the checks went. An entry found is found again by its way (IPv4) or key (IPv6: another lookup, on
	// the rare path of a tracked flow the rules decide again).
	UNTRACKED(f->found) = v != 0;
	UNTRACKED(f->o) = o;
	decide_rules(slot, dir, p, d, f);
	if (!d->accept)
		return 1;
	o = UNTRACKED(f->o);
	if (UNTRACKED(f->found)) {
		v = v6 ? bpf_map_lookup_elem(&ct6, &f->k) : ct4_value(f, UNTRACKED(f->ct4_way));
	} else {
		new_flow(&f->nv, o, dir, p, d, now);
		if (!v6)
			return 2;
		if (!bpf_map_update_elem(&ct6, &f->k, &f->nv, BPF_NOEXIST))
			return 1;
		// The insert was refused because another CPU created the entry meanwhile: join it.
		v = bpf_map_lookup_elem(&ct6, &f->k);
	}
	if (v)
		track_half(v, o, dir, p, d, now);
	return 1;
}

// decide_flow decides what decide_fast does not: ICMP errors (related to a tracked flow or not), later
// fragments without their first's verdict, and replies whose flow timed out or whose table changed. A
// reply or related ICMP error of a live tracked flow is established, the rest is decided by the rules,
// and what they accept of a trackable packet is tracked (returns 1 when run is to insert it: see track).
// A global function: the verifier checks it once, not once for every way run can reach it.
__noinline int decide_flow(__u32 slot, __u32 dir, __u64 now, struct pkt *p, struct decision *d)
{
	__u32 z = 0;
	struct ct_flow *ct = bpf_map_lookup_elem(&ct_scratch, &z);
	if (!p || !d)
		return 0;
	if (!ct) {
		d->reason = R_MALFORMED; // cannot happen: a per-CPU array always has its entry
		return 0;
	}
	struct ct_val *v = 0;
	if (established(slot, dir, p, now, ct, &v)) {
		d->reason = R_ESTABLISHED;
		d->accept = 1;
		return 0;
	}
	decide_rules(slot, dir, p, d, ct);
	if (d->accept && p->trackable)
		return track(dir, p, ct, &v, d, now);
	return 0;
}

// Test runs (BPF_PROG_TEST_RUN) come in on loopback, which is never an ENI's host interface: they carry
// the ENI slot in mark (slot+1) and get the decision back in cb[0..2].
#define LOOPBACK_IFINDEX 1

// run is one packet from interface to verdict. It stays whole: it is the hot path, read top to bottom
// as the packet goes (interface → parse → guard → fragments → decision → report), and every piece it
// could be split into is inlined anyway; a global function instead would cost a call per packet.
static __always_inline int run(struct __sk_buff *skb, __u8 dir)
{
	__u32 slot;
	int test = 0;
	if (skb->ifindex == LOOPBACK_IFINDEX) {
		if (skb->mark == 0)
			return TC_ACT_OK;
		slot = skb->mark - 1;
		test = 1;
	} else {
		__u32 ifx = skb->ifindex;
		if (ifx < SG_IFSLOTS) {
			__u32 *s = bpf_map_lookup_elem(&ifslots, &ifx);
			if (!s || !*s)
				return TC_ACT_OK; // not a managed interface
			slot = *s - 1;
		} else {
			struct ifcfg *c = bpf_map_lookup_elem(&ifaces, &ifx);
			if (!c)
				return TC_ACT_OK;
			slot = c->slot;
		}
	}
	int guarded = slot == SG_GUARD_SLOT;
	if (slot >= SG_MAX_SLOTS && !guarded)
		return TC_ACT_SHOT;

	struct pkt p;
	__builtin_memset(&p, 0, sizeof(p));
	struct decision d = {.entry = -1, .rule_index = -1};
	__u64 now = bpf_jiffies64(); // conntrack's clock (see ct_hz)
	int r = parse4(skb, &p) || parse6(skb, &p) ? -1 : parse(skb, &p);
	if (r == R_PULL) {
		// Headers outside the linear part (rare: the kernel hands TC linear headers): pull the frame and
		// parse again from scratch.
		__builtin_memset(&p, 0, sizeof(p));
		r = bpf_skb_pull_data(skb, skb->len) ? R_MALFORMED : parse(skb, &p);
		if (r == R_PULL)
			r = R_MALFORMED;
	}
	if (guarded) {
		// Parsed only so the drop event names the packet; nothing is tracked or remembered.
		__u32 gd = dir;
		__u64 *n = bpf_map_lookup_elem(&guard_drops, &gd);
		if (n)
			__sync_fetch_and_add(n, 1);
		d.reason = R_NO_ENI;
		report_drop(skb, slot, dir, &p, &d);
		return TC_ACT_SHOT;
	}
	// Scratch space (an inlined lookup: a per-CPU array always has its entry).
	__u32 z = 0;
	struct ct_flow *f = bpf_map_lookup_elem(&ct_scratch, &z);
	if (!f)
		return TC_ACT_SHOT;
	struct frag_key *fk = &f->fk;
	struct frag_val *fv = 0;
	if (r < 0 && p.frag) {
		__builtin_memset(fk, 0, sizeof(*fk));
		fk->slot = slot;
		fk->dir = dir;
		fk->fam = p.fam;
		fk->proto = p.proto;
		fk->id = p.frag_id;
		__builtin_memcpy(fk->src, p.src, 16);
		__builtin_memcpy(fk->dst, p.dst, 16);
		if (p.frag == 2)
			fv = bpf_map_lookup_elem(&frags, fk);
	}
	if (r >= 0) {
		d.reason = r;
		d.accept = r == R_ARP || r == R_ND;
	} else if (fv) {
		d.entry = fv->entry;
		d.rule_index = fv->rule_index;
		d.reason = fv->reason;
		d.accept = fv->accept;
		d.gen = fv->gen;
	} else {
		int fast = !p.trackable ? 0
			   : p.fam == 4 ? decide_fast(slot, dir, &p, now, &d, f, 0)
					: decide_fast(slot, dir, &p, now, &d, f, 1);
		// One inlined insert for both deciders: the verifier checks it once per path that reaches it,
		// not once per copy.
		if (fast == 2 || (!fast && decide_flow(slot, dir, now, &p, &d)))
			ct4_track(f, f->o, dir, &p, &d, now);
	}
	if (r < 0 && p.frag == 1) {
		struct frag_val *nv = &f->fv;
		__builtin_memset(nv, 0, sizeof(*nv));
		nv->entry = d.entry;
		nv->rule_index = d.rule_index;
		nv->reason = d.reason;
		nv->accept = d.accept;
		nv->gen = d.gen;
		bpf_map_update_elem(&frags, fk, nv, BPF_ANY);
	}
	if (!d.accept)
		report_drop(skb, slot, dir, &p, &d);
	if (test) {
		skb->cb[0] = (__u32)(d.entry + 1);
		skb->cb[1] = d.reason;
		skb->cb[2] = 1;
	}
	return d.accept ? TC_ACT_OK : TC_ACT_SHOT;
}

// Host TC ingress on the ENI's interface = what the ENI sends = ENI egress.
SEC("tc")
int sg_host_ingress(struct __sk_buff *skb)
{
	return run(skb, DIR_EGRESS);
}

// Host TC egress on the ENI's interface = what is sent to the ENI = ENI ingress.
SEC("tc")
int sg_host_egress(struct __sk_buff *skb)
{
	return run(skb, DIR_INGRESS);
}

// Referenced so their BTF is emitted for bpf2go's Go types.
const struct drop_event *unused_drop_event __attribute__((unused));
const struct ct_key *unused_ct_key __attribute__((unused));
const struct ct_key4 *unused_ct_key4 __attribute__((unused));
const struct ct_val *unused_ct_val __attribute__((unused));
const struct ct4_set *unused_ct4_set __attribute__((unused));
const struct frag_key *unused_frag_key __attribute__((unused));
const struct frag_val *unused_frag_val __attribute__((unused));
const struct hdr *unused_hdr __attribute__((unused));
const struct v4iv *unused_v4iv __attribute__((unused));
const struct v6iv *unused_v6iv __attribute__((unused));
const struct node *unused_node __attribute__((unused));
const struct portiv *unused_portiv __attribute__((unused));
const struct entry *unused_entry __attribute__((unused));
const struct rate *unused_rate __attribute__((unused));
const enum sg_const *unused_sg_const __attribute__((unused));
