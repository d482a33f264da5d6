package bpf

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// TestNoBlinkSwap swaps [allow-udp] → [deny-all] → [allow-udp] … 1000 times while another goroutine
// runs UDP packets through the program. A packet whose run lies entirely between one swap's
// acknowledgement and the next swap's start must get that table's verdict: nothing admitted under
// deny-all, nothing dropped under allow-udp.
// It stays whole: the swapper and the sender share the acknowledgement times the verdicts are judged by.
func TestNoBlinkSwap(t *testing.T) {
	d := loadOrSkip(t)
	mk := func(rules []model.Rule) map[string]*compiler.Tables {
		topo := model.Topology{
			Accounts:       []model.Account{{AppID: "1"}},
			SecurityGroups: []model.SecurityGroup{{SgID: "sg-x", AppID: "1", Ingress: rules, Egress: []model.Rule{}}},
			NetworkInterfaces: []model.NetworkInterface{{NetworkInterfaceID: "eni-x", AppID: "1",
				MacAddress: "02:00:00:00:00:09", PrivateIPAddresses: []string{"198.18.7.1"}, SgIDs: []string{"sg-x"}}},
		}
		s, err := model.NewState(topo)
		require.NoError(t, err)
		return compiler.New(s).CompileAll()
	}
	allow := mk([]model.Rule{{IPProtocol: "udp", PortRange: "9000", Action: "ACCEPT"}})
	deny := mk([]model.Rule{{Action: "DROP"}})
	ctx := context.Background()
	require.NoError(t, d.Publish(ctx, 1, allow, nil))

	type swap struct {
		start, ack time.Duration
		allow      bool
	}
	type sent struct {
		t0, t1 time.Duration
		accept bool
	}
	const swaps = 1000
	epoch := time.Now()
	log := []swap{{0, 0, true}}
	var pkts []sent
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var runErr error
	var done atomic.Int64 // packets completed, so swaps can wait for traffic between them
	go func() {
		defer wg.Done()
		f := (&frame{src: netip.MustParseAddr("198.18.7.2"), dst: netip.MustParseAddr("198.18.7.1"),
			proto: 17, sport: 4000, dport: 9000}).build()
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Since(epoch)
			r, err := d.Run(f, "eni-x", model.Ingress)
			t1 := time.Since(epoch)
			if err != nil {
				runErr = err
				return
			}
			pkts = append(pkts, sent{t0, t1, r.Accept})
			done.Add(1)
		}
	}()
	for i := range swaps {
		isAllow := i%2 == 1
		tabs := deny
		if isAllow {
			tabs = allow
		}
		s := swap{start: time.Since(epoch), allow: isAllow}
		require.NoError(t, d.Publish(ctx, uint64(i+2), tabs, nil))
		s.ack = time.Since(epoch)
		log = append(log, s)
		// Let a few packets run under this version before the next swap.
		for want, deadline := done.Load()+3, time.Now().Add(time.Second); done.Load() < want && time.Now().Before(deadline); {
			time.Sleep(20 * time.Microsecond)
		}
	}
	close(stop)
	wg.Wait()
	require.NoError(t, runErr)

	var checked, admittedUnderDeny, droppedUnderAllow int
	j := 0
	for _, p := range pkts {
		for j+1 < len(log) && log[j+1].ack <= p.t0 {
			j++
		}
		if j+1 < len(log) && log[j+1].start <= p.t1 {
			continue // a swap overlapped this packet: either version is right
		}
		checked++
		switch {
		case log[j].allow && !p.accept:
			droppedUnderAllow++
		case !log[j].allow && p.accept:
			admittedUnderDeny++
		}
	}
	t.Logf("%d swaps, %d packets, %d decided entirely under one version", swaps, len(pkts), checked)
	require.Greater(t, checked, swaps/2, "too few packets fell between swaps to mean anything")
	require.Zero(t, admittedUnderDeny, "packets admitted while deny-all was in force")
	require.Zero(t, droppedUnderAllow, "packets dropped while allow-udp was in force")
}
