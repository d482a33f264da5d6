package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"unicode/utf8"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// Writer is the validating half of the write path: it turns an API operation on a committed state into
// the next state, or into the API error that refuses it (validation, ownership, limits), and commits
// states. It never touches a dataplane, so a fleet's API replicas can run it alone. An operation returns
// a nil next state when the call changes nothing.
type Writer struct {
	store  Store
	limits Limits
}

// Store is what the write path needs of a store (store.Store has it): the state to start from and
// durable commits. Declared here so that control, and the api above it, do not depend on bbolt.
type Store interface {
	Load(ctx context.Context) (*model.State, uint64, error)
	Commit(ctx context.Context, s *model.State, generation uint64) error
}

// NewWriter returns a Writer committing to st under the quotas lim.
func NewWriter(st Store, lim Limits) *Writer { return &Writer{store: st, limits: lim} }

// Limits returns the quotas in force.
func (w *Writer) Limits() Limits { return w.limits }

// Commit makes next durable as generation gen; a failure is an API internal error (6000) that names its
// cause.
func (w *Writer) Commit(ctx context.Context, next *model.State, gen uint64) error {
	if err := w.store.Commit(ctx, next, gen); err != nil {
		return &model.Error{Code: model.CodeInternal, Reason: fmt.Sprintf("commit failed: %v", err), Err: err}
	}
	return nil
}

func apiErr(code int, path, value, reason string) *model.Error {
	return &model.Error{Code: code, Path: path, Value: value, Reason: reason, Quoted: value != ""}
}

// ownedSG returns the SG when it exists (5000) and belongs to appID (7001).
func ownedSG(s *model.State, appID, sgID string) (*model.SecurityGroup, error) {
	g, ok := s.SG(sgID)
	if !ok {
		return nil, apiErr(model.CodeNotFound, "sgId", sgID, "no such security group")
	}
	if g.AppID != appID {
		return nil, apiErr(model.CodeNotOwner, "sgId", sgID, "security group does not belong to the current user")
	}
	return g, nil
}

// ModifySecurityGroupPolicy overwrites both rule lists of sgID, all or nothing.
func (w *Writer) ModifySecurityGroupPolicy(s *model.State, appID, sgID string, ingress, egress []model.Rule) (*model.State, error) {
	g, err := ownedSG(s, appID, sgID)
	if err != nil {
		return nil, err
	}
	if g.Preset {
		return nil, apiErr(model.CodePreset, "sgId", sgID, "preset security group may not be modified")
	}
	refs := 0
	for _, l := range []struct {
		name  string
		rules []model.Rule
	}{{"ingress", ingress}, {"egress", egress}} {
		if len(l.rules) > w.limits.RulesPerDirection {
			return nil, apiErr(model.CodeLimit, l.name, "", fmt.Sprintf("%d rules, at most %d allowed per direction", len(l.rules), w.limits.RulesPerDirection))
		}
		for _, r := range l.rules {
			if r.SgID != "" {
				refs++
			}
		}
	}
	if refs > w.limits.SGRefRulesPerSG {
		return nil, apiErr(model.CodeLimit, "sgId", sgID, fmt.Sprintf("%d rules reference security groups, at most %d allowed", refs, w.limits.SGRefRulesPerSG))
	}
	ng := *g
	ng.Ingress, ng.Egress = ingress, egress // PutSG keeps copies, not the caller's slices
	ng.Version = g.Version + 1
	b := s.Edit()
	if err := b.PutSG(ng); err != nil {
		return nil, err
	}
	next := b.State()
	if sameRules(g, mustSG(next, sgID)) {
		return nil, nil // nothing changed: no new version, no recompile
	}
	return next, nil
}

func mustSG(s *model.State, id string) *model.SecurityGroup { g, _ := s.SG(id); return g }

func sameRules(a, b *model.SecurityGroup) bool {
	for _, d := range []model.Direction{model.Ingress, model.Egress} {
		if !slices.Equal(a.Rules(d), b.Rules(d)) {
			return false
		}
	}
	return true
}

// ENISGs is one entry of ModifySecurityGroupsOfNetworkInterface.
type ENISGs struct {
	ENI   string
	SgIDs []string
}

// ModifySecurityGroupsOfNetworkInterface overwrites the ordered SG list of every listed ENI, all or none.
func (w *Writer) ModifySecurityGroupsOfNetworkInterface(s *model.State, appID string, set []ENISGs) (*model.State, error) {
	if len(set) == 0 {
		return nil, apiErr(model.CodeBadParameter, "networkInterfaceSet", "", "at least one network interface is required")
	}
	b := s.Edit()
	seen := map[string]bool{}
	moved := false
	touchedSGs := map[string]bool{}
	for i, e := range set {
		path := fmt.Sprintf("networkInterfaceSet.%d", i)
		eni, ok := s.ENI(e.ENI)
		switch {
		case !ok:
			return nil, apiErr(model.CodeNotFound, path+".networkInterfaceId", e.ENI, "no such network interface")
		case eni.AppID != appID:
			return nil, apiErr(model.CodeNotOwner, path+".networkInterfaceId", e.ENI, "network interface does not belong to the current user")
		case seen[e.ENI]:
			return nil, apiErr(model.CodeBadParameter, path+".networkInterfaceId", e.ENI, "network interface listed twice")
		case len(e.SgIDs) > w.limits.SGsPerENI:
			return nil, apiErr(model.CodeBadParameter, path+".sgIds", "", fmt.Sprintf("%d security groups, at most %d allowed per network interface", len(e.SgIDs), w.limits.SGsPerENI))
		}
		seen[e.ENI] = true
		if err := b.SetENISGs(e.ENI, e.SgIDs); err != nil {
			return nil, renamePath(err, path)
		}
		if !slices.Equal(eni.SgIDs, e.SgIDs) {
			moved = true
			for _, id := range symmetricDiff(eni.SgIDs, e.SgIDs) {
				touchedSGs[id] = true
			}
		}
	}
	next := b.State()
	if err := w.checkENIsPerSG(next, touchedSGs); err != nil {
		return nil, err
	}
	if !moved {
		return nil, nil
	}
	return next, nil
}

// renamePath turns the Builder's `sgIds[1]` into the API's `networkInterfaceSet.0.sgIds.1`.
func renamePath(err error, prefix string) error {
	var e *model.Error
	if !errors.As(err, &e) {
		return err
	}
	c := *e
	p := []byte(c.Path)
	for i := range p {
		if p[i] == '[' {
			p[i] = '.'
		}
	}
	c.Path = prefix + "." + string(slices.DeleteFunc(p, func(b byte) bool { return b == ']' }))
	return &c
}

func (w *Writer) checkENIsPerSG(s *model.State, sgs map[string]bool) error {
	if len(sgs) == 0 {
		return nil
	}
	ix := compiler.NewIndex(s)
	for id := range sgs {
		if n := len(ix.Users(id)); n > w.limits.ENIsPerSG {
			return apiErr(model.CodeBadParameter, "sgIds", id, fmt.Sprintf("security group would have %d network interfaces, at most %d allowed", n, w.limits.ENIsPerSG))
		}
	}
	return nil
}

func symmetricDiff(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			out = append(out, x)
		}
	}
	return out
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomSGID() (string, error) {
	b := []byte("sg-........")
	for i := 3; i < len(b); i++ {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(idAlphabet))))
		if err != nil {
			return "", fmt.Errorf("draw a security group id: %w", err)
		}
		b[i] = idAlphabet[n.Int64()]
	}
	return string(b), nil
}

// CreateSecurityGroup creates an SG with no rules (it drops everything); it returns the next state and
// the new SG.
func (w *Writer) CreateSecurityGroup(s *model.State, appID, name, remark string, projectID int) (*model.State, *model.SecurityGroup, error) {
	switch n := utf8.RuneCountInString(name); {
	case name == "":
		return nil, nil, apiErr(model.CodeBadRuleFormat, "sgName", "", "sgName is required")
	case !utf8.ValidString(name) || n > 60:
		return nil, nil, apiErr(model.CodeBadRuleFormat, "sgName", name, "must be at most 60 UTF-8 characters")
	}
	if !utf8.ValidString(remark) || utf8.RuneCountInString(remark) > 100 {
		return nil, nil, apiErr(model.CodeBadRuleFormat, "sgRemark", "", "must be at most 100 UTF-8 characters")
	}
	if projectID < 0 {
		return nil, nil, apiErr(model.CodeBadParameter, "projectId", fmt.Sprint(projectID), "must not be negative")
	}
	if _, ok := s.Account(appID); !ok {
		return nil, nil, apiErr(model.CodeNotFound, "appId", appID, "no such account")
	}
	count := 0
	for _, id := range s.SGIDs() {
		g, _ := s.SG(id)
		if g.AppID != appID || g.ProjectID != projectID {
			continue
		}
		count++
		if g.SgName == name {
			return nil, nil, apiErr(model.CodeNameExists, "sgName", name, fmt.Sprintf("name already used by %s in project %d", id, projectID))
		}
	}
	if count >= w.limits.SGsPerProject {
		return nil, nil, apiErr(model.CodeLimit, "projectId", fmt.Sprint(projectID), fmt.Sprintf("project already has %d security groups, the limit", count))
	}
	var id string
	for {
		var err error
		if id, err = randomSGID(); err != nil {
			return nil, nil, &model.Error{Code: model.CodeInternal, Reason: err.Error(), Err: err}
		}
		if _, taken := s.SG(id); !taken {
			break
		}
	}
	b := s.Edit()
	if err := b.PutSG(model.SecurityGroup{SgID: id, AppID: appID, ProjectID: projectID, SgName: name, SgRemark: remark}); err != nil {
		return nil, nil, err
	}
	next := b.State()
	return next, mustSG(next, id), nil
}

// DeleteSecurityGroup deletes an unused, unreferenced, non-preset SG of appID.
func (w *Writer) DeleteSecurityGroup(s *model.State, appID, sgID string) (*model.State, error) {
	g, ok := s.SG(sgID)
	if !ok || g.AppID != appID {
		return nil, apiErr(model.CodeNotOwner, "sgId", sgID, "no such security group of the current user")
	}
	if g.Preset {
		return nil, apiErr(model.CodePreset, "sgId", sgID, "preset security group may not be deleted")
	}
	b := s.Edit()
	if err := b.DeleteSG(sgID); err != nil {
		return nil, err
	}
	return b.State(), nil
}

// Huawei error codes of SPEC §5.
const (
	HuaweiPortNotFound = "VPC.0608"
	HuaweiLastSG       = "VPC.0607"
	HuaweiBadRequest   = "VPC.0606"
)

// PortFailure is one entry of the Huawei `fail` list.
type PortFailure struct {
	ID        string `json:"id"`
	ErrorCode string `json:"error_code"`
	ErrorMsg  string `json:"error_msg"`
}

// ErrUnknownSG is returned by PortAction when the SG is not the caller's (Huawei answers VPC.0606).
var ErrUnknownSG = errors.New("security group not found")

// PortAction adds sgID to (add=true) or removes it from each port, applying every port that can be
// applied and reporting the others. Adding appends the SG at the end (lowest priority).
func (w *Writer) PortAction(s *model.State, appID, sgID string, add bool, ports []string) (*model.State, []PortFailure, error) {
	if g, ok := s.SG(sgID); !ok || g.AppID != appID {
		return nil, nil, fmt.Errorf("%w: %s", ErrUnknownSG, sgID)
	}
	fails := []PortFailure{}
	b := s.Edit()
	moved := false
	pending := map[string][]string{} // lists already changed by this call, so a repeated id sees them
	for _, id := range ports {
		eni, ok := s.ENI(id)
		if !ok || eni.AppID != appID {
			fails = append(fails, PortFailure{ID: id, ErrorCode: HuaweiPortNotFound, ErrorMsg: portNotFoundMsg(id)})
			continue
		}
		cur, changed := pending[id]
		if !changed {
			cur = eni.SgIDs
		}
		has := slices.Contains(cur, sgID)
		var next []string
		switch {
		case add && has, !add && !has:
			continue // already as asked: no error, no change
		case add:
			if len(cur) >= w.limits.SGsPerENI {
				fails = append(fails, PortFailure{ID: id, ErrorCode: HuaweiBadRequest,
					ErrorMsg: fmt.Sprintf("Port %s already has %d security groups, the limit", id, len(cur))})
				continue
			}
			next = append(slices.Clone(cur), sgID)
		default:
			if len(cur) == 1 {
				fails = append(fails, PortFailure{ID: id, ErrorCode: HuaweiLastSG, ErrorMsg: "An instance must belong to at least one security group"})
				continue
			}
			next = slices.DeleteFunc(slices.Clone(cur), func(s string) bool { return s == sgID })
		}
		if err := b.SetENISGs(id, next); err != nil {
			return nil, nil, err
		}
		moved = true
		pending[id] = next
	}
	if !moved {
		return nil, fails, nil
	}
	next := b.State()
	if err := w.checkENIsPerSG(next, map[string]bool{sgID: true}); err != nil {
		return nil, nil, err
	}
	return next, fails, nil
}

// portNotFoundMsg is the NeutronError JSON string of the seed page's example.
func portNotFoundMsg(id string) string {
	return `{"NeutronError":{"message":"Port ` + id + ` could not be found.","type":"PortNotFound","detail":""}}`
}
