package etcdstore

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// adminKey is the one record of the topology's admin tokens, as the bbolt store names it.
var adminKey = store.Key{Kind: store.KindAdmin, ID: "adminTokens"}

// records follows the last state committed or loaded through a Store and turns the next one into the
// record puts and deletes that differ, with the derived indexes (SG members, ENIs by host) that change.
// It mirrors the bbolt store's record set (store/records.go, unexported there): objects are compared by
// pointer, so a state edited from another writes only what the edit touched, and creation sequences
// keep the listing order across loads.
type records struct {
	last    *model.State
	seq     map[store.Key]uint64
	nextSeq uint64
	members map[string][]Member // SG → its members of last, by ID
	hosts   map[string][]string // host → sorted ENI IDs of last ("" not indexed)
}

// Member is one entry of an SG's member index: what another host's tables need of a member ENI (its
// addresses for sgId rules), so an agent reads one key per SG it names instead of every member's record.
type Member struct {
	ID    string   `json:"id"`
	AppID string   `json:"appId"`
	IPs   []string `json:"ips"`
}

func equalMember(a, b Member) bool {
	return a.ID == b.ID && a.AppID == b.AppID && slices.Equal(a.IPs, b.IPs)
}

func (rs *records) reset(s *model.State, recs []store.Record, nextSeq uint64) {
	rs.last, rs.seq, rs.nextSeq = s, make(map[store.Key]uint64, len(recs)), nextSeq
	for _, r := range recs {
		rs.seq[r.Key] = r.Seq
		rs.nextSeq = max(rs.nextSeq, r.Seq+1)
	}
	rs.members, rs.hosts = indexes(s)
}

// indexes derives the member and host indexes of s.
func indexes(s *model.State) (members map[string][]Member, hosts map[string][]string) {
	members, hosts = map[string][]Member{}, map[string][]string{}
	if s == nil {
		return members, hosts
	}
	for _, id := range s.ENIIDs() {
		n, _ := s.ENI(id)
		for _, sg := range n.SgIDs {
			members[sg] = append(members[sg], Member{ID: id, AppID: n.AppID, IPs: n.PrivateIPAddresses})
		}
		if n.Host != "" {
			hosts[n.Host] = append(hosts[n.Host], id)
		}
	}
	for _, v := range members {
		slices.SortFunc(v, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	}
	for _, v := range hosts {
		slices.Sort(v)
	}
	return members, hosts
}

// delta is what committing a state changes.
type delta struct {
	puts    []store.Record
	dels    []store.Key
	members map[string][]Member // SG → new member list; nil list: delete the index key
	hosts   map[string][]string // host → new ENI list; nil list: delete the index key
	nextSeq uint64
	rewrite bool // every object written afresh, with new sequences
	// next indexes, installed by advance
	allMembers map[string][]Member
	allHosts   map[string][]string
}

func (rs *records) diff(next *model.State) (delta, error) {
	d := delta{nextSeq: rs.nextSeq}
	// Objects present before must keep their relative order or the listing order would change on
	// reload: when they do not (a state not derived from the last), every object is written afresh.
	rewrite := rs.last == nil || !ordered(rs, next)
	d.rewrite = rewrite
	visit := func(k store.Key, changed bool, v any) error {
		s, known := rs.seq[k]
		if !known || rewrite {
			s, d.nextSeq, changed = d.nextSeq, d.nextSeq+1, true
		}
		if !changed {
			return nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s: %w", k, err)
		}
		d.puts = append(d.puts, store.Record{Key: k, Seq: s, Value: b})
		return nil
	}
	last := rs.last
	for _, id := range next.AppIDs() {
		a, _ := next.Account(id)
		changed := true
		if last != nil {
			o, ok := last.Account(id)
			changed = !ok || o != a
		}
		if err := visit(store.Key{Kind: store.KindAccount, ID: id}, changed, a); err != nil {
			return delta{}, err
		}
	}
	for _, id := range next.SGIDs() {
		g, _ := next.SG(id)
		changed := true
		if last != nil {
			o, ok := last.SG(id)
			changed = !ok || o != g
		}
		if err := visit(store.Key{Kind: store.KindSG, ID: id}, changed, g); err != nil {
			return delta{}, err
		}
	}
	for _, id := range next.ENIIDs() {
		n, _ := next.ENI(id)
		changed := true
		if last != nil {
			o, ok := last.ENI(id)
			changed = !ok || o != n
		}
		if err := visit(store.Key{Kind: store.KindENI, ID: id}, changed, n); err != nil {
			return delta{}, err
		}
	}
	if tokens := next.AdminTokens(); len(tokens) > 0 {
		changed := last == nil || !slices.Equal(last.AdminTokens(), tokens)
		if err := visit(adminKey, changed, tokens); err != nil {
			return delta{}, err
		}
	}
	for k := range rs.seq {
		if !has(next, k) {
			d.dels = append(d.dels, k)
		}
	}
	slices.SortFunc(d.puts, func(a, b store.Record) int { return compareKeys(a.Key, b.Key) })
	slices.SortFunc(d.dels, compareKeys)
	d.allMembers, d.allHosts = indexes(next)
	d.members = changedIndex(rs.members, d.allMembers, equalMember)
	d.hosts = changedIndex(rs.hosts, d.allHosts, func(a, b string) bool { return a == b })
	return d, nil
}

// changedIndex returns the entries of next that differ from old, and a nil list for those gone.
func changedIndex[T any](old, next map[string][]T, eq func(a, b T) bool) map[string][]T {
	out := map[string][]T{}
	for k, v := range next {
		if !slices.EqualFunc(old[k], v, eq) {
			out[k] = v
		}
	}
	for k := range old {
		if _, ok := next[k]; !ok {
			out[k] = nil
		}
	}
	return out
}

func (rs *records) advance(next *model.State, d delta) {
	if d.rewrite || rs.seq == nil {
		rs.seq = make(map[store.Key]uint64, len(d.puts))
	}
	for _, r := range d.puts {
		rs.seq[r.Key] = r.Seq
	}
	for _, k := range d.dels {
		delete(rs.seq, k)
	}
	rs.last, rs.nextSeq = next, d.nextSeq
	rs.members, rs.hosts = d.allMembers, d.allHosts
}

func has(s *model.State, k store.Key) bool {
	var ok bool
	switch k.Kind {
	case store.KindAccount:
		_, ok = s.Account(k.ID)
	case store.KindSG:
		_, ok = s.SG(k.ID)
	case store.KindENI:
		_, ok = s.ENI(k.ID)
	case store.KindAdmin:
		ok = len(s.AdminTokens()) > 0
	}
	return ok
}

// ordered tells whether the objects next shares with the last state appear in the same relative order.
func ordered(rs *records, next *model.State) bool {
	for _, l := range []struct {
		kind store.Kind
		ids  []string
	}{{store.KindAccount, next.AppIDs()}, {store.KindSG, next.SGIDs()}, {store.KindENI, next.ENIIDs()}} {
		var prev uint64
		for _, id := range l.ids {
			if s, ok := rs.seq[store.Key{Kind: l.kind, ID: id}]; ok {
				if s < prev {
					return false
				}
				prev = s
			}
		}
	}
	return true
}

func compareKeys(a, b store.Key) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.ID, b.ID))
}

// sortedKeys returns m's keys in order, so a transaction's operations are deterministic.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
