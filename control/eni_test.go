package control

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// dbIngressFrom decides a postgres packet to eni-db1 from src with the controller's engine.
func dbIngressFrom(t *testing.T, c *Controller, src string) dataplane.Verdict {
	t.Helper()
	v, ok := c.Engine().Match("eni-db1", model.Ingress, &dataplane.Packet{Proto: 6, Remote: netip.MustParseAddr(src), Port: 5432, HasPort: true})
	require.True(t, ok)
	return v
}

// TestENIAtRunTime: an ENI created, re-addressed and deleted at run time re-targets the sgId rules
// naming its SGs on every ENI they reach, in one change each, and only those ENIs are recompiled.
func TestENIAtRunTime(t *testing.T) {
	ctx := context.Background()
	c, rec := newCtrl(t)
	const app = "1250000001"
	web3 := model.NetworkInterface{NetworkInterfaceID: "eni-web3", AppID: app, PrivateIPAddresses: []string{"198.18.1.30"},
		SgIDs: []string{"sg-web"}, HostInterface: "sgweb3"}
	assert.Equal(t, dataplane.ReasonDefaultDrop, dbIngressFrom(t, c, "198.18.1.30").Reason)

	got, err := c.PutENI(ctx, web3)
	require.NoError(t, err)
	assert.Equal(t, "sgweb3", got.HostInterface)
	// eni-db1 and the db port take sg-db's "postgres from the web tier" rule: their tables change too.
	assert.Equal(t, []string{"b9ac5247-c4ca-4c9b-b8fa-7d19132e560a", "eni-db1", "eni-web3"}, rec.last())
	v := dbIngressFrom(t, c, "198.18.1.30")
	assert.Equal(t, dataplane.ReasonRule, v.Reason)
	assert.Equal(t, "sg-db", v.SgID)

	gen := c.View().Generation
	_, err = c.PutENI(ctx, web3)
	require.NoError(t, err)
	assert.Equal(t, gen, c.View().Generation, "putting the same ENI again changes nothing")

	web3.PrivateIPAddresses = []string{"198.18.1.31"}
	_, err = c.PutENI(ctx, web3)
	require.NoError(t, err)
	assert.Equal(t, dataplane.ReasonDefaultDrop, dbIngressFrom(t, c, "198.18.1.30").Reason)
	assert.Equal(t, dataplane.ReasonRule, dbIngressFrom(t, c, "198.18.1.31").Reason)

	require.NoError(t, c.DeleteENI(ctx, "eni-web3"))
	assert.Equal(t, dataplane.ReasonDefaultDrop, dbIngressFrom(t, c, "198.18.1.31").Reason)
	_, ok := c.Engine().Match("eni-web3", model.Ingress, &dataplane.Packet{Proto: 6, Remote: netip.MustParseAddr("198.18.0.1")})
	assert.False(t, ok, "a deleted ENI's tables are gone")
	_, ok = c.View().Tables["eni-web3"]
	assert.False(t, ok)
}

func TestPutENIRefusals(t *testing.T) {
	ctx := context.Background()
	const app = "1250000001"
	eni := func(edit func(*model.NetworkInterface)) model.NetworkInterface {
		n := model.NetworkInterface{NetworkInterfaceID: "eni-new", AppID: app, PrivateIPAddresses: []string{"198.18.7.1"}, SgIDs: []string{"sg-web"}}
		edit(&n)
		return n
	}
	tests := []struct {
		name string
		eni  model.NetworkInterface
		lim  func(*Limits)
		code int
		msg  string
	}{
		{"private IP of another ENI", eni(func(n *model.NetworkInterface) { n.PrivateIPAddresses = []string{"198.18.1.10"} }), nil,
			model.CodeConflict, `privateIpAddresses[0]: "198.18.1.10": already a private IP of network interface eni-web1`},
		{"SG of another account", eni(func(n *model.NetworkInterface) { n.SgIDs = []string{"sg-other"} }), nil,
			model.CodeNotOwner, `sgIds[0]: "sg-other"`},
		{"unknown SG", eni(func(n *model.NetworkInterface) { n.SgIDs = []string{"sg-nope"} }), nil, model.CodeNotFound, "sg-nope"},
		{"too many SGs", eni(func(n *model.NetworkInterface) { n.SgIDs = []string{"sg-web", "sg-db", "sg-ssh"} }),
			func(l *Limits) { l.SGsPerENI = 2 }, model.CodeBadParameter, "at most 2 allowed"},
		{"SG full", eni(func(*model.NetworkInterface) {}), func(l *Limits) { l.ENIsPerSG = 2 }, model.CodeBadParameter,
			"would have 3 network interfaces, at most 2"},
		{"host full", eni(func(*model.NetworkInterface) {}), func(l *Limits) { l.ENIsPerHost = 6 }, model.CodeConflict,
			"this host enforces at most 6 network interfaces"},
		{"another account's ENI", eni(func(n *model.NetworkInterface) { n.NetworkInterfaceID = "eni-other"; n.SgIDs = nil }), nil,
			model.CodeNotOwner, "belongs to another account"},
		{"bad address", eni(func(n *model.NetworkInterface) { n.PrivateIPAddresses = []string{"198.18.7"} }), nil,
			model.CodeBadParameter, "privateIpAddresses[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, rec := newCtrl(t)
			if tt.lim != nil {
				lim := c.writer.limits
				tt.lim(&lim)
				c.writer.limits = lim
			}
			before := c.View()
			_, err := c.PutENI(ctx, tt.eni)
			require.Error(t, err)
			assert.Equal(t, tt.code, model.CodeOf(err))
			assert.Contains(t, err.Error(), tt.msg)
			assert.Same(t, before, c.View(), "nothing changed")
			assert.Len(t, rec.calls, 1, "only the initial load was switched in")
		})
	}
	t.Run("delete unknown", func(t *testing.T) {
		c, _ := newCtrl(t)
		assert.Equal(t, model.CodeNotFound, model.CodeOf(c.DeleteENI(ctx, "eni-nope")))
	})
}
