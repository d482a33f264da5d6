package compiler_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// byteSource hands out fuzz bytes; once they run out it returns zeros, so every input builds a topology.
type byteSource struct {
	b []byte
}

func (s *byteSource) next() int {
	if len(s.b) == 0 {
		return 0
	}
	v := s.b[0]
	s.b = s.b[1:]
	return int(v)
}

func (s *byteSource) pick(n int) int { return s.next() % n }

// A small address pool, so sgId members, CIDRs and packet addresses collide often.
func poolAddr(i int) netip.Addr {
	if i%2 == 0 {
		return netip.AddrFrom4([4]byte{198, 18, 0, byte(i / 2 % 8)})
	}
	return netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i/2%8))
}

var (
	fuzzProtocols = []string{"", "tcp", "udp", "icmp", "icmpv6", "ALL", "Tcp"}
	v4Lens        = []int{0, 8, 24, 29, 30, 31, 32}
	v6Lens        = []int{0, 32, 64, 125, 126, 127, 128}
	packetProtos  = []uint8{model.IPProtoTCP, model.IPProtoUDP, model.IPProtoICMP, model.IPProtoICMPv6, 47}
)

// fuzzTopology builds a valid topology of a few SGs (random rules, sgId references included) and ENIs
// (random ordered SG lists) from the fuzz bytes.
func fuzzTopology(src *byteSource) model.Topology {
	nSG, nENI := 1+src.pick(4), 1+src.pick(4)
	sgIDs := make([]string, nSG)
	for i := range sgIDs {
		sgIDs[i] = fmt.Sprintf("sg-%d", i)
	}
	topo := model.Topology{Accounts: []model.Account{{AppID: "A"}}}
	for _, id := range sgIDs {
		g := model.SecurityGroup{SgID: id, AppID: "A"}
		for d := range 2 {
			rules := make([]model.Rule, src.pick(5))
			for i := range rules {
				rules[i] = fuzzRule(src, sgIDs)
			}
			if d == 0 {
				g.Ingress = rules
			} else {
				g.Egress = rules
			}
		}
		topo.SecurityGroups = append(topo.SecurityGroups, g)
	}
	taken := map[string]bool{} // a private IP is one ENI's (SPEC §8)
	for i := range nENI {
		n := model.NetworkInterface{NetworkInterfaceID: fmt.Sprintf("eni-%d", i), AppID: "A", SgIDs: []string{}}
		for range 1 + src.pick(2) {
			if a := poolAddr(src.next()).String(); !taken[a] {
				taken[a] = true
				n.PrivateIPAddresses = append(n.PrivateIPAddresses, a)
			}
		}
		if len(n.PrivateIPAddresses) == 0 {
			continue
		}
		// A random ordered subset of the SGs, no duplicates.
		perm := slices.Clone(sgIDs)
		for j := len(perm) - 1; j > 0; j-- {
			k := src.pick(j + 1)
			perm[j], perm[k] = perm[k], perm[j]
		}
		n.SgIDs = append(n.SgIDs, perm[:src.pick(nSG+1)]...)
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, n)
	}
	return topo
}

func fuzzRule(src *byteSource, sgIDs []string) model.Rule {
	r := model.Rule{IPProtocol: fuzzProtocols[src.pick(len(fuzzProtocols))], Action: []string{"ACCEPT", "DROP", "accept"}[src.pick(3)]}
	switch src.pick(4) {
	case 1:
		a := poolAddr(2 * src.next())
		r.CidrIP = fmt.Sprintf("%s/%d", a, v4Lens[src.pick(len(v4Lens))])
	case 2:
		a := poolAddr(2*src.next() + 1)
		r.CidrIP = fmt.Sprintf("%s/%d", a, v6Lens[src.pick(len(v6Lens))])
	case 3:
		r.SgID = sgIDs[src.pick(len(sgIDs))]
	}
	switch r.IPProtocol {
	case "tcp", "udp", "Tcp":
		if src.pick(2) == 0 {
			lo := 20 + src.pick(6)
			hi := lo + src.pick(3)
			r.PortRange = fmt.Sprint(lo)
			if hi != lo {
				r.PortRange = fmt.Sprintf("%d-%d", lo, hi)
			}
		}
	}
	return r
}

func fuzzPacket(src *byteSource) dataplane.Packet {
	p := dataplane.Packet{Proto: packetProtos[src.pick(len(packetProtos))]}
	switch k := src.pick(10); {
	case k < 8:
		p.Remote = poolAddr(src.next())
	case k == 8:
		p.Remote = netip.MustParseAddr("203.0.113.1")
	default:
		p.Remote = netip.MustParseAddr("2001:db8:ffff::1")
	}
	if p.Proto == model.IPProtoTCP || p.Proto == model.IPProtoUDP {
		p.Port, p.HasPort = uint16(19+src.pick(10)), src.pick(8) != 0
	}
	return p
}

// directVerdict decides p for eniID straight from the model, independently of the compiler: walk the
// ENI's SGs in order, each SG's rules in order; first match decides; otherwise the one implicit DROP.
func directVerdict(s *model.State, eniID string, d model.Direction, p dataplane.Packet) (model.Action, dataplane.Reason, string, int) {
	e, _ := s.ENI(eniID)
	if len(e.SgIDs) == 0 {
		return model.Drop, dataplane.ReasonNoSG, "", -1
	}
	for _, id := range e.SgIDs {
		g, _ := s.SG(id)
		for i, r := range g.Rules(d) {
			if directMatch(s, r, p) {
				return r.Action, dataplane.ReasonRule, id, i
			}
		}
	}
	return model.Drop, dataplane.ReasonDefaultDrop, "", -1
}

func directMatch(s *model.State, r model.ParsedRule, p dataplane.Packet) bool {
	switch r.Protocol {
	case model.ProtoTCP:
		if p.Proto != 6 {
			return false
		}
	case model.ProtoUDP:
		if p.Proto != 17 {
			return false
		}
	case model.ProtoICMP:
		if p.Proto != 1 || !p.Remote.Is4() {
			return false
		}
	case model.ProtoICMPv6:
		if p.Proto != 58 || !p.Remote.Is6() {
			return false
		}
	}
	if r.Ports != (model.PortRange{}) {
		if !p.HasPort || p.Port < r.Ports.Lo || p.Port > r.Ports.Hi {
			return false
		}
	}
	switch {
	case r.Remote.IsValid():
		return r.Remote.Contains(p.Remote)
	case r.RemoteSG != "":
		for _, id := range s.ENIIDs() {
			e, _ := s.ENI(id)
			if slices.Contains(e.SgIDs, r.RemoteSG) && slices.Contains(e.Addrs(), p.Remote) {
				return true
			}
		}
		return false
	}
	return true
}

// FuzzCompile checks the compiled tables against the direct reading of the model on random topologies.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{3, 3, 4, 1, 3, 0, 0, 2, 2, 1, 5, 1, 0, 6, 3, 1, 2, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte("\x02\x02\x03\x01\x03\x01\x00\x01\x02\x04\x00\x00\x01\x03\x03\x00sgid-self-reference-and-v6"))
	f.Add([]byte("a longer seed so that several SGs, rules and ENIs are all built from real bytes!!"))
	f.Fuzz(func(t *testing.T, data []byte) {
		src := &byteSource{b: data}
		topo := fuzzTopology(src)
		s, err := model.NewState(topo)
		require.NoError(t, err, "generator built an invalid topology: %+v", topo)
		agreeDirect(t, s, src, 16)

		// One random edit: the ENIs whose tables change must be among those Affected names, and the
		// edited State must still agree with the direct evaluation.
		b := s.Edit()
		if src.pick(2) == 0 {
			id := s.SGIDs()[src.pick(len(s.SGIDs()))]
			g, _ := s.SG(id)
			ng := *g
			ng.Ingress, ng.Egress = nil, nil
			for range src.pick(4) {
				ng.Ingress = append(ng.Ingress, fuzzRule(src, s.SGIDs()))
			}
			for range src.pick(3) {
				ng.Egress = append(ng.Egress, fuzzRule(src, s.SGIDs()))
			}
			require.NoError(t, b.PutSG(ng))
		} else {
			id := s.ENIIDs()[src.pick(len(s.ENIIDs()))]
			var list []string
			for _, g := range s.SGIDs() {
				if src.pick(2) == 0 {
					list = append(list, g)
				}
			}
			require.NoError(t, b.SetENISGs(id, list))
		}
		next := b.State()
		affected := compiler.Affected(s, next)
		for id := range changedENIs(t, s, next) {
			require.Contains(t, affected, id, "tables of %s changed but Affected did not name it", id)
		}
		agreeDirect(t, next, src, 16)
	})
}

// agreeDirect decides n random packets on random ENIs of s with the compiled tables and directly.
func agreeDirect(t *testing.T, s *model.State, src *byteSource, n int) {
	t.Helper()
	m := dataplane.NewLinear(compiler.New(s).CompileAll())
	for range n {
		eniID := s.ENIIDs()[src.pick(len(s.ENIIDs()))]
		d := model.Direction(src.pick(2))
		p := fuzzPacket(src)
		v, ok := m.Match(eniID, d, &p)
		require.True(t, ok)
		action, reason, sg, idx := directVerdict(s, eniID, d, p)
		if reason != dataplane.ReasonRule {
			v.SgID, v.RuleIndex = "", -1
		}
		require.Equal(t, []any{action, reason, sg, idx}, []any{v.Action, v.Reason, v.SgID, v.RuleIndex},
			"eni %s %s packet %+v", eniID, d, p)
	}
}
