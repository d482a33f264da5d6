package model_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

// baseTopology is two accounts, three SGs of account A (two in project 0, one in project 1), one SG of
// account B, and one ENI.
func baseTopology() model.Topology {
	return model.Topology{
		Accounts: []model.Account{{AppID: "A"}, {AppID: "B"}},
		SecurityGroups: []model.SecurityGroup{
			{SgID: "sg-a", AppID: "A", Ingress: []model.Rule{{Action: "ACCEPT"}}},
			{SgID: "sg-b", AppID: "A"},
			{SgID: "sg-p1", AppID: "A", ProjectID: 1},
			{SgID: "sg-other", AppID: "B"},
		},
		NetworkInterfaces: []model.NetworkInterface{
			{NetworkInterfaceID: "eni-1", AppID: "A", PrivateIPAddresses: []string{"198.18.0.1"}, SgIDs: []string{"sg-a"}},
		},
	}
}

func TestNewStateErrors(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(t *model.Topology)
		code   int
		substr string
	}{
		{name: "rule names missing SG", code: model.CodeBadRuleFormat, substr: `securityGroups[1].ingress[0].sgId: "sg-nope": no such security group`,
			edit: func(t *model.Topology) {
				t.SecurityGroups[1].Ingress = []model.Rule{{SgID: "sg-nope", Action: "ACCEPT"}}
			}},
		{name: "rule names other account's SG", code: model.CodeBadRuleFormat, substr: "securityGroups[1].egress[0].sgId",
			edit: func(t *model.Topology) {
				t.SecurityGroups[1].Egress = []model.Rule{{SgID: "sg-other", Action: "ACCEPT"}}
			}},
		{name: "rule names other project's SG", code: model.CodeBadRuleFormat, substr: "security group is in project 1, not 0",
			edit: func(t *model.Topology) { t.SecurityGroups[1].Ingress = []model.Rule{{SgID: "sg-p1", Action: "ACCEPT"}} }},
		{name: "bad rule format", code: model.CodeBadRuleFormat, substr: `securityGroups[1].ingress[0].portRange: "80-70": low port above high port`,
			edit: func(t *model.Topology) {
				t.SecurityGroups[1].Ingress = []model.Rule{{IPProtocol: "tcp", PortRange: "80-70", Action: "ACCEPT"}}
			}},
		{name: "duplicate sgId", code: model.CodeBadParameter, substr: `securityGroups[4].sgId: "sg-a": duplicate sgId`,
			edit: func(t *model.Topology) {
				t.SecurityGroups = append(t.SecurityGroups, model.SecurityGroup{SgID: "sg-a", AppID: "A"})
			}},
		{name: "bad sgId", code: model.CodeBadParameter, substr: "securityGroups[0].sgId",
			edit: func(t *model.Topology) { t.SecurityGroups[0].SgID = "sg a" }},
		{name: "SG of unknown account", code: model.CodeNotFound, substr: "securityGroups[1].appId",
			edit: func(t *model.Topology) { t.SecurityGroups[1].AppID = "Z" }},
		{name: "ENI with unknown SG", code: model.CodeNotFound, substr: `networkInterfaces[0].sgIds[1]: "sg-nope": no such security group`,
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].SgIDs = []string{"sg-a", "sg-nope"} }},
		{name: "ENI with other account's SG", code: model.CodeNotOwner, substr: "networkInterfaces[0].sgIds[0]",
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].SgIDs = []string{"sg-other"} }},
		{name: "ENI duplicate sgIds", code: model.CodeBadParameter, substr: `networkInterfaces[0].sgIds[1]: "sg-a": duplicate sgId`,
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].SgIDs = []string{"sg-a", "sg-a"} }},
		{name: "ENI bad address", code: model.CodeBadParameter, substr: "networkInterfaces[0].privateIpAddresses[0]",
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].PrivateIPAddresses = []string{"198.18.0.300"} }},
		{name: "ENI address twice", code: model.CodeBadParameter,
			substr: `networkInterfaces[0].privateIpAddresses[1]: "198.18.0.9": the same address as privateIpAddresses[0]`,
			edit: func(t *model.Topology) {
				t.NetworkInterfaces[0].PrivateIPAddresses = []string{"198.18.0.9", "198.18.0.9"}
			}},
		{name: "ENI address and its IPv6 mapping", code: model.CodeBadParameter,
			substr: `networkInterfaces[0].privateIpAddresses[2]: "::ffff:198.18.0.9": the same address as privateIpAddresses[0]`,
			edit: func(t *model.Topology) {
				t.NetworkInterfaces[0].PrivateIPAddresses = []string{"198.18.0.9", "2001:db8::9", "::ffff:198.18.0.9"}
			}},
		{name: "ENI host interface too long", code: model.CodeBadParameter,
			substr: `networkInterfaces[0].hostInterface: "tap-0123456789ab": not a Linux interface name`,
			edit:   func(t *model.Topology) { t.NetworkInterfaces[0].HostInterface = "tap-0123456789ab" }},
		{name: "ENI host interface with a slash", code: model.CodeBadParameter, substr: `networkInterfaces[0].hostInterface: "tap/1"`,
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].HostInterface = "tap/1" }},
		{name: "ENI host interface dot dot", code: model.CodeBadParameter, substr: `networkInterfaces[0].hostInterface: ".."`,
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].HostInterface = ".." }},
		{name: "ENI host with a slash", code: model.CodeBadParameter, substr: `networkInterfaces[0].host: "h1/acks"`,
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].Host = "h1/acks" }},
		{name: "ENI host interface with a control byte", code: model.CodeBadParameter, substr: `networkInterfaces[0].hostInterface: "tap\x7f"`,
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].HostInterface = "tap\x7f" }},
		{name: "ENI no address", code: model.CodeBadParameter, substr: "networkInterfaces[0].privateIpAddresses",
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].PrivateIPAddresses = nil }},
		{name: "ENI bad MAC", code: model.CodeBadParameter, substr: "networkInterfaces[0].macAddress",
			edit: func(t *model.Topology) { t.NetworkInterfaces[0].MacAddress = "02:00:00:00:00" }},
		{name: "duplicate ENI", code: model.CodeBadParameter, substr: "networkInterfaces[1].networkInterfaceId",
			edit: func(t *model.Topology) { t.NetworkInterfaces = append(t.NetworkInterfaces, t.NetworkInterfaces[0]) }},
		{name: "duplicate account", code: model.CodeBadParameter, substr: "accounts[1].appId",
			edit: func(t *model.Topology) { t.Accounts[1].AppID = "A" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topo := baseTopology()
			tc.edit(&topo)
			_, err := model.NewState(topo)
			require.Error(t, err)
			assert.Equal(t, tc.code, model.CodeOf(err), "error: %v", err)
			assert.Contains(t, err.Error(), tc.substr)
		})
	}
	_, err := model.NewState(baseTopology())
	require.NoError(t, err)
}

func TestNewStateForwardAndSelfReference(t *testing.T) {
	topo := baseTopology()
	// sg-a refers to sg-b, defined later; sg-b refers to itself.
	topo.SecurityGroups[0].Ingress = []model.Rule{{SgID: "sg-b", Action: "ACCEPT"}}
	topo.SecurityGroups[1].Ingress = []model.Rule{{SgID: "sg-b", Action: "ACCEPT"}}
	_, err := model.NewState(topo)
	require.NoError(t, err)
}

func TestParseTopologyErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{name: "json path of a bad rule", want: []string{"f.json: ", "securityGroups[1].ingress[0].portRange", `"80-70"`, "low port above high port"},
			doc: `{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","ingress":[],"egress":[]},
{"sgId":"sg-b","appId":"A","ingress":[{"ipProtocol":"tcp","portRange":"80-70","action":"ACCEPT"}],"egress":[]}],"networkInterfaces":[]}`},
		{name: "unknown field", want: []string{`f.json: line 1:86: securityGroups[0].ingress[0]: unknown field "cidr"`},
			doc: `{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","ingress":[{"cidr":"10.0.0.0/8","action":"ACCEPT"}]}]}`},
		{name: "syntax error line:col", want: []string{"f.json: ", "line 3:", "invalid character"},
			doc: "{\n\"accounts\": [],\n\"securityGroups\": [,]\n}"},
		{name: "type error", want: []string{"f.json: line 1:47: securityGroups[0].projectId: expected an integer, got a string"},
			doc: `{"securityGroups":[{"sgId":"sg-a","projectId":"zero"}]}`},
		{name: "a string list holding a number", want: []string{"f.json: line 2:80: networkInterfaces[0].sgIds[1]: expected a string, got a number"},
			doc: "{\"accounts\":[{\"appId\":\"A\"}],\n\"networkInterfaces\":[{\"networkInterfaceId\":\"eni-1\",\"appId\":\"A\",\"sgIds\":[\"sg-a\",7]}]}"},
		{name: "an object for a list", want: []string{"f.json: line 1:19: securityGroups: expected an array, got an object"},
			doc: `{"securityGroups":{}}`},
		{name: "a fraction for an integer", want: []string{"f.json: line 1:47: securityGroups[0].projectId: expected an integer, got 1.5"},
			doc: `{"securityGroups":[{"sgId":"sg-a","projectId":1.5}]}`},
		{name: "an integer out of range", want: []string{"f.json: line 1:47: securityGroups[0].projectId: 9223372036854775808 is out of range: expected an integer from -9223372036854775808 to 9223372036854775807"},
			doc: `{"securityGroups":[{"sgId":"sg-a","projectId":9223372036854775808}]}`},
		{name: "a string for a flag", want: []string{"f.json: line 1:44: securityGroups[0].preset: expected true or false, got a string"},
			doc: `{"securityGroups":[{"sgId":"sg-a","preset":"yes"}]}`},
		{name: "trailing data", want: []string{"f.json: ", "trailing data"},
			doc: `{} {}`},
		{name: "a brace after the object", want: []string{"f.json: ", "trailing data"},
			doc: `{}}`},
		{name: "a key in another case", want: []string{"f.json: line 2:58: ", `securityGroups[0].ingress[0]: key "Action": must be written "action"`},
			doc: "{\"accounts\":[{\"appId\":\"A\"}],\n\"securityGroups\":[{\"sgId\":\"sg-a\",\"appId\":\"A\",\"ingress\":[{\"Action\":\"ACCEPT\"}]}]}"},
		{name: "a key twice", want: []string{"f.json: line 1:27: ", `accounts[0]: key "appId" given twice`},
			doc: `{"accounts":[{"appId":"A","appId":"B"}]}`},
		{name: "null for an object", want: []string{"f.json: line 1:37: ", "networkInterfaces[0]: null is not a JSON object"},
			doc: `{"accounts":[],"networkInterfaces":[null]}`},
		{name: "truncated", want: []string{"f.json: "},
			doc: `{"accounts":[`},
		{name: "empty", want: []string{"f.json: the file is empty: want one JSON object"}, doc: " \n\t"},
		{name: "a secretId without a secretKey", want: []string{"f.json: accounts[0].secretKey: a secretId needs a secretKey"},
			doc: `{"accounts":[{"appId":"A","secretId":"AKID1"}]}`},
		{name: "a secretId twice", want: []string{`f.json: accounts[1].secretId: "AKID1": another account has this secretId`},
			doc: `{"accounts":[{"appId":"A","secretId":"AKID1","secretKey":"k"},{"appId":"B","secretId":"AKID1","secretKey":"j"}]}`},
		{name: "a Huawei token twice", want: []string{"f.json: accounts[1].huaweiTokens[0]: another account (or this one) has this token"},
			doc: `{"accounts":[{"appId":"A","huaweiTokens":["t"]},{"appId":"B","huaweiTokens":["t"]}]}`},
		{name: "a negative projectId", want: []string{`f.json: securityGroups[0].projectId: "-1": not an integer in 0-2147483647`},
			doc: `{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","projectId":-1}]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := model.ParseTopology("f.json", []byte(tc.doc))
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestParseTopologySyntaxLineCol(t *testing.T) {
	_, err := model.ParseTopology("x.json", []byte("{\n  \"accounts\": [\n    {\"appId\": \"A\",}\n  ]\n}"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "x.json: line 3:19:")
}

func TestLoadTopologyFile(t *testing.T) {
	_, err := model.LoadTopologyFile(filepath.Join(t.TempDir(), "missing.json"))
	require.Error(t, err)
	assert.ErrorIs(t, err, os.ErrNotExist)

	st, err := model.LoadTopologyFile("../testdata/demo.json")
	require.NoError(t, err)
	assert.Len(t, st.ENIIDs(), 6)
	assert.Len(t, st.SGIDs(), 5)
	// The topology survives its own persisted form.
	again, err := model.NewState(st.Topology())
	require.NoError(t, err)
	assert.Equal(t, st.Topology(), again.Topology())
}

func mustState(t *testing.T) *model.State {
	t.Helper()
	s, err := model.NewState(baseTopology())
	require.NoError(t, err)
	return s
}

func TestBuilderErrorLeavesStateUnchanged(t *testing.T) {
	s := mustState(t)
	b := s.Edit()
	before := b.State().Topology()

	err := b.PutSG(model.SecurityGroup{SgID: "sg-a", AppID: "A", Ingress: []model.Rule{{Action: "DROP"}, {CidrIP: "nope", Action: "ACCEPT"}}})
	assertBadRuleFormat(t, err, "ingress[1].cidrIp")

	err = b.PutSG(model.SecurityGroup{SgID: "sg-new", AppID: "A", Egress: []model.Rule{{SgID: "sg-other", Action: "ACCEPT"}}})
	assertBadRuleFormat(t, err)

	err = b.PutSG(model.SecurityGroup{SgID: "sg-new", AppID: "nobody"})
	assert.Equal(t, model.CodeNotFound, model.CodeOf(err))

	err = b.SetENISGs("eni-1", []string{"sg-b", "sg-other"})
	assert.Equal(t, model.CodeNotOwner, model.CodeOf(err))
	err = b.SetENISGs("eni-1", []string{"sg-b", "sg-b"})
	assert.Equal(t, model.CodeBadParameter, model.CodeOf(err))
	err = b.SetENISGs("eni-x", []string{"sg-b"})
	assert.Equal(t, model.CodeNotFound, model.CodeOf(err))

	err = b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-2", AppID: "A", PrivateIPAddresses: []string{"198.18.0.2"}, SgIDs: []string{"sg-zz"}})
	assert.Equal(t, model.CodeNotFound, model.CodeOf(err))

	assert.Equal(t, before, b.State().Topology())
	_, ok := b.State().SG("sg-new")
	assert.False(t, ok)
	_, ok = b.State().ENI("eni-2")
	assert.False(t, ok)
}

func TestEditNeverMutatesOriginal(t *testing.T) {
	s := mustState(t)
	orig := s.Topology()

	b := s.Edit()
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-a", AppID: "A", Ingress: []model.Rule{{Action: "DROP"}}}))
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-c", AppID: "A"}))
	require.NoError(t, b.SetENISGs("eni-1", []string{"sg-b", "sg-a"}))
	require.NoError(t, b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-2", AppID: "A", PrivateIPAddresses: []string{"2001:db8::2"}}))
	require.NoError(t, b.DeleteSG("sg-p1"))
	next := b.State()

	// The old snapshot still gives the old answers.
	assert.Equal(t, orig, s.Topology())
	g, _ := s.SG("sg-a")
	assert.Equal(t, model.Accept, g.Rules(model.Ingress)[0].Action)
	e, _ := s.ENI("eni-1")
	assert.Equal(t, []string{"sg-a"}, e.SgIDs)
	_, ok := s.ENI("eni-2")
	assert.False(t, ok)
	_, ok = s.SG("sg-p1")
	assert.True(t, ok)
	assert.Equal(t, []string{"sg-a", "sg-b", "sg-p1", "sg-other"}, s.SGIDs())

	// The new one has the edits.
	g, _ = next.SG("sg-a")
	assert.Equal(t, model.Drop, g.Rules(model.Ingress)[0].Action)
	e, _ = next.ENI("eni-1")
	assert.Equal(t, []string{"sg-b", "sg-a"}, e.SgIDs)
	assert.Equal(t, []string{"sg-a", "sg-b", "sg-other", "sg-c"}, next.SGIDs())
	assert.Equal(t, []string{"eni-1", "eni-2"}, next.ENIIDs())
}

// Edits share what they did not change (copy on write), yet two edits of one state never see each
// other's changes, and SameENIs holds exactly while no ENI was put, changed or deleted.
func TestEditCopyOnWrite(t *testing.T) {
	s := mustState(t)
	assert.True(t, s.SameENIs(s))
	other := mustState(t)
	assert.False(t, s.SameENIs(other), "states built apart")

	sgEdit := s.Edit()
	require.NoError(t, sgEdit.PutSG(model.SecurityGroup{SgID: "sg-c", AppID: "A"}))
	rules := sgEdit.State()
	assert.True(t, rules.SameENIs(s), "an SG edit keeps the ENIs")
	sgFailed := s.Edit()
	require.Error(t, sgFailed.SetENISGs("eni-1", []string{"sg-zz"}))
	assert.True(t, sgFailed.State().SameENIs(s), "a refused ENI edit changes nothing")

	edits := map[string]func(b *model.Builder) error{
		"put": func(b *model.Builder) error {
			return b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-2", AppID: "A", PrivateIPAddresses: []string{"198.18.0.2"}})
		},
		"set":    func(b *model.Builder) error { return b.SetENISGs("eni-1", []string{"sg-b"}) },
		"delete": func(b *model.Builder) error { return b.DeleteENI("eni-1") },
		"readdress": func(b *model.Builder) error {
			n, _ := s.ENI("eni-1")
			nn := *n
			nn.PrivateIPAddresses = []string{"198.18.0.9"}
			return b.PutENI(nn)
		},
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			first, second := rules.Edit(), rules.Edit()
			require.NoError(t, edit(first))
			next := first.State()
			assert.False(t, next.SameENIs(rules))
			assert.False(t, next.SameENIs(s))
			require.NoError(t, second.PutSG(model.SecurityGroup{SgID: "sg-d", AppID: "A"}))
			sibling := second.State()
			assert.True(t, sibling.SameENIs(rules), "the sibling edit shares nothing the first changed")
			assert.Equal(t, []string{"eni-1"}, sibling.ENIIDs())
			e, _ := sibling.ENI("eni-1")
			assert.Equal(t, []string{"sg-a"}, e.SgIDs)
			assert.Equal(t, []netip.Addr{netip.MustParseAddr("198.18.0.1")}, e.Addrs())
			_, ok := next.SG("sg-d")
			assert.False(t, ok, "nor the first the sibling's SG")
			assert.Equal(t, []string{"sg-a", "sg-b", "sg-p1", "sg-other", "sg-c"}, rules.SGIDs())
		})
	}
}

func TestPutSGCopiesInput(t *testing.T) {
	s := mustState(t)
	b := s.Edit()
	rules := []model.Rule{{Action: "ACCEPT"}}
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-c", AppID: "A", Ingress: rules}))
	rules[0].Action = "DROP" // the caller's slice is not the State's
	g, _ := b.State().SG("sg-c")
	assert.Equal(t, "ACCEPT", g.Ingress[0].Action)
	assert.Equal(t, []model.Rule{}, g.Egress)
}

func TestDeleteSG(t *testing.T) {
	topo := baseTopology()
	topo.SecurityGroups[1].Ingress = []model.Rule{{SgID: "sg-p1", Action: "ACCEPT"}}
	topo.SecurityGroups[1].ProjectID = 1
	topo.SecurityGroups = append(topo.SecurityGroups, model.SecurityGroup{SgID: "sg-self", AppID: "A",
		Ingress: []model.Rule{{SgID: "sg-self", Action: "ACCEPT"}}})
	s, err := model.NewState(topo)
	require.NoError(t, err)

	tests := []struct {
		id     string
		code   int
		substr string
	}{
		{id: "sg-a", code: model.CodeBadRuleFormat, substr: "in use by eni-1"},
		{id: "sg-p1", code: model.CodeBadRuleFormat, substr: "referenced by a rule of sg-b"},
		{id: "sg-nope", code: model.CodeNotFound, substr: "no such security group"},
		{id: "sg-self"}, // a self-reference does not block deletion
		{id: "sg-b"},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			b := s.Edit()
			err := b.DeleteSG(tc.id)
			if tc.code != 0 {
				require.Error(t, err)
				assert.Equal(t, tc.code, model.CodeOf(err))
				assert.Contains(t, err.Error(), tc.substr)
				_, ok := b.State().SG(tc.id)
				assert.Equal(t, tc.code != model.CodeNotFound, ok)
				return
			}
			require.NoError(t, err)
			_, ok := b.State().SG(tc.id)
			assert.False(t, ok)
			assert.NotContains(t, b.State().SGIDs(), tc.id)
			_, ok = s.SG(tc.id)
			assert.True(t, ok, "original State lost %s", tc.id)
		})
	}
}

func TestParseDirection(t *testing.T) {
	for _, in := range []string{"ingress", "INGRESS", "Egress", "egress"} {
		d, err := model.ParseDirection(in)
		require.NoError(t, err)
		assert.Equal(t, strings.ToLower(in), d.String())
	}
	_, err := model.ParseDirection("inbound")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "direction")
}

// TestPutSGOwnerOrProjectChange checks that moving an SG cannot leave a State that NewState would refuse:
// a referencing rule in the old project, or an ENI of the old owner.
func TestPutSGOwnerOrProjectChange(t *testing.T) {
	topo := baseTopology()
	topo.SecurityGroups[0].Ingress = []model.Rule{{SgID: "sg-b", Action: "ACCEPT"}}
	s, err := model.NewState(topo)
	require.NoError(t, err)
	tests := []struct {
		name   string
		sg     model.SecurityGroup
		code   int
		substr string
	}{
		{name: "referenced SG to another project", sg: model.SecurityGroup{SgID: "sg-b", AppID: "A", ProjectID: 1},
			code: model.CodeBadRuleFormat, substr: `referenced by sg-a.ingress[0].sgId: "sg-b": security group is in project 1, not 0`},
		{name: "used SG to another account", sg: model.SecurityGroup{SgID: "sg-a", AppID: "B", Ingress: []model.Rule{{Action: "ACCEPT"}}},
			code: model.CodeNotOwner, substr: `used by eni-1.sgIds[0]: "sg-a": security group belongs to another account`},
		{name: "unused, unreferenced SG may move", sg: model.SecurityGroup{SgID: "sg-p1", AppID: "A", ProjectID: 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := s.Edit()
			before, _ := b.State().SG(tc.sg.SgID)
			err := b.PutSG(tc.sg)
			if tc.code == 0 {
				require.NoError(t, err)
				_, err = model.NewState(b.State().Topology())
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tc.code, model.CodeOf(err))
			assert.Contains(t, err.Error(), tc.substr)
			after, _ := b.State().SG(tc.sg.SgID)
			assert.Same(t, before, after, "refused PutSG changed the State")
		})
	}
}

// A long rule list is parsed in two halves at once; the error still names the first bad rule, in
// either half, and a good list parses to the same rules as a short one would.
func TestLongRuleListsReportFirstError(t *testing.T) {
	s, err := model.NewState(baseTopology())
	require.NoError(t, err)
	const n = 5000
	rules := make([]model.Rule, n)
	for i := range rules {
		rules[i] = model.Rule{IPProtocol: "tcp", CidrIP: "198.18.0.0/16", PortRange: "443", Action: "ACCEPT"}
	}
	for _, tt := range []struct {
		bad  []int
		want string
	}{
		{[]int{10, 4000}, "ingress[10].portRange"},
		{[]int{3999, 4000}, "ingress[3999].portRange"},
		{[]int{n - 1}, "ingress[4999].portRange"},
	} {
		broken := append([]model.Rule(nil), rules...)
		for _, i := range tt.bad {
			broken[i].PortRange = "70-60"
		}
		g := model.SecurityGroup{SgID: "sg-a", AppID: "A", Ingress: broken}
		err := s.Edit().PutSG(g)
		require.Error(t, err)
		assert.Contains(t, err.Error(), tt.want)
	}
	b := s.Edit()
	require.NoError(t, b.PutSG(model.SecurityGroup{SgID: "sg-a", AppID: "A", Ingress: rules}))
	g, _ := b.State().SG("sg-a")
	require.Len(t, g.Ingress, n)
	for i, r := range g.Ingress {
		require.Equal(t, rules[i], r, "rule %d", i)
	}
}

// TestPrivateIPsAreUnique: a private IP belongs to one ENI, in a topology file and through PutENI alike
// (SPEC §8); an ENI may keep its own addresses when it is replaced.
func TestPrivateIPsAreUnique(t *testing.T) {
	topo := baseTopology()
	topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{NetworkInterfaceID: "eni-2", AppID: "A",
		PrivateIPAddresses: []string{"2001:db8::2", "198.18.0.1"}})
	_, err := model.NewState(topo)
	require.Error(t, err)
	assert.Equal(t, model.CodeConflict, model.CodeOf(err))
	assert.Contains(t, err.Error(), `networkInterfaces[1].privateIpAddresses[1]: "198.18.0.1": already a private IP of network interface eni-1`)

	s := mustState(t)
	b := s.Edit()
	err = b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-2", AppID: "A", PrivateIPAddresses: []string{"198.18.0.1"}})
	assert.Equal(t, model.CodeConflict, model.CodeOf(err))
	_, ok := b.State().ENI("eni-2")
	assert.False(t, ok, "a refused PutENI adds nothing")
	require.NoError(t, b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-1", AppID: "A", PrivateIPAddresses: []string{"198.18.0.1", "198.18.0.9"}}))
}

func TestDeleteENI(t *testing.T) {
	s := mustState(t)
	b := s.Edit()
	assert.Equal(t, model.CodeNotFound, model.CodeOf(b.DeleteENI("eni-x")))
	require.NoError(t, b.DeleteENI("eni-1"))
	assert.Empty(t, b.State().ENIIDs())
	_, ok := s.ENI("eni-1")
	assert.True(t, ok, "the original state keeps it")
	// Its address is free again.
	require.NoError(t, b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-2", AppID: "A", PrivateIPAddresses: []string{"198.18.0.1"}}))
}

// TestHostInterfacesAreUnique: one host interface carries one ENI's traffic, per host.
func TestHostInterfacesAreUnique(t *testing.T) {
	topo := baseTopology()
	topo.NetworkInterfaces[0].HostInterface = "tap1"
	topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{NetworkInterfaceID: "eni-2", AppID: "A",
		PrivateIPAddresses: []string{"198.18.0.2"}, HostInterface: "tap1"})
	_, err := model.NewState(topo)
	assert.Equal(t, model.CodeConflict, model.CodeOf(err))
	assert.Contains(t, err.Error(), `networkInterfaces[1].hostInterface: "tap1": already the host interface of network interface eni-1`)
	topo.NetworkInterfaces[1].Host = "host-b" // another host's tap1 is another interface
	s, err := model.NewState(topo)
	require.NoError(t, err)
	b := s.Edit()
	err = b.PutENI(model.NetworkInterface{NetworkInterfaceID: "eni-3", AppID: "A", PrivateIPAddresses: []string{"198.18.0.3"},
		HostInterface: "tap1", Host: "host-b"})
	assert.Equal(t, model.CodeConflict, model.CodeOf(err))
}

// TestTopologyFixtures loads the bad topology files of testdata/core: each error starts with the file
// name, names the entry and carries the API code.
func TestTopologyFixtures(t *testing.T) {
	tests := []struct {
		file string
		code int // 0: not a validation error (JSON decoding)
		want string
	}{
		{file: "bad-portrange.json", code: model.CodeBadRuleFormat, want: `securityGroups[1].ingress[0].portRange: "80-70": low port above high port`},
		{file: "unknown-field.json", want: `line 4:49: securityGroups[0].ingress[0]: unknown field "cidr"`},
		{file: "syntax.json", want: "line 4:64: invalid character '}'"},
		{file: "sgref-other-project.json", code: model.CodeBadRuleFormat, want: `securityGroups[1].ingress[0].sgId: "sg-p1": security group is in project 1, not 0`},
		{file: "eni-other-account.json", code: model.CodeNotOwner, want: `networkInterfaces[0].sgIds[0]: "sg-b": security group belongs to another account`},
		{file: "eni-unknown-sg.json", code: model.CodeNotFound, want: `networkInterfaces[0].sgIds[0]: "sg-missing": no such security group`},
		{file: "desc-51.json", code: model.CodeBadRuleFormat, want: "securityGroups[0].ingress[1].desc: 51 characters, at most 50 allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("..", "testdata", "core", tc.file)
			_, err := model.LoadTopologyFile(path)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), path+": "), "error %q does not start with the file name", err)
			assert.Contains(t, err.Error(), tc.want)
			if tc.code != 0 {
				assert.Equal(t, tc.code, model.CodeOf(err))
			}
		})
	}
}

// FuzzParseTopology checks that any document either loads, and then survives the persisted round trip
// unchanged, or is refused with an error that names the file.
func FuzzParseTopology(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","ingress":[{"sgId":"sg-a","action":"ACCEPT"}],"egress":[{"ipProtocol":"tcp","cidrIp":"10.1.2.3/8","portRange":"80-81","action":"drop"}]}],"networkInterfaces":[{"networkInterfaceId":"eni-1","appId":"A","macAddress":"02:00:00:00:00:01","privateIpAddresses":["198.18.0.1","2001:db8::1"],"sgIds":["sg-a"]}]}`,
		`{"accounts":[{"appId":"A"}],"securityGroups":[{"sgId":"sg-a","appId":"A","projectId":"x"}]}`,
		`{"accounts":[{"appId":"A"}],"networkInterfaces":[{"networkInterfaceId":"e","appId":"A","privateIpAddresses":[]}]}`,
		"{\n\"accounts\": [,]}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := model.ParseTopology("fuzz.json", data)
		if err != nil {
			require.True(t, strings.HasPrefix(err.Error(), "fuzz.json: "), "error %q names no file", err)
			return
		}
		b, err := json.Marshal(s.Topology())
		require.NoError(t, err)
		again, err := model.ParseTopology("again.json", b)
		require.NoError(t, err, "persisted form %s of an accepted topology is refused", b)
		assert.Equal(t, s.Topology(), again.Topology())
	})
}

// FuzzParsePortRange checks the port parser against its definition: "N" or "N-M", decimal, 1 ≤ N ≤ M ≤ 65535.
func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"80", "1-65535", "0", "65536", "80-", "-80", " 80", "80-70", "00080", "+1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := model.ParsePortRange(s)
		if err != nil {
			assertBadRuleFormat(t, err, "portRange")
			return
		}
		assert.True(t, r.Lo >= 1 && r.Lo <= r.Hi, "accepted %q as %+v", s, r)
		lo, hi, _ := strings.Cut(s, "-")
		for _, part := range []string{lo, hi} {
			assert.Equal(t, "", strings.Trim(part, "0123456789"), "accepted non-digits in %q", s)
		}
		again, err := model.ParsePortRange(r.String())
		require.NoError(t, err)
		assert.Equal(t, r, again)
	})
}

// FuzzParseCIDR checks that accepted CIDRs are masked and reparse to themselves.
func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.1.2.3/8", "10.0.0.1", "::1", "2001:db8::1/129", "10.0.0.0/33", "fe80::1%eth0", "::ffff:1.2.3.4/100"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := model.ParseCIDR(s)
		if err != nil {
			assertBadRuleFormat(t, err, "cidrIp")
			return
		}
		assert.Equal(t, p.Masked(), p)
		assert.Empty(t, p.Addr().Zone())
		again, err := model.ParseCIDR(p.String())
		require.NoError(t, err)
		assert.Equal(t, p, again)
	})
}

func TestParseRuleProtocol(t *testing.T) {
	tests := []struct {
		in   string
		want model.Protocol
		bad  bool
	}{
		{in: "tcp", want: model.ProtoTCP},
		{in: "TCP", want: model.ProtoTCP},
		{in: "Udp", want: model.ProtoUDP},
		{in: "icmp", want: model.ProtoICMP},
		{in: "ICMP", want: model.ProtoICMP},
		{in: "icmpv6", want: model.ProtoICMPv6},
		{in: "ICMPv6", want: model.ProtoICMPv6},
		{in: "all", want: model.ProtoAll},
		{in: "ALL", want: model.ProtoAll},
		{in: "", want: model.ProtoAll},
		{in: "gre", bad: true},
		{in: "6", bad: true},
		{in: " tcp", bad: true},
		{in: "tcp ", bad: true},
		{in: "icmp6", bad: true},
		{in: "any", bad: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			p, err := model.ParseRule(model.Rule{IPProtocol: tc.in, Action: "ACCEPT"})
			if tc.bad {
				assertBadRuleFormat(t, err, "ipProtocol")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, p.Protocol)
		})
	}
}

func TestParseCIDR(t *testing.T) {
	checkParses(t, "cidrIp", model.ParseCIDR, []parseCase[netip.Prefix]{
		{in: "10.0.0.0/8", want: netip.MustParsePrefix("10.0.0.0/8")},
		{in: "10.1.2.3/8", want: netip.MustParsePrefix("10.0.0.0/8")},
		{in: "10.1.2.3", want: netip.MustParsePrefix("10.1.2.3/32")},
		{in: "0.0.0.0/0", want: netip.MustParsePrefix("0.0.0.0/0")},
		{in: "198.18.0.1/32", want: netip.MustParsePrefix("198.18.0.1/32")},
		{in: "2001:db8::1", want: netip.MustParsePrefix("2001:db8::1/128")},
		{in: "2001:db8::1/32", want: netip.MustParsePrefix("2001:db8::/32")},
		{in: "::/0", want: netip.MustParsePrefix("::/0")},
		{in: "2001:db8::/128", want: netip.MustParsePrefix("2001:db8::/128")},
		{in: "10.0.0.0/33", bad: "prefix length must be 0-32"},
		{in: "2001:db8::/129", bad: "prefix length must be 0-128"},
		{in: "10.0.0.0/-1", bad: "prefix length"},
		{in: "10.0.0/8", bad: "not an IPv4 or IPv6 CIDR"},
		{in: "300.0.0.0/8", bad: "not an IPv4 or IPv6 CIDR"},
		{in: "fe80::1%eth0", bad: "zoned"},
		{in: "fe80::1%eth0/64", bad: "zoned"},
		{in: "banana", bad: "not an IPv4 or IPv6 CIDR"},
		{in: " 10.0.0.0/8", bad: "not an IPv4 or IPv6 CIDR"},
		{in: "10.0.0.0/", bad: "cidrIp"},
	})
}

func TestParsePortRange(t *testing.T) {
	checkParses(t, "portRange", model.ParsePortRange, []parseCase[model.PortRange]{
		{in: "1", want: model.PortRange{Lo: 1, Hi: 1}},
		{in: "80", want: model.PortRange{Lo: 80, Hi: 80}},
		{in: "65535", want: model.PortRange{Lo: 65535, Hi: 65535}},
		{in: "8000-8010", want: model.PortRange{Lo: 8000, Hi: 8010}},
		{in: "1-65535", want: model.PortRange{Lo: 1, Hi: 65535}},
		{in: "80-80", want: model.PortRange{Lo: 80, Hi: 80}},
		{in: "0", bad: "out of range"},
		{in: "0-80", bad: "out of range"},
		{in: "65536", bad: "out of range"},
		{in: "80-65536", bad: "out of range"},
		{in: "99999", bad: "out of range"},
		{in: "100000", bad: "must be a port"},
		{in: "80-", bad: "must be a port"},
		{in: "-80", bad: "must be a port"},
		{in: " 80", bad: "must be a port"},
		{in: "80 ", bad: "must be a port"},
		{in: "80 - 90", bad: "must be a port"},
		{in: "+80", bad: "must be a port"},
		{in: "80-90-100", bad: "must be a port"},
		{in: "0x50", bad: "must be a port"},
		{in: "http", bad: "must be a port"},
		{in: "80,443", bad: "must be a port"},
		{in: "80-70", bad: "low port above high port"},
	})
}

// parseCase is one input of a rule-field parser: what it parses to, or (bad) part of the 9003 error it
// must fail with.
type parseCase[T any] struct {
	in   string
	want T
	bad  string
}

// checkParses runs parse on every case: a bad one must fail as a 9003 naming field, the others give want.
func checkParses[T any](t *testing.T, field string, parse func(string) (T, error), cases []parseCase[T]) {
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parse(tc.in)
			if tc.bad != "" {
				assertBadRuleFormat(t, err, field, tc.bad)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParsePortRangeMessage(t *testing.T) {
	_, err := model.ParsePortRange("80-70")
	require.Error(t, err)
	assert.Equal(t, `portRange: "80-70": low port above high port`, err.Error())
}

func TestParseRuleConstraints(t *testing.T) {
	desc := func(s string, n int) string { return strings.Repeat(s, n) }
	tests := []struct {
		name  string
		rule  model.Rule
		field string // "" = valid
		check func(t *testing.T, p model.ParsedRule)
	}{
		{name: "seed ingress example", rule: model.Rule{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "22", Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) {
				assert.Equal(t, model.ParsedRule{Protocol: model.ProtoTCP, Remote: netip.MustParsePrefix("10.0.0.0/8"),
					Ports: model.PortRange{Lo: 22, Hi: 22}, Action: model.Accept}, p)
			}},
		{name: "action lower case", rule: model.Rule{Action: "accept"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, model.Accept, p.Action) }},
		{name: "action mixed case drop", rule: model.Rule{Action: "DrOp"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, model.Drop, p.Action) }},
		{name: "absent everything is any", rule: model.Rule{Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) {
				assert.False(t, p.Remote.IsValid())
				assert.Empty(t, p.RemoteSG)
				assert.True(t, p.Ports.Any())
				assert.Equal(t, model.ProtoAll, p.Protocol)
			}},
		{name: "sgId rule", rule: model.Rule{SgID: "sg-abc", Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, "sg-abc", p.RemoteSG) }},
		{name: "udp with range", rule: model.Rule{IPProtocol: "udp", PortRange: "53-54", Action: "ACCEPT"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, model.PortRange{Lo: 53, Hi: 54}, p.Ports) }},
		{name: "host bits masked", rule: model.Rule{CidrIP: "10.1.2.3/8", Action: "DROP"},
			check: func(t *testing.T, p model.ParsedRule) { assert.Equal(t, netip.MustParsePrefix("10.0.0.0/8"), p.Remote) }},
		{name: "desc 50 ascii", rule: model.Rule{Action: "ACCEPT", Desc: desc("a", 50)}},
		{name: "desc 50 é", rule: model.Rule{Action: "ACCEPT", Desc: desc("é", 50)}},
		{name: "desc 50 中", rule: model.Rule{Action: "ACCEPT", Desc: desc("中", 50)}},
		{name: "desc 51 ascii", rule: model.Rule{Action: "ACCEPT", Desc: desc("a", 51)}, field: "desc"},
		{name: "desc 51 é", rule: model.Rule{Action: "ACCEPT", Desc: desc("é", 51)}, field: "desc"},
		{name: "desc 51 中", rule: model.Rule{Action: "ACCEPT", Desc: desc("中", 51)}, field: "desc"},
		{name: "desc invalid utf8", rule: model.Rule{Action: "ACCEPT", Desc: "\xff"}, field: "desc"},
		{name: "seed example 83-char desc", rule: model.Rule{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "22", Action: "ACCEPT",
			Desc: desc("x", 83)}, field: "desc"},
		{name: "action missing", rule: model.Rule{IPProtocol: "tcp"}, field: "action"},
		{name: "action bad", rule: model.Rule{Action: "ALLOW"}, field: "action"},
		{name: "action reject", rule: model.Rule{Action: "REJECT"}, field: "action"},
		{name: "cidr and sgId", rule: model.Rule{CidrIP: "10.0.0.0/8", SgID: "sg-a", Action: "ACCEPT"}, field: "cidrIp and sgId"},
		{name: "bad sgId", rule: model.Rule{SgID: "sg_a", Action: "ACCEPT"}, field: "sgId"},
		{name: "sgId too long", rule: model.Rule{SgID: desc("a", 65), Action: "ACCEPT"}, field: "sgId"},
		{name: "portRange with icmp", rule: model.Rule{IPProtocol: "icmp", PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange with icmpv6", rule: model.Rule{IPProtocol: "icmpv6", PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange without protocol", rule: model.Rule{PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange with all", rule: model.Rule{IPProtocol: "all", PortRange: "80", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange 0", rule: model.Rule{IPProtocol: "tcp", PortRange: "0", Action: "ACCEPT"}, field: "portRange"},
		{name: "portRange 65536", rule: model.Rule{IPProtocol: "tcp", PortRange: "65536", Action: "ACCEPT"}, field: "portRange"},
		{name: "bad cidr", rule: model.Rule{CidrIP: "10.0.0.0/33", Action: "ACCEPT"}, field: "cidrIp"},
		{name: "bad protocol", rule: model.Rule{IPProtocol: "sctp", Action: "ACCEPT"}, field: "ipProtocol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := model.ParseRule(tc.rule)
			if tc.field != "" {
				assertBadRuleFormat(t, err, tc.field)
				return
			}
			require.NoError(t, err)
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

func TestParsedRuleRoundTrip(t *testing.T) {
	in := model.Rule{IPProtocol: "TCP", CidrIP: "10.1.2.3/8", PortRange: "80-80", Action: "accept", Desc: "x"}
	p, err := model.ParseRule(in)
	require.NoError(t, err)
	assert.Equal(t, model.Rule{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "80", Action: "ACCEPT", Desc: "x"}, p.Rule())
	assert.Equal(t, `ACCEPT tcp 10.0.0.0/8 port 80 "x"`, p.String())
}

func TestErrorAtPath(t *testing.T) {
	_, err := model.ParseRule(model.Rule{IPProtocol: "tcp", PortRange: "80-70", Action: "ACCEPT"})
	require.Error(t, err)
	err = model.AtPath("ingress[0]", err)
	err = model.AtPath("securityGroups[1]", err)
	assert.Equal(t, `securityGroups[1].ingress[0].portRange: "80-70": low port above high port`, err.Error())
	assertBadRuleFormat(t, err)
	assert.Equal(t, model.CodeInternal, model.CodeOf(assert.AnError))
}

// FuzzParseRule checks that the parser never panics, that every accepted rule survives the canonical
// round trip unchanged, and that every rejection is a coded 9003 naming a field.
func FuzzParseRule(f *testing.F) {
	f.Add("tcp", "10.0.0.0/8", "", "22", "ACCEPT", "ssh")
	f.Add("udp", "2001:db8::1", "", "53-54", "drop", "")
	f.Add("", "", "sg-web", "", "ACCEPT", "中文")
	f.Add("icmp", "10.1.2.3/8", "", "", "accept", "é")
	f.Add("icmpv6", "::/0", "", "80", "ACCEPT", "")
	f.Add("tcp", "10.0.0.0/33", "", "80-70", "", "")
	f.Add("ALL", "::ffff:1.2.3.4/120", "", "", "Drop", "")
	f.Fuzz(func(t *testing.T, proto, cidr, sg, ports, action, desc string) {
		in := model.Rule{IPProtocol: proto, CidrIP: cidr, SgID: sg, PortRange: ports, Action: action, Desc: desc}
		p, err := model.ParseRule(in)
		if err != nil {
			var e *model.Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, model.CodeBadRuleFormat, e.Code)
			assert.NotEmpty(t, e.Error())
			assert.NotEmpty(t, e.Path, "error %q names no field", err)
			return
		}
		canon := p.Rule()
		again, err := model.ParseRule(canon)
		require.NoError(t, err, "canonical form %+v of %+v rejected", canon, in)
		assert.Equal(t, p, again)
		assert.Equal(t, canon, again.Rule())
	})
}

// assertBadRuleFormat checks that err is a bad rule format (9003) whose message holds each of want.
func assertBadRuleFormat(t *testing.T, err error, want ...string) {
	t.Helper()
	require.Error(t, err)
	assert.Equal(t, model.CodeBadRuleFormat, model.CodeOf(err))
	for _, w := range want {
		assert.Contains(t, err.Error(), w)
	}
}
