// Package compiler flattens an ENI's ordered security groups into first-match tables with provenance,
// and which ENIs a change of state forces to be recompiled (Affected).
package compiler

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/sgsim/sgsim/model"
)

// Entry is one row of a flattened table: a match, an action and where it came from.
type Entry struct {
	Protocol model.Protocol
	// AnyRemote matches every address of both families; otherwise the remote address must fall in one
	// of Remotes. An sgId rule whose SG has no members keeps its row with no Remotes: it matches nothing,
	// and rule indexes stay those of the API.
	AnyRemote bool
	Remotes   []netip.Prefix
	Ports     model.PortRange
	Action    model.Action

	SgID      string // "" for the implicit last DROP
	RuleIndex int    // 0-based within SgID's list for the table's direction; -1 for the implicit DROP
	Rule      model.ParsedRule
}

// Implicit tells whether e is the table's implicit last DROP.
func (e *Entry) Implicit() bool { return e.RuleIndex < 0 }

// Table is the flattened first-match table of one ENI and direction. The last entry is always the one
// implicit DROP (SPEC §2). Tables are immutable once compiled.
type Table struct {
	ENI       string
	Direction model.Direction
	// NoSG is set when the ENI has no security groups: the implicit DROP then reports reason no-sg.
	NoSG    bool
	Entries []Entry
}

// Tables holds both directions of one ENI.
type Tables struct {
	ENI     string
	Ingress *Table
	Egress  *Table
}

// Get returns the table of direction d.
func (t *Tables) Get(d model.Direction) *Table {
	if d == model.Egress {
		return t.Egress
	}
	return t.Ingress
}

// Compiler compiles the ENIs of one State. Building it indexes SG membership once, so compiling many
// ENIs of the same State costs each only its own rules.
type Compiler struct {
	state   *model.State
	members map[string][]netip.Prefix // sgId → host prefixes of every private IP of its member ENIs
}

// New indexes s for compilation.
func New(s *model.State) *Compiler {
	return NewFrom(nil, s)
}

// NewFrom indexes s for compilation, given prev, the compiler of an earlier state (nil: none). The
// member index depends on the ENIs alone, so while s holds the very same ENIs as prev's state
// (model.State.SameENIs: an edit of rules only) it is prev's, shared: a rule change of an SG naming a
// fleet-wide SG does not expand and sort the fleet's addresses again. Any ENI put, changed or deleted
// in between builds it afresh.
func NewFrom(prev *Compiler, s *model.State) *Compiler {
	if prev != nil && prev.state.SameENIs(s) {
		return &Compiler{state: s, members: prev.members}
	}
	c := &Compiler{state: s, members: make(map[string][]netip.Prefix)}
	for _, id := range s.ENIIDs() {
		eni, _ := s.ENI(id)
		for _, sg := range eni.SgIDs {
			for _, a := range eni.Addrs() {
				c.members[sg] = append(c.members[sg], netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	for sg, ps := range c.members {
		slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		c.members[sg] = slices.Compact(ps)
	}
	return c
}

// State returns the state c compiles.
func (c *Compiler) State() *model.State { return c.state }

// Members returns the host prefixes an sgId rule naming sgID currently matches.
func (c *Compiler) Members(sgID string) []netip.Prefix { return c.members[sgID] }

// ErrNoENI is Compile's error for an ENI the state does not hold.
var ErrNoENI = errors.New("no such network interface")

// Compile flattens both directions of one ENI.
func (c *Compiler) Compile(eniID string) (*Tables, error) {
	eni, ok := c.state.ENI(eniID)
	if !ok {
		return nil, fmt.Errorf("compile %s: %w", eniID, ErrNoENI)
	}
	return &Tables{
		ENI:     eniID,
		Ingress: c.compileDir(eni, model.Ingress),
		Egress:  c.compileDir(eni, model.Egress),
	}, nil
}

// CompileAll compiles every ENI of the State, keyed by ENI ID.
func (c *Compiler) CompileAll() map[string]*Tables {
	out := make(map[string]*Tables, len(c.state.ENIIDs()))
	for _, id := range c.state.ENIIDs() {
		t, _ := c.Compile(id) // every listed ENI exists
		out[id] = t
	}
	return out
}

func (c *Compiler) compileDir(eni *model.NetworkInterface, d model.Direction) *Table {
	t := &Table{ENI: eni.NetworkInterfaceID, Direction: d, NoSG: len(eni.SgIDs) == 0}
	n := 1
	for _, id := range eni.SgIDs {
		sg, _ := c.state.SG(id)
		n += len(sg.Rules(d))
	}
	t.Entries = make([]Entry, 0, n)
	// One backing array for every CIDR rule's single remote rather than an allocation per row.
	cidrs := make([]netip.Prefix, 0, n)
	for _, id := range eni.SgIDs {
		sg, _ := c.state.SG(id)
		for i, r := range sg.Rules(d) {
			e := Entry{Protocol: r.Protocol, Ports: r.Ports, Action: r.Action, SgID: id, RuleIndex: i, Rule: r}
			switch {
			case r.Remote.IsValid():
				cidrs = append(cidrs, r.Remote)
				e.Remotes = cidrs[len(cidrs)-1 : len(cidrs) : len(cidrs)]
			case r.RemoteSG != "":
				e.Remotes = c.members[r.RemoteSG]
			default:
				e.AnyRemote = true
			}
			t.Entries = append(t.Entries, e)
		}
	}
	t.Entries = append(t.Entries, Entry{AnyRemote: true, Action: model.Drop, RuleIndex: -1,
		Rule: model.ParsedRule{Action: model.Drop, Desc: "implicit drop"}})
	return t
}

// Index answers which ENIs use an SG and which SGs reference it (quotas, Describe answers).
type Index struct {
	users     map[string][]string // sgId → ENIs that list it
	referrers map[string][]string // sgId → SGs with an sgId rule naming it
}

// NewIndex indexes s.
func NewIndex(s *model.State) *Index {
	ix := &Index{users: map[string][]string{}, referrers: map[string][]string{}}
	for _, id := range s.ENIIDs() {
		eni, _ := s.ENI(id)
		for _, sg := range eni.SgIDs {
			ix.users[sg] = append(ix.users[sg], id)
		}
	}
	for _, gid := range s.SGIDs() {
		g, _ := s.SG(gid)
		seen := map[string]bool{}
		for _, d := range []model.Direction{model.Ingress, model.Egress} {
			for _, r := range g.Rules(d) {
				if r.RemoteSG != "" && !seen[r.RemoteSG] {
					seen[r.RemoteSG] = true
					ix.referrers[r.RemoteSG] = append(ix.referrers[r.RemoteSG], gid)
				}
			}
		}
	}
	return ix
}

// Users returns the ENIs whose SG list contains sgID.
func (ix *Index) Users(sgID string) []string { return ix.users[sgID] }

// Referrers returns the SGs that have an sgId rule naming sgID.
func (ix *Index) Referrers(sgID string) []string { return ix.referrers[sgID] }
