package compiler_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// randomBytes feeds fuzzTopology and fuzzRule from a seeded generator.
func randomBytes(rng *rand.Rand, n int) *byteSource {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return &byteSource{b: b}
}

// mutate returns s changed in one to three random ways an API call or a topology reload can change it:
// an SG's rules, an ENI's SG list, an ENI's addresses, an ENI added or removed. Edits go through the
// Builder (sharing unchanged objects), removals through a rebuilt State (sharing nothing).
func mutate(t *testing.T, rng *rand.Rand, s *model.State) *model.State {
	src := randomBytes(rng, 256)
	sgIDs := s.SGIDs()
	for range 1 + rng.IntN(3) {
		enis := s.ENIIDs()
		b := s.Edit()
		switch k := rng.IntN(5); {
		case k == 0 || len(enis) == 0:
			g, _ := s.SG(sgIDs[rng.IntN(len(sgIDs))])
			ng := *g
			ng.Ingress = slices.Clone(g.Ingress)
			if len(ng.Ingress) > 0 && rng.IntN(2) == 0 {
				ng.Ingress = slices.Delete(ng.Ingress, 0, 1)
			} else {
				ng.Ingress = append(ng.Ingress, fuzzRule(src, sgIDs))
			}
			require.NoError(t, b.PutSG(ng))
		case k == 1:
			perm := slices.Clone(sgIDs)
			rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
			require.NoError(t, b.SetENISGs(enis[rng.IntN(len(enis))], perm[:rng.IntN(len(perm)+1)]))
		case k == 2:
			n, _ := s.ENI(enis[rng.IntN(len(enis))])
			nn := *n
			nn.PrivateIPAddresses = []string{poolAddr(src.next()).String()}
			if err := b.PutENI(nn); !ipTaken(err) {
				require.NoError(t, err)
			}
		case k == 3:
			err := b.PutENI(model.NetworkInterface{NetworkInterfaceID: fmt.Sprintf("eni-new%d", rng.IntN(1000)),
				AppID: "A", PrivateIPAddresses: []string{poolAddr(src.next()).String()}, SgIDs: sgIDs[:rng.IntN(len(sgIDs)+1)]})
			if !ipTaken(err) {
				require.NoError(t, err)
			}
		default:
			topo := s.Topology()
			topo.NetworkInterfaces = slices.Delete(topo.NetworkInterfaces, 0, 1)
			next, err := model.NewState(topo)
			require.NoError(t, err)
			s = next
			continue
		}
		s = b.State()
	}
	return s
}

// TestAffectedIsExact: for random state pairs, the old tables with Affected(old, new) recompiled (and
// the removed ENIs dropped) are exactly a full CompileAll(new), and every ENI Affected names really
// changed, was added, removed, re-addressed or re-listed (it recompiles nothing needlessly).
func TestAffectedIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 17))
	for i := range 2000 {
		old, err := model.NewState(fuzzTopology(randomBytes(rng, 512)))
		require.NoError(t, err)
		new := mutate(t, rng, old)
		affected := compiler.Affected(old, new)
		require.True(t, slices.IsSorted(affected))

		tables := compiler.New(old).CompileAll()
		comp := compiler.New(new)
		for _, id := range affected {
			if _, ok := new.ENI(id); !ok {
				delete(tables, id)
				continue
			}
			tables[id], err = comp.Compile(id)
			require.NoError(t, err)
		}
		full := comp.CompileAll()
		require.Equal(t, full, tables, "pair %d: affected %v", i, affected)
		require.Equal(t, compiler.NewIndex(new), compiler.NewIndex(old).Next(old, new), "pair %d: index", i)

		before := compiler.New(old).CompileAll()
		for _, id := range affected {
			_, inOld := before[id]
			_, inNew := full[id]
			if inOld && inNew && assert.ObjectsAreEqual(before[id], full[id]) {
				// Only an ENI re-addressed (its own addresses are not in its tables) or re-listed (an SG
				// without rules adds no rows) is recompiled into what it was.
				o, _ := old.ENI(id)
				n, _ := new.ENI(id)
				assert.False(t, slices.Equal(o.Addrs(), n.Addrs()) && slices.Equal(o.SgIDs, n.SgIDs), "pair %d: %s recompiled but unchanged", i, id)
			}
		}
	}
}

func TestAffectedNames(t *testing.T) {
	s := loadDemo(t)
	rule := func(id string, rules ...model.Rule) *model.State {
		b := s.Edit()
		g, _ := s.SG(id)
		ng := *g
		ng.Ingress = rules
		require.NoError(t, b.PutSG(ng))
		return b.State()
	}
	relist := func(eni string, sgs ...string) *model.State {
		b := s.Edit()
		require.NoError(t, b.SetENISGs(eni, sgs))
		return b.State()
	}
	for _, c := range []struct {
		name string
		new  *model.State
		want []string
	}{
		{"nothing", s, []string{}},
		{"one rule of sg-ssh: its users only", rule("sg-ssh", r("tcp", "198.18.0.0/15", "2222", "ACCEPT")), []string{"eni-web1", "eni-web2"}},
		{"eni-spare joins sg-web: it and the users of sg-db, whose rules name sg-web", relist("eni-spare", "sg-web"),
			[]string{"b9ac5247-c4ca-4c9b-b8fa-7d19132e560a", "eni-db1", "eni-spare"}},
		{"eni-db1 leaves self-referencing sg-db", relist("eni-db1"), []string{"b9ac5247-c4ca-4c9b-b8fa-7d19132e560a", "eni-db1"}},
		{"no old state: everything", nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.new == nil {
				assert.Len(t, compiler.Affected(nil, s), len(s.ENIIDs()))
				return
			}
			assert.Equal(t, c.want, compiler.Affected(s, c.new))
			assert.Equal(t, setOf(c.want), changedENIs(t, s, c.new))
		})
	}
}

// ipTaken tells a PutENI refused for a private IP another ENI holds: the random edit is then skipped.
func ipTaken(err error) bool {
	var e *model.Error
	return errors.As(err, &e) && e.Code == model.CodeConflict
}
