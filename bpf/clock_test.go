package bpf

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

func TestParseConfigHZ(t *testing.T) {
	gz := func(s string) string {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		_, _ = w.Write([]byte(s))
		require.NoError(t, w.Close())
		return b.String()
	}
	for _, tc := range []struct {
		name, config string
		gzipped      bool
		hz           uint32
		err          string
	}{
		{"plain", "CONFIG_HZ_250=y\nCONFIG_HZ=250\n", false, 250, ""},
		{"gzipped", gz("# CONFIG_HZ_100 is not set\nCONFIG_HZ=1000\n"), true, 1000, ""},
		{"absent", "CONFIG_HZ_PERIODIC=y\n", false, 0, "no CONFIG_HZ"},
		{"not a number", "CONFIG_HZ=fast\n", false, 0, `CONFIG_HZ="fast" is not a tick rate`},
		{"zero", "CONFIG_HZ=0\n", false, 0, `CONFIG_HZ="0" is not a tick rate`},
		{"not gzip", "CONFIG_HZ=250\n", true, 0, "gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hz, err := parseConfigHZ(strings.NewReader(tc.config), tc.gzipped)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.hz, hz)
		})
	}
}

// TestMeasureHZ: the measured tick rate (for hosts without a kernel config) is the configured one.
func TestMeasureHZ(t *testing.T) {
	measured, err := measureHZ()
	skipIfNotSupported(t, err)
	configured, err := configHZ()
	if err != nil {
		t.Skipf("no kernel config to compare with: %v", err)
	}
	assert.Equal(t, configured, measured)
	assert.Equal(t, uint64(250), ticks(uint64(time.Second), 250))
	assert.Equal(t, uint64(1), ticks(1, 250), "rounded up")
}

// TestAdoptOldConntrack: flows pinned by a build whose conntrack clock was ns (maps conntrack4 and
// conntrack) are moved into this build's maps in ticks, each as old as it was, and the old pins go: a
// live flow's reply is still established, a timed-out one's is not.
func TestAdoptOldConntrack(t *testing.T) {
	// eni-web1 alone, so it takes the same slot (part of the flows' keys) in both dataplanes.
	tables := compiler.New(demoState(t)).CompileAll()
	web1 := map[string]*compiler.Tables{"eni-web1": tables["eni-web1"]}
	d0 := loadOrSkip(t)
	require.NoError(t, d0.Publish(context.Background(), 1, web1, nil))
	web, peer := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("203.0.113.7")
	// UDP flows seen one way, whose timeout (30 s) an age can pass however recently the host booted:
	// the old clock counted ns since boot, so no flow in it is older than that.
	live := frame{src: web, dst: peer, proto: 17, sport: 41000, dport: 9999}
	dead := frame{src: web, dst: peer, proto: 17, sport: 41001, dport: 9999}
	for _, f := range []frame{live, dead} {
		r, err := d0.Run(f.build(), "eni-web1", model.Egress)
		require.NoError(t, err)
		require.True(t, r.Accept, "eni-web1 may send anything")
	}
	es, err := d0.ctEntries()
	require.NoError(t, err)
	require.Len(t, es, 2)

	// The old build's map, its entries aged 10 s (live) and 45 s (past the 30 s) on the ns clock.
	pin := testPinPath(t, "oldct")
	require.NoError(t, os.MkdirAll(pin, 0o700))
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "conntrack4", Type: ebpf.LRUHash, KeySize: uint32(ct4KeySize),
		ValueSize: uint32(unsafe.Sizeof(sgCtVal{})), MaxEntries: 16})
	require.NoError(t, err)
	defer old.Close()
	require.NoError(t, old.Pin(filepath.Join(pin, "conntrack4")))
	clock, err := newKernelClock()
	require.NoError(t, err)
	defer clock.Close()
	written := time.Now()
	_, nowNS, err := clock.read()
	require.NoError(t, err)
	ages := map[uint16]time.Duration{live.sport: 10 * time.Second, dead.sport: 45 * time.Second}
	require.Greater(t, nowNS, uint64(45*time.Second), "the kernel's ns clock reaches back past the oldest age")
	for _, e := range es {
		// ct_key4: slot, proto, pad, then the two ports (little-endian); the peer's port is 9999.
		age, ok := ages[binary.LittleEndian.Uint16(e.key[4:])]
		if !ok {
			age = ages[binary.LittleEndian.Uint16(e.key[6:])]
		}
		e.val.Last = nowNS - uint64(age)
		require.NoError(t, old.Put(e.key, &e.val))
	}

	d, err := Load(t.Context(), Options{PinPath: pin})
	require.NoError(t, err)
	defer d.Close()
	_, err = os.Stat(filepath.Join(pin, "conntrack4"))
	require.ErrorIs(t, err, os.ErrNotExist, "the old pin is gone")
	adopted, err := d.ctEntries()
	require.NoError(t, err)
	require.Len(t, adopted, 2)
	nowTicks := clockTicks(t)
	since := time.Since(written)
	var adoptedAges []time.Duration
	for _, e := range adopted {
		adoptedAges = append(adoptedAges, time.Duration(nowTicks-e.val.Last)*time.Second/time.Duration(d.hz))
	}
	slices.Sort(adoptedAges)
	// Each as old as it was, and older by no more than the time since it was written (Load's
	// included: long on a loaded machine), give or take a tick of either clock's rounding.
	tick := time.Second / time.Duration(d.hz)
	for i, age := range []time.Duration{10 * time.Second, 45 * time.Second} {
		assert.GreaterOrEqual(t, adoptedAges[i], age-2*tick, "ages %v", adoptedAges)
		assert.LessOrEqual(t, adoptedAges[i], age+since+2*tick, "ages %v, %s since written", adoptedAges, since)
	}

	require.NoError(t, d.Publish(context.Background(), 1, web1, nil))
	liveReply, deadReply := live.reverse(), dead.reverse()
	r, err := d.Run(liveReply.build(), "eni-web1", model.Ingress)
	require.NoError(t, err)
	assert.Equal(t, dataplane.ReasonEstablished, r.Reason, "the flow aged 10 s lives on")
	r, err = d.Run(deadReply.build(), "eni-web1", model.Ingress)
	require.NoError(t, err)
	assert.NotEqual(t, dataplane.ReasonEstablished, r.Reason, "the flow aged 45 s had timed out")
}
