package compiler

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/sgsim/sgsim/model"
)

// Affected returns, sorted, the ENIs whose tables differ between old and new, derived from the two
// states alone (an agent that only sees state N−1 and N can use it): ENIs added, removed, re-addressed
// or given another SG list; users of an SG whose rules changed; users of an SG with an sgId rule naming
// an SG whose member addresses changed. ENIs of old that new lacks are listed too: their tables go. A nil
// old means everything in new. States share unchanged objects (model.State.Edit), so a one-rule change
// costs pointer comparisons over the SGs and ENIs, not a pass over every rule.
func Affected(old, new *model.State) []string {
	if old == nil {
		out := slices.Clone(new.ENIIDs())
		slices.Sort(out)
		return out
	}
	affected := map[string]bool{}
	moved := map[string]bool{} // SGs whose member set may have changed
	for _, id := range old.ENIIDs() {
		o, _ := old.ENI(id)
		n, ok := new.ENI(id)
		switch {
		case !ok:
			affected[id] = true
			markAll(moved, o.SgIDs)
		case o != n && (!slices.Equal(o.SgIDs, n.SgIDs) || !slices.Equal(o.Addrs(), n.Addrs())):
			affected[id] = true
			markAll(moved, o.SgIDs)
			markAll(moved, n.SgIDs)
		}
	}
	for _, id := range new.ENIIDs() {
		if _, ok := old.ENI(id); !ok {
			affected[id] = true
			n, _ := new.ENI(id)
			markAll(moved, n.SgIDs)
		}
	}
	retargeted := changedMembers(old, new, moved)
	ruled := map[string]bool{} // SGs whose tables rows changed: their rules, or the members they name
	for _, id := range new.SGIDs() {
		n, _ := new.SG(id)
		if o, ok := old.SG(id); ok && o != n && !sameRules(o, n) {
			ruled[id] = true
		}
		if len(retargeted) > 0 && namesAny(n, retargeted) {
			ruled[id] = true
		}
	}
	if len(ruled) > 0 {
		for _, id := range new.ENIIDs() {
			n, _ := new.ENI(id)
			if slices.ContainsFunc(n.SgIDs, func(sg string) bool { return ruled[sg] }) {
				affected[id] = true
			}
		}
	}
	out := make([]string, 0, len(affected))
	for id := range affected {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func markAll(set map[string]bool, ids []string) {
	for _, id := range ids {
		set[id] = true
	}
}

func sameRules(a, b *model.SecurityGroup) bool {
	return slices.Equal(a.Rules(model.Ingress), b.Rules(model.Ingress)) && slices.Equal(a.Rules(model.Egress), b.Rules(model.Egress))
}

// namesAny tells whether g has an sgId rule naming one of sgs.
func namesAny(g *model.SecurityGroup, sgs map[string]bool) bool {
	for _, d := range []model.Direction{model.Ingress, model.Egress} {
		for _, r := range g.Rules(d) {
			if r.RemoteSG != "" && sgs[r.RemoteSG] {
				return true
			}
		}
	}
	return false
}

// changedMembers returns the SGs among candidates whose member addresses (what an sgId rule naming them
// matches) differ between old and new.
func changedMembers(old, new *model.State, candidates map[string]bool) map[string]bool {
	if len(candidates) == 0 {
		return nil
	}
	before, after := membersOf(old, candidates), membersOf(new, candidates)
	out := map[string]bool{}
	for id := range candidates {
		if !slices.Equal(before[id], after[id]) {
			out[id] = true
		}
	}
	return out
}

// membersOf is New(s).Members for the SGs of want only.
func membersOf(s *model.State, want map[string]bool) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	for _, id := range s.ENIIDs() {
		eni, _ := s.ENI(id)
		for _, sg := range eni.SgIDs {
			if want[sg] {
				out[sg] = append(out[sg], eni.Addrs()...)
			}
		}
	}
	for sg, as := range out {
		slices.SortFunc(as, func(a, b netip.Addr) int { return a.Compare(b) })
		out[sg] = slices.Compact(as)
	}
	return out
}

// Next returns the Index of next, given that ix indexes prev: only the SGs and ENIs that differ are
// re-indexed (unchanged objects are shared between the states), so a one-rule change does not walk
// every rule of the state. It equals NewIndex(next).
func (ix *Index) Next(prev, next *model.State) *Index {
	n := &Index{users: ix.users, referrers: maps.Clone(ix.referrers)}
	if !prev.SameENIs(next) { // the user lists depend on the ENIs alone
		n.users = nextUsers(ix.users, prev, next)
	}
	var pos map[string]int // SG → place in next's order, built only when a reference changes
	reindex := func(gid string, before, after *model.SecurityGroup) {
		was, is := refsOf(before), refsOf(after)
		if len(was) == 0 && len(is) == 0 {
			return
		}
		if pos == nil {
			pos = make(map[string]int, len(next.SGIDs()))
			for i, id := range next.SGIDs() {
				pos[id] = i
			}
		}
		for _, target := range slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(was), is...)))) {
			refs := slices.DeleteFunc(slices.Clone(n.referrers[target]), func(x string) bool { return x == gid })
			if slices.Contains(is, target) {
				at, _ := slices.BinarySearchFunc(refs, pos[gid], func(x string, p int) int { return pos[x] - p })
				refs = slices.Insert(refs, at, gid)
			}
			setOrDelete(n.referrers, target, refs)
		}
	}
	for _, gid := range prev.SGIDs() {
		o, _ := prev.SG(gid)
		if g, ok := next.SG(gid); !ok || o != g {
			reindex(gid, o, g)
		}
	}
	for _, gid := range next.SGIDs() {
		if _, ok := prev.SG(gid); !ok {
			g, _ := next.SG(gid)
			reindex(gid, nil, g)
		}
	}
	return n
}

// refsOf lists, once each, the SGs g's sgId rules name (nil g: none).
func refsOf(g *model.SecurityGroup) []string {
	if g == nil {
		return nil
	}
	var out []string
	for _, d := range []model.Direction{model.Ingress, model.Egress} {
		for _, r := range g.Rules(d) {
			if r.RemoteSG != "" && !slices.Contains(out, r.RemoteSG) {
				out = append(out, r.RemoteSG)
			}
		}
	}
	return out
}

func setOrDelete(m map[string][]string, k string, v []string) {
	if len(v) == 0 {
		delete(m, k)
		return
	}
	m[k] = v
}

// nextUsers returns the users index of next, given users, that of prev: only the SGs of ENIs that
// changed their SG list, came or went are listed again.
func nextUsers(users map[string][]string, prev, next *model.State) map[string][]string {
	out := maps.Clone(users)
	touched := map[string]bool{} // SGs whose user lists may have changed
	for _, id := range prev.ENIIDs() {
		o, _ := prev.ENI(id)
		if e, ok := next.ENI(id); !ok || (o != e && !slices.Equal(o.SgIDs, e.SgIDs)) {
			markAll(touched, o.SgIDs)
			if ok {
				markAll(touched, e.SgIDs)
			}
		}
	}
	for _, id := range next.ENIIDs() {
		if _, ok := prev.ENI(id); !ok {
			e, _ := next.ENI(id)
			markAll(touched, e.SgIDs)
		}
	}
	for sg := range touched {
		var users []string
		for _, id := range next.ENIIDs() {
			if e, _ := next.ENI(id); slices.Contains(e.SgIDs, sg) {
				users = append(users, id)
			}
		}
		setOrDelete(out, sg, users)
	}
	return out
}
