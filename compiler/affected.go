package compiler

import (
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
