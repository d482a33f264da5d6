package store

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/sgsim/sgsim/model"
)

// Kind is the kind of object a record holds.
type Kind byte

// The kinds of records; the byte is also the first byte of a record's key in bbolt.
const (
	KindAccount Kind = 'a'
	KindSG      Kind = 's'
	KindENI     Kind = 'e'
	// KindAdmin is the one record of the topology's admin tokens (SPEC §8), ID adminTokensID.
	KindAdmin Kind = 't'
)

// adminTokensID is the ID of the KindAdmin record.
const adminTokensID = "adminTokens"

func (k Kind) String() string {
	switch k {
	case KindAccount:
		return "account"
	case KindSG:
		return "security group"
	case KindENI:
		return "network interface"
	case KindAdmin:
		return "admin tokens"
	}
	return fmt.Sprintf("kind %q", byte(k))
}

// Key names one record: one account, SG or ENI.
type Key struct {
	Kind Kind
	ID   string
}

func (k Key) String() string { return k.Kind.String() + " " + k.ID }

// Record is one object as stored: its JSON (model.Account, model.SecurityGroup or
// model.NetworkInterface), the revision that last wrote it and its creation sequence, which keeps the
// state's listing order (the order of a topology file) across loads.
type Record struct {
	Key
	Seq      uint64
	Revision uint64
	Value    []byte
}

// Change is what one commit changed: the records it wrote and the keys it deleted, in key order.
type Change struct {
	Revision uint64
	Puts     []Record
	Deletes  []Key
}

// Apply returns s with c applied (s nil: an empty state): what an agent that follows a Watch keeps.
// Objects keep their places; new ones are appended in creation order.
func (c Change) Apply(s *model.State) (*model.State, error) {
	var t model.Topology
	if s != nil {
		t = s.Topology()
	}
	if rewritesAll(s, c) {
		// A commit that rewrote every object (its order changed): the puts alone are the state.
		next, err := stateOf(slices.Clone(c.Puts))
		if err != nil {
			return nil, fmt.Errorf("store: revision %d: %w", c.Revision, err)
		}
		return next, nil
	}
	puts := slices.Clone(c.Puts)
	slices.SortFunc(puts, func(a, b Record) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, r := range puts {
		if err := putRecord(&t, r); err != nil {
			return nil, fmt.Errorf("store: revision %d: %w", c.Revision, err)
		}
	}
	for _, k := range c.Deletes {
		switch k.Kind {
		case KindAccount:
			t.Accounts = slices.DeleteFunc(t.Accounts, func(a model.Account) bool { return a.AppID == k.ID })
		case KindSG:
			t.SecurityGroups = slices.DeleteFunc(t.SecurityGroups, func(g model.SecurityGroup) bool { return g.SgID == k.ID })
		case KindENI:
			t.NetworkInterfaces = slices.DeleteFunc(t.NetworkInterfaces, func(n model.NetworkInterface) bool { return n.NetworkInterfaceID == k.ID })
		case KindAdmin:
			if k.ID != adminTokensID {
				return nil, fmt.Errorf("store: revision %d: %s: the admin tokens' record is %s", c.Revision, k, adminTokensID)
			}
			t.AdminTokens = nil
		default:
			return nil, fmt.Errorf("store: revision %d: %s: unknown kind", c.Revision, k)
		}
	}
	next, err := model.RestoreState(t)
	if err != nil {
		return nil, fmt.Errorf("store: revision %d: %w", c.Revision, keyed(t, err))
	}
	return next, nil
}

// rewritesAll tells whether c puts every object s keeps.
func rewritesAll(s *model.State, c Change) bool {
	if s == nil {
		return true
	}
	put := make(map[Key]bool, len(c.Puts))
	for _, r := range c.Puts {
		put[r.Key] = true
	}
	for _, d := range c.Deletes {
		put[d] = true
	}
	for _, l := range []struct {
		kind Kind
		ids  []string
	}{{KindAccount, s.AppIDs()}, {KindSG, s.SGIDs()}, {KindENI, s.ENIIDs()}} {
		for _, id := range l.ids {
			if !put[Key{l.kind, id}] {
				return false
			}
		}
	}
	return len(s.AdminTokens()) == 0 || put[Key{KindAdmin, adminTokensID}]
}

// putRecord replaces or appends r's object in t.
func putRecord(t *model.Topology, r Record) error {
	var err error
	switch r.Kind {
	case KindAccount:
		t.Accounts, err = upsert(t.Accounts, r, func(a model.Account) string { return a.AppID })
	case KindSG:
		t.SecurityGroups, err = upsert(t.SecurityGroups, r, func(g model.SecurityGroup) string { return g.SgID })
	case KindENI:
		t.NetworkInterfaces, err = upsert(t.NetworkInterfaces, r, func(n model.NetworkInterface) string { return n.NetworkInterfaceID })
	case KindAdmin:
		// Decoded into a list of its own: t's may be a live State's (State.Topology shares it), which
		// decoding into would overwrite.
		var tokens []string
		if r.ID != adminTokensID {
			err = fmt.Errorf("%s: the admin tokens' record is %s", r.Key, adminTokensID)
		} else if err = json.Unmarshal(r.Value, &tokens); err != nil {
			err = fmt.Errorf("%s: %w", r.Key, err)
		} else {
			t.AdminTokens = tokens
		}
	default:
		err = fmt.Errorf("%s: unknown kind", r.Key)
	}
	return err
}

func upsert[T any](list []T, r Record, id func(T) string) ([]T, error) {
	var v T
	if err := json.Unmarshal(r.Value, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", r.Key, err)
	}
	if got := id(v); got != r.ID {
		return nil, fmt.Errorf("%s: the record holds %q", r.Key, got)
	}
	if i := slices.IndexFunc(list, func(x T) bool { return id(x) == r.ID }); i >= 0 {
		list[i] = v
		return list, nil
	}
	return append(list, v), nil
}

// stateOf builds a State from the records of every object (any order).
func stateOf(records []Record) (*model.State, error) {
	var t model.Topology
	slices.SortFunc(records, func(a, b Record) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, r := range records {
		if err := putRecord(&t, r); err != nil {
			return nil, err
		}
	}
	s, err := model.RestoreState(t)
	if err != nil {
		return nil, keyed(t, err)
	}
	return s, nil
}

// keyed prefixes err, model.NewState's refusal of t, with the key of the record holding the object
// it is about: the model names the object's place in t (securityGroups[3]), which names no record.
func keyed(t model.Topology, err error) error {
	var me *model.Error
	if !errors.As(err, &me) {
		return err
	}
	list, rest, _ := strings.Cut(me.Path, "[")
	n, _, _ := strings.Cut(rest, "]")
	i, convErr := strconv.Atoi(n)
	var k Key
	switch {
	case convErr != nil || i < 0:
		return err
	case list == "accounts" && i < len(t.Accounts):
		k = Key{KindAccount, t.Accounts[i].AppID}
	case list == "securityGroups" && i < len(t.SecurityGroups):
		k = Key{KindSG, t.SecurityGroups[i].SgID}
	case list == "networkInterfaces" && i < len(t.NetworkInterfaces):
		k = Key{KindENI, t.NetworkInterfaces[i].NetworkInterfaceID}
	case list == "adminTokens":
		k = Key{KindAdmin, adminTokensID}
	default:
		return err
	}
	return fmt.Errorf("%s: %w", k, err)
}

// RecordSet follows the last committed state and turns the next one into the records that differ,
// for this package's stores and the fleet's (store/etcdstore). It compares objects by pointer: a State
// edited from another shares every object it did not change (model.State.Edit), so a one-rule change
// encodes one SG whatever the size of the rest. Creation sequences keep the listing order across loads.
type RecordSet struct {
	last    *model.State
	seq     map[Key]uint64 // creation sequence of every object of last
	nextSeq uint64
	buf     []byte // reused by SG encodings; Value slices never alias it
}

// Reset makes s (whose records carry the given sequences) the last committed state; the next new
// object's sequence is at least nextSeq.
func (rs *RecordSet) Reset(s *model.State, records []Record, nextSeq uint64) {
	rs.last, rs.seq, rs.nextSeq = s, make(map[Key]uint64, len(records)), nextSeq
	for _, r := range records {
		rs.seq[r.Key] = r.Seq
		rs.nextSeq = max(rs.nextSeq, r.Seq+1)
	}
}

// Last returns the last committed state (nil before the first).
func (rs *RecordSet) Last() *model.State { return rs.last }

// RecordDiff is what committing a state changes: the records it writes (sorted by key) and the keys it
// deletes (sorted).
type RecordDiff struct {
	Puts    []Record
	Dels    []Key
	Rewrite bool // every object written afresh, with new sequences
	NextSeq uint64
}

// Diff returns what committing next at revision rev writes (rev 0: the store assigns revisions);
// Advance applies it once durable.
func (rs *RecordSet) Diff(next *model.State, rev uint64) (RecordDiff, error) {
	d := RecordDiff{NextSeq: rs.nextSeq}
	// Objects present before must keep their relative order, or the listing order would change on
	// reload: when they do not (a state not derived from the last), every object is written afresh.
	d.Rewrite = rs.last == nil || !ordered(rs, next)
	visit := func(k Key, changed bool, encode func() ([]byte, error)) error {
		s, known := rs.seq[k]
		if !known || d.Rewrite {
			s, d.NextSeq, changed = d.NextSeq, d.NextSeq+1, true
		}
		if !changed {
			return nil
		}
		v, err := encode()
		if err != nil {
			return err
		}
		d.Puts = append(d.Puts, Record{Key: k, Seq: s, Revision: rev, Value: v})
		return nil
	}
	last := rs.last
	for _, id := range next.AppIDs() {
		a, _ := next.Account(id)
		changed := changedSince(last, (*model.State).Account, id, a)
		if err := visit(Key{KindAccount, id}, changed, func() ([]byte, error) { return json.Marshal(a) }); err != nil {
			return RecordDiff{}, fmt.Errorf("encode account %s: %w", id, err)
		}
	}
	for _, id := range next.SGIDs() {
		g, _ := next.SG(id)
		changed := changedSince(last, (*model.State).SG, id, g)
		if err := visit(Key{KindSG, id}, changed, func() ([]byte, error) {
			b, err := appendSG(rs.buf, g)
			rs.buf = b
			return slices.Clone(b), err
		}); err != nil {
			return RecordDiff{}, err
		}
	}
	for _, id := range next.ENIIDs() {
		n, _ := next.ENI(id)
		changed := changedSince(last, (*model.State).ENI, id, n)
		if err := visit(Key{KindENI, id}, changed, func() ([]byte, error) { return json.Marshal(n) }); err != nil {
			return RecordDiff{}, fmt.Errorf("encode network interface %s: %w", id, err)
		}
	}
	if tokens := next.AdminTokens(); len(tokens) > 0 {
		changed := last == nil || !slices.Equal(last.AdminTokens(), tokens)
		if err := visit(Key{KindAdmin, adminTokensID}, changed, func() ([]byte, error) { return json.Marshal(tokens) }); err != nil {
			return RecordDiff{}, fmt.Errorf("encode admin tokens: %w", err)
		}
	}
	for k := range rs.seq {
		if !has(next, k) {
			d.Dels = append(d.Dels, k)
		}
	}
	slices.SortFunc(d.Puts, func(a, b Record) int { return CompareKeys(a.Key, b.Key) })
	slices.SortFunc(d.Dels, CompareKeys)
	return d, nil
}

// Advance makes next, committed with d, the last state.
func (rs *RecordSet) Advance(next *model.State, d RecordDiff) {
	if d.Rewrite || rs.seq == nil {
		rs.seq = make(map[Key]uint64, len(d.Puts))
	}
	for _, r := range d.Puts {
		rs.seq[r.Key] = r.Seq
	}
	for _, k := range d.Dels {
		delete(rs.seq, k)
	}
	rs.last, rs.nextSeq = next, d.NextSeq
}

func has(s *model.State, k Key) bool {
	var ok bool
	switch k.Kind {
	case KindAccount:
		_, ok = s.Account(k.ID)
	case KindSG:
		_, ok = s.SG(k.ID)
	case KindENI:
		_, ok = s.ENI(k.ID)
	case KindAdmin:
		ok = len(s.AdminTokens()) > 0
	}
	return ok
}

// ordered tells whether the objects next shares with the last state appear in the same relative order.
func ordered(rs *RecordSet, next *model.State) bool {
	for _, l := range []struct {
		kind Kind
		ids  []string
	}{{KindAccount, next.AppIDs()}, {KindSG, next.SGIDs()}, {KindENI, next.ENIIDs()}} {
		var prev uint64
		for _, id := range l.ids {
			if s, ok := rs.seq[Key{l.kind, id}]; ok {
				if s < prev {
					return false
				}
				prev = s
			}
		}
	}
	return true
}

// CompareKeys orders keys by kind, then ID: the order of a Change's puts and deletes.
func CompareKeys(a, b Key) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.ID, b.ID))
}

// changedSince tells whether the object id, cur in the next state, is missing from last or another
// object there (states share unchanged objects, so identity is enough); without a last state, all is new.
func changedSince[T comparable](last *model.State, lookup func(*model.State, string) (T, bool), id string, cur T) bool {
	if last == nil {
		return true
	}
	old, ok := lookup(last, id)
	return !ok || old != cur
}
