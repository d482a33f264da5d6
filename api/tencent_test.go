package api

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
	"github.com/sgsim/sgsim/store/nonce"
)

func TestSignatureVectors(t *testing.T) {
	const key = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA"
	p := url.Values{}
	for _, kv := range [][2]string{{"Action", "DescribeInstances"}, {"InstanceIds.0", "ins-09dx96dg"}, {"Nonce", "11886"},
		{"Region", "ap-guangzhou"}, {"SecretId", "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"}, {"Timestamp", "1465185768"}} {
		p.Set(kv[0], kv[1])
	}
	tests := []struct{ method, want string }{
		{"HmacSHA256", "0EEm/HtGRr/VJXTAD9tYMth1Bzm3lLHz5RCDv1GdM8s="},
		{"HmacSHA1", "nPVnY6njQmwQ8ciqbPl5Qe+Oru4="},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			q := url.Values{}
			for k, v := range p {
				q[k] = v
			}
			q.Set("SignatureMethod", tt.method)
			q.Set("Signature", "ignored")
			s := StringToSign("GET", "cvm.api.qcloud.com", q)
			assert.Equal(t, "GETcvm.api.qcloud.com/v2/index.php?Action=DescribeInstances&InstanceIds.0=ins-09dx96dg&Nonce=11886&Region=ap-guangzhou&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA&SignatureMethod="+tt.method+"&Timestamp=1465185768", s)
			assert.Equal(t, tt.want, SignString(s, key, tt.method))
		})
	}
	// "_" in a name is signed as ".".
	q := url.Values{"InstanceIds_0": {"x"}}
	assert.Equal(t, "GEThost/v2/index.php?InstanceIds.0=x", StringToSign("GET", "host", q))
}

func TestModifySecurityGroupPolicy(t *testing.T) {
	a := newTestAPI(t)
	seed := func(desc string) []string {
		return []string{"Action", ActModifyPolicy, "sgId", "sg-web",
			"ingress.0.ipProtocol", "tcp", "ingress.0.cidrIp", "10.0.0.0/8", "ingress.0.action", "ACCEPT", "ingress.0.portRange", "22",
			"ingress.0.desc", desc,
			"egress.0.action", "ACCEPT", "egress.0.ipProtocol", "tcp", "egress.0.desc", "Outbound tcp traffic of private network is allowed",
			"egress.0.cidrIp", "10.0.0.0/8"}
	}
	longDesc := "Access to tcp protocol port 22 for inbound traffic of private network is prohibited"
	require.Len(t, longDesc, 83)
	before := a.sg("sg-web")

	r := a.tc(seed(longDesc)...)
	assert.Equal(t, model.CodeBadRuleFormat, r.Code, r.Message)
	assert.Contains(t, r.Message, "desc")
	assert.Same(t, before, a.sg("sg-web"), "a refused call changes nothing")

	// The seed's egress desc is 50 characters: the limit itself is accepted.
	r = a.tc(seed("ssh from the private network")...)
	require.Equal(t, 0, r.Code, r.Message)
	assert.Equal(t, "", r.Message)
	g := a.sg("sg-web")
	assert.Equal(t, before.Version+1, g.Version)
	require.Len(t, g.Ingress, 1)
	require.Len(t, g.Egress, 1)

	// Describe returns what was set, canonicalised.
	r = a.tc("Action", ActDescribePolicy, "sgId", "sg-web")
	require.Equal(t, 0, r.Code, r.Message)
	var pol struct{ Ingress, Egress []model.Rule }
	require.NoError(t, json.Unmarshal(r.Data, &pol))
	assert.Equal(t, []model.Rule{{IPProtocol: "tcp", CidrIP: "10.0.0.0/8", PortRange: "22", Action: "ACCEPT", Desc: "ssh from the private network"}}, pol.Ingress)

	// The same rules again: success, no new version.
	r = a.tc(seed("ssh from the private network")...)
	require.Equal(t, 0, r.Code)
	assert.Equal(t, g.Version, a.sg("sg-web").Version)
}

func rules(dir string, n int) []string {
	var kv []string
	for i := range n {
		p := dir + "." + strconv.Itoa(i) + "."
		kv = append(kv, p+"ipProtocol", "tcp", p+"portRange", strconv.Itoa(1000+i), p+"action", "accept")
	}
	return kv
}

func TestModifyPolicyErrors(t *testing.T) {
	tests := []struct {
		name string
		kv   []string
		code int
		msg  string
	}{
		{"100 rules is the limit", append([]string{"sgId", "sg-web"}, rules("ingress", 100)...), 0, ""},
		{"101 ingress rules", append([]string{"sgId", "sg-web"}, rules("ingress", 101)...), model.CodeLimit, "101 rules"},
		{"101 egress rules", append([]string{"sgId", "sg-web"}, rules("egress", 101)...), model.CodeLimit, "egress"},
		{"cidrIp and sgId", []string{"sgId", "sg-web", "ingress.0.cidrIp", "10.0.0.0/8", "ingress.0.sgId", "sg-db", "ingress.0.action", "ACCEPT"}, model.CodeBadRuleFormat, "mutually exclusive"},
		{"desc of 51", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.desc", strings.Repeat("é", 51)}, model.CodeBadRuleFormat, "51 characters"},
		{"desc of 50", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.desc", strings.Repeat("é", 50)}, 0, ""},
		{"bad protocol", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.ipProtocol", "sctp"}, model.CodeBadRuleFormat, "ingress[0].ipProtocol"},
		{"bad cidr", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.cidrIp", "10.0.0.0/33"}, model.CodeBadRuleFormat, "cidrIp"},
		{"port without tcp", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.portRange", "80"}, model.CodeBadRuleFormat, "portRange"},
		{"bad port", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.ipProtocol", "tcp", "ingress.0.portRange", "90-80"}, model.CodeBadRuleFormat, "portRange"},
		{"bad action", []string{"sgId", "sg-web", "ingress.0.action", "ALLOW"}, model.CodeBadRuleFormat, "action"},
		{"missing action", []string{"sgId", "sg-web", "egress.0.ipProtocol", "tcp"}, model.CodeBadRuleFormat, "action"},
		{"referenced SG missing", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.sgId", "sg-nope"}, model.CodeBadRuleFormat, "sg-nope"},
		{"referenced SG of another account", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.sgId", "sg-other"}, model.CodeBadRuleFormat, "another account"},
		{"unknown rule field", []string{"sgId", "sg-web", "ingress.0.action", "ACCEPT", "ingress.0.color", "red"}, model.CodeBadRuleFormat, "color"},
		{"preset", []string{"sgId", "sg-preset", "ingress.0.action", "ACCEPT"}, model.CodePreset, "preset"},
		{"other account", []string{"sgId", "sg-other", "ingress.0.action", "ACCEPT"}, model.CodeNotOwner, "sg-other"},
		{"unknown sg", []string{"sgId", "sg-zzzzzzzz", "ingress.0.action", "ACCEPT"}, model.CodeNotFound, "sg-zzzzzzzz"},
		{"missing sgId", []string{"ingress.0.action", "ACCEPT"}, model.CodeBadParameter, "sgId"},
		{"index not dense", []string{"sgId", "sg-web", "ingress.1.action", "ACCEPT"}, model.CodeBadParameter, "dense"},
		{"index with leading zero", []string{"sgId", "sg-web", "ingress.00.action", "ACCEPT"}, model.CodeBadParameter, "dense"},
		{"too many sgId rules", append([]string{"sgId", "sg-web"}, sgRefRules(11)...), model.CodeLimit, "reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAPI(t)
			before, _ := a.ctrl.View().State.SG(tt.kv[1])
			gen := a.ctrl.View().Generation
			r := a.tc(append([]string{"Action", ActModifyPolicy}, tt.kv...)...)
			require.Equal(t, tt.code, r.Code, r.Message)
			assert.Contains(t, r.Message, tt.msg)
			if tt.code != 0 {
				after, _ := a.ctrl.View().State.SG(tt.kv[1])
				assert.Same(t, before, after, "rules unchanged")
				assert.Equal(t, gen, a.ctrl.View().Generation, "nothing committed")
			}
		})
	}
}

func sgRefRules(n int) []string {
	var kv []string
	for i := range n {
		p := "ingress." + strconv.Itoa(i) + "."
		kv = append(kv, p+"sgId", "sg-db", p+"action", "ACCEPT")
	}
	return kv
}

func TestAuthAndReplay(t *testing.T) {
	a := newTestAPI(t)
	ok := a.signed(http.MethodGet, secretID1, secretKey1, "Action", ActDescribePolicy, "sgId", "sg-web")
	assert.Equal(t, 0, a.send(http.MethodGet, ok).Code, "GET works")
	assert.Equal(t, model.CodeReplay, a.send(http.MethodGet, ok).Code, "the same Nonce again")

	bad := a.signed(http.MethodGet, secretID1, "wrong-key", "Action", ActDescribePolicy, "sgId", "sg-web")
	assert.Equal(t, model.CodeAuthFailed, a.send(http.MethodGet, bad).Code)

	unknown := a.signed(http.MethodGet, "AKIDnobody", secretKey1, "Action", ActDescribePolicy, "sgId", "sg-web")
	assert.Equal(t, model.CodeAuthFailed, a.send(http.MethodGet, unknown).Code)

	// A signature made for GET does not authenticate a POST.
	wrongMethod := a.signed(http.MethodGet, secretID1, secretKey1, "Action", ActDescribePolicy, "sgId", "sg-web")
	assert.Equal(t, model.CodeAuthFailed, a.send(http.MethodPost, wrongMethod).Code)

	// Tampering with a signed value breaks the signature.
	tampered := a.signed(http.MethodPost, secretID1, secretKey1, "Action", ActDeleteSG, "sgId", "sg-ssh")
	tampered.Set("sgId", "sg-lockdown")
	assert.Equal(t, model.CodeAuthFailed, a.send(http.MethodPost, tampered).Code)

	// HmacSHA1 is accepted too.
	sha1 := a.signed(http.MethodPost, secretID1, secretKey1, "Action", ActDescribePolicy, "sgId", "sg-web")
	sha1.Set("SignatureMethod", "HmacSHA1")
	sha1.Set("Nonce", "424242") // a Nonce is a positive integer (SPEC §4)
	Sign(http.MethodPost, strings.TrimPrefix(a.srv.URL, "http://"), sha1, secretKey1)
	assert.Equal(t, 0, a.send(http.MethodPost, sha1).Code)

	for _, off := range []int64{-3 * 3600, 3 * 3600} {
		p := a.signed(http.MethodPost, secretID1, secretKey1, "Action", ActDescribePolicy, "sgId", "sg-web")
		p.Set("Timestamp", strconv.FormatInt(testNow.Unix()+off, 10))
		Sign(http.MethodPost, strings.TrimPrefix(a.srv.URL, "http://"), p, secretKey1)
		assert.Equal(t, model.CodeReplay, a.send(http.MethodPost, p).Code, "timestamp off by %d s", off)
	}
}

func TestGarbage(t *testing.T) {
	a := newTestAPI(t)
	for _, q := range []string{"", "Action=", "Action=Nope", "%zz", "Action=DescribeSecurityGroupPolicy&sgId=sg-web&sgId=sg-db",
		"Action=DescribeSecurityGroupPolicy&sgId.0=x", "Action=DescribeSecurityGroupPolicy&Timestamp=x&Nonce=1", "a..b=1",
		strings.Repeat("x=1&", 3000)} {
		resp, err := http.Get(a.srv.URL + TencentPath + "?" + q)
		require.NoError(t, err)
		var out tcResp
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		resp.Body.Close()
		assert.Equal(t, model.CodeBadParameter, out.Code, "%.40q → %s", q, out.Message)
		assert.NotEmpty(t, out.Message)
	}
	resp, err := http.Post(a.srv.URL+TencentPath, "application/x-www-form-urlencoded", strings.NewReader(strings.Repeat("a", 2<<20)))
	require.NoError(t, err)
	var out tcResp
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	resp.Body.Close()
	assert.Equal(t, model.CodeBadParameter, out.Code, "oversized body")
	assert.Contains(t, out.Message, "too large")
}

func TestModifySecurityGroupsOfNetworkInterface(t *testing.T) {
	set := func(kv ...string) []string { return append([]string{"Action", ActModifyENISGs}, kv...) }
	tests := []struct {
		name string
		kv   []string
		code int
		msg  string
	}{
		{"empty set", set(), model.CodeBadParameter, "at least one"},
		{"unknown ENI", set("networkInterfaceSet.0.networkInterfaceId", "eni-nope", "networkInterfaceSet.0.sgIds.0", "sg-web"), model.CodeNotFound, "eni-nope"},
		{"unknown SG", set("networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-nope"), model.CodeNotFound, "sg-nope"},
		{"other's ENI", set("networkInterfaceSet.0.networkInterfaceId", "eni-other", "networkInterfaceSet.0.sgIds.0", "sg-web"), model.CodeNotOwner, "eni-other"},
		{"other's SG", set("networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-other"), model.CodeNotOwner, "sg-other"},
		{"duplicate sgIds", set("networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-web", "networkInterfaceSet.0.sgIds.1", "sg-web"), model.CodeBadParameter, "duplicate"},
		{"too many SGs", set("networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-web", "networkInterfaceSet.0.sgIds.1", "sg-db",
			"networkInterfaceSet.0.sgIds.2", "sg-ssh", "networkInterfaceSet.0.sgIds.3", "sg-lockdown", "networkInterfaceSet.0.sgIds.4", "sg-preset", "networkInterfaceSet.0.sgIds.5", "sg-x"), model.CodeBadParameter, "at most 5"},
		{"missing id", set("networkInterfaceSet.0.sgIds.0", "sg-web"), model.CodeBadParameter, "networkInterfaceId"},
		{"second entry bad: all or none", set("networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-db",
			"networkInterfaceSet.1.networkInterfaceId", "eni-nope", "networkInterfaceSet.1.sgIds.0", "sg-db"), model.CodeNotFound, "networkInterfaceSet.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAPI(t)
			gen := a.ctrl.View().Generation
			r := a.tc(tt.kv...)
			require.Equal(t, tt.code, r.Code, r.Message)
			assert.Contains(t, r.Message, tt.msg)
			assert.Equal(t, gen, a.ctrl.View().Generation)
			assert.Equal(t, []string{"sg-web", "sg-ssh"}, a.eniSGs("eni-web1"))
		})
	}
	t.Run("detach all", func(t *testing.T) {
		a := newTestAPI(t)
		r := a.tc(set("networkInterfaceSet.0.networkInterfaceId", "eni-web1")...)
		require.Equal(t, 0, r.Code, r.Message)
		assert.Empty(t, a.eniSGs("eni-web1"))
		c := a.check("eni-web1", "ingress", "tcp", "203.0.113.7", 80)
		assert.Equal(t, "no-sg", c.Reason)
		assert.Equal(t, "DROP", c.Verdict)
	})
}

// Reordering two SGs changes which rule decides (SPEC §2: first match over the concatenated lists).
func TestReorderChangesVerdict(t *testing.T) {
	a := newTestAPI(t)
	c := a.check("eni-web2", "ingress", "tcp", "198.18.5.1", 22)
	assert.Equal(t, "DROP", c.Verdict)
	assert.Equal(t, "sg-lockdown", c.SgID)
	r := a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-web2",
		"networkInterfaceSet.0.sgIds.0", "sg-web", "networkInterfaceSet.0.sgIds.1", "sg-ssh", "networkInterfaceSet.0.sgIds.2", "sg-lockdown")
	require.Equal(t, 0, r.Code, r.Message)
	c = a.check("eni-web2", "ingress", "tcp", "198.18.5.1", 22)
	assert.Equal(t, "ACCEPT", c.Verdict)
	assert.Equal(t, "sg-ssh", c.SgID)
	require.NotNil(t, c.RuleIndex)
	assert.Equal(t, 0, *c.RuleIndex)
}

// Moving an ENI out of an SG re-targets the sgId rules naming that SG at once.
func TestMembershipRetargetsReferences(t *testing.T) {
	a := newTestAPI(t)
	c := a.check("eni-db1", "ingress", "tcp", "198.18.1.10", 5432)
	require.Equal(t, "ACCEPT", c.Verdict)
	assert.Equal(t, "sg-db", c.SgID)
	r := a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-ssh")
	require.Equal(t, 0, r.Code, r.Message)
	c = a.check("eni-db1", "ingress", "tcp", "198.18.1.10", 5432)
	assert.Equal(t, "DROP", c.Verdict)
	assert.Equal(t, "default-drop", c.Reason)
	// eni-web2 is still in sg-web.
	assert.Equal(t, "ACCEPT", a.check("eni-db1", "ingress", "tcp", "198.18.1.11", 5432).Verdict)
	// And back in.
	r = a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-web1", "networkInterfaceSet.0.sgIds.0", "sg-ssh", "networkInterfaceSet.0.sgIds.1", "sg-web")
	require.Equal(t, 0, r.Code, r.Message)
	assert.Equal(t, "ACCEPT", a.check("eni-db1", "ingress", "tcp", "198.18.1.10", 5432).Verdict)
}

var sgIDPattern = regexp.MustCompile(`^sg-[a-z0-9]{8}$`)

func TestCreateAndDeleteSecurityGroup(t *testing.T) {
	a := newTestAPI(t)
	r := a.tc("Action", ActCreateSG, "sgName", "new", "sgRemark", "made by a test", "projectId", "0")
	require.Equal(t, 0, r.Code, r.Message)
	var created struct{ SgID, SgName, SgRemark string }
	require.NoError(t, json.Unmarshal(r.Data, &created))
	assert.Regexp(t, sgIDPattern, created.SgID)
	assert.Equal(t, "new", created.SgName)
	assert.Equal(t, "made by a test", created.SgRemark)

	assert.Equal(t, model.CodeNameExists, a.tc("Action", ActCreateSG, "sgName", "new").Code)
	assert.Equal(t, 0, a.tc("Action", ActCreateSG, "sgName", "new", "projectId", "4").Code, "same name in another project")
	assert.Equal(t, model.CodeBadRuleFormat, a.tc("Action", ActCreateSG, "sgName", strings.Repeat("n", 61)).Code)
	assert.Equal(t, model.CodeBadRuleFormat, a.tc("Action", ActCreateSG, "sgName", "").Code)
	assert.Equal(t, model.CodeBadRuleFormat, a.tc("Action", ActCreateSG, "sgName", "x", "sgRemark", strings.Repeat("r", 101)).Code)
	assert.Equal(t, model.CodeBadParameter, a.tc("Action", ActCreateSG, "sgName", "x", "projectId", "seven").Code)

	// A new SG has no rules: it drops everything.
	r = a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-spare", "networkInterfaceSet.0.sgIds.0", created.SgID)
	require.Equal(t, 0, r.Code, r.Message)
	c := a.check("eni-spare", "ingress", "icmp", "198.18.1.10", 0)
	assert.Equal(t, "DROP", c.Verdict)
	assert.Equal(t, "default-drop", c.Reason)

	// Delete: refused while used, while referenced, for presets and for others' SGs.
	del := func(id string) tcResp { return a.tc("Action", ActDeleteSG, "sgId", id) }
	assert.Equal(t, model.CodeBadRuleFormat, del(created.SgID).Code, "in use by eni-spare")
	require.Equal(t, 0, a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-spare").Code)
	require.Equal(t, 0, a.tc("Action", ActModifyPolicy, "sgId", "sg-lockdown", "ingress.0.sgId", created.SgID, "ingress.0.action", "DROP").Code)
	r = del(created.SgID)
	assert.Equal(t, model.CodeBadRuleFormat, r.Code)
	assert.Contains(t, r.Message, "sg-lockdown")
	require.Equal(t, 0, a.tc("Action", ActModifyPolicy, "sgId", "sg-lockdown").Code)
	assert.Equal(t, 0, del(created.SgID).Code)
	_, exists := a.ctrl.View().State.SG(created.SgID)
	assert.False(t, exists)
	assert.Equal(t, model.CodeNotOwner, del(created.SgID).Code, "unknown")
	assert.Equal(t, model.CodeNotOwner, del("sg-other").Code)
	assert.Equal(t, model.CodePreset, del("sg-preset").Code)
}

func TestCreateQuota(t *testing.T) {
	a := newTestAPI(t)
	for i := range 50 {
		r := a.tc("Action", ActCreateSG, "sgName", "g"+strconv.Itoa(i), "projectId", "9")
		require.Equal(t, 0, r.Code, r.Message)
	}
	r := a.tc("Action", ActCreateSG, "sgName", "one-too-many", "projectId", "9")
	assert.Equal(t, model.CodeLimit, r.Code, r.Message)
}

func TestDescribe(t *testing.T) {
	a := newTestAPI(t)
	r := a.tc("Action", ActDescribeSGEx, "projectId", "0", "limit", "2", "offset", "1")
	require.Equal(t, 0, r.Code, r.Message)
	var ex struct {
		TotalNum int `json:"totalNum"`
		Detail   []struct {
			SgID             string `json:"sgId"`
			BeAssociateCount int    `json:"beAssociateCount"`
			Version          int    `json:"version"`
		} `json:"detail"`
	}
	require.NoError(t, json.Unmarshal(r.Data, &ex))
	assert.Equal(t, 5, ex.TotalNum, "account 1 has 5 SGs in project 0 (sg-other is account 2's)")
	require.Len(t, ex.Detail, 2)
	assert.Equal(t, "sg-db", ex.Detail[0].SgID)
	assert.Equal(t, 2, ex.Detail[0].BeAssociateCount)

	r = a.tc("Action", ActDescribeENIs, "networkInterfaceId", "eni-web2")
	require.Equal(t, 0, r.Code, r.Message)
	require.NotNil(t, r.TotalCount)
	assert.Equal(t, 1, *r.TotalCount)
	var enis []struct {
		NetworkInterfaceID    string `json:"networkInterfaceId"`
		MacAddress            string `json:"macAddress"`
		PrivateIPAddressesSet []struct {
			PrivateIPAddress string `json:"privateIpAddress"`
		} `json:"privateIpAddressesSet"`
		GroupSet []struct{ SgID, SgName string } `json:"groupSet"`
	}
	require.NoError(t, json.Unmarshal(r.Data, &enis))
	require.Len(t, enis, 1)
	assert.Equal(t, "02:00:00:00:01:02", enis[0].MacAddress)
	assert.Equal(t, "198.18.1.11", enis[0].PrivateIPAddressesSet[0].PrivateIPAddress)
	var order []string
	for _, g := range enis[0].GroupSet {
		order = append(order, g.SgID)
	}
	assert.Equal(t, []string{"sg-web", "sg-lockdown", "sg-ssh"}, order)

	r = a.tc("Action", ActDescribeENIs)
	require.Equal(t, 0, r.Code)
	assert.Equal(t, 5, *r.TotalCount, "only account 1's ENIs")
	assert.Equal(t, model.CodeBadParameter, a.tc("Action", ActDescribeENIs, "limit", "51").Code)
	assert.Equal(t, model.CodeNotOwner, a.tc("Action", ActDescribePolicy, "sgId", "sg-other").Code)
	assert.Equal(t, model.CodeNotFound, a.tc("Action", ActDescribePolicy, "sgId", "sg-none").Code)
}

// The seed page of ModifySecurityGroupsOfNetworkInterface shows a request whose Action is
// ModifySecurityGroupsOfInstance and whose IDs are not in the demo: taken literally it is an unknown
// action (4000); with the documented action it names an unknown ENI (5000); with demo IDs it works.
func TestSeedModifySecurityGroupsOfNetworkInterface(t *testing.T) {
	a := newTestAPI(t)
	body := []string{"networkInterfaceSet.0.networkInterfaceId", "eni-3056glfn",
		"networkInterfaceSet.0.sgIds.0", "sg-1sdj39df", "networkInterfaceSet.0.sgIds.1", "sg-o8sk37is"}
	r := a.tc(append([]string{"Action", "ModifySecurityGroupsOfInstance"}, body...)...)
	assert.Equal(t, model.CodeBadParameter, r.Code)
	assert.Contains(t, r.Message, "unknown action")
	r = a.tc(append([]string{"Action", ActModifyENISGs}, body...)...)
	assert.Equal(t, model.CodeNotFound, r.Code)
	assert.Contains(t, r.Message, "eni-3056glfn")
	r = a.tc("Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-spare",
		"networkInterfaceSet.0.sgIds.0", "sg-ssh", "networkInterfaceSet.0.sgIds.1", "sg-web")
	require.Equal(t, 0, r.Code, r.Message)
	assert.Equal(t, `{"code":0,"message":""}`, mustJSON(t, r))
	assert.Equal(t, []string{"sg-ssh", "sg-web"}, a.eniSGs("eni-spare"))
}

func mustJSON(t *testing.T, r tcResp) string {
	b, err := json.Marshal(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{r.Code, r.Message})
	require.NoError(t, err)
	require.Nil(t, r.Data)
	require.Nil(t, r.TotalCount)
	return string(b)
}

// TestRaisedLimitsTakeABigPolicy: with the limits raised, a policy of more than net/url's 10,000
// parameters goes through (MaxParams is the only bound); with the defaults it is refused by name.
func TestRaisedLimitsTakeABigPolicy(t *testing.T) {
	kv := append([]string{"Action", ActModifyPolicy, "sgId", "sg-web"}, rules("ingress", 4000)...)

	small := newTestAPI(t)
	r := small.tc(kv...)
	assert.Equal(t, model.CodeBadParameter, r.Code)
	assert.Contains(t, r.Message, "parameters, at most 2000 allowed")

	lim := control.DefaultLimits()
	lim.RulesPerDirection = 4000
	ctrl, err := control.New(context.Background(), store.NewMemory(), demoState(t), control.Options{Limits: &lim})
	require.NoError(t, err)
	h := NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, MaxParams: 20000, MaxBodyBytes: 4 << 20})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	big := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}
	r = big.tc(kv...)
	require.Equal(t, 0, r.Code, r.Message)
	assert.Len(t, big.sg("sg-web").Ingress, 4000)

	// Without explicit bounds (sgsim serve --max-rules 4000), the handler makes room for the limits.
	ctrl, err = control.New(context.Background(), store.NewMemory(), demoState(t), control.Options{Limits: &lim})
	require.NoError(t, err)
	h = NewHandler(ctrl, Options{Now: func() time.Time { return testNow }})
	srv = httptest.NewServer(h)
	t.Cleanup(srv.Close)
	derived := &testAPI{t: t, srv: srv, h: h, ctrl: ctrl}
	r = derived.tc(kv...)
	require.Equal(t, 0, r.Code, r.Message)
	assert.Len(t, derived.sg("sg-web").Ingress, 4000)
}

// With a durable Nonce record, every call's Nonce outlives a restart: a change's is written in the
// change's own commit, a refused or read-only call's on its own, and a new handler over the same store
// refuses all three.
func TestNoncesSurviveRestart(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), store.DBFile))
	require.NoError(t, err)
	defer st.Close()
	ctrl, err := control.New(ctx, st, demoState(t), control.Options{})
	require.NoError(t, err)
	newHandler := func() *Handler {
		return NewHandler(ctrl, Options{Now: func() time.Time { return testNow }, Nonces: st})
	}
	a := newTestAPI(t)
	a.srv.Config.Handler = newHandler()

	change := a.signed(http.MethodPost, secretID1, secretKey1, "Action", ActModifyPolicy, "sgId", "sg-web",
		"ingress.0.action", "ACCEPT", "ingress.0.ipProtocol", "tcp", "ingress.0.portRange", "8443")
	refused := a.signed(http.MethodPost, secretID1, secretKey1, "Action", ActModifyPolicy, "sgId", "sg-nope",
		"ingress.0.action", "ACCEPT")
	read := a.signed(http.MethodPost, secretID1, secretKey1, "Action", ActDescribePolicy, "sgId", "sg-web")
	assert.Equal(t, 0, a.send(http.MethodPost, change).Code)
	recent, err := st.DurableNonces(ctx, testNow, time.Hour)
	require.NoError(t, err)
	ts, err := strconv.ParseInt(change.Get("Timestamp"), 10, 64)
	require.NoError(t, err)
	assert.Contains(t, recent, nonce.KeyOf(secretID1, ts, change.Get("Nonce")), "recorded with the change")
	assert.Equal(t, model.CodeNotFound, a.send(http.MethodPost, refused).Code)
	assert.Equal(t, 0, a.send(http.MethodPost, read).Code)
	// Moved on, so that replaying the first change would change something again.
	assert.Equal(t, 0, a.tc("Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.action", "DROP").Code)
	before := ctrl.View().Generation

	a.srv.Config.Handler = newHandler() // a restart: an empty in-memory record
	for name, p := range map[string]url.Values{"change": change, "refused": refused, "read": read} {
		assert.Equal(t, model.CodeReplay, a.send(http.MethodPost, p).Code, name)
	}
	assert.Equal(t, before, ctrl.View().Generation, "the replays changed nothing")
	assert.Equal(t, 0, a.tc("Action", ActDescribePolicy, "sgId", "sg-web").Code, "a fresh Nonce still works")
}

// TestSDKPublicParamsOnEveryAction: Token, RequestClient, Language and Version (SPEC §4) are accepted
// by every action, with values or empty, signed like the rest, and change nothing: each call answers
// as it does without them. Region may be empty too.
func TestSDKPublicParamsOnEveryAction(t *testing.T) {
	calls := [][]string{
		{"Action", ActModifyPolicy, "sgId", "sg-web", "ingress.0.action", "ACCEPT"},
		{"Action", ActModifyENISGs, "networkInterfaceSet.0.networkInterfaceId", "eni-spare", "networkInterfaceSet.0.sgIds.0", "sg-ssh"},
		{"Action", ActCreateSG, "sgName", "extra", "projectId", "0"},
		{"Action", ActDeleteSG, "sgId", "sg-ssh"},
		{"Action", ActDescribePolicy, "sgId", "sg-web"},
		{"Action", ActDescribeSGEx, "limit", "5"},
		{"Action", ActDescribeENIs, "networkInterfaceId", "eni-web1"},
		{"Action", ActDeleteSG, "sgId", "sg-preset"}, // an error answers the same too
	}
	extras := map[string][]string{
		"values": {"Token", "tok-sts-1", "RequestClient", "SDK_GO_1.3.211: sgsim-test", "Language", "zh-CN", "Version", "2017-03-12"},
		"empty":  {"Token", "", "RequestClient", "", "Language", "", "Version", ""},
	}
	for _, kv := range calls {
		t.Run(kv[1], func(t *testing.T) {
			plain := newTestAPI(t).tc(kv...)
			for name, extra := range extras {
				a := newTestAPI(t)
				p := a.signed(http.MethodPost, secretID1, secretKey1, append(slices.Clone(kv), extra...)...)
				p.Set("Region", "")
				Sign(http.MethodPost, strings.TrimPrefix(a.srv.URL, "http://"), p, secretKey1)
				got := a.send(http.MethodPost, p)
				assert.Equal(t, plain.Code, got.Code, "%s: %s", name, got.Message)
				newID := regexp.MustCompile(`"sgId":"sg-[0-9a-z]{8}"`) // CreateSecurityGroup's is random
				assert.Equal(t, newID.ReplaceAllString(string(plain.Data), "NEW"), newID.ReplaceAllString(string(got.Data), "NEW"), name)

				// Signed like any other parameter: changed after signing, the signature fails.
				p.Set("Language", "en-US")
				p.Set("Nonce", "99999")
				assert.Equal(t, model.CodeAuthFailed, a.send(http.MethodPost, p).Code, name)
			}
		})
	}
}

// TestContentType: a POST's body is read as a form when its media type, in any case and before any
// parameter, is application/x-www-form-urlencoded (or when it has none), and its charset, if given, is
// utf-8 (or its subset us-ascii); any other is 4000 naming it.
func TestContentType(t *testing.T) {
	a := newTestAPI(t)
	for _, tt := range []struct {
		ct   string
		code int
		msg  string
	}{
		{"application/x-www-form-urlencoded", 0, ""},
		{"", 0, ""},
		{"APPLICATION/X-WWW-Form-Urlencoded; charset=UTF-8", 0, ""},
		{`application/x-www-form-urlencoded; charset="utf-8"`, 0, ""},
		{"application/x-www-form-urlencoded;charset=us-ascii", 0, ""},
		{" application/x-www-form-urlencoded ;", 0, ""},
		{"application/x-www-form-urlencodedx", model.CodeBadParameter, ""},
		{"application/x-www-form-urlencoded-v2; charset=utf-8", model.CodeBadParameter, ""},
		{"multipart/form-data; boundary=x", model.CodeBadParameter, ""},
		{"text/plain", model.CodeBadParameter, ""},
		{"application/x-www-form-urlencoded; charset=GBK", model.CodeBadParameter,
			`content type "application/x-www-form-urlencoded; charset=GBK": charset "GBK": a form is read as utf-8`},
		{"application/x-www-form-urlencoded; charset=", model.CodeBadParameter,
			`content type "application/x-www-form-urlencoded; charset=": charset "": a form is read as utf-8`},
	} {
		t.Run(tt.ct, func(t *testing.T) {
			p := a.signed(http.MethodPost, secretID1, secretKey1, "Action", ActDescribePolicy, "sgId", "sg-web")
			req := httptest.NewRequest(http.MethodPost, a.srv.URL+TencentPath, strings.NewReader(p.Encode()))
			req.Header.Set("Content-Type", tt.ct)
			rec := httptest.NewRecorder()
			a.h.ServeHTTP(rec, req)
			var out tcResp
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
			assert.Equal(t, tt.code, out.Code, out.Message)
			switch {
			case tt.msg != "":
				assert.Equal(t, tt.msg, out.Message)
			case tt.code != 0:
				assert.Equal(t, fmt.Sprintf("content type %q: want application/x-www-form-urlencoded", tt.ct), out.Message)
			}
		})
	}
}

// TestNonceForms: a Nonce is a positive decimal integer up to 2^63-1, the Go SDK's 63-bit ones
// included; anything else is 4000 naming the parameter, even when signed.
func TestNonceForms(t *testing.T) {
	for _, tt := range []struct {
		nonce string
		code  int
	}{
		{"1", 0}, {"65535", 0}, {"9223372036854775807", 0}, {"5577006791947779410", 0},
		{"0", model.CodeBadParameter}, {"-1", model.CodeBadParameter}, {"+1", model.CodeBadParameter},
		{"01", model.CodeBadParameter}, {"9223372036854775808", model.CodeBadParameter},
		{"1e3", model.CodeBadParameter}, {" 1", model.CodeBadParameter}, {"abc", model.CodeBadParameter},
		{strings.Repeat("9", 4000), model.CodeBadParameter},
	} {
		a := newTestAPI(t)
		r := a.tc("Action", ActDescribePolicy, "sgId", "sg-web", "Nonce", tt.nonce)
		assert.Equal(t, tt.code, r.Code, "%.30q: %s", tt.nonce, r.Message)
		if tt.code != 0 {
			assert.Contains(t, r.Message, `parameter "Nonce"`)
		}
	}
}

// signedAt is testAPI.signed with the given Timestamp and Nonce.
func (a *testAPI) signedAt(ts int64, nonce string, kv ...string) url.Values {
	p := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	p.Set("SecretId", secretID1)
	p.Set("Region", "ap-guangzhou")
	p.Set("Timestamp", strconv.FormatInt(ts, 10))
	p.Set("Nonce", nonce)
	p.Set("SignatureMethod", "HmacSHA256")
	Sign(http.MethodPost, strings.TrimPrefix(a.srv.URL, "http://"), p, secretKey1)
	return p
}

// serve runs one request through the handler in process (no socket: 3,000 calls stay fast).
func (a *testAPI) serve(p url.Values) tcResp {
	a.t.Helper()
	req := httptest.NewRequest(http.MethodPost, a.srv.URL+TencentPath, strings.NewReader(p.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	a.srv.Config.Handler.ServeHTTP(rec, req)
	var out tcResp
	require.NoError(a.t, json.Unmarshal(rec.Body.Bytes(), &out))
	return out
}

// The replay record keys on (SecretId, Timestamp, Nonce) as SPEC §4 says: a client drawing its Nonces
// from 0–65535 reuses some (about 66 in 3,000 draws), but never with the same Timestamp, and none of its
// calls is refused; the same request sent twice is. Both with the in-memory and the durable record.
func TestNonceKeyHasTimestamp(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "bolt"}[durable], func(t *testing.T) {
			a := newTestAPI(t)
			if durable {
				st, err := store.OpenBolt(filepath.Join(t.TempDir(), store.DBFile))
				require.NoError(t, err)
				t.Cleanup(func() { st.Close() })
				a.srv.Config.Handler = NewHandler(a.ctrl, Options{Now: func() time.Time { return testNow }, Nonces: st})
			}
			rng := rand.New(rand.NewPCG(1, 2))
			drawn := map[int]bool{}
			reused := 0
			for i := range 3000 {
				n := rng.IntN(65536)
				if drawn[n] {
					reused++
				}
				drawn[n] = true
				r := a.serve(a.signedAt(testNow.Unix()-int64(i), strconv.Itoa(n), "Action", ActDescribePolicy, "sgId", "sg-web"))
				require.Equal(t, 0, r.Code, "call %d, Nonce %d: %s", i, n, r.Message)
			}
			assert.Positive(t, reused, "the draw reused Nonces")

			twice := a.signedAt(testNow.Unix()-5000, "4242", "Action", ActDescribePolicy, "sgId", "sg-web")
			require.Equal(t, 0, a.serve(twice).Code)
			r := a.serve(twice)
			assert.Equal(t, 4500, r.Code)
			assert.Contains(t, r.Message, "4242")
		})
	}
}

// A flood of distinct Nonces from one SecretId stops at its bound with 4500, naming why, while every
// Nonce already taken stays refused as a replay and another account's calls go on.
func TestNonceFloodIsBounded(t *testing.T) {
	a := newTestAPI(t)
	a.srv.Config.Handler = NewHandler(a.ctrl, Options{Now: func() time.Time { return testNow },
		Nonces: LocalNonces(nonce.New(nonce.Limits{PerSecret: 10, Total: 100}))})
	var first url.Values
	for i := range 10 {
		p := a.signedAt(testNow.Unix(), strconv.Itoa(i+1), "Action", ActDescribePolicy, "sgId", "sg-web")
		require.Equal(t, 0, a.serve(p).Code, "call %d", i)
		if i == 0 {
			first = p
		}
	}
	r := a.serve(a.signedAt(testNow.Unix(), "11", "Action", ActDescribePolicy, "sgId", "sg-web"))
	assert.Equal(t, 4500, r.Code)
	assert.Contains(t, r.Message, "too many calls within the replay window")
	r = a.serve(first)
	assert.Equal(t, 4500, r.Code)
	assert.Contains(t, r.Message, "already used")

	other := a.signed(http.MethodPost, secretID2, secretKey2, "Action", ActDescribePolicy, "sgId", "sg-other")
	req := httptest.NewRequest(http.MethodPost, a.srv.URL+TencentPath, strings.NewReader(other.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	a.srv.Config.Handler.ServeHTTP(rec, req)
	var out tcResp
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
	assert.Equal(t, 0, out.Code, out.Message)
}
