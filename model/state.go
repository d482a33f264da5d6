// Package model is the domain (accounts, SGs, rules, ENIs) and its SPEC §1 validation, with the API
// error codes a refusal carries, and the immutable State every other package reads; documents of it
// (topology files, API bodies) are read strictly, every key and value's JSON type checked where it is (CheckJSON).
package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
)

// Account is a cloud account with its Tencent and Huawei credentials.
type Account struct {
	AppID           string   `json:"appId"`
	SecretID        string   `json:"secretId,omitempty"`
	SecretKey       string   `json:"secretKey,omitempty"`
	HuaweiProjectID string   `json:"huaweiProjectId,omitempty"`
	HuaweiTokens    []string `json:"huaweiTokens,omitempty"`
}

// SecurityGroup is an SG with its ordered rule lists in API form. Once inside a State it is immutable:
// a change makes a new SecurityGroup.
type SecurityGroup struct {
	SgID      string `json:"sgId"`
	AppID     string `json:"appId"`
	ProjectID int    `json:"projectId"`
	SgName    string `json:"sgName,omitempty"`
	SgRemark  string `json:"sgRemark,omitempty"`
	Preset    bool   `json:"preset,omitempty"`
	Version   int    `json:"version,omitempty"`
	Ingress   []Rule `json:"ingress"`
	Egress    []Rule `json:"egress"`

	parsed [2][]ParsedRule
}

// Rules returns the parsed rules of direction d, in priority order.
func (g *SecurityGroup) Rules(d Direction) []ParsedRule { return g.parsed[d] }

// NetworkInterface is an ENI (Huawei: port) with its ordered SG list.
type NetworkInterface struct {
	NetworkInterfaceID string   `json:"networkInterfaceId"`
	AppID              string   `json:"appId"`
	MacAddress         string   `json:"macAddress,omitempty"`
	PrivateIPAddresses []string `json:"privateIpAddresses"`
	SgIDs              []string `json:"sgIds"`
	HostInterface      string   `json:"hostInterface,omitempty"`
	// Host is the fleet host whose agent enforces this ENI (SPEC §9); "" on a single host.
	Host string `json:"host,omitempty"`

	addrs []netip.Addr
	mac   net.HardwareAddr
}

// Equal tells whether n and o are the same ENI to everything that reads them: every stored field.
func (n *NetworkInterface) Equal(o *NetworkInterface) bool {
	return n.NetworkInterfaceID == o.NetworkInterfaceID && n.AppID == o.AppID && n.MacAddress == o.MacAddress &&
		n.HostInterface == o.HostInterface && n.Host == o.Host &&
		slices.Equal(n.PrivateIPAddresses, o.PrivateIPAddresses) && slices.Equal(n.SgIDs, o.SgIDs)
}

// Addrs returns the ENI's private addresses, parsed.
func (n *NetworkInterface) Addrs() []netip.Addr { return n.addrs }

// MAC returns the parsed MAC address (nil when the ENI has none).
func (n *NetworkInterface) MAC() net.HardwareAddr { return n.mac }

// Topology is the topology file of SPEC §7 and the persisted form of a State.
type Topology struct {
	Accounts          []Account          `json:"accounts"`
	SecurityGroups    []SecurityGroup    `json:"securityGroups"`
	NetworkInterfaces []NetworkInterface `json:"networkInterfaces"`
	// AdminTokens authenticate the admin and inspection endpoints (SPEC §8).
	AdminTokens []string `json:"adminTokens,omitempty"`
}

// State is one consistent version of the world: accounts, SGs and ENIs, all validated. It is immutable;
// Edit returns a copy to change, so readers holding an older State are never disturbed.
type State struct {
	accounts map[string]*Account
	sgs      map[string]*SecurityGroup
	enis     map[string]*NetworkInterface
	// Creation order, so listings and the persisted topology are stable.
	accountOrder, sgOrder, eniOrder []string
	adminTokens                     []string
	// eniSet is new whenever the ENIs are (SameENIs): states that share it share enis and eniOrder.
	eniSet *eniSet
}

// eniSet identifies one set of ENIs; it has a size so that every allocation has its own address.
type eniSet struct{ _ byte }

// NewState builds and validates a State from a topology. Errors name the JSON path of the bad entry.
// Quotas are not checked: topology files may hold groups of any size (SPEC §4).
func NewState(t Topology) (*State, error) { return newState(t, true) }

// RestoreState builds a State from a topology a store holds, as NewState does but for the checks a
// build added later for what comes in (an ENI's address listed twice, its hostInterface and host
// syntax: newInputChecks): a state an older build accepted and stored still loads after an upgrade.
func RestoreState(t Topology) (*State, error) { return newState(t, false) }

// checkCredentials refuses credentials of account a (at path) that would let others sign or speak as
// it: a secretId without a secretKey (an HMAC with an empty key anyone can make), a secretId or a
// Huawei token another account already has (the first account holding it would answer for both).
// seenIDs and seenTokens are those of the accounts before it.
func checkCredentials(path string, a Account, seenIDs, seenTokens map[string]bool) error {
	switch {
	case a.SecretID != "" && a.SecretKey == "":
		return errf(CodeBadParameter, path+".secretKey", "a secretId needs a secretKey")
	case a.SecretID != "" && seenIDs[a.SecretID]:
		return errValue(CodeBadParameter, path+".secretId", a.SecretID, "another account has this secretId")
	}
	seenIDs[a.SecretID] = true
	for j, tok := range a.HuaweiTokens {
		switch {
		case tok == "":
			return errf(CodeBadParameter, fmt.Sprintf("%s.huaweiTokens[%d]", path, j), "a token may not be empty")
		case seenTokens[tok]:
			return errf(CodeBadParameter, fmt.Sprintf("%s.huaweiTokens[%d]", path, j), "another account (or this one) has this token")
		}
		seenTokens[tok] = true
	}
	return nil
}

// newState is NewState, with the checks of newInputChecks only when strict.
func newState(t Topology, strict bool) (*State, error) {
	s := &State{
		accounts: make(map[string]*Account, len(t.Accounts)),
		sgs:      make(map[string]*SecurityGroup, len(t.SecurityGroups)),
		enis:     make(map[string]*NetworkInterface, len(t.NetworkInterfaces)),
		eniSet:   new(eniSet),
	}
	for i, tok := range t.AdminTokens {
		if tok == "" {
			return nil, errf(CodeBadParameter, fmt.Sprintf("adminTokens[%d]", i), "an admin token may not be empty")
		}
	}
	s.adminTokens = slices.Clone(t.AdminTokens)
	secretIDs, tokens := map[string]bool{}, map[string]bool{}
	for i := range t.Accounts {
		a := t.Accounts[i]
		path := fmt.Sprintf("accounts[%d]", i)
		if a.AppID == "" {
			return nil, errf(CodeBadParameter, path+".appId", "appId is required")
		}
		if _, dup := s.accounts[a.AppID]; dup {
			return nil, errValue(CodeBadParameter, path+".appId", a.AppID, "duplicate appId")
		}
		if strict {
			if err := checkCredentials(path, a, secretIDs, tokens); err != nil {
				return nil, err
			}
		}
		a.HuaweiTokens = slices.Clone(a.HuaweiTokens)
		s.accounts[a.AppID] = &a
		s.accountOrder = append(s.accountOrder, a.AppID)
	}
	// SGs first without reference checks, so rules may name SGs defined later in the file.
	for i, g := range t.SecurityGroups {
		path := fmt.Sprintf("securityGroups[%d]", i)
		if !validID(g.SgID) {
			return nil, errValue(CodeBadParameter, path+".sgId", g.SgID, "must match [A-Za-z0-9-]{1,64}")
		}
		if _, dup := s.sgs[g.SgID]; dup {
			return nil, errValue(CodeBadParameter, path+".sgId", g.SgID, "duplicate sgId")
		}
		if _, ok := s.accounts[g.AppID]; !ok {
			return nil, errValue(CodeNotFound, path+".appId", g.AppID, "no such account")
		}
		if strict && (g.ProjectID < 0 || g.ProjectID > math.MaxInt32) {
			// The range the Tencent API takes for a projectId; checked on new input only, as for ENIs.
			return nil, errValue(CodeBadParameter, path+".projectId", strconv.Itoa(g.ProjectID), fmt.Sprintf("not an integer in 0-%d", math.MaxInt32))
		}
		sg, err := prepareSG(g)
		if err != nil {
			return nil, AtPath(path, err)
		}
		s.sgs[sg.SgID] = sg
		s.sgOrder = append(s.sgOrder, sg.SgID)
	}
	for i, id := range s.sgOrder {
		if err := s.checkRuleRefs(s.sgs[id]); err != nil {
			return nil, AtPath(fmt.Sprintf("securityGroups[%d]", i), err)
		}
	}
	owners := make(map[netip.Addr]string, len(t.NetworkInterfaces)) // private IP → its ENI
	ifOwners := map[string]string{}                                 // host and hostInterface → its ENI
	for i, n := range t.NetworkInterfaces {
		path := fmt.Sprintf("networkInterfaces[%d]", i)
		if _, dup := s.enis[n.NetworkInterfaceID]; dup {
			return nil, errValue(CodeBadParameter, path+".networkInterfaceId", n.NetworkInterfaceID, "duplicate networkInterfaceId")
		}
		eni, err := s.prepareENI(n, strict)
		if err != nil {
			return nil, AtPath(path, err)
		}
		for j, a := range eni.addrs {
			if other, taken := owners[a]; taken && other != eni.NetworkInterfaceID {
				return nil, AtPath(path, ipTaken(j, eni.PrivateIPAddresses[j], other))
			}
			owners[a] = eni.NetworkInterfaceID
		}
		if eni.HostInterface != "" {
			key := eni.Host + "\x00" + eni.HostInterface
			if other, taken := ifOwners[key]; taken {
				return nil, AtPath(path, ifTaken(eni, other))
			}
			ifOwners[key] = eni.NetworkInterfaceID
		}
		s.enis[eni.NetworkInterfaceID] = eni
		s.eniOrder = append(s.eniOrder, eni.NetworkInterfaceID)
	}
	return s, nil
}

// ParseTopology decodes and validates a topology document; name (a file name) prefixes every error.
func ParseTopology(name string, data []byte) (*State, error) {
	var t Topology
	if err := DecodeFile(name, data, &t); err != nil {
		return nil, err
	}
	s, err := NewState(t)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

// DecodeFile decodes data, one JSON value and nothing else, into v (a pointer) as strictly as the
// API's bodies are read: no unknown field, and CheckJSON. name (a file name) prefixes every error,
// which says at which line:column data went wrong.
func DecodeFile(name string, data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return fmt.Errorf("%s: the file is empty: want one JSON object", name)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", name, describeJSONError(data, PlaceDecodeError(data, v, err)))
	}
	// Token, not More: More is false before a stray '}' or ']' as before the end.
	end := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		more := int64(len(data) - len(bytes.TrimLeft(data[end:], " \t\r\n")))
		return fmt.Errorf("%s: line %s: trailing data after the JSON value", name, lineCol(data, more))
	}
	if err := CheckJSON(data, v); err != nil {
		return fmt.Errorf("%s: %w", name, describeJSONError(data, err))
	}
	return nil
}

// LoadTopologyFile reads and validates a topology file.
func LoadTopologyFile(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	return ParseTopology(path, data)
}

// describeJSONError adds a line:column to JSON syntax and type errors and CheckJSON's, which carry
// byte offsets.
func describeJSONError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var placed *JSONError
	var off int64
	switch {
	case errors.As(err, &placed):
		off = placed.Offset
	case errors.As(err, &syn):
		// Offset counts the offending byte itself; point at it, not past it.
		off = max(syn.Offset-1, 0)
	case errors.As(err, &typ):
		off = typ.Offset
	default:
		return err
	}
	return fmt.Errorf("line %s: %w", lineCol(data, off), err)
}

func lineCol(data []byte, off int64) string {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return fmt.Sprintf("%d:%d", line, col)
}

// prepareSG parses every rule of g (format only) into a fresh SecurityGroup.
func prepareSG(g SecurityGroup) (*SecurityGroup, error) {
	sg := g
	sg.Ingress = slices.Clone(g.Ingress)
	sg.Egress = slices.Clone(g.Egress)
	if sg.Ingress == nil {
		sg.Ingress = []Rule{}
	}
	if sg.Egress == nil {
		sg.Egress = []Rule{}
	}
	for d, rules := range [2][]Rule{sg.Ingress, sg.Egress} {
		dir := Direction(d)
		parsed, bad, err := parseRules(rules)
		if err != nil {
			return nil, AtPath(fmt.Sprintf("%s[%d]", dir, bad), err)
		}
		sg.parsed[dir] = parsed
	}
	return &sg, nil
}

// parallelParseMin is the rule count from which parseRules splits the work in two: parsing a policy of
// thousands of rules is a sizeable part of the way from an API call to enforcement; smaller policies
// are parsed on the caller's goroutine.
const parallelParseMin = 2048

// parseRules parses rules, reporting the error of the first bad one and its index.
func parseRules(rules []Rule) ([]ParsedRule, int, error) {
	parsed := make([]ParsedRule, len(rules))
	parse := func(from, to int) (int, error) {
		for i := from; i < to; i++ {
			p, err := ParseRule(rules[i])
			if err != nil {
				return i, err
			}
			parsed[i] = p
		}
		return 0, nil
	}
	if len(rules) < parallelParseMin {
		bad, err := parse(0, len(rules))
		return parsed, bad, err
	}
	half := len(rules) / 2
	var secondBad int
	var secondErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		secondBad, secondErr = parse(half, len(rules))
	}()
	bad, err := parse(0, half)
	<-done
	if err == nil {
		bad, err = secondBad, secondErr
	}
	return parsed, bad, err
}

// checkRuleRefs checks that every sgId rule of g names an SG of the same owner and project (SPEC §4: 9003).
func (s *State) checkRuleRefs(g *SecurityGroup) error {
	for d := range g.parsed {
		dir := Direction(d)
		for i, r := range g.parsed[d] {
			if r.RemoteSG == "" {
				continue
			}
			path := fmt.Sprintf("%s[%d].sgId", dir, i)
			ref, ok := s.sgs[r.RemoteSG]
			if r.RemoteSG == g.SgID {
				ref, ok = g, true
			}
			switch {
			case !ok:
				return errValue(CodeBadRuleFormat, path, r.RemoteSG, "no such security group")
			case ref.AppID != g.AppID:
				return errValue(CodeBadRuleFormat, path, r.RemoteSG, "security group belongs to another account")
			case ref.ProjectID != g.ProjectID:
				return errValue(CodeBadRuleFormat, path, r.RemoteSG, fmt.Sprintf("security group is in project %d, not %d", ref.ProjectID, g.ProjectID))
			}
		}
	}
	return nil
}

// prepareENI validates n against the SGs of s and returns a fresh NetworkInterface.
func (s *State) prepareENI(n NetworkInterface, strict bool) (*NetworkInterface, error) {
	if !validID(n.NetworkInterfaceID) {
		return nil, errValue(CodeBadParameter, "networkInterfaceId", n.NetworkInterfaceID, "must match [A-Za-z0-9-]{1,64}")
	}
	if _, ok := s.accounts[n.AppID]; !ok {
		return nil, errValue(CodeNotFound, "appId", n.AppID, "no such account")
	}
	eni := n
	// n may be a copy of a live ENI (State.Topology): start the parsed forms afresh so they are neither
	// doubled nor appended into the live ENI's backing array.
	eni.addrs, eni.mac = nil, nil
	eni.PrivateIPAddresses = slices.Clone(n.PrivateIPAddresses)
	eni.SgIDs = slices.Clone(n.SgIDs)
	if eni.SgIDs == nil {
		eni.SgIDs = []string{}
	}
	if n.MacAddress != "" {
		mac, err := net.ParseMAC(n.MacAddress)
		if err != nil || len(mac) != 6 {
			return nil, errValue(CodeBadParameter, "macAddress", n.MacAddress, "not a 6-byte MAC address")
		}
		eni.mac = mac
	}
	if len(n.PrivateIPAddresses) == 0 {
		return nil, errf(CodeBadParameter, "privateIpAddresses", "at least one private IP address is required")
	}
	for i, a := range n.PrivateIPAddresses {
		addr, err := netip.ParseAddr(a)
		if err != nil || addr.Zone() != "" {
			return nil, errValue(CodeBadParameter, fmt.Sprintf("privateIpAddresses[%d]", i), a, "not an IPv4 or IPv6 address")
		}
		eni.addrs = append(eni.addrs, addr.Unmap())
	}
	if strict {
		if err := newInputChecks(&eni); err != nil {
			return nil, err
		}
	}
	if err := s.checkSGList(eni.AppID, eni.SgIDs); err != nil {
		return nil, err
	}
	return &eni, nil
}

// newInputChecks are the checks of an ENI (its addresses parsed) that came after ENIs were first
// stored: RestoreState leaves them out, so that what an older build stored still loads.
func newInputChecks(n *NetworkInterface) error {
	for i, addr := range n.addrs {
		// An address listed twice (or as itself mapped into IPv6) is the same private IP.
		if j := slices.Index(n.addrs[:i], addr); j >= 0 {
			return errValue(CodeBadParameter, fmt.Sprintf("privateIpAddresses[%d]", i), n.PrivateIPAddresses[i],
				fmt.Sprintf("the same address as privateIpAddresses[%d]", j))
		}
	}
	if n.HostInterface != "" && !validInterfaceName(n.HostInterface) {
		return errValue(CodeBadParameter, "hostInterface", n.HostInterface,
			"not a Linux interface name (1-15 bytes, no '/', ':' or whitespace)")
	}
	if n.Host != "" && !ValidHost(n.Host) {
		return errValue(CodeBadParameter, "host", n.Host, "not a host name (1-253 bytes, no '/' or control characters, not . or ..)")
	}
	return nil
}

// checkSGList checks an ENI's ordered SG list: known SGs of the ENI's owner, no duplicates.
func (s *State) checkSGList(appID string, ids []string) error {
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		path := fmt.Sprintf("sgIds[%d]", i)
		g, ok := s.sgs[id]
		switch {
		case !ok:
			return errValue(CodeNotFound, path, id, "no such security group")
		case g.AppID != appID:
			return errValue(CodeNotOwner, path, id, "security group belongs to another account")
		case seen[id]:
			return errValue(CodeBadParameter, path, id, "duplicate sgId")
		}
		seen[id] = true
	}
	return nil
}

// Account returns the account with appID.
func (s *State) Account(appID string) (*Account, bool) {
	a, ok := s.accounts[appID]
	return a, ok
}

// SG returns the security group with id.
func (s *State) SG(id string) (*SecurityGroup, bool) {
	g, ok := s.sgs[id]
	return g, ok
}

// ENI returns the network interface with id.
func (s *State) ENI(id string) (*NetworkInterface, bool) {
	n, ok := s.enis[id]
	return n, ok
}

// AppIDs, SGIDs and ENIIDs list IDs in creation order; callers must not modify the slices.
func (s *State) AppIDs() []string { return s.accountOrder }

// SGIDs lists security group IDs in creation order.
func (s *State) SGIDs() []string { return s.sgOrder }

// AdminTokens are the topology's admin tokens (SPEC §8).
func (s *State) AdminTokens() []string { return s.adminTokens }

// ENIIDs lists ENI IDs in creation order.
func (s *State) ENIIDs() []string { return s.eniOrder }

// Topology returns the persisted form of s; NewState(s.Topology()) rebuilds an equal State. Its
// object lists are its own, but the lists inside the objects (rules, addresses, tokens) are s's,
// uncopied because a big SG's rules are many: replace them, never write into them.
func (s *State) Topology() Topology {
	t := Topology{
		Accounts:          make([]Account, 0, len(s.accountOrder)),
		SecurityGroups:    make([]SecurityGroup, 0, len(s.sgOrder)),
		NetworkInterfaces: make([]NetworkInterface, 0, len(s.eniOrder)),
		AdminTokens:       s.adminTokens,
	}
	for _, id := range s.accountOrder {
		t.Accounts = append(t.Accounts, *s.accounts[id])
	}
	for _, id := range s.sgOrder {
		t.SecurityGroups = append(t.SecurityGroups, *s.sgs[id])
	}
	for _, id := range s.eniOrder {
		t.NetworkInterfaces = append(t.NetworkInterfaces, *s.enis[id])
	}
	return t
}

// Edit returns a Builder on a copy of s. The copy shares the unchanged SGs and ENIs with s, and each
// of its maps and order lists until the edit first changes it (copy on write): an edit of one SG of a
// state of thousands of ENIs copies no ENI map, and SameENIs tells the states apart in one comparison.
func (s *State) Edit() *Builder {
	c := *s
	return &Builder{s: &c}
}

// SameENIs tells whether s and o hold the very same ENIs: neither is an edit that put, changed or
// deleted an ENI since the state they both come from. False does not mean they differ.
func (s *State) SameENIs(o *State) bool {
	return s != nil && o != nil && s.eniSet != nil && s.eniSet == o.eniSet
}

// Builder changes a private copy of a State; State() hands it out. Every method validates what it puts
// and leaves the copy unchanged when it returns an error.
type Builder struct {
	s *State
	// What the copy owns already; the rest is still shared with the state edited.
	ownSGs, ownENIs bool
}

// State returns the edited State. The Builder must not be used afterwards.
func (b *Builder) State() *State { return b.s }

// writeSGs gives the copy its own SG map and order before a change.
func (b *Builder) writeSGs() {
	if !b.ownSGs {
		b.s.sgs, b.s.sgOrder = maps.Clone(b.s.sgs), slices.Clone(b.s.sgOrder)
		b.ownSGs = true
	}
}

// writeENIs gives the copy its own ENI map and order, and a new eniSet, before a change.
func (b *Builder) writeENIs() {
	if !b.ownENIs {
		b.s.enis, b.s.eniOrder, b.s.eniSet = maps.Clone(b.s.enis), slices.Clone(b.s.eniOrder), new(eniSet)
		b.ownENIs = true
	}
}

// PutSG adds or replaces a security group after validating its rules and rule references. It does not
// check quotas (the API layer does) and does not bump Version (the caller decides what a change is).
func (b *Builder) PutSG(g SecurityGroup) error {
	if !validID(g.SgID) {
		return errValue(CodeBadParameter, "sgId", g.SgID, "must match [A-Za-z0-9-]{1,64}")
	}
	if _, ok := b.s.accounts[g.AppID]; !ok {
		return errValue(CodeNotFound, "appId", g.AppID, "no such account")
	}
	sg, err := prepareSG(g)
	if err != nil {
		return err
	}
	if err := b.s.checkRuleRefs(sg); err != nil {
		return err
	}
	b.writeSGs()
	old, exists := b.s.sgs[sg.SgID]
	b.s.sgs[sg.SgID] = sg
	if exists && (old.AppID != sg.AppID || old.ProjectID != sg.ProjectID) {
		// A new owner or project can break the SGs that reference this one and the ENIs that use it.
		if err := b.s.checkDependents(sg.SgID); err != nil {
			b.s.sgs[sg.SgID] = old
			return err
		}
	}
	if !exists {
		b.s.sgOrder = append(b.s.sgOrder, sg.SgID)
	}
	return nil
}

// checkDependents re-checks every other SG's rule references and every ENI that uses SG id.
func (s *State) checkDependents(id string) error {
	for _, gid := range s.sgOrder {
		if gid == id {
			continue
		}
		if err := s.checkRuleRefs(s.sgs[gid]); err != nil {
			return AtPath("referenced by "+gid, err)
		}
	}
	for _, eid := range s.eniOrder {
		n := s.enis[eid]
		if slices.Contains(n.SgIDs, id) {
			if err := s.checkSGList(n.AppID, n.SgIDs); err != nil {
				return AtPath("used by "+eid, err)
			}
		}
	}
	return nil
}

// DeleteSG removes a security group. It refuses (9003) while an ENI uses it or another SG's rule names it.
func (b *Builder) DeleteSG(id string) error {
	if _, ok := b.s.sgs[id]; !ok {
		return errValue(CodeNotFound, "sgId", id, "no such security group")
	}
	for _, eid := range b.s.eniOrder {
		if slices.Contains(b.s.enis[eid].SgIDs, id) {
			return errValue(CodeBadRuleFormat, "sgId", id, "security group is in use by "+eid)
		}
	}
	for _, gid := range b.s.sgOrder {
		if gid == id {
			continue
		}
		for _, d := range []Direction{Ingress, Egress} {
			for _, r := range b.s.sgs[gid].parsed[d] {
				if r.RemoteSG == id {
					return errValue(CodeBadRuleFormat, "sgId", id, "security group is referenced by a rule of "+gid)
				}
			}
		}
	}
	b.writeSGs()
	delete(b.s.sgs, id)
	b.s.sgOrder = slices.DeleteFunc(b.s.sgOrder, func(x string) bool { return x == id })
	return nil
}

// ipTaken is the error for a private IP another ENI holds: one address is one ENI's, or sgId rules
// and the kernel's reply matching could not tell them apart (SPEC §8).
func ipTaken(i int, addr, other string) *Error {
	return errValue(CodeConflict, fmt.Sprintf("privateIpAddresses[%d]", i), addr, "already a private IP of network interface "+other)
}

// ifTaken is the error for a host interface another ENI of the same host claims: an interface carries
// one ENI's traffic.
func ifTaken(n *NetworkInterface, other string) *Error {
	return errValue(CodeConflict, "hostInterface", n.HostInterface, "already the host interface of network interface "+other)
}

// PutENI adds or replaces a network interface after validating its addresses and SG list; a private IP
// or a host interface another ENI holds is refused (CodeConflict).
func (b *Builder) PutENI(n NetworkInterface) error { return b.putENI(n, true) }

// RestoreENI is PutENI for an ENI a store holds: without the checks added since for new input, as
// RestoreState (a follower of the store edits what it loaded with it).
func (b *Builder) RestoreENI(n NetworkInterface) error { return b.putENI(n, false) }

func (b *Builder) putENI(n NetworkInterface, strict bool) error {
	eni, err := b.s.prepareENI(n, strict)
	if err != nil {
		return err
	}
	for _, id := range b.s.eniOrder {
		other := b.s.enis[id]
		if id == eni.NetworkInterfaceID {
			continue
		}
		for j, a := range eni.addrs {
			if slices.Contains(other.addrs, a) {
				return ipTaken(j, eni.PrivateIPAddresses[j], id)
			}
		}
		if eni.HostInterface != "" && other.HostInterface == eni.HostInterface && other.Host == eni.Host {
			return ifTaken(eni, id)
		}
	}
	b.writeENIs()
	if _, exists := b.s.enis[eni.NetworkInterfaceID]; !exists {
		b.s.eniOrder = append(b.s.eniOrder, eni.NetworkInterfaceID)
	}
	b.s.enis[eni.NetworkInterfaceID] = eni
	return nil
}

// DeleteENI removes a network interface.
func (b *Builder) DeleteENI(id string) error {
	if _, ok := b.s.enis[id]; !ok {
		return errValue(CodeNotFound, "networkInterfaceId", id, "no such network interface")
	}
	b.writeENIs()
	delete(b.s.enis, id)
	b.s.eniOrder = slices.DeleteFunc(b.s.eniOrder, func(x string) bool { return x == id })
	return nil
}

// SetENISGs replaces the ordered SG list of an existing ENI.
func (b *Builder) SetENISGs(eniID string, sgIDs []string) error {
	cur, ok := b.s.enis[eniID]
	if !ok {
		return errValue(CodeNotFound, "networkInterfaceId", eniID, "no such network interface")
	}
	if err := b.s.checkSGList(cur.AppID, sgIDs); err != nil {
		return err
	}
	n := *cur
	n.SgIDs = slices.Clone(sgIDs)
	if n.SgIDs == nil {
		n.SgIDs = []string{}
	}
	b.writeENIs()
	b.s.enis[eniID] = &n
	return nil
}
