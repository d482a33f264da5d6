package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/store/nonce"
)

// The Nonce record of SPEC §4 shared by every replica: one key per used triple, created only if absent
// (a transaction comparing its CreateRevision with 0), so of two replicas handed the same call exactly
// one accepts it. A key lives on a lease that ends when its Timestamp leaves the replay window: after
// that the Timestamp check refuses the call before the Nonce is looked at, so etcd forgets it then.
//
// Leases are shared by triples whose expiry falls in the same nonceLeaseBucket, so a replica holds at
// most window/nonceLeaseBucket + 1 leases (121 for the two-hour window) however many calls it takes.
// Bounds: each replica first records the triple in its own nonce.Record (nonce.DefaultLimits unless
// WithNonceLimits: 2^18 live triples per SecretId, 2^20 in all), refusing with nonce.ErrFull beyond
// them, so etcd holds at most replicas × Total keys.
const (
	nonceLeaseBucket = 60 * time.Second
	// nonceTimeout bounds the round trip to etcd when the call's context has no earlier deadline.
	nonceTimeout = 5 * time.Second
)

// UseNonce implements api.NonceStore: nil when k was unused within window on every replica,
// nonce.ErrReplay when any replica saw it, nonce.ErrFull at this replica's bound, another error when
// etcd could not be asked (the call must then be refused: its triple may or may not be recorded).
func (s *Store) UseNonce(ctx context.Context, k nonce.Key, now time.Time, window time.Duration) error {
	if err := s.nonces.UseNonce(k, now, window); err != nil {
		return err
	}
	expiry := time.Unix(k.Timestamp, 0).Add(window + time.Second)
	if !expiry.After(now) {
		return nil // outside the window already: the Timestamp check refuses its replays
	}
	ctx, cancel := context.WithTimeout(ctx, nonceTimeout)
	defer cancel()
	key := fmt.Sprintf("%s/nonces/%016x/%d/%016x", s.prefix, k.Secret, k.Timestamp, k.Nonce)
	for attempt := 0; ; attempt++ {
		lease, err := s.nonceLease(ctx, expiry, now)
		if err != nil {
			return fmt.Errorf("etcdstore: nonce lease: %w", err)
		}
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, "", clientv3.WithLease(lease))).
			Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			s.dropLease(lease) // revoked or expired early: grant another once
			continue
		}
		if err != nil {
			return fmt.Errorf("etcdstore: record nonce: %w", err)
		}
		if !resp.Succeeded {
			return nonce.ErrReplay
		}
		return nil
	}
}

// nonceLease returns the lease of expiry's bucket, granting it on first use. The grant runs outside the
// lock, so calls whose bucket has its lease do not queue behind one waiting for etcd; of two grants
// racing for a bucket the first kept wins and the other is revoked.
func (s *Store) nonceLease(ctx context.Context, expiry, now time.Time) (clientv3.LeaseID, error) {
	bucketLen := int64(nonceLeaseBucket / time.Second)
	bucket := (expiry.Unix() + bucketLen - 1) / bucketLen * bucketLen
	s.nonceMu.Lock()
	for b := range s.leases {
		if b < now.Unix() {
			delete(s.leases, b)
		}
	}
	id, ok := s.leases[bucket]
	s.nonceMu.Unlock()
	if ok {
		return id, nil
	}
	g, err := s.cli.Grant(ctx, max(1, bucket-now.Unix()))
	if err != nil {
		return 0, err
	}
	s.nonceMu.Lock()
	kept, raced := s.leases[bucket]
	if !raced {
		s.leases[bucket] = g.ID
	}
	s.nonceMu.Unlock()
	if raced {
		_, _ = s.cli.Revoke(ctx, g.ID) // holds nothing; else it would only expire with its bucket
		return kept, nil
	}
	return g.ID, nil
}

func (s *Store) dropLease(id clientv3.LeaseID) {
	s.nonceMu.Lock()
	defer s.nonceMu.Unlock()
	for b, l := range s.leases {
		if l == id {
			delete(s.leases, b)
		}
	}
}
