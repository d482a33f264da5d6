// Package storetest holds the fixtures the tests of every store share: the demo state and a history of
// edits of each kind to commit. It is imported by tests only.
package storetest

import (
	"encoding/json"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

// Demo is the repository's demo topology (testdata/demo.json).
func Demo(t testing.TB) *model.State {
	t.Helper()
	_, self, _, ok := runtime.Caller(0)
	require.True(t, ok, "where storetest lies")
	s, err := model.LoadTopologyFile(filepath.Join(filepath.Dir(self), "..", "..", "testdata", "demo.json"))
	require.NoError(t, err)
	return s
}

// Revisions returns the demo state followed by edits of each kind: a rule change, a new SG, an ENI
// re-listed twice, the new SG deleted, and a state rebuilt from a reordered topology (sharing nothing).
func Revisions(t testing.TB) []*model.State {
	t.Helper()
	s := Demo(t)
	out := []*model.State{s}
	edit := func(f func(b *model.Builder)) {
		b := out[len(out)-1].Edit()
		f(b)
		out = append(out, b.State())
	}
	edit(func(b *model.Builder) {
		g, _ := s.SG("sg-web")
		ng := *g
		ng.Ingress = []model.Rule{{IPProtocol: "tcp", PortRange: "8443", Action: "ACCEPT", Desc: "one rule"}}
		require.NoError(t, b.PutSG(ng))
	})
	edit(func(b *model.Builder) {
		require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-new", AppID: "1250000001", SgName: "new"}))
	})
	edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("eni-spare", []string{"sg-new"})) })
	edit(func(b *model.Builder) { require.NoError(t, b.SetENISGs("eni-spare", []string{})) })
	edit(func(b *model.Builder) { require.NoError(t, b.DeleteSG("sg-new")) })
	topo := out[len(out)-1].Topology()
	slices.Reverse(topo.SecurityGroups)
	rebuilt, err := model.NewState(topo)
	require.NoError(t, err)
	return append(out, rebuilt)
}

// RequireSameTopology requires two states to have the same persisted form (their topology
// documents): the same objects in the same order, a list left out the same as an empty one.
func RequireSameTopology(t testing.TB, want, got *model.State, msg string) {
	t.Helper()
	w, err := json.Marshal(want.Topology())
	require.NoError(t, err)
	g, err := json.Marshal(got.Topology())
	require.NoError(t, err)
	require.Equal(t, string(w), string(g), msg)
}
