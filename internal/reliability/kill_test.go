package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
)

// writer is one load client: it owns one SG's policy and one ENI's SG list of its account, so the last
// acknowledged value of each is known exactly; a write sent when the daemon died is pending (it may or
// may not have been applied).
type writer struct {
	acct, other *account
	index       int // its SG and ENI within its account

	policyAcked, policyPending int // seq of the last acknowledged policy and of one unanswered; -1 = none
	eniAcked, eniPending       int
	seq                        int
}

// policyArgs is the ModifySecurityGroupPolicy of seq: 1-3 ingress rules and one egress rule, every desc
// naming the writer and seq, so a half-applied policy shows.
func (w *writer) policyArgs(seq int) []string {
	kv := []string{"Action", api.ActModifyPolicy, "sgId", w.acct.sgs[w.index]}
	for k := range 1 + seq%3 {
		p := fmt.Sprintf("ingress.%d.", k)
		kv = append(kv, p+"ipProtocol", "tcp", p+"cidrIp", fmt.Sprintf("198.18.%d.0/24", 100+k),
			p+"portRange", strconv.Itoa(1000+k), p+"action", "ACCEPT", p+"desc", w.desc(seq, "i"+strconv.Itoa(k)))
	}
	return append(kv, "egress.0.action", "DROP", "egress.0.desc", w.desc(seq, "e"))
}

func (w *writer) desc(seq int, part string) string {
	return fmt.Sprintf("%s%d-s%d-%s", w.acct.letter, w.index, seq, part)
}

// eniGroupsOf is the SG list the membership write seq sets on the writer's ENI (-1: the topology's).
func (w *writer) eniGroupsOf(seq int) []string {
	if seq < 0 {
		return []string{w.acct.sgs[w.index]}
	}
	n := len(w.acct.sgs)
	return []string{w.acct.sgs[seq%n], w.acct.sgs[(seq+1+seq%(n-1))%n]}
}

// loadStats are the figures the kill test reports.
type loadStats struct {
	acked, ownRefused, crossRefused, crossAccepted, crossOtherCode, lost, halfApplied atomic.Int64
}

// loop writes until ctx ends or the daemon stops answering.
func (w *writer) loop(ctx context.Context, d *daemon, st *loadStats, rng *rand.Rand) {
	for ctx.Err() == nil {
		w.seq++
		seq := w.seq
		switch seq % 5 {
		case 0, 1:
			r, err := d.call(ctx, w.acct, w.policyArgs(seq)...)
			if err != nil {
				w.policyPending = seq
				return
			}
			if r.Code == 0 {
				w.policyAcked = seq
				st.acked.Add(1)
			} else {
				st.ownRefused.Add(1)
			}
		case 2, 3:
			kv := []string{"Action", api.ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", w.acct.enis[w.index]}
			for m, sg := range w.eniGroupsOf(seq) {
				kv = append(kv, fmt.Sprintf("networkInterfaceSet.0.sgIds.%d", m), sg)
			}
			r, err := d.call(ctx, w.acct, kv...)
			if err != nil {
				w.eniPending = seq
				return
			}
			if r.Code == 0 {
				w.eniAcked = seq
				st.acked.Add(1)
			} else {
				st.ownRefused.Add(1)
			}
		default:
			// A cross-account attempt: another tenant's SG policy, another tenant's SG on our ENI, or our
			// SG on another tenant's ENI. Every one must be refused.
			target := rng.IntN(len(w.other.sgs))
			var kv []string
			switch rng.IntN(3) {
			case 0:
				kv = []string{"Action", api.ActModifyPolicy, "sgId", w.other.sgs[target], "ingress.0.action", "ACCEPT", "ingress.0.desc", "intruder"}
			case 1:
				kv = []string{"Action", api.ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", w.acct.enis[w.index],
					"networkInterfaceSet.0.sgIds.0", w.other.sgs[target]}
			default:
				kv = []string{"Action", api.ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", w.other.enis[target],
					"networkInterfaceSet.0.sgIds.0", w.acct.sgs[w.index]}
			}
			r, err := d.call(ctx, w.acct, kv...)
			if err != nil {
				return
			}
			switch r.Code {
			case 0:
				st.crossAccepted.Add(1)
			case 7001: // SPEC §4: not the caller's
				st.crossRefused.Add(1)
			default:
				st.crossOtherCode.Add(1)
			}
		}
	}
}

// verify checks the writer's SG and ENI on a restarted daemon: each holds its last acknowledged value or
// the pending one, wholly; a pending value found applied counts as acknowledged from then on.
func (w *writer) verify(t *testing.T, d *daemon, st *loadStats) {
	t.Helper()
	p := d.describePolicy(t, w.acct, w.acct.sgs[w.index])
	seq, whole := w.policySeq(p)
	switch {
	case !whole:
		st.halfApplied.Add(1)
		t.Errorf("%s: half-applied policy %+v (acked %d, pending %d)", w.acct.sgs[w.index], p, w.policyAcked, w.policyPending)
	case seq == w.policyAcked:
	case seq == w.policyPending && seq > w.policyAcked:
		w.policyAcked = seq
	default:
		st.lost.Add(1)
		t.Errorf("%s: policy of write %d found, acked %d (pending %d): an acknowledged write was lost",
			w.acct.sgs[w.index], seq, w.policyAcked, w.policyPending)
	}
	w.policyPending = -1

	groups := d.eniGroups(t, w.acct, w.acct.enis[w.index])
	switch {
	case slices.Equal(groups, w.eniGroupsOf(w.eniAcked)):
	case w.eniPending > w.eniAcked && slices.Equal(groups, w.eniGroupsOf(w.eniPending)):
		w.eniAcked = w.eniPending
	default:
		st.lost.Add(1)
		t.Errorf("%s: SGs %v, acked %v (write %d), pending write %d: an acknowledged write was lost",
			w.acct.enis[w.index], groups, w.eniGroupsOf(w.eniAcked), w.eniAcked, w.eniPending)
	}
	w.eniPending = -1
}

// policySeq reads which write a policy is and whether it is wholly that write (-1: the topology's).
func (w *writer) policySeq(p policy) (int, bool) {
	if len(p.Ingress) == 1 && p.Ingress[0].Desc == "init" && len(p.Egress) == 0 {
		return -1, true
	}
	if len(p.Egress) != 1 {
		return 0, false
	}
	prefix := fmt.Sprintf("%s%d-s", w.acct.letter, w.index)
	rest, ok := strings.CutPrefix(p.Egress[0].Desc, prefix)
	if !ok {
		return 0, false
	}
	seq, err := strconv.Atoi(strings.TrimSuffix(rest, "-e"))
	if err != nil || len(p.Ingress) != 1+seq%3 || p.Egress[0].Desc != w.desc(seq, "e") {
		return 0, false
	}
	for k, r := range p.Ingress {
		if r.Desc != w.desc(seq, "i"+strconv.Itoa(k)) {
			return 0, false
		}
	}
	return seq, true
}

// TestAcknowledgedWritesSurviveSIGKILL: ≥ 16 signed clients over two accounts write policies and ENI SG
// lists against `sgsim serve`, which is SIGKILLed several times while they do; after every restart each
// acknowledged write is there, none is half-applied, and every cross-account attempt was refused.
func TestAcknowledgedWritesSurviveSIGKILL(t *testing.T) {
	clients, kills, loadFor := 16, 4, 600*time.Millisecond
	if soak {
		clients, kills, loadFor = 32, 20, 3*time.Second
	}
	perAccount := clients / 2
	topo, accts := topology(t, perAccount)
	dir := t.TempDir()
	var writers []*writer
	for i := range clients {
		a, other := accts[i%2], accts[(i+1)%2]
		writers = append(writers, &writer{acct: a, other: other, index: i / 2,
			policyAcked: -1, policyPending: -1, eniAcked: -1, eniPending: -1})
	}
	var st loadStats
	d := startDaemon(t, dir, "--topology", topo)
	rng := rand.New(rand.NewPCG(5, 6))
	for round := 0; round <= kills; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i, w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.loop(ctx, d, &st, rand.New(rand.NewPCG(uint64(round), uint64(i))))
			}()
		}
		// Kill mid-load (not in the last round, which ends by stopping the clients).
		time.Sleep(loadFor/2 + time.Duration(rng.Int64N(int64(loadFor))))
		if round < kills {
			d.kill()
		} else {
			cancel()
		}
		wg.Wait()
		cancel()
		if round < kills {
			d = startDaemon(t, dir)
		}
		for _, w := range writers {
			w.verify(t, d, &st)
		}
	}
	t.Logf("clients %d over 2 accounts, writes acknowledged %d, kills %d, lost %d, half-applied %d, cross-account attempts refused %d, accepted %d",
		clients, st.acked.Load(), kills, st.lost.Load(), st.halfApplied.Load(), st.crossRefused.Load(), st.crossAccepted.Load())
	assert.Zero(t, st.ownRefused.Load(), "valid writes of the caller's own SGs and ENIs refused")
	assert.Zero(t, st.crossOtherCode.Load(), "cross-account attempts answered with another code than 7001")
	assert.Zero(t, st.lost.Load(), "lost")
	assert.Zero(t, st.halfApplied.Load(), "half-applied")
	assert.Zero(t, st.crossAccepted.Load(), "cross-account attempts accepted")
	require.Positive(t, st.crossRefused.Load())
	require.GreaterOrEqual(t, st.acked.Load(), int64(10*kills), "the load wrote between kills")
}
