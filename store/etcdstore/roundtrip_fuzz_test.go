package etcdstore

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/storetest"
)

// fuzzGen draws a valid topology and edits of it from fuzz input: bytes for the choices, the
// comma-separated pieces of a text for what people type (account IDs, names, remarks, rule
// descriptions, admin tokens: any UTF-8, a "/" included; host names of a hostname's characters).
type fuzzGen struct {
	data   []byte
	pieces []string
}

func newFuzzGen(data []byte, text string) *fuzzGen {
	return &fuzzGen{data: data, pieces: strings.Split(strings.ToValidUTF8(text, "?"), ",")}
}

// n returns a choice in [0, k).
func (g *fuzzGen) n(k int) int {
	if len(g.data) == 0 || k <= 1 {
		return 0
	}
	b := g.data[0]
	g.data = g.data[1:]
	return int(b) % k
}

func (g *fuzzGen) piece() string { return g.pieces[g.n(len(g.pieces))] }

// host draws a host name: none, a few fixed ones, or a piece cut down to a hostname's characters.
func (g *fuzzGen) host() string {
	switch g.n(5) {
	case 0:
		return ""
	case 1:
		return "h1"
	case 2:
		return "h2"
	case 3:
		return "h.3_x-y"
	}
	h := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			return r
		}
		return -1
	}, g.piece())
	if h = h[:min(len(h), 253)]; h == "" || h == "." || h == ".." {
		h = "h0"
	}
	return h
}

// desc is a piece as long as a rule's description may be.
func (g *fuzzGen) desc() string {
	r := []rune(g.piece())
	return string(r[:min(len(r), model.MaxDescRunes)])
}

// rules draws up to three rules of an SG; refs are the SGs its sgId rules may name.
func (g *fuzzGen) rules(refs []string) []model.Rule {
	if g.n(4) == 0 {
		return nil
	}
	var out []model.Rule
	for range g.n(4) {
		r := model.Rule{IPProtocol: []string{"", "tcp", "udp", "icmp", "ALL", "icmpv6"}[g.n(6)],
			Action: []string{"ACCEPT", "DROP", "accept"}[g.n(3)], Desc: g.desc()}
		switch g.n(3) {
		case 0:
			r.CidrIP = []string{"10.0.0.0/8", "0.0.0.0/0", "198.18.1.7", "::/0", "2001:db8::/32", "10.1.2.3/16"}[g.n(6)]
		case 1:
			if len(refs) > 0 {
				r.SgID = refs[g.n(len(refs))]
			}
		}
		if (r.IPProtocol == "tcp" || r.IPProtocol == "udp") && g.n(2) == 0 {
			r.PortRange = []string{"22", "80-443", "1-65535"}[g.n(3)]
		}
		out = append(out, r)
	}
	return out
}

// refsOf returns the SGs of sgs an sgId rule of an SG of app and project may name, and id itself.
func refsOf(sgs []model.SecurityGroup, id, app string, project int) []string {
	out := []string{id}
	for _, g := range sgs {
		if g.SgID != id && g.AppID == app && g.ProjectID == project {
			out = append(out, g.SgID)
		}
	}
	return out
}

// eni draws ENI i of app (its addresses are its own: i is no other ENI's), in some of sgs.
func (g *fuzzGen) eni(i int, app string, sgs []model.SecurityGroup) model.NetworkInterface {
	n := model.NetworkInterface{NetworkInterfaceID: fmt.Sprintf("eni-%d", i), AppID: app,
		Host: g.host()}
	for j := range 1 + g.n(2) {
		n.PrivateIPAddresses = append(n.PrivateIPAddresses, []string{fmt.Sprintf("10.%d.%d.1", i, j), fmt.Sprintf("fd00::%x:%x", i, j)}[g.n(2)])
	}
	if g.n(2) == 0 {
		n.HostInterface = fmt.Sprintf("if%d", i)
	}
	if g.n(3) == 0 {
		n.MacAddress = fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256)
	}
	if g.n(3) != 0 {
		n.SgIDs = []string{}
	}
	for _, k := range g.order(len(sgs)) {
		if sgs[k].AppID == app && g.n(2) == 0 {
			n.SgIDs = append(n.SgIDs, sgs[k].SgID)
		}
	}
	return n
}

// order draws an order of n things.
func (g *fuzzGen) order(n int) []int {
	out := make([]int, n)
	for i := range out {
		j := g.n(i + 1)
		out[i] = out[j]
		out[j] = i
	}
	return out
}

// state draws a valid state: up to three accounts, four SGs, five ENIs, two admin tokens.
func (g *fuzzGen) state(t *testing.T) *model.State {
	var topo model.Topology
	for i := range 1 + g.n(3) {
		a := model.Account{AppID: g.piece() + "#" + strconv.Itoa(i)}
		if g.n(2) == 0 { // credentials of its own, as a valid state has them
			a.SecretID, a.SecretKey = g.piece()+"#"+strconv.Itoa(i), g.piece()+"k"
		}
		if g.n(2) == 0 {
			a.HuaweiTokens = []string{g.piece() + "#" + strconv.Itoa(i)}
		}
		topo.Accounts = append(topo.Accounts, a)
	}
	for i := range g.n(5) {
		topo.SecurityGroups = append(topo.SecurityGroups, model.SecurityGroup{SgID: fmt.Sprintf("sg-%d", i),
			AppID: topo.Accounts[g.n(len(topo.Accounts))].AppID, ProjectID: g.n(2), SgName: g.piece(), SgRemark: g.piece(), Version: g.n(3)})
	}
	for i := range topo.SecurityGroups {
		sg := &topo.SecurityGroups[i]
		sg.Ingress = g.rules(refsOf(topo.SecurityGroups, sg.SgID, sg.AppID, sg.ProjectID))
		sg.Egress = g.rules(refsOf(topo.SecurityGroups, sg.SgID, sg.AppID, sg.ProjectID))
	}
	for i := range g.n(6) {
		topo.NetworkInterfaces = append(topo.NetworkInterfaces, g.eni(i, topo.Accounts[g.n(len(topo.Accounts))].AppID, topo.SecurityGroups))
	}
	for range g.n(3) {
		topo.AdminTokens = append(topo.AdminTokens, g.piece()+"!")
	}
	s, err := model.NewState(topo)
	require.NoError(t, err, "the generator draws valid states")
	return s
}

// edit draws an edit of s as the API makes them (model.Builder, sharing what it does not change):
// SGs and ENIs added, changed (rules, owner, project, host, addresses, SG list) and deleted, or the
// whole state rebuilt in another order. Edits the model refuses change nothing.
func (g *fuzzGen) edit(t *testing.T, s *model.State) *model.State {
	b := s.Edit()
	for range g.n(6) {
		cur := b.State()
		topo := cur.Topology()
		switch g.n(7) {
		case 0, 1:
			var sg model.SecurityGroup
			if ids := cur.SGIDs(); len(ids) > 0 && g.n(2) == 0 {
				old, _ := cur.SG(ids[g.n(len(ids))])
				sg = *old
			} else {
				sg = model.SecurityGroup{SgID: fmt.Sprintf("sg-%d", 10+g.n(5)), AppID: cur.AppIDs()[g.n(len(cur.AppIDs()))]}
			}
			if g.n(3) == 0 {
				sg.AppID, sg.ProjectID = cur.AppIDs()[g.n(len(cur.AppIDs()))], g.n(2)
			}
			sg.SgName = g.piece()
			sg.Ingress = g.rules(refsOf(topo.SecurityGroups, sg.SgID, sg.AppID, sg.ProjectID))
			_ = b.PutSG(sg)
		case 2:
			if ids := cur.SGIDs(); len(ids) > 0 {
				_ = b.DeleteSG(ids[g.n(len(ids))])
			}
		case 3:
			i := 10 + g.n(5)
			app := cur.AppIDs()[g.n(len(cur.AppIDs()))]
			if old, ok := cur.ENI(fmt.Sprintf("eni-%d", i)); ok {
				app = old.AppID
			}
			_ = b.PutENI(g.eni(i, app, topo.SecurityGroups))
		case 4:
			if ids := cur.ENIIDs(); len(ids) > 0 {
				id := ids[g.n(len(ids))]
				if g.n(2) == 0 {
					_ = b.DeleteENI(id)
				} else {
					old, _ := cur.ENI(id)
					n := *old
					n.Host = g.host()
					_ = b.PutENI(n)
				}
			}
		case 5:
			if ids := cur.ENIIDs(); len(ids) > 0 {
				old, _ := cur.ENI(ids[g.n(len(ids))])
				_ = b.SetENISGs(old.NetworkInterfaceID, g.eni(0, old.AppID, topo.SecurityGroups).SgIDs)
			}
		case 6:
			slices.Reverse(topo.SecurityGroups)
			slices.Reverse(topo.NetworkInterfaces)
			if g.n(2) == 0 {
				topo.AdminTokens = append(slices.Clone(topo.AdminTokens), g.piece()+"!")
			}
			rebuilt, err := model.NewState(topo)
			require.NoError(t, err)
			b = rebuilt.Edit()
		}
	}
	return b.State()
}

// etcdImage is what etcd holds under a Store's prefix, written by transactions of its operations.
type etcdImage map[string]*mvccpb.KeyValue

// apply writes ops as one transaction at rev and returns its events, as a watch reports them.
func (im etcdImage) apply(t *testing.T, ops []clientv3.Op, rev int64) []*clientv3.Event {
	var evs []*clientv3.Event
	seen := map[string]bool{}
	for _, op := range ops {
		key := string(op.KeyBytes())
		require.False(t, seen[key], "etcd refuses a transaction writing %s twice", key)
		seen[key] = true
		require.Empty(t, op.RangeBytes(), "a commit writes single keys")
		switch {
		case op.IsPut():
			kv := &mvccpb.KeyValue{Key: []byte(key), Value: slices.Clone(op.ValueBytes()), CreateRevision: rev, ModRevision: rev, Version: 1}
			if old := im[key]; old != nil {
				kv.CreateRevision, kv.Version = old.CreateRevision, old.Version+1
			}
			im[key] = kv
			evs = append(evs, &clientv3.Event{Type: clientv3.EventTypePut, Kv: kv})
		case op.IsDelete():
			if im[key] != nil {
				delete(im, key)
				evs = append(evs, &clientv3.Event{Type: clientv3.EventTypeDelete, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}})
			}
		default:
			require.Failf(t, "a commit only puts and deletes", "%s", key)
		}
	}
	return evs
}

// under returns the keys under prefix in key order, as etcd's range answers.
func (im etcdImage) under(prefix string) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	for _, k := range slices.Sorted(maps.Keys(im)) {
		if strings.HasPrefix(k, prefix) {
			out = append(out, im[k])
		}
	}
	return out
}

// get returns key's value as a range read answers it: none or one.
func (im etcdImage) get(key string) []*mvccpb.KeyValue {
	if kv := im[key]; kv != nil {
		return []*mvccpb.KeyValue{kv}
	}
	return nil
}

// FuzzCommitRoundTrip commits a drawn state and a drawn edit of it through a Store's encoding (the
// operations of its transaction, written into an image of etcd) and decodes what etcd then holds as
// every reader does: a load (the objects and the generation), a watcher (the change of each commit,
// applied to the state it had), and an agent's share read (host index, records, member lists). Each
// gets the committed state back, the generation names the commit's hosts and next sequence, and
// the index keys are exactly the state's members and ENIs by host.
func FuzzCommitRoundTrip(f *testing.F) {
	f.Add([]byte{2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25}, "1250000001,web,é <b>&</b>,h/3,\u2028")
	f.Add([]byte("\x01\x04\x03\x01\x02\x01\x00\x01\x02\x03\x05\x01\x02\x02\x00\x01\x01\x00\x03\x02\x01\x05\x04\x03\x02\x01\x00\x06\x05\x04\x03\x02\x01"), "A,B,,tok")
	f.Add([]byte{}, "")
	for i := range 8 { // choices enough for states of every part and edits of each kind
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		data := make([]byte, 160)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		f.Add(data, "1250000001,web,db,h/3,é <b>&</b> \u2028,tok")
	}
	f.Add([]byte("\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0\xef\xee\xed\xec\xeb\xea\xe9\xe8\xe7\xe6\xe5\xe4\xe3\xe2\xe1\xe0"), "x,y/z,\x00,\"quoted\"")
	f.Fuzz(func(t *testing.T, data []byte, text string) {
		g := newFuzzGen(data, text)
		first := g.state(t)
		second := g.edit(t, first)

		s := decoder(nil, DefaultMaxTxnOps)
		im := etcdImage{}
		var watched *model.State           // what a watcher of the objects follows
		caches := map[string]*ShareCache{} // each host's agent's, across the commits
		for i, next := range []*model.State{first, second} {
			rev := int64(10 * (i + 1))
			d, err := s.rs.diff(next)
			require.NoError(t, err)
			hosts := slices.Concat(sortedKeys(s.rs.hosts), sortedKeys(d.allHosts)) // CommitAffecting's nil hosts
			hosts = slices.DeleteFunc(slices.Compact(slices.Sorted(slices.Values(hosts))), func(h string) bool { return h == "" })
			ops, sizes := s.commitOps(d, hosts, "")
			require.Len(t, sizes, len(ops))
			for j, op := range ops { // what the limits are checked on: a put's bytes, a deletion's at most
				if op.IsPut() {
					require.Equal(t, len(op.KeyBytes())+len(op.ValueBytes())+opOverhead, sizes[j], "size of %s", op.KeyBytes())
				} else {
					require.GreaterOrEqual(t, sizes[j], len(op.KeyBytes())+opOverhead, "size of %s", op.KeyBytes())
				}
			}
			events := im.apply(t, ops, rev)
			s.rs.advance(next, d)

			// A load: the generation, then the objects.
			objects := im.under(s.objectsPrefix())
			genKV := im[s.genKey()]
			require.NotNil(t, genKV)
			require.Equal(t, rev, genKV.ModRevision)
			var gen generation // as load and ChangeHosts decode it
			require.NoError(t, json.Unmarshal(genKV.Value, &gen))
			require.Equal(t, d.NextSeq, gen.NextSeq)
			require.Equal(t, hosts, append([]string(nil), gen.Hosts...), "the change's hosts")
			loaded, recs, err := s.stateOf(objects, rev)
			require.NoError(t, err)
			storetest.RequireSameTopology(t, next, loaded, "loaded")
			require.Len(t, recs, len(objects)-1, "a record per object key")
			var reloaded records
			reloaded.reset(loaded, recs, gen.NextSeq)
			rd, err := reloaded.diff(loaded)
			require.NoError(t, err)
			require.Empty(t, rd.Puts, "a Store that loaded it writes nothing to commit it again")
			require.Empty(t, rd.Dels)
			require.Empty(t, rd.members, "the member lists etcd holds are the loaded state's")
			require.Empty(t, rd.hosts, "the host lists etcd holds are the loaded state's")

			// The index keys: exactly the state's.
			members, byHost := indexes(next)
			lists := im.under(s.membersKey(""))
			require.Len(t, lists, len(members))
			for _, kv := range lists {
				var list []Member
				require.NoError(t, json.Unmarshal(kv.Value, &list))
				require.Equal(t, members[strings.TrimPrefix(string(kv.Key), s.membersKey(""))], list, "%s", kv.Key)
			}
			hostLists := im.under(s.hostIndexKey(""))
			require.Len(t, hostLists, len(byHost))
			for _, kv := range hostLists {
				ids, err := indexList([]*mvccpb.KeyValue{kv})
				require.NoError(t, err)
				require.Equal(t, byHost[strings.TrimPrefix(string(kv.Key), s.hostIndexKey(""))], ids, "%s", kv.Key)
			}

			// A watcher: the commit's events on the objects make its change.
			events = slices.DeleteFunc(events, func(ev *clientv3.Event) bool { return !strings.HasPrefix(string(ev.Kv.Key), s.objectsPrefix()) })
			c, err := s.changeOf(uint64(rev), events)
			require.NoError(t, err)
			require.Len(t, c.Puts, len(d.Puts))
			require.Len(t, c.Deletes, len(d.Dels))
			before := watched
			watched, err = c.Apply(before)
			require.NoError(t, err, "applying %+v", c)
			storetest.RequireSameTopology(t, next, watched, "watched")
			if i > 0 {
				storetest.RequireSameTopology(t, first, before, "the state a change applies to stays as it was")
			}

			// Every host's agent, and one of a host with no ENI: its share.
			for _, h := range append(sortedKeys(byHost), "nobody") {
				if caches[h] == nil {
					caches[h] = &ShareCache{}
				}
				requireShare(t, s, im, next, h, rev, caches[h])
			}
		}
	})
}

// requireShare decodes host's share from im as ReadShare does once it has read the keys, through
// cache, and requires what it decodes to be what next holds: the host's ENIs, their SGs, the SGs
// their rules name with those SGs' members.
func requireShare(t *testing.T, s *Store, im etcdImage, next *model.State, host string, rev int64, cache *ShareCache) {
	t.Helper()
	r := &shareRead{s: s, cache: cache, got: map[string]*mvccpb.KeyValue{}, rev: rev}
	read := func(keys []string) []*mvccpb.KeyValue {
		var out []*mvccpb.KeyValue
		for _, k := range keys {
			r.got[k] = im[k]
			out = append(out, im.get(k)...)
		}
		return out
	}
	local, err := indexList(im.get(s.hostIndexKey(host)))
	require.NoError(t, err)
	var wantLocal, wantUsed, wantNamed []string
	for _, id := range next.ENIIDs() {
		if n, _ := next.ENI(id); n.Host == host {
			wantLocal = append(wantLocal, id)
			wantUsed = append(wantUsed, n.SgIDs...)
		}
	}
	slices.Sort(wantLocal)
	require.Equal(t, wantLocal, local, "the host's ENIs")
	localKeys := mapped(local, s.eniKey)
	localKVs := read(localKeys)
	require.Len(t, localKVs, len(local))
	used, err := r.names(localKVs, enisSGs)
	require.NoError(t, err)
	require.Equal(t, slices.Compact(slices.Sorted(slices.Values(wantUsed))), nilIfEmpty(used), "the SGs of the host's ENIs")
	usedKeys := mapped(used, s.sgKey)
	usedKVs := read(usedKeys)
	require.Len(t, usedKVs, len(used))
	for _, id := range used {
		sg, _ := next.SG(id)
		for _, rule := range slices.Concat(sg.Ingress, sg.Egress) {
			if rule.SgID != "" {
				wantNamed = append(wantNamed, rule.SgID)
			}
		}
	}
	named, err := r.names(usedKVs, sgRefs)
	require.NoError(t, err)
	require.Equal(t, slices.Compact(slices.Sorted(slices.Values(wantNamed))), nilIfEmpty(named), "the SGs their rules name")
	namedOnly := slices.DeleteFunc(slices.Clone(named), func(id string) bool { return slices.Contains(used, id) })
	namedKeys := mapped(namedOnly, s.sgKey)
	namedKVs := read(namedKeys)
	listKeys := mapped(named, s.membersKey)
	lists := read(listKeys)
	accounts := im.under(s.accountsPrefix())
	recordKVs := slices.Concat(accounts, localKVs, usedKVs, namedKVs)
	sh, err := r.share(uint64(rev), recordKVs, lists, slices.Concat(localKeys, usedKeys, namedKeys, listKeys))
	require.NoError(t, err)
	require.Equal(t, uint64(rev), sh.Revision)
	require.Len(t, sh.Records, len(recordKVs))
	for i, kv := range recordKVs {
		want, err := s.decodeRecord(kv)
		require.NoError(t, err)
		require.Equal(t, want, sh.Records[i], "record %s (cached or not)", kv.Key)
	}
	members, _ := indexes(next)
	want := map[string][]Member{}
	for _, id := range named {
		if m, ok := members[id]; ok {
			want[id] = m
		}
	}
	require.Equal(t, want, sh.Members, "the members of the SGs named")
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}
