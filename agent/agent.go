// Package agent is the host agent of fleet mode (SPEC §9): it registers its host under a lease, follows
// the one feed key of its host, re-reads its share of the state at one revision, puts it in force on
// its dataplanes through a control.Applier, and only then acknowledges that revision. After a restart,
// a lost etcd or a compacted watch it does the same: resync at one revision, enforce, acknowledge;
// whatever the dataplanes hold (pinned tables) stays in force meanwhile.
package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/etcdstore"
)

// Config is what an agent runs with.
type Config struct {
	Client     *clientv3.Client
	Prefix     string // the fleet's etcd prefix, e.g. "/sgsim"
	Host       string
	Dataplanes []control.Dataplane // enforcing dataplanes besides the built-in Go engine
	Logger     *slog.Logger        // nil = slog.Default()
	// NoEngine keeps no built-in Go engine (an agent that only enforces with BPF).
	NoEngine bool
	// OnApplied, if set, runs after each share is in force on the dataplanes and before it is
	// acknowledged (the host's interfaces are attached there); its error fails the resync, retried.
	OnApplied func(ctx context.Context, v *control.View) error
}

// Agent is one host's agent; Run does the work.
type Agent struct {
	cfg Config
	st  *etcdstore.Store
	log *slog.Logger

	mu      sync.Mutex // guards applier and rev for readers; Run is the only writer
	applier *control.Applier
	rev     uint64

	feedEvents, resyncs atomic.Uint64
	// failing is why the last registration, resync or follow failed; nil once a resync succeeds (Err).
	failing atomic.Pointer[error]

	// Run's alone: the last share read, so a resync fetches and decodes only what changed, and the
	// share built from it, so a resync that changes only objects' contents edits it.
	shareCache etcdstore.ShareCache
	built      *builtShare
	decoded    map[store.Key]decodedRecord
}

// builtShare is what the share last built came from.
type builtShare struct {
	state    *model.State
	revision map[store.Key]uint64          // of every record it holds
	members  map[string][]etcdstore.Member // the member lists read
	used     map[string]bool               // the SGs of the host's ENIs (an edit keeps them)
}

// decodedRecord is a record's object as last decoded, valid while the record's revision is the same.
type decodedRecord struct {
	revision uint64
	object   any // model.Account, model.SecurityGroup or model.NetworkInterface
}

// Stats counts what an agent did since it started.
type Stats struct {
	FeedEvents uint64 // changes delivered to this host by etcd
	Resyncs    uint64 // shares read and put in force (coalesced changes count once)
}

// Stats returns the agent's counters.
func (a *Agent) Stats() Stats {
	return Stats{FeedEvents: a.feedEvents.Load(), Resyncs: a.resyncs.Load()}
}

// New checks cfg and connects; Run starts the agent.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Host == "" {
		return nil, errors.New("agent: no host name")
	}
	if !model.ValidHost(cfg.Host) {
		return nil, fmt.Errorf("agent: host %q: not a host name (1-253 bytes, no '/' or control characters, not . or ..), as an ENI's host must be", cfg.Host)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	st, err := etcdstore.Open(ctx, cfg.Client, cfg.Prefix, etcdstore.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", cfg.Host, err)
	}
	return &Agent{cfg: cfg, st: st, log: log.With("host", cfg.Host)}, nil
}

// Run is New then Agent.Run.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// Applier returns the applier in force (nil before the first resync): its View is this host's share.
func (a *Agent) Applier() *control.Applier {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applier
}

// Revision returns the revision in force (0 before the first resync).
func (a *Agent) Revision() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rev
}

// errLeaseLost ends a follow when the host's registration is gone.
var errLeaseLost = errors.New("host lease lost")

// Run registers the host and keeps its share in force until ctx ends; a clean stop revokes the lease,
// so the host is down at once instead of pending for HostTTL. Failures (etcd unreachable, a compacted
// feed, a lost lease) are retried with a backoff and end in a resync.
func (a *Agent) Run(ctx context.Context) error {
	var host *etcdstore.Host
	defer func() {
		if host != nil {
			host.Close()
		}
	}()
	backoff := 50 * time.Millisecond
	for {
		var err error
		if host == nil {
			host, err = a.st.RegisterHost(ctx, a.cfg.Host)
		}
		if err == nil {
			var rev uint64
			if rev, err = a.resync(ctx, 0); err == nil {
				backoff = 50 * time.Millisecond
				err = a.follow(ctx, rev, host)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errLeaseLost) {
			host.Abandon()
			host = nil
		}
		a.failing.Store(&err)
		a.log.Warn("resyncing", "err", err, "after", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// follow watches the host's feed from rev and resyncs for every change that affects the host. Changes
// arriving while a resync runs are coalesced into the next one, which reads the latest revision: one
// ack per batch, never a stale table.
func (a *Agent) follow(ctx context.Context, rev uint64, host *etcdstore.Host) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := make(chan struct{}, 1)
	var latest atomic.Uint64 // the last feed event's revision: the resync reads at least that
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- a.st.WatchFeed(wctx, a.cfg.Host, rev, func(feedRev uint64) error {
			a.feedEvents.Add(1)
			latest.Store(feedRev)
			select {
			case changed <- struct{}{}:
			default: // a resync is already due; it reads the latest revision
			}
			return nil
		})
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-host.Lost():
			return errLeaseLost
		case err := <-watchErr:
			return err
		case <-changed:
			if _, err := a.resync(ctx, latest.Load()); err != nil {
				return err
			}
		}
	}
}

// resync reads this host's share of the latest state at one revision, at least atLeast (only the
// share: see etcdstore.Store.ReadShare), puts it in force and acknowledges the revision.
func (a *Agent) resync(ctx context.Context, atLeast uint64) (uint64, error) {
	a.resyncs.Add(1)
	if atLeast == 0 {
		// Starting, or the feed's watch failed (compacted, etcd lost, lease lost): nothing tells
		// that etcd's history is the one the cache was read in (a restore from a snapshot reuses
		// revisions), so the share is read afresh.
		a.shareCache = etcdstore.ShareCache{}
	}
	sh, err := a.st.ReadShare(ctx, a.cfg.Host, atLeast, &a.shareCache)
	if err != nil {
		return 0, err
	}
	rev := sh.Revision
	if sh.Afresh { // another etcd history may reuse the revisions the decoded objects are known by
		a.decoded, a.built = nil, nil
	}
	share, err := a.shareFromRead(sh)
	if err != nil {
		return 0, fmt.Errorf("agent %s: share at revision %d: %w", a.cfg.Host, rev, err)
	}
	a.mu.Lock()
	ap, cur := a.applier, a.rev
	a.mu.Unlock()
	switch {
	case ap == nil:
		ap = control.NewApplier(share, rev, control.ApplierOptions{Logger: a.log, NoEngine: a.cfg.NoEngine, Host: a.cfg.Host})
		for _, dp := range a.cfg.Dataplanes {
			if err := ap.AddDataplane(ctx, dp); err != nil {
				return 0, fmt.Errorf("agent %s: %w", a.cfg.Host, err)
			}
		}
	case rev != cur:
		if err := ap.Apply(ctx, share, rev); err != nil {
			// Not acknowledged: a dataplane did not take it. The applier keeps that dataplane behind,
			// and the next resync's Apply gives it every table and every removal it missed (the
			// failed change's included) before anything is acknowledged.
			return 0, fmt.Errorf("agent %s: apply revision %d: %w", a.cfg.Host, rev, err)
		}
	}
	a.mu.Lock()
	a.applier, a.rev = ap, rev
	a.mu.Unlock()
	if a.cfg.OnApplied != nil {
		if err := a.cfg.OnApplied(ctx, ap.View()); err != nil {
			return 0, fmt.Errorf("agent %s: revision %d: %w", a.cfg.Host, rev, err)
		}
	}
	if err := a.st.Ack(ctx, a.cfg.Host, rev); err != nil {
		return 0, err
	}
	a.failing.Store(nil)
	return rev, nil
}

// Err returns why the agent's last registration, resync or feed watch failed (etcd unreachable, a
// lost lease, a dataplane refusing a change), nil once a resync has succeeded since. The tables in
// force stay meanwhile (pinned ones in the kernel), but changes do not reach this host.
func (a *Agent) Err() error {
	if err := a.failing.Load(); err != nil {
		return *err
	}
	return nil
}

// Share returns what host's tables need of s: the ENIs whose Host is host with their SGs in full; for
// the sgId rules of those SGs, the SGs they name (rules dropped unless the host uses them too); and the
// ENIs of other hosts that are members of a named SG, as only what those rules take of them (ID,
// account, addresses and those memberships, sorted, after the host's own ENIs, sorted by ID). A nil s is
// the empty state.
func Share(s *model.State, host string) (*model.State, error) {
	if s == nil {
		return model.NewState(model.Topology{})
	}
	full := s.Topology()
	var local, others []model.NetworkInterface
	for _, n := range full.NetworkInterfaces {
		if n.Host == host {
			local = append(local, n)
		} else {
			others = append(others, model.NetworkInterface{NetworkInterfaceID: n.NetworkInterfaceID, AppID: n.AppID,
				PrivateIPAddresses: n.PrivateIPAddresses, SgIDs: n.SgIDs})
		}
	}
	return shareOf(full.Accounts, full.SecurityGroups, local, others, host)
}

// shareOf builds a share from accounts, SGs (at least the host's and those their rules name), the host's
// ENIs, and other ENIs (at least the members of the named SGs), each list in creation order.
func shareOf(accounts []model.Account, sgs []model.SecurityGroup, local, others []model.NetworkInterface, host string) (*model.State, error) {
	byID := map[string]*model.SecurityGroup{}
	for i := range sgs {
		byID[sgs[i].SgID] = &sgs[i]
	}
	used, named := map[string]bool{}, map[string]bool{}
	for _, n := range local {
		for _, sg := range n.SgIDs {
			used[sg] = true
		}
	}
	for sg := range used {
		g, ok := byID[sg]
		if !ok {
			return nil, fmt.Errorf("security group %s of host %s is missing", sg, host)
		}
		for _, r := range slices.Concat(g.Ingress, g.Egress) {
			if r.SgID != "" {
				named[r.SgID] = true
			}
		}
	}
	t := model.Topology{Accounts: accounts, NetworkInterfaces: local}
	for _, g := range sgs {
		switch {
		case used[g.SgID]:
			t.SecurityGroups = append(t.SecurityGroups, g)
		case named[g.SgID]:
			g.Ingress, g.Egress = nil, nil
			t.SecurityGroups = append(t.SecurityGroups, g)
		}
	}
	var members []model.NetworkInterface
	for _, n := range others {
		n.SgIDs = slices.Sorted(slices.Values(slices.DeleteFunc(slices.Clone(n.SgIDs), func(sg string) bool { return !named[sg] })))
		if len(n.SgIDs) > 0 {
			members = append(members, n)
		}
	}
	slices.SortFunc(members, func(a, b model.NetworkInterface) int { return cmp.Compare(a.NetworkInterfaceID, b.NetworkInterfaceID) })
	t.NetworkInterfaces = append(t.NetworkInterfaces, members...)
	return model.RestoreState(t)
}

// shareFromRead is the share etcdstore.Store.ReadShare read. When it holds the same objects as the
// share built last, only their contents changed (rules, addresses), it is an edit of that share: the
// objects that did not change stay the same values, so the applier's comparisons of the two are
// pointer comparisons and a fleet-wide member list is not rebuilt for a change of one rule. Otherwise
// it is built afresh, decoding again only the records that changed since the last resync.
func (a *Agent) shareFromRead(sh etcdstore.Share) (*model.State, error) {
	if s, ok := a.editShare(sh); ok {
		return s, nil
	}
	s, err := a.buildShare(sh)
	if err != nil {
		a.built = nil
		return nil, err
	}
	revs := make(map[store.Key]uint64, len(sh.Records))
	for _, r := range sh.Records {
		revs[r.Key] = r.Revision
	}
	used := map[string]bool{}
	for _, id := range s.ENIIDs() {
		if n, _ := s.ENI(id); n.Host == a.cfg.Host {
			markAll(used, n.SgIDs)
		}
	}
	a.built = &builtShare{state: s, revision: revs, members: sh.Members, used: used}
	return s, nil
}

// editShare is sh as an edit of the share built last; false when it holds other objects, or other
// members, or a host's ENI changed its SGs (and with them what its SGs' rules name), or an account
// changed, or the edit is refused (the full build reports why).
func (a *Agent) editShare(sh etcdstore.Share) (*model.State, bool) {
	last := a.built
	if last == nil || len(sh.Records) != len(last.revision) || len(sh.Members) != len(last.members) {
		return nil, false
	}
	prev, used := last.state, last.used
	b := prev.Edit()
	edited := false
	for _, r := range sh.Records {
		rev, ok := last.revision[r.Key]
		if !ok {
			return nil, false
		}
		if rev == r.Revision {
			continue
		}
		obj, err := decodeObject(r)
		if err != nil {
			return nil, false
		}
		switch o := obj.(type) {
		case model.SecurityGroup:
			if !used[o.SgID] {
				o.Ingress, o.Egress = nil, nil // named only: shareOf keeps no rules
			}
			err = b.PutSG(o)
		case model.NetworkInterface:
			if n, ok := prev.ENI(o.NetworkInterfaceID); !ok || n.Host != a.cfg.Host || !slices.Equal(n.SgIDs, o.SgIDs) || o.Host != a.cfg.Host {
				return nil, false
			}
			err = b.RestoreENI(o) // from the store, as the share it edits
		default:
			return nil, false
		}
		if err != nil {
			return nil, false
		}
		a.decoded[r.Key] = decodedRecord{revision: r.Revision, object: obj}
		edited = true
	}
	for sg, list := range sh.Members {
		old, ok := last.members[sg]
		if !ok || len(old) != len(list) {
			return nil, false
		}
		if len(list) == 0 || &old[0] == &list[0] { // the same list: etcdstore shares unchanged ones
			continue
		}
		for i, m := range list {
			if m.ID != old[i].ID {
				return nil, false
			}
			n, ok := prev.ENI(m.ID)
			if !ok {
				return nil, false
			}
			if n.Host == a.cfg.Host || (m.AppID == n.AppID && slices.Equal(m.IPs, n.PrivateIPAddresses)) {
				continue // a host's own ENI comes from its record
			}
			nn := *n
			nn.AppID, nn.PrivateIPAddresses = m.AppID, m.IPs
			if err := b.RestoreENI(nn); err != nil {
				return nil, false
			}
			edited = true
		}
	}
	if !edited {
		return prev, true
	}
	revs := make(map[store.Key]uint64, len(sh.Records))
	for _, r := range sh.Records {
		revs[r.Key] = r.Revision
	}
	next := b.State()
	a.built = &builtShare{state: next, revision: revs, members: sh.Members, used: used}
	return next, true
}

func markAll(set map[string]bool, ids []string) {
	for _, id := range ids {
		set[id] = true
	}
}

// buildShare builds the share sh holds from its records; objects whose records did not change since
// the last resync are not decoded again.
func (a *Agent) buildShare(sh etcdstore.Share) (*model.State, error) {
	recs := slices.Clone(sh.Records)
	slices.SortFunc(recs, func(x, y store.Record) int { return cmp.Compare(x.Seq, y.Seq) })
	decoded := make(map[store.Key]decodedRecord, len(recs))
	var accounts []model.Account
	var sgs []model.SecurityGroup
	var local []model.NetworkInterface
	isLocal := map[string]bool{}
	for _, r := range recs {
		d, ok := a.decoded[r.Key]
		if !ok || d.revision != r.Revision {
			obj, err := decodeObject(r)
			if err != nil {
				return nil, err
			}
			d = decodedRecord{revision: r.Revision, object: obj}
		}
		decoded[r.Key] = d
		switch o := d.object.(type) {
		case model.Account:
			accounts = append(accounts, o)
		case model.SecurityGroup:
			sgs = append(sgs, o)
		case model.NetworkInterface:
			local = append(local, o)
			isLocal[o.NetworkInterfaceID] = true
		}
	}
	a.decoded = decoded
	others := map[string]*model.NetworkInterface{}
	for _, sg := range sortedKeys(sh.Members) {
		for _, m := range sh.Members[sg] {
			if isLocal[m.ID] {
				continue
			}
			n, ok := others[m.ID]
			if !ok {
				n = &model.NetworkInterface{NetworkInterfaceID: m.ID, AppID: m.AppID, PrivateIPAddresses: m.IPs}
				others[m.ID] = n
			}
			n.SgIDs = append(n.SgIDs, sg)
		}
	}
	list := make([]model.NetworkInterface, 0, len(others))
	for _, n := range others {
		list = append(list, *n)
	}
	return shareOf(accounts, sgs, local, list, a.cfg.Host)
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// decodeObject decodes a record's object, which must hold the record's ID (as the store's Load
// requires). The model copies what it keeps (NewState), so one decoded value can build many shares.
func decodeObject(r store.Record) (any, error) {
	var err error
	var obj any
	var id string
	switch r.Kind {
	case store.KindAccount:
		var v model.Account
		err = json.Unmarshal(r.Value, &v)
		obj, id = v, v.AppID
	case store.KindSG:
		var v model.SecurityGroup
		err = json.Unmarshal(r.Value, &v)
		obj, id = v, v.SgID
	case store.KindENI:
		var v model.NetworkInterface
		err = json.Unmarshal(r.Value, &v)
		obj, id = v, v.NetworkInterfaceID
	default:
		err = fmt.Errorf("not an object of a share")
	}
	if err == nil && id != r.ID {
		err = fmt.Errorf("the record holds %q", id)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.Key, err)
	}
	return obj, nil
}

// AffectedHosts returns, sorted, the hosts whose agents must hear of the change from old to next:
// the hosts of every ENI compiler.Affected names and of every ENI whose stored object changed at all,
// in either state: its tables may be the same, but it is detached there and attached here (a new host
// or host interface), or the agent serves the object (GET /sgsim/v1/enis: a new MAC). What a replica
// passes to etcdstore.Store.CommitAffecting.
func AffectedHosts(old, next *model.State) []string {
	set := map[string]bool{}
	ids := compiler.Affected(old, next)
	if old != nil {
		for _, id := range next.ENIIDs() {
			n, _ := next.ENI(id)
			if o, ok := old.ENI(id); ok && o != n && !o.Equal(n) {
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		for _, s := range []*model.State{old, next} {
			if s == nil {
				continue
			}
			if n, ok := s.ENI(id); ok && n.Host != "" {
				set[n.Host] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for h := range set {
		out = append(out, h)
	}
	slices.Sort(out)
	return out
}
