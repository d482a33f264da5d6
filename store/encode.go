package store

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/sgsim/sgsim/model"
)

// sgTail is how json.Marshal ends a SecurityGroup whose rule lists are nil. Quotes inside JSON strings
// are escaped, so the sequence can only be that structure.
var sgTail = []byte(`"ingress":null,"egress":null}`)

// encodeTopology returns json.Marshal(s.Topology()), byte for byte. The rule lists, nearly all of a big
// state, are appended directly instead of through reflection; everything else still goes through
// encoding/json, so a field added anywhere else is persisted as before. Should the layout ever not be
// the one expected, it falls back to json.Marshal of the whole.
func encodeTopology(s *model.State) ([]byte, error) {
	t := s.Topology()
	sgs := t.SecurityGroups
	bare := make([]model.SecurityGroup, len(sgs))
	size := 0
	for i, g := range sgs {
		bare[i] = g
		bare[i].Ingress, bare[i].Egress = nil, nil
		size += 96 * (len(g.Ingress) + len(g.Egress))
	}
	t.SecurityGroups = bare
	skeleton, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	if bytes.Count(skeleton, sgTail) != len(sgs) {
		t.SecurityGroups = sgs
		data, err := json.Marshal(t)
		if err != nil {
			return nil, fmt.Errorf("encode state: %w", err)
		}
		return data, nil
	}
	out := make([]byte, 0, len(skeleton)+size)
	rest := skeleton
	for _, g := range sgs {
		i := bytes.Index(rest, sgTail)
		out = append(out, rest[:i]...)
		out = append(out, `"ingress":`...)
		out = appendRules(out, g.Ingress)
		out = append(out, `,"egress":`...)
		out = appendRules(out, g.Egress)
		out = append(out, '}')
		rest = rest[i+len(sgTail):]
	}
	return append(out, rest...), nil
}

// appendRules appends rules as encoding/json writes a []model.Rule (nil as null, omitempty fields left out).
func appendRules(out []byte, rules []model.Rule) []byte {
	if rules == nil {
		return append(out, "null"...)
	}
	out = append(out, '[')
	for i, r := range rules {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '{')
		first := true
		for _, f := range [...]struct {
			name, value string
			omitEmpty   bool
		}{{"ipProtocol", r.IPProtocol, true}, {"cidrIp", r.CidrIP, true}, {"sgId", r.SgID, true},
			{"portRange", r.PortRange, true}, {"action", r.Action, false}, {"desc", r.Desc, true}} {
			if f.omitEmpty && f.value == "" {
				continue
			}
			if !first {
				out = append(out, ',')
			}
			first = false
			out = append(out, '"')
			out = append(out, f.name...)
			out = append(out, `":`...)
			out = appendString(out, f.value)
		}
		out = append(out, '}')
	}
	return append(out, ']')
}

// appendString appends s as a JSON string the way encoding/json does: plain printable ASCII as is,
// anything it would escape (quotes, backslashes, control bytes, HTML characters, non-ASCII) through it.
func appendString(out []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always encodes
			return append(out, b...)
		}
	}
	out = append(out, '"')
	out = append(out, s...)
	return append(out, '"')
}
