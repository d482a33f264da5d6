// Package scenario runs end-to-end cases: a topology assembled into an in-memory node, API calls in
// either dialect sent through its handlers by the client package, crafted frames and pcaps replayed
// against its tables by the Go engine, the eBPF program or both, and assertions on every verdict. The
// what-if diff (a capture replayed before and after calls) lives here too, since it needs the write path.
package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/internal/strictyaml"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/node"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/replay"
)

// Scenario is an end-to-end case: a topology, then API calls, packets and assertions, in order.
type Scenario struct {
	Name string `json:"name"`
	// Topology is a file path (relative to the scenario file) or an inline topology object.
	Topology  json.RawMessage `json:"topology"`
	Stateless bool            `json:"stateless"`
	Steps     []Step          `json:"steps"`
}

// Step is one thing a scenario does; exactly one of its action fields is set.
type Step struct {
	Name string `json:"name,omitempty"`
	// Advance moves the scenario clock ("30s", "10m") before anything else in this step.
	Advance string `json:"advance,omitempty"`

	Tencent *TencentCall   `json:"tencent,omitempty"`
	Huawei  *HuaweiCall    `json:"huawei,omitempty"`
	Packets []InlinePacket `json:"packets,omitempty"`
	Pcap    string         `json:"pcap,omitempty"`
	// ExpectPcap holds expectations for the Pcap step (same form as --expect).
	ExpectPcap json.RawMessage `json:"expectPcap,omitempty"`
}

// TencentCall is a Tencent v2 call sent through the daemon's HTTP handler, signed with the account's key.
type TencentCall struct {
	AppID  string            `json:"appId,omitempty"` // default: the topology's first account
	Action string            `json:"action"`
	Params map[string]string `json:"params"`
	// Expected response: Code (0 = success), and optionally a substring of the message.
	ExpectCode    *int   `json:"expectCode,omitempty"`
	ExpectMessage string `json:"expectMessage,omitempty"`
}

// HuaweiCall is a Huawei port action sent through the daemon's HTTP handler.
type HuaweiCall struct {
	AppID   string   `json:"appId,omitempty"`
	Token   string   `json:"token,omitempty"`   // default: the account's first token
	Project string   `json:"project,omitempty"` // default: the account's project
	SgID    string   `json:"sgId"`
	Action  string   `json:"action"`
	Ports   []string `json:"ports"`
	// Expected HTTP status (default 200) and a substring of the body.
	ExpectStatus   int    `json:"expectStatus,omitempty"`
	ExpectContains string `json:"expectContains,omitempty"`
}

// Load reads a YAML or JSON scenario file.
func Load(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	var s Scenario
	if err := strictyaml.Decode(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(s.Topology) == 0 {
		return nil, fmt.Errorf("%s: no topology", path)
	}
	return &s, nil
}

// Options say how a scenario runs.
type Options struct {
	// Engine is what decides packets: "go" (default), "ebpf" or "both", as `replay --engine` takes it.
	Engine string
}

// epoch is the fixed clock of API calls in scenarios (signatures carry timestamps).
var epoch = time.Unix(1_800_000_000, 0)

// run is one scenario in progress.
type run struct {
	path   string
	dir    string
	s      *Scenario
	out    io.Writer
	engine replay.DecideWith
	node   *node.Node
	ctrl   *control.Controller
	state  *model.State
	now    time.Duration
	nonce  int64
	index  int
	r      *replay.Replayer
	forced map[string]*replay.Replayer
	fails  []string
}

// Run runs the scenario in file path, narrating to out; it returns the failed assertions.
// An error means the scenario itself could not run (bad file, bad step, no kernel for opts.DecideWith).
func Run(ctx context.Context, path string, out io.Writer, opts Options) (fails []string, err error) {
	s, err := Load(path)
	if err != nil {
		return nil, err
	}
	engine, err := ParseEngine(opts.Engine)
	if err != nil {
		return nil, err
	}
	sr := &run{path: path, dir: filepath.Dir(path), s: s, out: out, engine: engine, forced: map[string]*replay.Replayer{}}
	if err := sr.setup(ctx); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, sr.close()) }()
	for i := range s.Steps {
		st := &s.Steps[i]
		where := fmt.Sprintf("%s: step %d", path, i)
		if st.Name != "" {
			where += " (" + st.Name + ")"
		}
		if err := sr.step(ctx, where, st); err != nil {
			return sr.fails, fmt.Errorf("%s: %w", where, err)
		}
	}
	return sr.fails, nil
}

// loadTopology reads the scenario's topology: a file named relative to the scenario, or inline.
func (sr *run) loadTopology() (*model.State, error) {
	raw := strings.TrimSpace(string(sr.s.Topology))
	if !strings.HasPrefix(raw, "\"") {
		return model.ParseTopology("topology", sr.s.Topology)
	}
	var name string
	if err := json.Unmarshal(sr.s.Topology, &name); err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	if !filepath.IsAbs(name) {
		name = filepath.Join(sr.dir, name)
	}
	return model.LoadTopologyFile(name)
}

// setup assembles the node (with the eBPF program unattached when it decides) and the replayer.
func (sr *run) setup(ctx context.Context) error {
	st, err := sr.loadTopology()
	if err != nil {
		return fmt.Errorf("%s: %w", sr.path, err)
	}
	quiet := slog.New(slog.DiscardHandler)
	cfg := node.Config{Seed: st, Logger: quiet,
		Control: control.Options{Factory: dataplane.ClassifierFactory},
		API:     api.Options{Now: func() time.Time { return epoch.Add(sr.now) }}}
	if sr.engine != replay.DecideWithGo {
		cfg.Dataplane, cfg.NoAttach, cfg.PinPath = node.DataplaneBoth, true, ""
	}
	if sr.node, err = node.New(ctx, cfg); err != nil {
		if sr.engine != replay.DecideWithGo {
			return fmt.Errorf("%s: the kernel engines need root and a BPF-capable kernel: %w", sr.path, err)
		}
		return fmt.Errorf("%s: %w", sr.path, err)
	}
	sr.ctrl = sr.node.Controller()
	sr.state = st
	sr.r, err = replay.New(st, sr.ctrl.Engine(), sr.replayOptions())
	return err
}

func (sr *run) replayOptions() replay.Options {
	o := replay.Options{Stateless: sr.s.Stateless, DecideWith: sr.engine}
	if sr.engine != replay.DecideWithGo {
		o.Decider = NewBPFDecider(sr.node.BPF())
		if sr.s.Stateless {
			o.Decider = statelessDecider{NewBPFDecider(sr.node.BPF())}
		}
	}
	return o
}

func (sr *run) close() error {
	if sr.node == nil {
		return nil
	}
	return sr.node.Close()
}

func (sr *run) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	sr.fails = append(sr.fails, msg)
	fmt.Fprintln(sr.out, "  FAIL", msg)
}

func (sr *run) step(ctx context.Context, where string, st *Step) error {
	if st.Advance != "" {
		d, err := time.ParseDuration(st.Advance)
		if err != nil || d < 0 {
			return fmt.Errorf("advance %q: want a duration such as 30s", st.Advance)
		}
		if err := sr.advance(d); err != nil {
			return err
		}
		fmt.Fprintf(sr.out, "%s: clock +%s\n", where, d)
	}
	actions := 0
	for _, set := range []bool{st.Tencent != nil, st.Huawei != nil, len(st.Packets) > 0, st.Pcap != ""} {
		if set {
			actions++
		}
	}
	if actions > 1 {
		return errors.New("a step does one thing: give one of tencent, huawei, packets or pcap (advance may go with any)")
	}
	switch {
	case st.Tencent != nil:
		return sr.tencent(ctx, where, st.Tencent)
	case st.Huawei != nil:
		return sr.huawei(ctx, where, st.Huawei)
	case len(st.Packets) > 0:
		for i := range st.Packets {
			if err := sr.inline(fmt.Sprintf("%s packet %d", where, i), &st.Packets[i]); err != nil {
				return fmt.Errorf("packet %d: %w", i, err)
			}
		}
	case st.Pcap != "":
		return sr.pcap(ctx, where, st)
	case st.Advance == "":
		return fmt.Errorf("empty step: give tencent, huawei, packets, pcap or advance")
	}
	return nil
}

// advance moves the scenario clock, and the kernel's tracked flows with it (the program ages them on
// the kernel clock, which does not move with the scenario's).
func (sr *run) advance(d time.Duration) error {
	sr.now += d
	if b := sr.node.BPF(); b != nil && sr.engine != replay.DecideWithGo {
		if err := b.AgeConntrack(d); err != nil {
			return fmt.Errorf("advance %s: %w", d, err)
		}
	}
	return nil
}

func (sr *run) account(appID string) (*model.Account, error) {
	ids := sr.state.AppIDs()
	if appID == "" {
		if len(ids) == 0 {
			return nil, fmt.Errorf("the topology has no account")
		}
		appID = ids[0]
	}
	a, ok := sr.state.Account(appID)
	if !ok {
		return nil, fmt.Errorf("appId %q: no such account", appID)
	}
	return a, nil
}

// afterCall refreshes the replayers' view of ENI addresses after an API call.
func (sr *run) afterCall() error {
	sr.state = sr.ctrl.View().State
	if err := sr.r.SetState(sr.state); err != nil {
		return err
	}
	for _, r := range sr.forced {
		if err := r.ShareFrom(sr.r); err != nil {
			return err
		}
	}
	return nil
}

func (sr *run) replayerFor(eni, dir string) (*replay.Replayer, error) {
	if eni == "" && dir == "" {
		return sr.r, nil
	}
	key := eni + "/" + dir
	if r, ok := sr.forced[key]; ok {
		return r, nil
	}
	d, err := model.ParseDirection(dir)
	if err != nil || eni == "" {
		return nil, fmt.Errorf("eni %q direction %q: give both, direction ingress or egress", eni, dir)
	}
	opts := sr.replayOptions()
	opts.ForceENI, opts.ForceDirection = eni, d
	r, err := replay.New(sr.state, sr.ctrl.Engine(), opts)
	if err != nil {
		return nil, err
	}
	// Share one connection table and ENI numbering with the unforced replayer: the same flows.
	if err := r.ShareFrom(sr.r); err != nil {
		return nil, err
	}
	sr.forced[key] = r
	return r, nil
}

// checks renders every check of res.
func checks(r *replay.Replayer, res *replay.Result) string {
	by := make([]string, res.NChecks)
	for i := 0; i < res.NChecks; i++ {
		by[i] = replay.CheckString(r, &res.Checks[i])
	}
	return strings.Join(by, "; ")
}

func (sr *run) inline(where string, p *InlinePacket) error {
	frame, err := p.Frame()
	if err != nil {
		return err
	}
	want, ok := replay.ParseVerdict(p.Expect)
	if !ok {
		return fmt.Errorf("expect %q: want ACCEPT, DROP or UNMANAGED", p.Expect)
	}
	r, err := sr.replayerFor(p.ENI, p.Direction)
	if err != nil {
		return err
	}
	sr.now += time.Millisecond
	var res replay.Result
	if err := r.Decide(sr.index, sr.now, packet.LinkEthernet, frame, &res); err != nil {
		return err
	}
	sr.index++
	by := checks(r, &res)
	fmt.Fprintf(sr.out, "%s: %s → %s [%s]\n", where, replay.FlowString(&res.Packet), res.Verdict, by)
	sr.disagreements(where, r, &res)
	if res.Verdict != want {
		sr.fail("%s: %s: want %s, got %s [%s]", where, replay.FlowString(&res.Packet), want, res.Verdict, by)
		return nil
	}
	if res.NChecks == 0 {
		return nil
	}
	// The deciding check: the first that dropped, else the last.
	dc := &res.Checks[res.NChecks-1]
	for i := 0; i < res.NChecks; i++ {
		if res.Checks[i].Verdict.Action != model.Accept {
			dc = &res.Checks[i]
			break
		}
	}
	v := dc.Verdict
	if p.ExpectReason != "" && v.Reason.String() != p.ExpectReason {
		sr.fail("%s: want reason %s, got %s", where, p.ExpectReason, v.Reason)
	}
	if p.ExpectSgID != "" && v.SgID != p.ExpectSgID {
		sr.fail("%s: want sgId %s, got %q", where, p.ExpectSgID, v.SgID)
	}
	if p.ExpectRule != nil && (v.Reason != dataplane.ReasonRule || v.RuleIndex != *p.ExpectRule) {
		sr.fail("%s: want ruleIndex %d, got %s", where, *p.ExpectRule, replay.CheckString(r, dc))
	}
	return nil
}

// disagreements fails every check on which the Go engine and the eBPF program differ (engine both).
func (sr *run) disagreements(where string, r *replay.Replayer, res *replay.Result) {
	if !res.Disagrees() {
		return
	}
	for _, line := range replay.Disagreements(r, res, "go", "ebpf") {
		sr.fail("%s: engines disagree: %s", where, line)
	}
}

func (sr *run) pcap(ctx context.Context, where string, st *Step) error {
	path := st.Pcap
	if !filepath.IsAbs(path) {
		path = filepath.Join(sr.dir, path)
	}
	var ex *replay.Expectations
	if len(st.ExpectPcap) > 0 {
		var err error
		if ex, err = replay.ParseExpectations(where+" expectPcap", st.ExpectPcap); err != nil {
			return err
		}
	}
	var disagree []*replay.Result
	sum, err := replay.Run(ctx, sr.r, replay.RunConfig{Pcaps: []string{path}, OnResult: func(res *replay.Result) {
		if ex != nil {
			ex.Observe(sr.r, res)
		}
		if res.Disagrees() {
			c := *res
			disagree = append(disagree, &c)
		}
	}})
	if err != nil {
		return err
	}
	fmt.Fprintf(sr.out, "%s: pcap %s: %d packets, %d accepted, %d dropped, %d unmanaged\n", where, st.Pcap,
		sum.Packets, sum.ByVerdict[replay.Accept], sum.ByVerdict[replay.Drop], sum.ByVerdict[replay.Unmanaged])
	for _, res := range disagree {
		sr.disagreements(where, sr.r, res)
	}
	if ex != nil {
		for _, f := range ex.Failures() {
			sr.fail("%s: %s", where, f)
		}
	}
	return nil
}
