package store

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

// TestEncodeSGIsJSONMarshal: the persisted bytes of every SG are exactly encoding/json's, whatever the
// rules hold (omitted fields, escapes, non-ASCII, empty lists).
func TestEncodeSGIsJSONMarshal(t *testing.T) {
	s := demo(t)
	e := s.Edit()
	g, ok := s.SG("sg-web")
	require.True(t, ok)
	ng := *g
	ng.SgRemark = `remark "quoted" <b>&amp;</b> é`
	ng.Ingress = []model.Rule{
		{Action: "accept"},
		{IPProtocol: "TCP", CidrIP: "10.0.0.0/8", PortRange: "80-90", Action: "ACCEPT", Desc: `a "b" \ <c> & d`},
		{IPProtocol: "udp", SgID: "sg-ssh", PortRange: "53", Action: "DROP", Desc: "日本語 \u2028 \t tab"},
		{CidrIP: "2001:db8::/32", Action: "DROP", Desc: "\x7f del"},
	}
	ng.Egress = nil
	require.NoError(t, e.PutSG(ng))
	for name, st := range map[string]*model.State{"demo": s, "edited": e.State()} {
		t.Run(name, func(t *testing.T) {
			for _, id := range st.SGIDs() {
				g, _ := st.SG(id)
				want, err := json.Marshal(g)
				require.NoError(t, err)
				got, err := appendSG(nil, g)
				require.NoError(t, err)
				require.Equal(t, string(want), string(got))
				// Appended into a used, bigger buffer (a Bolt's, from its last commit): the same bytes.
				used := append(make([]byte, 0, 2*len(got)+4096), got...)
				used = append(used, `{"stale":"bytes"}`...)
				again, err := appendSG(used, g)
				require.NoError(t, err)
				require.Equal(t, string(want), string(again))
				require.Same(t, &used[0], &again[0], "written in place")
			}
		})
	}
}

// TestAppendRulesCoversEveryField fails when model.Rule gains a field appendRules does not write.
func TestAppendRulesCoversEveryField(t *testing.T) {
	var r model.Rule
	v := reflect.ValueOf(&r).Elem()
	for i := range v.NumField() {
		require.Equal(t, reflect.String, v.Field(i).Kind(), "field %s", v.Type().Field(i).Name)
		v.Field(i).SetString("x" + v.Type().Field(i).Name)
	}
	for _, rules := range [][]model.Rule{nil, {}, {r}, {r, {Action: "DROP"}}} {
		want, err := json.Marshal(rules)
		require.NoError(t, err)
		require.Equal(t, string(want), string(appendRules(nil, rules)))
	}
}
