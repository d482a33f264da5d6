package replay

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/store"
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

// InlinePacket is a packet given by its fields, with the verdict it must get.
type InlinePacket struct {
	// Kind is ip (default), arp, nd, not-ip or malformed.
	Kind     string `json:"kind,omitempty"`
	Proto    string `json:"proto,omitempty"` // tcp, udp, icmp, icmpv6 or a number
	Src      string `json:"src,omitempty"`
	Dst      string `json:"dst,omitempty"`
	SrcPort  uint16 `json:"sport,omitempty"`
	DstPort  uint16 `json:"dport,omitempty"`
	Flags    string `json:"flags,omitempty"` // TCP flags: any of S A F R
	ICMPType uint8  `json:"icmpType,omitempty"`
	ICMPCode uint8  `json:"icmpCode,omitempty"`
	// Quote is the packet an ICMP error quotes ("PROTO SRC:PORT > DST:PORT").
	Quote string `json:"quote,omitempty"`
	// Fragment is "first" or "later"; FragID ties fragments of one datagram.
	Fragment string `json:"fragment,omitempty"`
	FragID   uint32 `json:"fragId,omitempty"`
	// ENI and Direction force one check (like --eni/--direction).
	ENI       string `json:"eni,omitempty"`
	Direction string `json:"direction,omitempty"`

	Expect       string `json:"expect"`
	ExpectReason string `json:"reason,omitempty"`
	ExpectSgID   string `json:"sgId,omitempty"`
	ExpectRule   *int   `json:"ruleIndex,omitempty"`
}

// LoadScenario reads a YAML or JSON scenario file.
func LoadScenario(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	var s Scenario
	if err := yaml.UnmarshalStrict(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(s.Topology) == 0 {
		return nil, fmt.Errorf("%s: no topology", path)
	}
	return &s, nil
}

// scenarioEpoch is the fixed clock of API calls in scenarios (signatures carry timestamps).
var scenarioEpoch = time.Unix(1_800_000_000, 0)

// ScenarioRun runs one scenario.
type ScenarioRun struct {
	path    string
	dir     string
	s       *Scenario
	out     io.Writer
	ctrl    *control.Controller
	handler http.Handler
	state   *model.State
	now     time.Duration
	nonce   int
	index   int
	r       *Replayer
	forced  map[string]*Replayer
	fails   []string
}

// RunScenario runs the scenario in file path, narrating to out; it returns the failed assertions.
// An error means the scenario itself could not run (bad file, bad step).
func RunScenario(ctx context.Context, path string, out io.Writer) ([]string, error) {
	s, err := LoadScenario(path)
	if err != nil {
		return nil, err
	}
	sr := &ScenarioRun{path: path, dir: filepath.Dir(path), s: s, out: out, forced: map[string]*Replayer{}}
	if err := sr.setup(ctx); err != nil {
		return nil, err
	}
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

func (sr *ScenarioRun) setup(ctx context.Context) error {
	var st *model.State
	var err error
	raw := strings.TrimSpace(string(sr.s.Topology))
	if strings.HasPrefix(raw, "\"") {
		var name string
		if err := json.Unmarshal(sr.s.Topology, &name); err != nil {
			return fmt.Errorf("%s: topology: %w", sr.path, err)
		}
		if !filepath.IsAbs(name) {
			name = filepath.Join(sr.dir, name)
		}
		st, err = model.LoadTopologyFile(name)
	} else {
		st, err = model.ParseTopology("topology", sr.s.Topology)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", sr.path, err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sr.ctrl, err = control.New(ctx, store.NewMemory(), st, control.Options{Factory: dataplane.ClassifierFactory, Logger: quiet})
	if err != nil {
		return fmt.Errorf("%s: %w", sr.path, err)
	}
	sr.handler = api.NewHandler(sr.ctrl, api.Options{Now: func() time.Time { return scenarioEpoch.Add(sr.now) }, Logger: quiet})
	sr.state = st
	sr.r, err = New(st, sr.ctrl.Engine(), Options{Stateless: sr.s.Stateless})
	return err
}

func (sr *ScenarioRun) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	sr.fails = append(sr.fails, msg)
	fmt.Fprintln(sr.out, "  FAIL", msg)
}

func (sr *ScenarioRun) step(ctx context.Context, where string, st *Step) error {
	if st.Advance != "" {
		d, err := time.ParseDuration(st.Advance)
		if err != nil || d < 0 {
			return fmt.Errorf("advance %q: want a duration such as 30s", st.Advance)
		}
		sr.now += d
		fmt.Fprintf(sr.out, "%s: clock +%s\n", where, d)
	}
	switch {
	case st.Tencent != nil:
		return sr.tencent(where, st.Tencent)
	case st.Huawei != nil:
		return sr.huawei(where, st.Huawei)
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

func (sr *ScenarioRun) account(appID string) (*model.Account, error) {
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
func (sr *ScenarioRun) afterCall() error {
	sr.state = sr.ctrl.View().State
	if err := sr.r.SetState(sr.state); err != nil {
		return err
	}
	for _, r := range sr.forced {
		if err := r.shareFrom(sr.r); err != nil {
			return err
		}
	}
	return nil
}

func (sr *ScenarioRun) tencent(where string, c *TencentCall) error {
	a, err := sr.account(c.AppID)
	if err != nil {
		return err
	}
	sr.nonce++
	params := url.Values{}
	for k, v := range c.Params {
		params.Set(k, v)
	}
	params.Set("Action", c.Action)
	params.Set("Region", "ap-guangzhou")
	params.Set("Timestamp", strconv.FormatInt(scenarioEpoch.Add(sr.now).Unix(), 10))
	params.Set("Nonce", strconv.Itoa(sr.nonce))
	params.Set("SecretId", a.SecretID)
	params.Set("SignatureMethod", "HmacSHA256")
	const host = "sgsim.scenario"
	api.Sign(http.MethodPost, host, params, a.SecretKey)
	req := httptest.NewRequest(http.MethodPost, "http://"+host+api.TencentPath, strings.NewReader(params.Encode()))
	req.Host = host
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	sr.handler.ServeHTTP(rec, req)
	var resp struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		return fmt.Errorf("tencent %s: response is not JSON: %q", c.Action, rec.Body.String())
	}
	want := 0
	if c.ExpectCode != nil {
		want = *c.ExpectCode
	}
	fmt.Fprintf(sr.out, "%s: tencent %s → code %d %s\n", where, c.Action, resp.Code, resp.Message)
	if resp.Code != want {
		sr.fail("%s: tencent %s: want code %d, got %d (%s)", where, c.Action, want, resp.Code, resp.Message)
	}
	if c.ExpectMessage != "" && !strings.Contains(resp.Message, c.ExpectMessage) {
		sr.fail("%s: tencent %s: message %q does not contain %q", where, c.Action, resp.Message, c.ExpectMessage)
	}
	return sr.afterCall()
}

func (sr *ScenarioRun) huawei(where string, c *HuaweiCall) error {
	a, err := sr.account(c.AppID)
	if err != nil {
		return err
	}
	token, project := c.Token, c.Project
	if token == "" && len(a.HuaweiTokens) > 0 {
		token = a.HuaweiTokens[0]
	}
	if project == "" {
		project = a.HuaweiProjectID
	}
	type port struct {
		ID string `json:"id"`
	}
	body := struct {
		Ports  []port `json:"ports"`
		Action string `json:"action"`
	}{Action: c.Action}
	for _, p := range c.Ports {
		body.Ports = append(body.Ports, port{ID: p})
	}
	b, _ := json.Marshal(body)
	path := "/v2.0/" + url.PathEscape(project) + "/security-groups/" + url.PathEscape(c.SgID) + "/instance/action"
	req := httptest.NewRequest(http.MethodPost, "http://sgsim.scenario"+path, strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Auth-Token", token)
	rec := httptest.NewRecorder()
	sr.handler.ServeHTTP(rec, req)
	want := c.ExpectStatus
	if want == 0 {
		want = http.StatusOK
	}
	got := strings.TrimSpace(rec.Body.String())
	fmt.Fprintf(sr.out, "%s: huawei %s %s %v → %d %s\n", where, c.Action, c.SgID, c.Ports, rec.Code, got)
	if rec.Code != want {
		sr.fail("%s: huawei %s: want status %d, got %d (%s)", where, c.Action, want, rec.Code, got)
	}
	if c.ExpectContains != "" && !strings.Contains(got, c.ExpectContains) {
		sr.fail("%s: huawei %s: body %s does not contain %q", where, c.Action, got, c.ExpectContains)
	}
	return sr.afterCall()
}

func (sr *ScenarioRun) replayerFor(eni, dir string) (*Replayer, error) {
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
	r, err := New(sr.state, sr.ctrl.Engine(), Options{ForceENI: eni, ForceDirection: d, Stateless: sr.s.Stateless})
	if err != nil {
		return nil, err
	}
	// Share one connection table and ENI numbering with the unforced replayer: the same flows.
	if err := r.shareFrom(sr.r); err != nil {
		return nil, err
	}
	sr.forced[key] = r
	return r, nil
}

func (sr *ScenarioRun) inline(where string, p *InlinePacket) error {
	var res Result
	if err := p.decoded(&res.Packet); err != nil {
		return err
	}
	want, ok := ParseVerdict(p.Expect)
	if !ok {
		return fmt.Errorf("expect %q: want ACCEPT, DROP or UNMANAGED", p.Expect)
	}
	r, err := sr.replayerFor(p.ENI, p.Direction)
	if err != nil {
		return err
	}
	sr.now += time.Millisecond
	if err := r.DecideDecoded(sr.index, sr.now, &res); err != nil {
		return err
	}
	sr.index++
	by := make([]string, res.NChecks)
	for i := 0; i < res.NChecks; i++ {
		by[i] = CheckString(r, &res.Checks[i])
	}
	fmt.Fprintf(sr.out, "%s: %s → %s [%s]\n", where, FlowString(&res.Packet), res.Verdict, strings.Join(by, "; "))
	if res.Verdict != want {
		sr.fail("%s: %s: want %s, got %s [%s]", where, FlowString(&res.Packet), want, res.Verdict, strings.Join(by, "; "))
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
		sr.fail("%s: want ruleIndex %d, got %s", where, *p.ExpectRule, CheckString(r, dc))
	}
	return nil
}

func parseProto(s string) (uint8, error) {
	n, err := model.ParseIPProtocol(s)
	if err != nil {
		return 0, fmt.Errorf("proto %q: want tcp, udp, icmp, icmpv6 or a number", s)
	}
	return n, nil
}

// decoded fills d as the decoder would for the frame this inline packet describes.
func (p *InlinePacket) decoded(d *packet.Decoded) error {
	*d = packet.Decoded{}
	switch p.Kind {
	case "arp":
		d.Class = packet.ClassARP
		return nil
	case "not-ip":
		d.Class, d.Detail = packet.ClassNotIP, "inline non-IP frame"
		return nil
	case "malformed":
		d.Class, d.Detail = packet.ClassMalformed, "inline malformed packet"
		return nil
	case "", "ip", "nd":
	default:
		return fmt.Errorf("kind %q: want ip, arp, nd, not-ip or malformed", p.Kind)
	}
	src, err := netip.ParseAddr(p.Src)
	if err != nil {
		return fmt.Errorf("src %q: %w", p.Src, err)
	}
	dst, err := netip.ParseAddr(p.Dst)
	if err != nil {
		return fmt.Errorf("dst %q: %w", p.Dst, err)
	}
	if src.Is4() != dst.Is4() {
		return fmt.Errorf("src %s and dst %s: different address families", src, dst)
	}
	d.Class, d.Src, d.Dst = packet.ClassIP, src, dst
	if p.Kind == "nd" {
		d.Class, d.Proto, d.IsICMP, d.ICMPType = packet.ClassND, packet.ProtoICMPv6, true, 135
		return nil
	}
	if d.Proto, err = parseProto(p.Proto); err != nil {
		return err
	}
	switch d.Proto {
	case packet.ProtoTCP, packet.ProtoUDP:
		d.SrcPort, d.DstPort, d.HasPorts = p.SrcPort, p.DstPort, true
	case packet.ProtoICMP, packet.ProtoICMPv6:
		d.IsICMP, d.ICMPType, d.ICMPCode = true, p.ICMPType, p.ICMPCode
		v6 := d.Proto == packet.ProtoICMPv6
		if (!v6 && (p.ICMPType == 8 || p.ICMPType == 0)) || (v6 && (p.ICMPType == 128 || p.ICMPType == 129)) {
			d.ICMPID = p.SrcPort
			d.SrcPort, d.DstPort, d.HasPorts = p.SrcPort, p.SrcPort, true
		}
		if p.Quote != "" {
			q, err := parseQuote(p.Quote)
			if err != nil {
				return err
			}
			d.ICMPError, d.HasInner, d.Inner = true, true, q
		}
	}
	for _, f := range strings.ToUpper(p.Flags) {
		switch f {
		case 'S':
			d.TCPFlags |= packet.TCPSyn
		case 'A':
			d.TCPFlags |= packet.TCPAck
		case 'F':
			d.TCPFlags |= packet.TCPFin
		case 'R':
			d.TCPFlags |= packet.TCPRst
		default:
			return fmt.Errorf("flags %q: want letters among S A F R", p.Flags)
		}
	}
	switch p.Fragment {
	case "":
	case "first":
		d.Fragment, d.FirstFragment, d.FragID = true, true, p.FragID
	case "later":
		d.Fragment, d.FragID = true, p.FragID
		d.SrcPort, d.DstPort, d.HasPorts = 0, 0, false
	default:
		return fmt.Errorf("fragment %q: want first or later", p.Fragment)
	}
	return nil
}

// parseQuote reads "PROTO SRC:PORT > DST:PORT".
func parseQuote(s string) (packet.Tuple, error) {
	f := strings.Fields(s)
	var t packet.Tuple
	if len(f) != 4 || f[2] != ">" {
		return t, fmt.Errorf("quote %q: want \"PROTO SRC:PORT > DST:PORT\"", s)
	}
	proto, err := parseProto(f[0])
	if err != nil {
		return t, fmt.Errorf("quote %q: %w", s, err)
	}
	sa, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return t, fmt.Errorf("quote %q: source: %w", s, err)
	}
	da, err := netip.ParseAddrPort(f[3])
	if err != nil {
		return t, fmt.Errorf("quote %q: destination: %w", s, err)
	}
	return packet.Tuple{Src: sa.Addr(), Dst: da.Addr(), SrcPort: sa.Port(), DstPort: da.Port(), Proto: proto, HasPorts: true}, nil
}

func (sr *ScenarioRun) pcap(ctx context.Context, where string, st *Step) error {
	path := filepath.Join(sr.dir, st.Pcap)
	var ex *Expectations
	if len(st.ExpectPcap) > 0 {
		var err error
		if ex, err = ParseExpectations(where+" expectPcap", st.ExpectPcap); err != nil {
			return err
		}
	}
	sum, err := Run(ctx, sr.r, RunConfig{Pcaps: []string{path}, OnResult: func(res *Result) {
		if ex != nil {
			ex.Observe(sr.r, res)
		}
	}})
	if err != nil {
		return err
	}
	fmt.Fprintf(sr.out, "%s: pcap %s: %d packets, %d accepted, %d dropped, %d unmanaged\n", where, st.Pcap,
		sum.Packets, sum.ByVerdict[Accept], sum.ByVerdict[Drop], sum.ByVerdict[Unmanaged])
	if ex != nil {
		for _, f := range ex.Failures() {
			sr.fail("%s: %s", where, f)
		}
	}
	return nil
}
