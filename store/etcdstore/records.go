package etcdstore

import (
	"cmp"
	"maps"
	"slices"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// records follows the last state committed or loaded through a Store: the record set every store
// keeps (store.RecordSet: objects compared by pointer, creation sequences), plus the derived indexes
// (SG members, ENIs by host) of that state, so a commit also writes the index keys that change.
type records struct {
	store.RecordSet
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
	rs.RecordSet.Reset(s, recs, nextSeq)
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

// delta is what committing a state changes: its records, and the index keys that change.
type delta struct {
	store.RecordDiff
	members map[string][]Member // SG → new member list; nil list: delete the index key
	hosts   map[string][]string // host → new ENI list; nil list: delete the index key
	// next indexes, installed by advance
	allMembers map[string][]Member
	allHosts   map[string][]string
}

func (rs *records) diff(next *model.State) (delta, error) {
	rd, err := rs.RecordSet.Diff(next, 0) // etcd gives the revision
	if err != nil {
		return delta{}, err
	}
	d := delta{RecordDiff: rd}
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
	rs.RecordSet.Advance(next, d.RecordDiff)
	rs.members, rs.hosts = d.allMembers, d.allHosts
}

// sortedKeys returns m's keys in order, so a transaction's operations are deterministic.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
