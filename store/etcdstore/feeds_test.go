package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/internal/etcdtest"
	"github.com/sgsim/sgsim/model"
)

// repairOps is the etcd limit of these tests: a change of one SG's rules (two operations) leaves room
// for six more, so its feeds of 20 hosts are 3 in its transaction and 3 intents owing 7, 7 and 3.
const repairOps = 8

// withPort returns s with sg-a's rule on port instead: a change of every ENI's table.
func withPort(t *testing.T, s *model.State, port string) *model.State {
	g, _ := s.SG("sg-a")
	next := *g
	next.Ingress = []model.Rule{{IPProtocol: "tcp", SgID: "sg-a", PortRange: port, Action: "ACCEPT"}}
	b := s.Edit()
	require.NoError(t, b.PutSG(next))
	return b.State()
}

// feedRevisions returns each host's feed ModRevision (absent: not there).
func feedRevisions(t *testing.T, cli *clientv3.Client, prefix string) map[string]int64 {
	resp, err := cli.Get(context.Background(), prefix+"/feed/", clientv3.WithPrefix())
	require.NoError(t, err)
	out := map[string]int64{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key[len(prefix+"/feed/"):])] = kv.ModRevision
	}
	return out
}

// intents returns the intents etcd holds: key → hosts, each at the revision it was written.
func intents(t *testing.T, cli *clientv3.Client, prefix string) map[string][]string {
	resp, err := cli.Get(context.Background(), prefix+"/feedq/", clientv3.WithPrefix())
	require.NoError(t, err)
	out := map[string][]string{}
	for _, kv := range resp.Kvs {
		var hosts []string
		require.NoError(t, json.Unmarshal(kv.Value, &hosts))
		out[string(kv.Key)] = hosts
	}
	return out
}

// deadWriter returns a Store on a client of its own whose requests fail once it has committed a
// change: a replica killed right after its commit's transaction.
func deadWriter(t *testing.T, te *testEtcd, prefix string) *Store {
	cli := te.client(t)
	etcdtest.CutAfter(cli, etcdtest.PutsKey(prefix+"/objects/generation"))
	s, err := Open(context.Background(), cli, prefix, WithMaxTxnOps(repairOps))
	require.NoError(t, err)
	return s
}

// A commit whose later feed transactions never happen leaves intents owing exactly the feeds it did
// seedFleet starts an etcd and commits fleetState(20, 20) under a fresh prefix through a Store with
// repairOps operations per transaction (its feeds fit: no intent), which the repair tests start from.
func seedFleet(t *testing.T) (te *testEtcd, prefix string, st *Store, seed *model.State, rev uint64) {
	t.Helper()
	te = startEtcd(t)
	prefix = te.prefix()
	st = openStore(t, te, prefix, WithMaxTxnOps(repairOps))
	seed = fleetState(t, 20, 20)
	rev, err := st.CommitAffecting(context.Background(), seed, 1, nil)
	require.NoError(t, err, "the seed")
	return te, prefix, st, seed, rev
}

// not write; Repair writes those feeds and deletes the intents, and a second Repair does nothing.
func TestRepairPaysWhatADeadWriterOwes(t *testing.T) {
	te, prefix, repairer, _, _ := seedFleet(t)
	ctx := context.Background()
	require.Empty(t, intents(t, repairer.cli, prefix))
	before := feedRevisions(t, repairer.cli, prefix)

	w := deadWriter(t, te, prefix)
	cur, base, err := w.Load(ctx)
	require.NoError(t, err)
	rev, err := w.CommitAffecting(ctx, withPort(t, cur, "23"), base+1, hostsOf(20))
	require.ErrorIs(t, err, ErrFeedIncomplete, "committed, then cut off")
	require.ErrorIs(t, err, etcdtest.ErrCut)

	told := feedRevisions(t, repairer.cli, prefix)
	var inTxn, untold []string
	for _, h := range hostsOf(20) {
		if told[h] == int64(rev) {
			inTxn = append(inTxn, h)
		} else {
			assert.Equal(t, before[h], told[h], "%s: not told by anyone", h)
			untold = append(untold, h)
		}
	}
	assert.Equal(t, hostsOf(5), inTxn, "the feeds that fit beside the intent")
	owed := intents(t, repairer.cli, prefix)
	require.Len(t, owed, 1, "one intent owes the rest")
	for _, hosts := range owed {
		assert.Equal(t, untold, hosts, "the intent owes exactly the feeds not written")
	}

	repaired, err := repairer.Repair(ctx)
	require.NoError(t, err)
	require.Len(t, repaired, 1)
	var paid []string
	for _, r := range repaired {
		assert.Equal(t, rev, r.Revision)
		paid = append(paid, r.Hosts...)
	}
	slices.Sort(paid)
	assert.Equal(t, untold, paid)
	assert.Empty(t, intents(t, repairer.cli, prefix), "paid intents are deleted")
	after := feedRevisions(t, repairer.cli, prefix)
	for _, h := range hostsOf(20) {
		if slices.Contains(untold, h) {
			assert.Greater(t, after[h], int64(rev), "%s told by the repair", h)
		} else {
			assert.Equal(t, int64(rev), after[h], "%s told by the commit, not again", h)
		}
	}
	hosts, err := repairer.ChangeHosts(ctx, rev)
	require.NoError(t, err)
	assert.Equal(t, hostsOf(20), hosts, "the change still names every host it affects")

	again, err := repairer.Repair(ctx)
	require.NoError(t, err)
	assert.Empty(t, again)
	assert.Equal(t, after, feedRevisions(t, repairer.cli, prefix), "a second repair writes nothing")
}

// A live writer pays its own intents and leaves none; a change whose feeds fit in its transaction
// writes no intent and is one etcd write.
func TestLiveWriterLeavesNoIntent(t *testing.T) {
	_, prefix, st, s0, r0 := seedFleet(t)
	ctx := context.Background()

	s1 := withPort(t, s0, "23")
	r1, err := st.CommitAffecting(ctx, s1, r0+1, hostsOf(20))
	require.NoError(t, err)
	assert.Empty(t, intents(t, st.cli, prefix))
	for h, r := range feedRevisions(t, st.cli, prefix) {
		assert.GreaterOrEqual(t, r, int64(r1), h)
	}

	b := s1.Edit()
	require.NoError(t, b.SetENISGs("eni-0001", []string{"sg-b"}))
	r2, err := st.CommitAffecting(ctx, b.State(), r1+1, []string{"h01"})
	require.NoError(t, err)
	resp, err := st.cli.Get(ctx, prefix+"/feedq/", clientv3.WithPrefix(), clientv3.WithRev(int64(r2)), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count)
	now, err := st.cli.Get(ctx, prefix+"/objects/generation")
	require.NoError(t, err)
	assert.Equal(t, int64(r2), now.Header.Revision, "the commit is the only write: no intent, no later feed")
}

// Several replicas repairing the same intents at once write each owed feed exactly once.
func TestConcurrentRepairsWriteEachFeedOnce(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	prefix := te.prefix()
	repairers := []*Store{openStore(t, te, prefix), openStore(t, te, prefix), openStore(t, te, prefix)}
	s0 := fleetState(t, 20, 20)
	_, err := repairers[0].CommitAffecting(ctx, s0, 1, nil)
	require.NoError(t, err)
	w := deadWriter(t, te, prefix)
	cur, base, err := w.Load(ctx)
	require.NoError(t, err)
	rev, err := w.CommitAffecting(ctx, withPort(t, cur, "23"), base+1, hostsOf(20))
	require.ErrorIs(t, err, ErrFeedIncomplete)

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	feeds := te.client(t).Watch(wctx, prefix+"/feed/", clientv3.WithPrefix(), clientv3.WithRev(int64(rev)+1), clientv3.WithCreatedNotify())
	require.True(t, (<-feeds).Created)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var paid []string
	for _, r := range repairers {
		wg.Go(func() {
			done, err := r.Repair(ctx)
			assert.NoError(t, err)
			mu.Lock()
			defer mu.Unlock()
			for _, d := range done {
				paid = append(paid, d.Hosts...)
			}
		})
	}
	wg.Wait()
	require.Len(t, paid, 15, "every owed feed paid by one repairer")
	writes := map[string]int{}
	for len(writes) < 15 {
		select {
		case resp := <-feeds:
			for _, ev := range resp.Events {
				writes[string(ev.Kv.Key)]++
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("feed events: %v", writes)
		}
	}
	// Any further write would have come with the ones seen: the repairs are over.
	select {
	case resp := <-feeds:
		t.Fatalf("more feed writes: %v", resp.Events)
	case <-time.After(100 * time.Millisecond):
	}
	for key, n := range writes {
		assert.Equal(t, 1, n, key)
	}
}

// RepairFeeds repairs intents it finds when it starts at once, and those written later once they
// stood for its grace period; it leaves a live writer's alone.
func TestRepairFeedsFollowsIntents(t *testing.T) {
	te, prefix, st, _, r0 := seedFleet(t)
	ctx := context.Background()
	w := deadWriter(t, te, prefix)
	cur, _, err := w.Load(ctx)
	require.NoError(t, err)
	rev1, err := w.CommitAffecting(ctx, withPort(t, cur, "23"), r0+1, hostsOf(20))
	require.ErrorIs(t, err, ErrFeedIncomplete)

	repairer := openStore(t, te, prefix)
	const grace = 300 * time.Millisecond
	repaired := make(chan Repaired, 16)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- repairer.RepairFeeds(rctx, grace, func(r Repaired) { repaired <- r }) }()
	for range 1 { // one intent per commit
		select {
		case r := <-repaired:
			assert.Equal(t, rev1, r.Revision, "found at start")
		case <-time.After(5 * time.Second):
			t.Fatal("the intents found at start are not repaired")
		}
	}

	// A live writer's commit: paid by the writer, so nothing for the repairer.
	cur, base, err := st.Load(ctx)
	require.NoError(t, err)
	require.Equal(t, rev1, base)
	live, err := st.CommitAffecting(ctx, withPort(t, cur, "24"), base+1, hostsOf(20))
	require.NoError(t, err)
	// Another dead writer's, after the repairer started: repaired once it stood for the grace.
	w2 := deadWriter(t, te, prefix)
	cur, base, err = w2.Load(ctx)
	require.NoError(t, err)
	start := time.Now()
	rev3, err := w2.CommitAffecting(ctx, withPort(t, cur, "25"), base+1, hostsOf(20))
	require.ErrorIs(t, err, ErrFeedIncomplete)
	for range 1 {
		select {
		case r := <-repaired:
			assert.Equal(t, rev3, r.Revision, "not the live writer's %d", live)
			assert.GreaterOrEqual(t, time.Since(start), grace, "left alone for the grace")
		case <-time.After(5 * time.Second):
			t.Fatal("the intents written later are not repaired")
		}
	}
	assert.Empty(t, intents(t, st.cli, prefix))
	stop()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.Empty(t, repaired)
}

// planFeeds keeps as many feeds in the commit's transaction as leave room for the intents owing the
// rest, MaxTxnOps-1 feeds each, and refuses a change with no room for them.
func TestPlanFeeds(t *testing.T) {
	named := func(n, size int) []string {
		hosts := make([]string, n)
		for i := range hosts {
			hosts[i] = fmt.Sprintf("h%0*d", size-1, i)
		}
		return hosts
	}
	for _, c := range []struct {
		name          string
		maxOps, used  int
		hosts         []string
		inTxn         int
		errorContains string
	}{
		{name: "all fit", maxOps: 8, used: 2, hosts: named(6, 3), inTxn: 6},
		{name: "one over", maxOps: 8, used: 2, hosts: named(7, 3), inTxn: 5},
		{name: "many over", maxOps: 8, used: 2, hosts: named(20, 3), inTxn: 5},
		{name: "as many as one split holds", maxOps: 8, used: 2, hosts: named(5+43, 3), inTxn: 5},
		{name: "more than one split holds", maxOps: 8, used: 2, hosts: named(5+44, 3), errorContains: "more than one split"},
		{name: "room for the intent alone", maxOps: 8, used: 7, hosts: named(3, 3), inTxn: 0},
		{name: "full, no hosts", maxOps: 8, used: 8},
		{name: "full", maxOps: 8, used: 8, hosts: named(1, 3), errorContains: "8 operations leave no room"},
		{name: "100-ENI change on 100 hosts", maxOps: 128, used: 104, hosts: named(100, 3), inTxn: 23},
		{name: "120 ENIs moved on a fleet of 1,000", maxOps: 128, used: 123, hosts: named(1000, 4), inTxn: 4},
		{name: "too many bytes", maxOps: 128, used: 2, hosts: named(100, 1000), errorContains: "etcd allows 65536 per request"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Store{prefix: "/p", maxOps: c.maxOps, maxBytes: 64 * 1024}
			p, err := s.planFeeds(c.hosts, c.used, requestSlack, 7)
			if c.errorContains != "" {
				require.ErrorIs(t, err, ErrTooLarge)
				assert.ErrorContains(t, err, c.errorContains)
				return
			}
			require.NoError(t, err)
			assert.LessOrEqual(t, c.used+len(p.ops), c.maxOps)
			for i, h := range c.hosts[:c.inTxn] {
				assert.Equal(t, "/p/feed/"+h, string(p.ops[i].KeyBytes()))
			}
			rest := c.hosts[c.inTxn:]
			if len(rest) == 0 {
				assert.Len(t, p.ops, c.inTxn)
				assert.Empty(t, p.owed, "no intent when the feeds fit")
				return
			}
			require.Len(t, p.ops, c.inTxn+1)
			require.Len(t, p.owed, 1, "one intent owes the rest")
			assert.Equal(t, "/p/feedq/7", p.owed[0].key)
			assert.Equal(t, rest, p.owed[0].hosts)
			var value []string
			require.NoError(t, json.Unmarshal(p.ops[c.inTxn].ValueBytes(), &value))
			assert.Equal(t, rest, value, "the intent's value names its hosts")
		})
	}
}

// TestSplitBatches: a whole intent's split writes its first batch beside its delete and the later
// batches' intents, each later batch is one transaction beside its delete, as few batches as fit.
func TestSplitBatches(t *testing.T) {
	s := &Store{prefix: "/p", maxOps: 8}
	for _, c := range []struct {
		hosts int
		sizes []int
	}{
		{1, []int{1}},
		{7, []int{7}},
		{8, []int{6, 2}},
		{13, []int{6, 7}},
		{14, []int{5, 7, 2}},
		{43, []int{1, 7, 7, 7, 7, 7, 7}},
	} {
		hosts := hostsOf(c.hosts)
		batches, err := s.splitBatches(hosts)
		require.NoError(t, err, c.hosts)
		var sizes []int
		for _, b := range batches {
			sizes = append(sizes, len(b))
		}
		assert.Equal(t, c.sizes, sizes, "%d hosts", c.hosts)
		assert.Equal(t, hosts, slices.Concat(batches...))
		assert.LessOrEqual(t, 1+(len(batches)-1)+len(batches[0]), s.maxOps, "the split's transaction fits")
	}
	_, err := s.splitBatches(hostsOf(44))
	require.ErrorIs(t, err, ErrTooLarge)
}

// A Store's repairs leave the intents it is paying itself alone, however short the grace: its own
// commits are never repaired by it.
func TestRepairFeedsLeavesItsOwnWritesAlone(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	st := openStore(t, te, te.prefix(), WithMaxTxnOps(repairOps))
	cur := fleetState(t, 20, 20)
	rev, err := st.CommitAffecting(ctx, cur, 1, nil)
	require.NoError(t, err)
	var mu sync.Mutex
	var repaired []Repaired
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- st.RepairFeeds(rctx, time.Millisecond, func(r Repaired) { mu.Lock(); repaired = append(repaired, r); mu.Unlock() })
	}()
	for i := range 30 {
		cur = withPort(t, cur, strconv.Itoa(1000+i))
		rev, err = st.CommitAffecting(ctx, cur, rev+1, hostsOf(20))
		require.NoError(t, err)
	}
	// The intents' deletions reach the repairer's watch before it stops.
	time.Sleep(100 * time.Millisecond)
	stop()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.Empty(t, repaired, "its own intents, paid by its commits")
	assert.Empty(t, intents(t, st.cli, st.prefix))
}

// At etcd's default limits a change whose records take 123 of the 128 operations still owes the feeds
// of a 1,000-host fleet: one intent in its transaction, then the split and its batches, and every host
// is told (review finding: one intent per later batch needed eight operations, and the change was
// refused).
func TestBigChangeOwesAWholeFleet(t *testing.T) {
	te := startEtcd(t)
	ctx := context.Background()
	prefix := te.prefix()
	st := openStore(t, te, prefix)
	s := fleetState(t, 1000, 1000)
	rev0, err := st.CommitAffecting(ctx, s, 1, nil)
	require.NoError(t, err)
	b := s.Edit()
	for _, id := range s.ENIIDs()[:120] {
		require.NoError(t, b.SetENISGs(id, []string{"sg-b"}))
	}
	d, err := st.rs.diff(b.State())
	require.NoError(t, err)
	ops, _ := st.commitOps(d, nil, "")
	require.Len(t, ops, 123, "the records take 123 operations")
	rev, err := st.CommitAffecting(ctx, b.State(), rev0+1, nil)
	require.NoError(t, err)
	assert.Empty(t, intents(t, st.cli, prefix), "every intent paid")
	told := feedRevisions(t, st.cli, prefix)
	require.Len(t, told, 1000)
	for h, r := range told {
		assert.GreaterOrEqual(t, r, int64(rev), "%s told of the change", h)
	}
}

// An intent no payment could settle (a host named twice: etcd refuses a transaction writing a key
// twice; more hosts than a batch's one transaction holds) is left alone, logged, and does not stop the
// repair of the intents after it.
func TestRepairLeavesUnpayableIntentsAlone(t *testing.T) {
	te := startEtcd(t)
	prefix := te.prefix()
	st := openStore(t, te, prefix, WithMaxTxnOps(repairOps))
	ctx := context.Background()
	bad := map[string]string{
		prefix + "/feedq/5":   `["h1","h1"]`,
		prefix + "/feedq/6/1": `["h1","h2","h3","h4","h5","h6","h7","h8"]`,
	}
	for k, v := range bad {
		_, err := st.cli.Put(ctx, k, v)
		require.NoError(t, err)
	}
	put, err := st.cli.Put(ctx, prefix+"/feedq/7", `["h2","h3"]`)
	require.NoError(t, err)

	repaired, err := st.Repair(ctx)
	require.NoError(t, err)
	assert.Equal(t, []Repaired{{Revision: uint64(put.Header.Revision), Hosts: []string{"h2", "h3"}}}, repaired)
	assert.Equal(t, []string{"h2", "h3"}, slices.Sorted(maps.Keys(feedRevisions(t, st.cli, prefix))))
	left := intents(t, st.cli, prefix)
	require.Len(t, left, len(bad), "the unpayable intents stay, for a person to look at")
	for k := range bad {
		assert.Contains(t, left, k)
	}
}
