package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/store"
)

// A commit owes the feeds that do not fit in its own transaction, and the transaction records the
// debt in one operation, so any change that fits etcd's limits can owe any number of feeds: an intent
// P/feedq/{base} naming every host owed. The first payer (the writer right after its commit or, if the
// writer stopped first, killed or cut off from etcd, any replica's repair) splits it, guarded on its
// ModRevision, in one transaction that deletes it, writes the first batch of feeds and an intent
// P/feedq/{base}/{i} for each later batch; each of those is paid in one transaction that writes its
// feeds and deletes it, guarded on its own ModRevision, all at once. Whoever pays a step first pays it
// once; a later payer's guard fails and it writes nothing, so writer and repairs never fight and no
// feed is written twice.

// intent is feeds a commit owes: all of them (a whole intent, as the commit wrote it) or one batch of
// a split one.
type intent struct {
	key   string
	rev   int64 // its ModRevision
	hosts []string
}

// feedPlan is where a commit's feeds go.
type feedPlan struct {
	ops  []clientv3.Op // for the commit's transaction: the feeds that fit, then the intent of the rest
	owed []intent      // the whole intent, if any, paid after the commit
}

func (s *Store) feedqPrefix() string { return s.prefix + "/feedq/" }

// intentKey names the whole intent of the commit guarded on base.
func (s *Store) intentKey(base int64) string { return s.feedqPrefix() + strconv.FormatInt(base, 10) }

// isBatch tells a split intent's batch from a whole intent.
func (s *Store) isBatch(in intent) bool {
	return strings.Contains(strings.TrimPrefix(in.key, s.feedqPrefix()), "/")
}

// planFeeds splits hosts' feeds between a commit's transaction, which holds opsUsed operations of
// bytesUsed bytes without them, and one intent paid after it: as many feeds in the transaction as
// leave room for the intent, so a change whose feeds fit writes no intent. base is the revision the
// commit is guarded on: one commit per base succeeds, so the intent named by it is unique.
func (s *Store) planFeeds(hosts []string, opsUsed, bytesUsed int, base int64) (feedPlan, error) {
	room := s.maxOps - opsUsed
	inTxn := len(hosts)
	var owed []intent
	if inTxn > room {
		if room < 1 {
			return feedPlan{}, fmt.Errorf("%w: %d operations leave no room for the intent owing the feeds of %d hosts, etcd allows %d",
				ErrTooLarge, opsUsed, len(hosts), s.maxOps)
		}
		inTxn = room - 1
		rest := hosts[inTxn:]
		if _, err := s.splitBatches(rest); err != nil {
			return feedPlan{}, err
		}
		owed = []intent{{key: s.intentKey(base), hosts: rest}}
	}
	p := feedPlan{ops: make([]clientv3.Op, 0, inTxn+len(owed)), owed: owed}
	bytes := bytesUsed
	for _, h := range hosts[:inTxn] {
		key := s.feedKey(h)
		p.ops = append(p.ops, clientv3.OpPut(key, ""))
		bytes += len(key) + opOverhead
	}
	for _, in := range owed {
		value, _ := json.Marshal(in.hosts) // a list of strings always encodes
		p.ops = append(p.ops, clientv3.OpPut(in.key, string(value)))
		bytes += len(in.key) + len(value) + opOverhead
	}
	if bytes > s.maxBytes {
		return feedPlan{}, fmt.Errorf("%w: %d bytes with the feeds of %d hosts, etcd allows %d per request", ErrTooLarge, bytes, len(hosts), s.maxBytes)
	}
	return p, nil
}

// splitBatches cuts a whole intent's hosts into the batches its split pays: the first written by the
// split's own transaction beside its delete and the later batches' intents, each later one in a
// transaction of its own beside its delete. As few batches as fit; ErrTooLarge past what one split
// can hold (about MaxTxnOps² hosts).
func (s *Store) splitBatches(hosts []string) ([][]string, error) {
	perBatch := s.maxOps - 1
	for k := 1; k < s.maxOps; k++ {
		first := s.maxOps - k // the split's transaction: a delete, k-1 intents, the first batch's feeds
		if first+(k-1)*perBatch < len(hosts) {
			continue
		}
		first = min(first, len(hosts))
		return append([][]string{hosts[:first]}, slices.Collect(slices.Chunk(hosts[first:], perBatch))...), nil
	}
	return nil, fmt.Errorf("%w: the feeds of %d hosts, more than one split of owed feeds holds at %d operations per transaction",
		ErrTooLarge, len(hosts), s.maxOps)
}

// payOwed pays the whole intents of the commit at rev. An intent it could not pay stays in etcd for
// a repair; the error (ErrFeedIncomplete) says so.
func (s *Store) payOwed(ctx context.Context, rev int64, owed []intent) error {
	var errs []error
	for _, in := range owed {
		in.rev = rev
		if _, err := s.payWhole(ctx, in); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		s.log.Error("feeds not written; a replica's repair writes them", "revision", rev, "err", err)
		return fmt.Errorf("%w: revision %d: %w", ErrFeedIncomplete, rev, err)
	}
	return nil
}

// payWhole splits whole intent in, writing its first batch, then pays the later batches all at once:
// etcd commits concurrent proposals together, so a thousand hosts hear of a change about as soon as
// the first hundred do. It returns the hosts it wrote feeds for (none when another payer split first;
// it pays the batches).
func (s *Store) payWhole(ctx context.Context, in intent) ([]string, error) {
	batches, err := s.splitBatches(in.hosts)
	if err != nil {
		return nil, err
	}
	later := make([]intent, len(batches)-1)
	ops := []clientv3.Op{clientv3.OpDelete(in.key)}
	for i, b := range batches[1:] {
		later[i] = intent{key: in.key + "/" + strconv.Itoa(i+1), hosts: b}
		value, _ := json.Marshal(b) // a list of strings always encodes
		ops = append(ops, clientv3.OpPut(later[i].key, string(value)))
	}
	for _, h := range batches[0] {
		ops = append(ops, clientv3.OpPut(s.feedKey(h), ""))
	}
	s.markPaying(later, true)
	defer s.markPaying(later, false)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(in.key), "=", in.rev)).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("etcdstore: split the feeds of %d hosts owed by %s: %w", len(in.hosts), in.key, err)
	}
	if !resp.Succeeded {
		return nil, nil
	}
	for i := range later {
		later[i].rev = resp.Header.Revision
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	paid := slices.Clone(batches[0])
	for _, b := range later {
		wg.Go(func() {
			ok, err := s.pay(ctx, b)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			} else if ok {
				paid = append(paid, b.hosts...)
			}
		})
	}
	wg.Wait()
	return paid, errors.Join(errs...)
}

// markPaying adds owed to, or removes them from, the intents this Store is paying itself, which its
// repairs leave alone: from before the transaction that writes them is sent, since the intents' watch
// may report them before its answer arrives, until they are paid or left for a repair.
func (s *Store) markPaying(owed []intent, paying bool) {
	s.payingMu.Lock()
	defer s.payingMu.Unlock()
	for _, in := range owed {
		if paying {
			s.paying[in.key] = true
		} else {
			delete(s.paying, in.key)
		}
	}
}

// isPaying says whether this Store is paying in itself. Keys suffice: one commit per base revision
// succeeds, so a key names one intent.
func (s *Store) isPaying(in intent) bool {
	s.payingMu.Lock()
	defer s.payingMu.Unlock()
	return s.paying[in.key]
}

// pay writes batch in's feeds and deletes it in one transaction, if it is still owed; false when
// another payer was first.
func (s *Store) pay(ctx context.Context, in intent) (bool, error) {
	ops := make([]clientv3.Op, 0, len(in.hosts)+1)
	for _, h := range in.hosts {
		ops = append(ops, clientv3.OpPut(s.feedKey(h), ""))
	}
	ops = append(ops, clientv3.OpDelete(in.key))
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(in.key), "=", in.rev)).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcdstore: feeds of %d hosts owed by %s: %w", len(in.hosts), in.key, err)
	}
	return resp.Succeeded, nil
}

// Repaired is one intent a repair paid: the feeds of Hosts, and the intent's revision (the commit's
// for the intent a commit wrote, the split's for a batch of one split before).
type Repaired struct {
	Revision uint64
	Hosts    []string
}

// repair pays in (a whole intent or a batch of a split one) for a writer that did not, and logs it.
func (s *Store) repair(ctx context.Context, in intent) (Repaired, bool, error) {
	var hosts []string
	var err error
	if s.isBatch(in) {
		var paid bool
		if paid, err = s.pay(ctx, in); paid {
			hosts = in.hosts
		}
	} else {
		hosts, err = s.payWhole(ctx, in)
	}
	if len(hosts) == 0 {
		return Repaired{}, false, err
	}
	s.log.Info("repaired the feeds of a change its writer did not finish", "intent", in.key, "hosts", len(hosts), "err", err)
	return Repaired{Revision: uint64(in.rev), Hosts: hosts}, true, err
}

// Repair pays every intent etcd holds that this Store is not paying itself: the feeds of changes whose
// writer stopped between its commit and its later feed transactions. Several replicas repairing at
// once write each feed once. It returns what this Store wrote.
func (s *Store) Repair(ctx context.Context) ([]Repaired, error) {
	owed, _, err := s.listOwed(ctx)
	if err != nil {
		return nil, err
	}
	var done []Repaired
	for _, in := range owed {
		if s.isPaying(in) {
			continue
		}
		r, paid, err := s.repair(ctx, in)
		if err != nil {
			return done, err
		}
		if paid {
			done = append(done, r)
		}
	}
	return done, nil
}

// listOwed reads every intent, with the revision read.
func (s *Store) listOwed(ctx context.Context) ([]intent, int64, error) {
	resp, err := s.cli.Get(ctx, s.feedqPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcdstore: read the feeds owed: %w", err)
	}
	var owed []intent
	for _, kv := range resp.Kvs {
		if in, ok := s.decodeIntent(kv); ok {
			owed = append(owed, in)
		}
	}
	return owed, resp.Header.Revision, nil
}

// decodeIntent reads one intent; one that does not decode or that no payment could settle (no
// writer of this package wrote it) is logged and left alone.
func (s *Store) decodeIntent(kv *mvccpb.KeyValue) (intent, bool) {
	in := intent{key: string(kv.Key), rev: kv.ModRevision}
	if err := json.Unmarshal(kv.Value, &in.hosts); err != nil {
		s.log.Error("an intent of owed feeds that does not decode, left alone", "key", in.key, "revision", in.rev, "err", err)
		return intent{}, false
	}
	if err := s.payable(in); err != nil {
		s.log.Error("an intent of owed feeds that no payment can settle, left alone", "key", in.key, "revision", in.rev, "err", err)
		return intent{}, false
	}
	return in, true
}

// payable checks that one payment settles in: etcd refuses a transaction that writes a key twice or
// holds more operations than it allows, and an intent whose payment always fails would fail every
// repair before it reached the intents after it. Writers name every host once, none empty.
func (s *Store) payable(in intent) error {
	seen := make(map[string]bool, len(in.hosts))
	for i, h := range in.hosts {
		switch {
		case h == "":
			return fmt.Errorf("host %d of %d has no name", i, len(in.hosts))
		case seen[h]:
			return fmt.Errorf("host %q named twice", h)
		}
		seen[h] = true
	}
	if s.isBatch(in) {
		if len(in.hosts) > s.maxOps-1 {
			return fmt.Errorf("%w: a batch of the feeds of %d hosts, one transaction of %d operations holds %d",
				ErrTooLarge, len(in.hosts), s.maxOps, s.maxOps-1)
		}
		return nil
	}
	_, err := s.splitBatches(in.hosts)
	return err
}

// RepairFeeds repairs until ctx ends: at once every intent found when it starts, then each intent
// written later once it has been there for grace (a live writer pays its own well within it), this
// Store's own only once it has stopped paying them. fn, if set, hears of every repair. It returns
// when the watch of the intents or a repair fails; started again, it lists afresh.
func (s *Store) RepairFeeds(ctx context.Context, grace time.Duration, fn func(Repaired)) error {
	owed, rev, err := s.listOwed(ctx)
	if err != nil {
		return err
	}
	type dueIntent struct {
		intent
		at time.Time
	}
	due := map[string]dueIntent{}
	now := time.Now()
	for _, in := range owed {
		due[in.key] = dueIntent{in, now}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := s.cli.Watch(wctx, s.feedqPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		var wake <-chan time.Time
		if len(due) > 0 {
			now := time.Now()
			next := now.Add(grace)
			for key, d := range due {
				switch {
				case now.Before(d.at):
				case s.isPaying(d.intent):
					d.at = now.Add(grace)
					due[key] = d
				default:
					r, paid, err := s.repair(ctx, d.intent)
					if err != nil {
						return err
					}
					delete(due, key)
					if paid && fn != nil {
						fn(r)
					}
					continue
				}
				if d.at.Before(next) {
					next = d.at
				}
			}
			if len(due) > 0 {
				wake = time.After(time.Until(next))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case resp, ok := <-wch:
			if !ok {
				if err := ctx.Err(); err != nil {
					return err
				}
				return fmt.Errorf("etcdstore: watch of %s closed", s.feedqPrefix())
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("%w: owed feeds from revision %d, not after %d", store.ErrCompacted, resp.CompactRevision, rev)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("etcdstore: watch %s: %w", s.feedqPrefix(), err)
			}
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(due, key)
				} else if in, ok := s.decodeIntent(ev.Kv); ok {
					due[key] = dueIntent{in, time.Now().Add(grace)}
				}
			}
		}
	}
}
