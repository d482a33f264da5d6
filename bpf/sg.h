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
};
