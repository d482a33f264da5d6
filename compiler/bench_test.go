package compiler_test

import (
	"fmt"
	"testing"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// benchState builds nSG SGs of rulesPer ingress rules each (a mix of CIDR, sgId and any-remote rules)
// and nENI ENIs that each use every SG.
func benchState(b *testing.B, nSG, rulesPer, nENI int) *model.State {
	b.Helper()
	topo := model.Topology{Accounts: []model.Account{{AppID: "A"}}}
	ids := make([]string, nSG)
	for i := range ids {
		ids[i] = fmt.Sprintf("sg-%d", i)
	}
	for i, id := range ids {
		g := model.SecurityGroup{SgID: id, AppID: "A"}
		for j := range rulesPer {
			r := model.Rule{IPProtocol: "tcp", PortRange: fmt.Sprint(1 + j%65535), Action: []string{"ACCEPT", "DROP"}[j%2]}
			switch j % 10 {
			case 0:
				r.SgID = ids[(i+1)%nSG]
			case 1:
				r.CidrIP = fmt.Sprintf("2001:db8:%x::/48", j)
			default:
				r.CidrIP = fmt.Sprintf("198.%d.%d.0/24", 18+j/65536%2, j/256%256)
			}
			g.Ingress = append(g.Ingress, r)
		}
		topo.SecurityGroups = append(topo.SecurityGroups, g)
	}
	for i := range nENI {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, model.NetworkInterface{
			NetworkInterfaceID: fmt.Sprintf("eni-%d", i), AppID: "A",
			PrivateIPAddresses: []string{fmt.Sprintf("198.18.%d.%d", i/256%256, i%256)}, SgIDs: ids,
		})
	}
	s, err := model.NewState(topo)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func BenchmarkCompile(b *testing.B) {
	for _, sz := range []struct{ sgs, rules, enis int }{{1, 100, 10}, {5, 100, 100}, {1, 10000, 10}} {
		s := benchState(b, sz.sgs, sz.rules, sz.enis)
		b.Run(fmt.Sprintf("sgs=%d/rules=%d/enis=%d/one-eni", sz.sgs, sz.rules, sz.enis), func(b *testing.B) {
			c := compiler.New(s)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Compile("eni-0"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(sz.sgs*sz.rules), "rules/eni")
		})
		b.Run(fmt.Sprintf("sgs=%d/rules=%d/enis=%d/all", sz.sgs, sz.rules, sz.enis), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				compiler.New(s).CompileAll()
			}
		})
	}
}
