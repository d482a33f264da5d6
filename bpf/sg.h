// SPDX-License-Identifier: GPL-2.0
// Constants shared by the TC program (sg.c) and its Go loader: bpf2go emits this enum as Go constants
// (sgConst*), so each limit and layout parameter is written once, here.
#pragma once

enum sg_const {
	// ENI slots one loaded program holds (ifaces, eni_names); tables has one entry per slot and direction.
	SG_MAX_SLOTS = 4096,
	SG_MAX_TABLES = 2 * SG_MAX_SLOTS,
	// The slot an interface no ENI claims is bound to by serve --guard: every packet on it is dropped,
	// ARP too, with reason no-eni (SPEC §8).
	SG_GUARD_SLOT = SG_MAX_SLOTS,
	// Interfaces with an ifindex below this are bound in ifslots (an array: its lookup is inlined), the
	// rest only in ifaces (a hash map).
	SG_IFSLOTS = 1 << 16,
	// A table version is one inner array map of SG_CHUNK_SIZE-byte chunks read as one byte string
	// (layout.go): small chunks keep a small ENI's tables small, a big table spans many.
	SG_CHUNK_SHIFT = 12,
	SG_CHUNK_SIZE = 1 << SG_CHUNK_SHIFT,
	// Bytes of the table header, and of each sgId (NUL-padded) in the table's SG region.
	SG_HDR_SIZE = 64,
	SG_NAME_SIZE = 64,
	// hdr.flags: the ENI has no security groups (its implicit DROP says no-sg).
	SG_HDR_FLAG_NOSG = 1,
	// IPv4 conntrack (ct4_sets, sg.c): SG_CT4_SETS sets of SG_CT4_WAYS ways, each set its ways' keys in
	// one cache line and their values after it; a flow lives in one of its key's two candidate sets.
	SG_CT4_SET_SHIFT = 16,
	SG_CT4_SETS = 1 << SG_CT4_SET_SHIFT,
	SG_CT4_WAYS = 4,
	// A way's state byte (its key's pad): SG_CT4_BUSY while a writer fills it (it matches no key);
	// SG_CT4_LOCK, in a set's first way, while an insert holds the set's insert lock; SG_CT4_LIVE while
	// its value holds a flow (a lookup or a count of free ways reads only keys); the other bits a count
	// of the writes the way has taken, SG_CT4_WRITE more for each.
	SG_CT4_BUSY = 1,
	SG_CT4_LOCK = 2,
	SG_CT4_LIVE = 4,
	SG_CT4_WRITE = 8,
	// ct4_sets' layout, kept in ct4_layout: 1 the ways (a way's key and value side by side: pins of a
	// build without ct4_layout), 2 a set's keys in one line and its values after them.
	SG_CT4_LAYOUT = 2,
	// ct_val flags: the half holds a flow (the Go side reads which values hold one).
	SG_CT_LIVE = 4,
};
