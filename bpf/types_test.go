package bpf

import (
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Every struct the Go side reads or writes has the size the C program gives it (its BTF in sg_bpfel.o),
// and the table regions' strides in layout.go are those sizes.
func TestKernelTypesMatchC(t *testing.T) {
	spec, err := loadSg()
	require.NoError(t, err)
	cases := []struct {
		c    string
		size uintptr
	}{
		{"hdr", unsafe.Sizeof(sgHdr{})},
		{"v4iv", unsafe.Sizeof(sgV4iv{})},
		{"v6iv", unsafe.Sizeof(sgV6iv{})},
		{"node", unsafe.Sizeof(sgNode{})},
		{"portiv", unsafe.Sizeof(sgPortiv{})},
		{"entry", unsafe.Sizeof(sgEntry{})},
		{"ifcfg", unsafe.Sizeof(sgIfcfg{})},
		{"eniname", unsafe.Sizeof(sgEniname{})},
		{"rate", unsafe.Sizeof(sgRate{})},
		{"ct_key", unsafe.Sizeof(sgCtKey{})},
		{"ct_key4", unsafe.Sizeof(sgCtKey4{})},
		{"ct_val", unsafe.Sizeof(sgCtVal{})},
		{"ct4_set", unsafe.Sizeof(sgCt4Set{})},
		{"frag_key", unsafe.Sizeof(sgFragKey{})},
		{"frag_val", unsafe.Sizeof(sgFragVal{})},
		{"drop_event", unsafe.Sizeof(sgDropEvent{})},
		{"__sk_buff", unsafe.Sizeof(skbCtx{})},
	}
	for _, tc := range cases {
		t.Run(tc.c, func(t *testing.T) {
			var st *btf.Struct
			require.NoError(t, spec.Types.TypeByName(tc.c, &st))
			size, err := btf.Sizeof(st)
			require.NoError(t, err)
			assert.Equal(t, size, int(tc.size))
		})
	}
	assert.Equal(t, hdrSize, int(unsafe.Sizeof(sgHdr{})), "SG_HDR_SIZE")
	assert.Equal(t, 64, ct4ValsOff, "a set's keys are one cache line")
	assert.Equal(t, ct4Ways*ct4KeySize, ct4ValsOff, "a set's values follow its keys")
	assert.Equal(t, uint32(ct4Sets), spec.Maps["ct4_sets"].MaxEntries)
	assert.Equal(t, uint32(ct4SetSize), spec.Maps["ct4_sets"].ValueSize)
	for _, m := range []string{"ifaces", "eni_names"} {
		assert.Equal(t, maxSlots, spec.Maps[m].MaxEntries, m)
	}
	assert.Equal(t, 2*maxSlots, spec.Maps["tables"].MaxEntries)
	assert.Equal(t, uint32(chunkSize), spec.Maps["tables"].InnerMap.ValueSize)
	for name, m := range spec.Maps {
		want := ebpf.PinByName
		if name == "frags" || name == "ct_scratch" || name == ".bss" || name == ".rodata" {
			want = ebpf.PinNone // short-lived verdicts, per-packet scratch, BTF anchors, load-time constants (ct_hz)
		}
		assert.Equal(t, want, m.Pinning, "pinning of %s", name)
	}
}

// A pin directory whose tables map takes inner maps of another chunk size (an older build's) is refused:
// cilium/ebpf's check of pinned maps does not compare inner maps, so Load probes it.
func TestLoadRefusesPinnedTablesOfAnotherChunkSize(t *testing.T) {
	loadOrSkip(t).Close()
	pin := pinStaleMap(t, "chunk", &ebpf.MapSpec{Name: "tables", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4,
		MaxEntries: 2 * maxSlots, InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 1 << 16,
			MaxEntries: 1, Flags: unix.BPF_F_INNER_MAP}})
	_, err := Load(t.Context(), Options{PinPath: pin})
	require.ErrorIs(t, err, ebpf.ErrMapIncompatible)
	assert.ErrorContains(t, err, "maps pinned under "+pin+" were made by an sgsim build with another layout")
}
