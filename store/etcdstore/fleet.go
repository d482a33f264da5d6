package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/sgsim/sgsim/store"
)

// HostTTL is the lease of a host's registration, in seconds (SPEC §9): a host whose agent stops
// keeping it alive is down this long after.
const HostTTL = 5

// Host is one host's registration: P/hosts/{name} lives while its lease is kept alive.
type Host struct {
	Name string
	sess *concurrency.Session
}

// RegisterHost puts P/hosts/{name} under a new lease of HostTTL seconds kept alive in the background.
func (s *Store) RegisterHost(ctx context.Context, name string) (*Host, error) {
	if name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("etcdstore: host name %q must be non-empty and hold no /", name)
	}
	// Granted under ctx, so that an agent stopped while etcd is away does not wait for it.
	lease, err := s.cli.Grant(ctx, HostTTL)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: lease for host %s: %w", name, err)
	}
	// The session outlives ctx: keepalives stop at Close, which then still revokes the lease.
	sess, err := concurrency.NewSession(s.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(HostTTL),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("etcdstore: lease for host %s: %w", name, err)
	}
	if _, err := s.cli.Put(ctx, s.hostKey(name), "", clientv3.WithLease(sess.Lease())); err != nil {
		sess.Close()
		return nil, fmt.Errorf("etcdstore: register host %s: %w", name, err)
	}
	return &Host{Name: name, sess: sess}, nil
}

// Lost is closed when the lease can no longer be kept alive (expired, revoked, client closed): the
// host must register again.
func (h *Host) Lost() <-chan struct{} { return h.sess.Done() }

// Close revokes the lease: the host is down at once.
func (h *Host) Close() error { return h.sess.Close() }

// Ack records that host has revision rev in force: one key per host, overwritten, so an agent that
// applies several changes at once acknowledges once.
func (s *Store) Ack(ctx context.Context, host string, rev uint64) error {
	if _, err := s.cli.Put(ctx, s.ackKey(host), strconv.FormatUint(rev, 10)); err != nil {
		return fmt.Errorf("etcdstore: ack revision %d of host %s: %w", rev, host, err)
	}
	return nil
}

// WatchFeed calls fn with the revision of every change that affects host after from, in order: the one
// key P/feed/{host}, so a host hears of nothing that does not touch it.
func (s *Store) WatchFeed(ctx context.Context, host string, from uint64, fn func(rev uint64) error) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range s.cli.Watch(wctx, s.feedKey(host), clientv3.WithRev(int64(from)+1)) {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("%w: feed of %s from revision %d, not after %d", store.ErrCompacted, host, resp.CompactRevision, from)
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("etcdstore: watch feed of %s: %w", host, err)
		}
		for _, ev := range resp.Events {
			if err := fn(uint64(ev.Kv.ModRevision)); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("etcdstore: feed watch of %s closed", host)
}

// ErrNoSuchChange is ChangeHosts' error for a revision at which no change was committed.
var ErrNoSuchChange = errors.New("no change was committed at this revision")

// ChangeHosts returns the hosts the change committed at rev affected (GET /sgsim/v1/changes/{R}): the
// value the generation key had at rev. store.ErrCompacted once etcd no longer keeps rev;
// ErrNoSuchChange when no change was committed at rev.
func (s *Store) ChangeHosts(ctx context.Context, rev uint64) ([]string, error) {
	resp, err := s.cli.Get(ctx, s.genKey(), clientv3.WithRev(int64(rev)))
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return nil, fmt.Errorf("%w: change %d: %w", store.ErrCompacted, rev, err)
	case errors.Is(err, rpctypes.ErrFutureRev):
		return nil, fmt.Errorf("%w: etcdstore: revision %d is ahead of etcd's: %w", ErrNoSuchChange, rev, err)
	case err != nil:
		return nil, fmt.Errorf("etcdstore: change %d: %w", rev, err)
	case len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision != int64(rev):
		return nil, fmt.Errorf("%w: etcdstore: revision %d", ErrNoSuchChange, rev)
	}
	var g generation
	if err := json.Unmarshal(resp.Kvs[0].Value, &g); err != nil {
		return nil, fmt.Errorf("etcdstore: %s at revision %d: %w", s.genKey(), rev, err)
	}
	return g.Hosts, nil
}

// WaitEnforced waits until every host of hosts has acknowledged rev or is down (not registered: its
// lease expired or was never taken), or until ctx ends, and returns the hosts still pending and those
// down, each sorted. It reads the acks and registrations once, then follows both with watches from that
// read's revision, so no ack or expiry in between is missed. ctx ending is not an error: pending says
// who is late. The error is for etcd failing.
func (s *Store) WaitEnforced(ctx context.Context, rev uint64, hosts []string) (pending, down []string, err error) {
	return s.enforcement(ctx, rev, hosts, true)
}

// EnforcementOf returns, as WaitEnforced does but from one read without waiting, the hosts of hosts
// that have not acknowledged rev and those down (GET /sgsim/v1/changes/{R}).
func (s *Store) EnforcementOf(ctx context.Context, rev uint64, hosts []string) (pending, down []string, err error) {
	return s.enforcement(ctx, rev, hosts, false)
}

// enforcement is WaitEnforced, or with wait false EnforcementOf.
func (s *Store) enforcement(ctx context.Context, rev uint64, hosts []string, wait bool) (pending, down []string, err error) {
	want := map[string]bool{}
	for _, h := range hosts {
		want[h] = true
	}
	acked, alive := map[string]bool{}, map[string]bool{}
	result := func() (pending, down []string) {
		for h := range want {
			switch {
			case !alive[h]:
				down = append(down, h)
			case !acked[h]:
				pending = append(pending, h)
			}
		}
		slices.Sort(pending)
		slices.Sort(down)
		return pending, down
	}
	ackPrefix, hostPrefix := s.prefix+"/acks/", s.prefix+"/hosts/"
	onAck := func(kv *mvccpb.KeyValue, deleted bool) {
		h := strings.TrimPrefix(string(kv.Key), ackPrefix)
		v, err := strconv.ParseUint(string(kv.Value), 10, 64)
		acked[h] = !deleted && err == nil && v >= rev
	}
	onHost := func(kv *mvccpb.KeyValue, deleted bool) {
		alive[strings.TrimPrefix(string(kv.Key), hostPrefix)] = !deleted
	}
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(ackPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(hostPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("etcdstore: read acks: %w", err)
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		onAck(kv, false)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		onHost(kv, false)
	}
	if p, _ := result(); len(p) == 0 || !wait {
		pending, down = result()
		return pending, down, nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := clientv3.WithRev(resp.Header.Revision + 1)
	acks := s.cli.Watch(wctx, ackPrefix, clientv3.WithPrefix(), from)
	regs := s.cli.Watch(wctx, hostPrefix, clientv3.WithPrefix(), from, clientv3.WithKeysOnly())
	for {
		var wr clientv3.WatchResponse
		var ok bool
		on := onAck
		select {
		case <-ctx.Done():
			pending, down = result()
			return pending, down, nil
		case wr, ok = <-acks:
		case wr, ok = <-regs:
			on = onHost
		}
		if !ok || wr.Err() != nil {
			if ctx.Err() != nil {
				pending, down = result()
				return pending, down, nil
			}
			return nil, nil, fmt.Errorf("etcdstore: watch acks: %w", wr.Err())
		}
		for _, ev := range wr.Events {
			on(ev.Kv, ev.Type == clientv3.EventTypeDelete)
		}
		if p, _ := result(); len(p) == 0 {
			pending, down = result()
			return pending, down, nil
		}
	}
}
