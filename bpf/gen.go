// Package bpf is sgsim's eBPF TC dataplane: the C program (sg.c) and its bpf2go bindings, the
// serialisation of compiled tables into map-resident lookup structures, atomic table swaps, attachment
// to host interfaces (TCX, else clsact), conntrack, hit counters and drop events.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -type sg_const -type hdr -type v4iv -type v6iv -type node -type portiv -type entry -type ifcfg -type eniname -type rate -type drop_event -type ct_key -type ct_key4 -type ct_val -type ct4_set -type frag_key -type frag_val sg sg.c -- -O2 -g -Wall -I/usr/include/x86_64-linux-gnu
