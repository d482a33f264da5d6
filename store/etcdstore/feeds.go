package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/store"
)

// A commit owes the feeds that do not fit in its own transaction, and the transaction records the
// debt: for each later batch of feeds an intent P/feedq/{base}/{i} naming the batch's hosts. A batch
// is paid in one transaction that writes its feeds and deletes its intent, guarded on the intent's
// ModRevision (the commit's revision): by the writer right after its commit or, if the writer stopped
// first (killed, cut off from etcd), by any replica's repair. Whoever pays first pays the whole batch
// once; a later payer's guard fails and it writes nothing, so writer and repairs never fight.

// intent is one batch of feeds a commit owes.
type intent struct {
	key   string
	rev   int64 // the commit's revision, the intent's ModRevision
	hosts []string
}

// feedPlan is where a commit's feeds go.
type feedPlan struct {
	ops  []clientv3.Op // for the commit's transaction: the feeds that fit, then the intents
	owed []intent      // paid after the commit, each in a transaction of its own
}

func (s *Store) feedqPrefix() string { return s.prefix + "/feedq/" }
func (s *Store) intentKey(base int64, i int) string {
	return s.feedqPrefix() + strconv.FormatInt(base, 10) + "/" + strconv.Itoa(i)
}

// planFeeds splits hosts' feeds between a commit's transaction, which holds opsUsed operations of
// bytesUsed bytes without them, and intents paid after it: as many feeds in the transaction as leave
// room for the intents of the rest, so a change whose feeds fit writes no intent. base is the
// revision the commit is guarded on: one commit per base succeeds, so intents named by it are unique.
func (s *Store) planFeeds(hosts []string, opsUsed, bytesUsed int, base int64) (feedPlan, error) {
	room := s.maxOps - opsUsed
	inTxn := len(hosts)
	var later [][]string
	if inTxn > room {
		perBatch := s.maxOps - 1 // a batch's transaction also deletes its intent
		// k intents leave room-k feeds in the transaction and k*perBatch after it.
		k := (len(hosts) - room + perBatch - 2) / (perBatch - 1)
		if k > room {
			return feedPlan{}, fmt.Errorf("%w: %d operations leave no room for the intents owing the feeds of %d hosts, etcd allows %d",
				ErrTooLarge, opsUsed, len(hosts), s.maxOps)
		}
		inTxn = room - k
		later = slices.Collect(slices.Chunk(hosts[inTxn:], perBatch))
	}
	p := feedPlan{ops: make([]clientv3.Op, 0, inTxn+len(later))}
	bytes := bytesUsed
	for _, h := range hosts[:inTxn] {
		key := s.feedKey(h)
		p.ops = append(p.ops, clientv3.OpPut(key, ""))
		bytes += len(key) + opOverhead
	}
	for i, batch := range later {
		key := s.intentKey(base, i)
		value, _ := json.Marshal(batch) // a list of strings always encodes
		p.ops = append(p.ops, clientv3.OpPut(key, string(value)))
		p.owed = append(p.owed, intent{key: key, hosts: batch})
		bytes += len(key) + len(value) + opOverhead
	}
	if bytes > s.maxBytes {
		return feedPlan{}, fmt.Errorf("%w: %d bytes with the feeds of %d hosts, etcd allows %d per request", ErrTooLarge, bytes, len(hosts), s.maxBytes)
	}
	return p, nil
}

// payOwed pays the intents of the commit at rev, all at once: etcd commits concurrent proposals
// together, so a thousand hosts hear of a change about as soon as the first hundred do. An intent it
// could not pay stays in etcd for a repair; the error (ErrFeedIncomplete) says so.
func (s *Store) payOwed(ctx context.Context, rev int64, owed []intent) error {
	if len(owed) == 0 {
		return nil
	}
	for i := range owed {
		owed[i].rev = rev
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, in := range owed {
		wg.Go(func() {
			if _, err := s.pay(ctx, in); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.log.Error("feeds not written; a replica's repair writes them", "revision", rev, "intents", len(errs), "err", err)
		return fmt.Errorf("%w: revision %d: %w", ErrFeedIncomplete, rev, err)
	}
	return nil
}

// markPaying adds owed to, or removes them from, the intents this Store is paying itself, which its
// repairs leave alone: from before its commit's transaction is sent, since the intents' watch may
// report them before the commit's answer arrives, until the commit has paid what it could.
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

// pay writes in's feeds and deletes it in one transaction, if in is still owed; false when another
// payer was first.
func (s *Store) pay(ctx context.Context, in intent) (bool, error) {
	ops := make([]clientv3.Op, 0, len(in.hosts)+1)
	for _, h := range in.hosts {
		ops = append(ops, clientv3.OpPut(s.feedKey(h), ""))
	}
	ops = append(ops, clientv3.OpDelete(in.key))
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(in.key), "=", in.rev)).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcdstore: feeds of %d hosts owed by change %d (%s): %w", len(in.hosts), in.rev, in.key, err)
	}
	return resp.Succeeded, nil
}

// Repaired is one intent a repair paid: the feeds of Hosts, owed by the change committed at Revision.
type Repaired struct {
	Revision uint64
	Hosts    []string
}

// repair pays in for a writer that did not, and logs it.
func (s *Store) repair(ctx context.Context, in intent) (Repaired, bool, error) {
	paid, err := s.pay(ctx, in)
	if err != nil || !paid {
		return Repaired{}, false, err
	}
	s.log.Info("repaired the feeds of a change its writer did not finish", "revision", in.rev, "hosts", len(in.hosts), "intent", in.key)
	return Repaired{Revision: uint64(in.rev), Hosts: in.hosts}, true, nil
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

// decodeIntent reads one intent; one that does not decode (no writer of this package wrote it) is
// logged and left alone.
func (s *Store) decodeIntent(kv *mvccpb.KeyValue) (intent, bool) {
	in := intent{key: string(kv.Key), rev: kv.ModRevision}
	if err := json.Unmarshal(kv.Value, &in.hosts); err != nil {
		s.log.Error("an intent of owed feeds that does not decode, left alone", "key", in.key, "revision", in.rev, "err", err)
		return intent{}, false
	}
	return in, true
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
