// Package control is the write path: it owns the current State, validates and applies API operations one
// at a time, makes each durable, recompiles only the ENIs it affects and publishes them to every dataplane
// before the operation returns.
package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// Limits are the API quotas of SPEC §4. Topology files are not checked against them.
type Limits struct {
	RulesPerDirection int // per SG and direction; the implicit DROP does not count
	SGsPerENI         int
	SGsPerProject     int // per account and project
	ENIsPerSG         int
	SGRefRulesPerSG   int // rules with an sgId, per SG (both directions)
}

// DefaultLimits returns Tencent's documented defaults.
func DefaultLimits() Limits {
	return Limits{RulesPerDirection: 100, SGsPerENI: 5, SGsPerProject: 50, ENIsPerSG: 2000, SGRefRulesPerSG: 10}
}

// Dataplane receives every table change in two steps, so that building the new lookup structures
// overlaps the store's commit: Stage builds them beside the live ones without changing what packets see;
// the Staged's Switch, called once the change is durable, puts them in force before it returns.
type Dataplane interface {
	Stage(ctx context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) (dataplane.Staged, error)
}

// EngineDataplane adapts the pure-Go engine to Dataplane.
type EngineDataplane struct{ Engine *dataplane.Engine }

// Stage implements Dataplane.
func (e EngineDataplane) Stage(_ context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) (dataplane.Staged, error) {
	return e.Engine.Stage(gen, changed, removed), nil
}

// Options configure a Controller; the zero value means defaults.
type Options struct {
	Limits  *Limits                  // nil = DefaultLimits()
	Factory dataplane.MatcherFactory // matcher of the built-in engine; nil = dataplane.LinearFactory
	Logger  *slog.Logger             // nil = slog.Default()
	// NoEngine keeps no built-in Go engine (Engine returns nil): for a daemon whose only dataplane is
	// the kernel's, so a change is not also compiled into matchers nobody reads.
	NoEngine bool
}

// View is one committed version: the State, its generation and the tables compiled from it.
type View struct {
	State      *model.State
	Generation uint64
	Tables     map[string]*compiler.Tables // every ENI; never modified after publication
	Index      *compiler.Index
}

// Controller serialises writers; readers use View or the built-in engine and never wait.
type Controller struct {
	mu      sync.Mutex // held by writers for the whole validate→commit→publish sequence
	store   store.Store
	limits  Limits
	log     *slog.Logger
	engine  *dataplane.Engine
	dps     []Dataplane
	cur     atomic.Pointer[View]
	timings *Timings
}

// New loads the state from st; when st is empty it seeds it with seed (generation 1). The returned
// Controller already serves lookups through Engine().
func New(ctx context.Context, st store.Store, seed *model.State, opts Options) (*Controller, error) {
	c := &Controller{store: st, limits: DefaultLimits(), log: opts.Logger, timings: newTimings()}
	if opts.Limits != nil {
		c.limits = *opts.Limits
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	factory := opts.Factory
	if factory == nil {
		factory = dataplane.LinearFactory
	}
	s, gen, err := st.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("control: load state: %w", err)
	}
	if s == nil {
		if seed == nil {
			return nil, errors.New("control: the store is empty and no topology was given to seed it")
		}
		s, gen = seed, 1
		if err := st.Commit(ctx, s, gen); err != nil {
			return nil, fmt.Errorf("control: seed store: %w", err)
		}
	}
	start := time.Now()
	v := &View{State: s, Generation: gen, Tables: compiler.New(s).CompileAll(), Index: compiler.NewIndex(s)}
	since(c.timings.Apply, start)
	c.cur.Store(v)
	if !opts.NoEngine {
		c.engine = dataplane.NewEngine(factory)
		c.engine.Publish(gen, v.Tables, nil)
		c.dps = []Dataplane{EngineDataplane{c.engine}}
	}
	return c, nil
}

// Engine returns the built-in Go engine, always in step with the committed state; nil with NoEngine.
func (c *Controller) Engine() *dataplane.Engine { return c.engine }

// View returns the current committed version.
func (c *Controller) View() *View { return c.cur.Load() }

// Limits returns the quotas in force.
func (c *Controller) Limits() Limits { return c.limits }

// Timings returns the latency histograms of applying changes.
func (c *Controller) Timings() *Timings { return c.timings }

// AddDataplane loads every current table into dp and then keeps it in step with every change.
func (c *Controller) AddDataplane(ctx context.Context, dp Dataplane) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.cur.Load()
	st, err := dp.Stage(ctx, v.Generation, v.Tables, nil)
	if err != nil {
		return fmt.Errorf("control: load dataplane: %w", err)
	}
	if err := st.Switch(); err != nil {
		return fmt.Errorf("control: load dataplane: %w", err)
	}
	c.dps = append(c.dps, dp)
	return nil
}

// apply commits next and puts the tables of the affected ENIs in force. The tables are compiled, then
// staged in every dataplane while the store commits; they are switched in only once the commit has
// succeeded, so a failed commit changes nothing. Caller holds c.mu.
func (c *Controller) apply(ctx context.Context, next *model.State, affected []string) error {
	old := c.cur.Load()
	gen := old.Generation + 1
	start := time.Now()
	changed, err := compileAffected(next, affected)
	if err != nil {
		return &model.Error{Code: model.CodeInternal, Reason: err.Error()} // a compiler bug; nothing committed
	}
	since(c.timings.Compile, start)
	committed := make(chan error, 1)
	go func() { committed <- c.store.Commit(ctx, next, gen) }()
	// Once the commit is under way the change must reach every dataplane, even if the caller gives up:
	// staging is not cut short by the call's cancellation.
	stageStart := time.Now()
	staged, errs := c.stageAll(context.WithoutCancel(ctx), gen, changed)
	since(c.timings.Stage, stageStart)
	if err := <-committed; err != nil {
		for _, st := range staged {
			if st != nil {
				st.Discard()
			}
		}
		return &model.Error{Code: model.CodeInternal, Reason: fmt.Sprintf("commit failed: %v", err)}
	}
	tables := make(map[string]*compiler.Tables, len(old.Tables))
	for id, t := range old.Tables {
		tables[id] = t
	}
	for id, t := range changed {
		tables[id] = t
	}
	c.cur.Store(&View{State: next, Generation: gen, Tables: tables, Index: compiler.NewIndex(next)})
	switchStart := time.Now()
	errs = append(errs, switchAll(staged)...)
	since(c.timings.Switch, switchStart)
	since(c.timings.Apply, start)
	c.log.Debug("applied", "generation", gen, "recompiled", len(changed))
	if err := errors.Join(errs...); err != nil {
		// The change is durable; a dataplane that failed is out of step and says so in the logs.
		c.log.Error("publish failed", "generation", gen, "err", err)
		return &model.Error{Code: model.CodeInternal, Reason: fmt.Sprintf("publish failed: %v", err)}
	}
	return nil
}

// compileAffected compiles the tables of the affected ENIs of s. ENIs with the same ordered SG list
// have the same rows: each list is compiled once and its (immutable) entries shared, so a rule change
// of an SG used by many ENIs costs one compile.
func compileAffected(s *model.State, affected []string) (map[string]*compiler.Tables, error) {
	comp := compiler.New(s)
	changed := make(map[string]*compiler.Tables, len(affected))
	byList := map[string]*compiler.Tables{}
	for _, id := range affected {
		eni, ok := s.ENI(id)
		if !ok {
			continue
		}
		key := strings.Join(eni.SgIDs, "\x00")
		if t, ok := byList[key]; ok {
			changed[id] = &compiler.Tables{ENI: id, Ingress: retarget(t.Ingress, id), Egress: retarget(t.Egress, id)}
			continue
		}
		t, err := comp.Compile(id)
		if err != nil {
			return nil, fmt.Errorf("compile %s: %w", id, err)
		}
		byList[key] = t
		changed[id] = t
	}
	return changed, nil
}

// stageAll stages the change in every dataplane at once: each builds its own lookup structures (the Go
// engine and the eBPF program both build a classifier per table), so with several they overlap instead
// of adding up. staged[i] is nil where errs has dataplane i's error.
func (c *Controller) stageAll(ctx context.Context, gen uint64, changed map[string]*compiler.Tables) ([]dataplane.Staged, []error) {
	staged := make([]dataplane.Staged, len(c.dps))
	errs := make([]error, len(c.dps))
	var wg sync.WaitGroup
	for i, dp := range c.dps {
		wg.Go(func() { staged[i], errs[i] = dp.Stage(ctx, gen, changed, nil) })
	}
	wg.Wait()
	return staged, errs
}

// switchAll puts every staged change in force, all at once.
func switchAll(staged []dataplane.Staged) []error {
	errs := make([]error, len(staged))
	var wg sync.WaitGroup
	for i, st := range staged {
		if st != nil {
			wg.Go(func() { errs[i] = st.Switch() })
		}
	}
	wg.Wait()
	return errs
}

// retarget returns t's rows under another ENI's name.
func retarget(t *compiler.Table, eni string) *compiler.Table {
	c := *t
	c.ENI = eni
	return &c
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
func (c *Controller) ModifySecurityGroupPolicy(ctx context.Context, appID, sgID string, ingress, egress []model.Rule) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.cur.Load()
	g, err := ownedSG(v.State, appID, sgID)
	if err != nil {
		return err
	}
	if g.Preset {
		return apiErr(model.CodePreset, "sgId", sgID, "preset security group may not be modified")
	}
	refs := 0
	for _, l := range []struct {
		name  string
		rules []model.Rule
	}{{"ingress", ingress}, {"egress", egress}} {
		if len(l.rules) > c.limits.RulesPerDirection {
			return apiErr(model.CodeLimit, l.name, "", fmt.Sprintf("%d rules, at most %d allowed per direction", len(l.rules), c.limits.RulesPerDirection))
		}
		for _, r := range l.rules {
			if r.SgID != "" {
				refs++
			}
		}
	}
	if refs > c.limits.SGRefRulesPerSG {
		return apiErr(model.CodeLimit, "sgId", sgID, fmt.Sprintf("%d rules reference security groups, at most %d allowed", refs, c.limits.SGRefRulesPerSG))
	}
	ng := *g
	ng.Ingress, ng.Egress = ingress, egress // PutSG keeps copies, not the caller's slices
	ng.Version = g.Version + 1
	b := v.State.Edit()
	if err := b.PutSG(ng); err != nil {
		return err
	}
	next := b.State()
	if sameRules(g, mustSG(next, sgID)) {
		return nil // nothing changed: no new version, no recompile
	}
	return c.apply(ctx, next, v.Index.AffectedByRules(sgID))
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
func (c *Controller) ModifySecurityGroupsOfNetworkInterface(ctx context.Context, appID string, set []ENISGs) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.cur.Load()
	if len(set) == 0 {
		return apiErr(model.CodeBadParameter, "networkInterfaceSet", "", "at least one network interface is required")
	}
	b := v.State.Edit()
	seen := map[string]bool{}
	var moved []string
	touchedSGs := map[string]bool{}
	for i, e := range set {
		path := fmt.Sprintf("networkInterfaceSet.%d", i)
		eni, ok := v.State.ENI(e.ENI)
		switch {
		case !ok:
			return apiErr(model.CodeNotFound, path+".networkInterfaceId", e.ENI, "no such network interface")
		case eni.AppID != appID:
			return apiErr(model.CodeNotOwner, path+".networkInterfaceId", e.ENI, "network interface does not belong to the current user")
		case seen[e.ENI]:
			return apiErr(model.CodeBadParameter, path+".networkInterfaceId", e.ENI, "network interface listed twice")
		case len(e.SgIDs) > c.limits.SGsPerENI:
			return apiErr(model.CodeBadParameter, path+".sgIds", "", fmt.Sprintf("%d security groups, at most %d allowed per network interface", len(e.SgIDs), c.limits.SGsPerENI))
		}
		seen[e.ENI] = true
		if err := b.SetENISGs(e.ENI, e.SgIDs); err != nil {
			return renamePath(err, path)
		}
		if !slices.Equal(eni.SgIDs, e.SgIDs) {
			moved = append(moved, e.ENI)
			for _, id := range symmetricDiff(eni.SgIDs, e.SgIDs) {
				touchedSGs[id] = true
			}
		}
	}
	next := b.State()
	if err := c.checkENIsPerSG(next, touchedSGs); err != nil {
		return err
	}
	if len(moved) == 0 {
		return nil
	}
	return c.apply(ctx, next, affectedByMembership(compiler.NewIndex(next), moved, touchedSGs))
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

func (c *Controller) checkENIsPerSG(s *model.State, sgs map[string]bool) error {
	if len(sgs) == 0 {
		return nil
	}
	ix := compiler.NewIndex(s)
	for id := range sgs {
		if n := len(ix.Users(id)); n > c.limits.ENIsPerSG {
			return apiErr(model.CodeBadParameter, "sgIds", id, fmt.Sprintf("security group would have %d network interfaces, at most %d allowed", n, c.limits.ENIsPerSG))
		}
	}
	return nil
}

// affectedByMembership: the moved ENIs plus every user of an SG whose rules name a touched SG.
func affectedByMembership(ix *compiler.Index, moved []string, touched map[string]bool) []string {
	out := slices.Clone(moved)
	for id := range touched {
		out = append(out, ix.AffectedByMembership(id)...)
	}
	slices.Sort(out)
	return slices.Compact(out)
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
			return "", err
		}
		b[i] = idAlphabet[n.Int64()]
	}
	return string(b), nil
}

// CreateSecurityGroup creates an SG with no rules (it drops everything) and returns it.
func (c *Controller) CreateSecurityGroup(ctx context.Context, appID, name, remark string, projectID int) (*model.SecurityGroup, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.cur.Load()
	switch n := utf8.RuneCountInString(name); {
	case name == "":
		return nil, apiErr(model.CodeBadRuleFormat, "sgName", "", "sgName is required")
	case !utf8.ValidString(name) || n > 60:
		return nil, apiErr(model.CodeBadRuleFormat, "sgName", name, "must be at most 60 UTF-8 characters")
	}
	if !utf8.ValidString(remark) || utf8.RuneCountInString(remark) > 100 {
		return nil, apiErr(model.CodeBadRuleFormat, "sgRemark", "", "must be at most 100 UTF-8 characters")
	}
	if projectID < 0 {
		return nil, apiErr(model.CodeBadParameter, "projectId", fmt.Sprint(projectID), "must not be negative")
	}
	if _, ok := v.State.Account(appID); !ok {
		return nil, apiErr(model.CodeNotFound, "appId", appID, "no such account")
	}
	count := 0
	for _, id := range v.State.SGIDs() {
		g, _ := v.State.SG(id)
		if g.AppID != appID || g.ProjectID != projectID {
			continue
		}
		count++
		if g.SgName == name {
			return nil, apiErr(model.CodeNameExists, "sgName", name, fmt.Sprintf("name already used by %s in project %d", id, projectID))
		}
	}
	if count >= c.limits.SGsPerProject {
		return nil, apiErr(model.CodeLimit, "projectId", fmt.Sprint(projectID), fmt.Sprintf("project already has %d security groups, the limit", count))
	}
	var id string
	for {
		var err error
		if id, err = randomSGID(); err != nil {
			return nil, &model.Error{Code: model.CodeInternal, Reason: err.Error()}
		}
		if _, taken := v.State.SG(id); !taken {
			break
		}
	}
	b := v.State.Edit()
	if err := b.PutSG(model.SecurityGroup{SgID: id, AppID: appID, ProjectID: projectID, SgName: name, SgRemark: remark}); err != nil {
		return nil, err
	}
	next := b.State()
	if err := c.apply(ctx, next, nil); err != nil {
		return nil, err
	}
	return mustSG(next, id), nil
}

// DeleteSecurityGroup deletes an unused, unreferenced, non-preset SG of appID.
func (c *Controller) DeleteSecurityGroup(ctx context.Context, appID, sgID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.cur.Load()
	g, ok := v.State.SG(sgID)
	if !ok || g.AppID != appID {
		return apiErr(model.CodeNotOwner, "sgId", sgID, "no such security group of the current user")
	}
	if g.Preset {
		return apiErr(model.CodePreset, "sgId", sgID, "preset security group may not be deleted")
	}
	b := v.State.Edit()
	if err := b.DeleteSG(sgID); err != nil {
		return err
	}
	return c.apply(ctx, b.State(), nil)
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
func (c *Controller) PortAction(ctx context.Context, appID, sgID string, add bool, ports []string) ([]PortFailure, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.cur.Load()
	if g, ok := v.State.SG(sgID); !ok || g.AppID != appID {
		return nil, fmt.Errorf("%w: %s", ErrUnknownSG, sgID)
	}
	fails := []PortFailure{}
	b := v.State.Edit()
	var moved []string
	pending := map[string][]string{} // lists already changed by this call, so a repeated id sees them
	for _, id := range ports {
		eni, ok := v.State.ENI(id)
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
			if len(cur) >= c.limits.SGsPerENI {
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
			return nil, err
		}
		if !changed {
			moved = append(moved, id)
		}
		pending[id] = next
	}
	if len(moved) == 0 {
		return fails, nil
	}
	next := b.State()
	touched := map[string]bool{sgID: true}
	if err := c.checkENIsPerSG(next, touched); err != nil {
		return nil, err
	}
	if err := c.apply(ctx, next, affectedByMembership(compiler.NewIndex(next), moved, touched)); err != nil {
		return nil, err
	}
	return fails, nil
}

// portNotFoundMsg is the NeutronError JSON string of the seed page's example.
func portNotFoundMsg(id string) string {
	return `{"NeutronError":{"message":"Port ` + id + ` could not be found.","type":"PortNotFound","detail":""}}`
}
