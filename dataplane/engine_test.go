package dataplane_test

import (
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// compileRules compiles two ENIs (eni-1, eni-2) that share one SG with the given ingress rules.
func compileRules(t testing.TB, ingress ...model.Rule) map[string]*compiler.Tables {
	t.Helper()
	s, err := model.NewState(model.Topology{
		Accounts:       []model.Account{{AppID: "A"}},
		SecurityGroups: []model.SecurityGroup{{SgID: "sg-x", AppID: "A", Ingress: ingress}},
		NetworkInterfaces: []model.NetworkInterface{
			{NetworkInterfaceID: "eni-1", AppID: "A", PrivateIPAddresses: []string{"198.18.0.1"}, SgIDs: []string{"sg-x"}},
			{NetworkInterfaceID: "eni-2", AppID: "A", PrivateIPAddresses: []string{"198.18.0.2"}, SgIDs: []string{"sg-x"}},
		},
	})
	require.NoError(t, err)
	return compiler.New(s).CompileAll()
}

func pkt(remote string, proto uint8, port uint16) dataplane.Packet {
	return dataplane.Packet{Remote: netip.MustParseAddr(remote), Proto: proto, Port: port, HasPort: proto == 6 || proto == 17}
}

func TestEngineReadersSeeOneTableOrTheOther(t *testing.T) {
	tabA := compileRules(t,
		model.Rule{IPProtocol: "tcp", CidrIP: "198.18.0.0/24", PortRange: "80", Action: "ACCEPT"},
		model.Rule{Action: "DROP"})
	tabB := compileRules(t,
		model.Rule{IPProtocol: "udp", Action: "DROP"},
		model.Rule{IPProtocol: "tcp", CidrIP: "198.18.0.0/16", PortRange: "80-81", Action: "ACCEPT"})
	packets := []dataplane.Packet{
		pkt("198.18.0.9", 6, 80),  // A: accept [0]; B: accept [1]
		pkt("198.18.1.9", 6, 80),  // A: drop [1];   B: accept [1]
		pkt("198.18.0.9", 17, 80), // A: drop [1];   B: drop [0]
		pkt("198.18.0.9", 6, 81),  // A: drop [1];   B: accept [1]
		pkt("198.18.0.9", 1, 0),   // A: drop [1];   B: default-drop
	}
	// The verdicts each table gives, from the reference matcher.
	wantA, wantB := make([]dataplane.Verdict, len(packets)), make([]dataplane.Verdict, len(packets))
	la, lb := dataplane.NewLinear(tabA), dataplane.NewLinear(tabB)
	for i := range packets {
		wantA[i], _ = la.Match("eni-1", model.Ingress, &packets[i])
		wantB[i], _ = lb.Match("eni-1", model.Ingress, &packets[i])
	}
	// Each packet must tell the tables apart, or a mix could go unseen.
	for i := range packets {
		require.NotEqual(t, wantA[i], wantB[i], "packet %d", i)
	}

	e := dataplane.NewEngine(dataplane.LinearFactory)
	e.Publish(1, tabA, nil)

	const publishes = 2000
	var done atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	var reads atomic.Int64
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := r; !done.Load(); i++ {
				k := i % len(packets)
				p := packets[k]
				v, ok := e.Match("eni-1", model.Ingress, &p)
				if !ok || (v != wantA[k] && v != wantB[k]) {
					bad.Add(1)
				}
				// Both ENIs of one snapshot come from the same Publish.
				snap := e.Snapshot()
				v1, ok1 := snap.Match("eni-1", model.Ingress, &p)
				v2, ok2 := snap.Match("eni-2", model.Ingress, &p)
				if !ok1 || !ok2 || v1 != v2 || (v1 != wantA[k] && v1 != wantB[k]) {
					bad.Add(1)
				}
				if want := map[bool][]dataplane.Verdict{true: wantA, false: wantB}[snap.Generation%2 == 1]; v1 != want[k] {
					bad.Add(1) // odd generations carry table A, even ones table B
				}
				reads.Add(1)
			}
		}()
	}
	// Publish only while readers run: wait for their first reads, and let them read between swaps, so the
	// test exercises swaps under concurrent lookups even when the scheduler favours the writer.
	waitReads := func(n int64) {
		for reads.Load() < n {
			runtime.Gosched()
		}
	}
	waitReads(1)
	for g := uint64(2); g < publishes+2; g++ {
		tabs := tabB
		if g%2 == 1 {
			tabs = tabA
		}
		e.Publish(g, tabs, nil)
		if g%100 == 0 {
			waitReads(reads.Load() + 1)
		}
	}
	done.Store(true)
	wg.Wait()
	assert.Zero(t, bad.Load(), "verdicts that neither table gives, out of %d reads", reads.Load())
	assert.Positive(t, reads.Load())
	assert.Equal(t, uint64(publishes+1), e.Snapshot().Generation)
}

func TestEnginePublishKeepsAndRemoves(t *testing.T) {
	tabA := compileRules(t, model.Rule{Action: "ACCEPT"})
	tabB := compileRules(t, model.Rule{Action: "DROP"})
	e := dataplane.NewEngine(dataplane.LinearFactory)
	p := pkt("198.18.0.9", 6, 80)

	_, ok := e.Match("eni-1", model.Ingress, &p)
	assert.False(t, ok, "empty engine holds no ENI")

	e.Publish(1, tabA, nil)
	v, ok := e.Match("eni-2", model.Ingress, &p)
	require.True(t, ok)
	assert.Equal(t, model.Accept, v.Action)

	// Only eni-1 changes; eni-2 keeps its generation-1 tables.
	e.Publish(2, map[string]*compiler.Tables{"eni-1": tabB["eni-1"]}, nil)
	v, _ = e.Match("eni-1", model.Ingress, &p)
	assert.Equal(t, model.Drop, v.Action)
	v, _ = e.Match("eni-2", model.Ingress, &p)
	assert.Equal(t, model.Accept, v.Action)
	t2, ok := e.Snapshot().ENI("eni-2")
	require.True(t, ok)
	assert.Equal(t, uint64(1), t2.Generation)

	old := e.Snapshot()
	e.Publish(3, nil, []string{"eni-2"})
	_, ok = e.Match("eni-2", model.Ingress, &p)
	assert.False(t, ok)
	// A snapshot taken before is untouched by later publishes.
	_, ok = old.Match("eni-2", model.Ingress, &p)
	assert.True(t, ok)
	assert.Len(t, e.Snapshot().ENIs(), 1)
	assert.Equal(t, uint64(3), e.Snapshot().Generation)
}
