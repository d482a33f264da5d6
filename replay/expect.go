package replay

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/sgsim/sgsim/internal/strictyaml"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
)

// Expectation says what verdict packets must get: one packet by Index, or every packet of a Flow.
type Expectation struct {
	Index *int `json:"index,omitempty"`
	// Flow is "PROTO SRC > DST": PROTO tcp|udp|icmp|icmpv6|a number|*, each endpoint ADDR, ADDR:PORT,
	// [V6]:PORT, a CIDR prefix, or * (and * as the port). Example: "tcp * > 198.18.1.10:80".
	Flow    string `json:"flow,omitempty"`
	Verdict string `json:"verdict"`

	flow    *FlowPattern
	verdict Verdict
	seen    int
}

// FlowPattern matches packets by 5-tuple with wildcards.
type FlowPattern struct {
	AnyProto bool
	Proto    uint8
	Src, Dst endpointPattern
}

type endpointPattern struct {
	any     bool
	prefix  netip.Prefix
	anyPort bool
	port    uint16
}

// ParseFlowPattern parses "PROTO SRC > DST".
func ParseFlowPattern(s string) (*FlowPattern, error) {
	f := strings.Fields(s)
	if len(f) != 4 || f[2] != ">" {
		return nil, fmt.Errorf("flow %q: want \"PROTO SRC > DST\", e.g. \"tcp * > 198.18.1.10:80\"", s)
	}
	p := &FlowPattern{}
	if f[0] == "*" || strings.EqualFold(f[0], "all") {
		p.AnyProto = true
	} else {
		n, err := model.ParseIPProtocol(f[0])
		if err != nil {
			return nil, fmt.Errorf("flow %q: protocol %q: want tcp, udp, icmp, icmpv6, a number or *", s, f[0])
		}
		p.Proto = n
	}
	var err error
	if p.Src, err = parseEndpoint(f[1]); err != nil {
		return nil, fmt.Errorf("flow %q: source: %w", s, err)
	}
	if p.Dst, err = parseEndpoint(f[3]); err != nil {
		return nil, fmt.Errorf("flow %q: destination: %w", s, err)
	}
	return p, nil
}

func parseEndpoint(s string) (endpointPattern, error) {
	e := endpointPattern{anyPort: true}
	host, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return e, fmt.Errorf("%q: missing ]", s)
		}
		host = s[1:end]
		if rest := s[end+1:]; rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return e, fmt.Errorf("%q: want [V6]:PORT", s)
			}
			port = rest[1:]
		}
	case strings.Count(s, ":") == 1:
		host, port, _ = strings.Cut(s, ":")
	}
	if port != "" && port != "*" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return e, fmt.Errorf("%q: port %q: want 0-65535 or *", s, port)
		}
		e.anyPort, e.port = false, uint16(n)
	}
	if host == "*" {
		e.any = true
		return e, nil
	}
	if strings.Contains(host, "/") {
		pr, err := netip.ParsePrefix(host)
		if err != nil {
			return e, fmt.Errorf("%q: bad prefix: %w", s, err)
		}
		e.prefix = pr.Masked()
		return e, nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return e, fmt.Errorf("%q: bad address: %w", s, err)
	}
	e.prefix = netip.PrefixFrom(a, a.BitLen())
	return e, nil
}

func (e *endpointPattern) match(a netip.Addr, port uint16, hasPort bool) bool {
	if !e.any && !e.prefix.Contains(a) {
		return false
	}
	return e.anyPort || (hasPort && port == e.port)
}

// Match tells whether d's flow matches.
func (p *FlowPattern) Match(d *packet.Decoded) bool {
	if d.Class != packet.ClassIP && d.Class != packet.ClassND {
		return false
	}
	if !p.AnyProto && d.Proto != p.Proto {
		return false
	}
	hp := d.HasPorts && !d.IsICMP
	return p.Src.match(d.Src, d.SrcPort, hp) && p.Dst.match(d.Dst, d.DstPort, hp)
}

// Expectations is a checked list of expectations, filled as packets are decided.
type Expectations struct {
	Name     string
	List     []*Expectation
	failures []string
}

// LoadExpectations reads a JSON or YAML file: a list of expectations, or {"expect": [...]}.
func LoadExpectations(path string) (*Expectations, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read expectations: %w", err)
	}
	return ParseExpectations(path, data)
}

// ParseExpectations parses expectations from data; name is used in errors.
func ParseExpectations(name string, data []byte) (*Expectations, error) {
	var list []*Expectation
	if strictyaml.IsMapping(data) {
		var wrapped struct {
			Expect []*Expectation `json:"expect"`
		}
		if err := strictyaml.Decode(data, &wrapped); err != nil {
			return nil, fmt.Errorf("%s: want a list of {index|flow, verdict} or {expect: [...]}: %w", name, err)
		}
		list = wrapped.Expect
	} else if err := strictyaml.Decode(data, &list); err != nil {
		return nil, fmt.Errorf("%s: want a list of {index|flow, verdict} or {expect: [...]}: %w", name, err)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%s: no expectations", name)
	}
	ex := &Expectations{Name: name}
	for i, e := range list {
		if e == nil {
			return nil, fmt.Errorf("%s: expectation %d: empty", name, i)
		}
		if err := e.prepare(); err != nil {
			return nil, fmt.Errorf("%s: expectation %d: %w", name, i, err)
		}
		ex.List = append(ex.List, e)
	}
	return ex, nil
}

func (e *Expectation) prepare() error {
	v, ok := ParseVerdict(e.Verdict)
	if !ok {
		return fmt.Errorf("verdict %q: want ACCEPT, DROP or UNMANAGED", e.Verdict)
	}
	e.verdict = v
	switch {
	case e.Index != nil && e.Flow != "":
		return fmt.Errorf("give index or flow, not both")
	case e.Index != nil:
		if *e.Index < 0 {
			return fmt.Errorf("index %d: must be ≥ 0", *e.Index)
		}
	case e.Flow != "":
		p, err := ParseFlowPattern(e.Flow)
		if err != nil {
			return err
		}
		e.flow = p
	default:
		return fmt.Errorf("give index or flow")
	}
	return nil
}

// Observe checks res against every expectation that covers it.
func (x *Expectations) Observe(r *Replayer, res *Result) {
	for _, e := range x.List {
		if (e.Index != nil && *e.Index == res.Index) || (e.flow != nil && e.flow.Match(&res.Packet)) {
			e.seen++
			if res.Verdict != e.verdict {
				by := make([]string, res.NChecks)
				for i := 0; i < res.NChecks; i++ {
					by[i] = CheckString(r, &res.Checks[i])
				}
				what := "flow " + strconv.Quote(e.Flow)
				if e.Index != nil {
					what = "index " + strconv.Itoa(*e.Index)
				}
				x.failures = append(x.failures, fmt.Sprintf("packet %d %s (expected by %s): want %s, got %s [%s]",
					res.Index, FlowString(&res.Packet), what, e.verdict, res.Verdict, strings.Join(by, "; ")))
			}
		}
	}
}

// Failures returns every failed expectation, including ones that matched no packet.
func (x *Expectations) Failures() []string {
	out := append([]string(nil), x.failures...)
	for _, e := range x.List {
		if e.seen == 0 {
			if e.Index != nil {
				out = append(out, fmt.Sprintf("index %d: want %s, but the capture has no such packet", *e.Index, e.verdict))
			} else {
				out = append(out, fmt.Sprintf("flow %q: want %s, but no packet of that flow was seen", e.Flow, e.verdict))
			}
		}
	}
	return out
}
