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

// appendSG appends json.Marshal(g), byte for byte, to buf[:0] (grown if too small), so a caller that
// commits repeatedly reuses one buffer. The rule lists, nearly all of a big SG, are appended directly
// instead of through reflection; everything else still goes through encoding/json, so a field added
// anywhere else is persisted as before. Should the layout ever not be the one expected, it falls back
// to json.Marshal of the whole.
func appendSG(buf []byte, g *model.SecurityGroup) ([]byte, error) {
	bare := *g
	bare.Ingress, bare.Egress = nil, nil
	skeleton, err := json.Marshal(bare)
	if err != nil {
		return nil, fmt.Errorf("encode security group %s: %w", g.SgID, err)
	}
	if !bytes.HasSuffix(skeleton, sgTail) || bytes.Count(skeleton, sgTail) != 1 {
		data, err := json.Marshal(g)
		if err != nil {
			return nil, fmt.Errorf("encode security group %s: %w", g.SgID, err)
		}
		return append(buf[:0], data...), nil
	}
	out := buf[:0]
	if size := len(skeleton) + rulesSize(g.Ingress) + rulesSize(g.Egress); cap(out) < size {
		out = make([]byte, 0, size)
	}
	out = append(out, skeleton[:len(skeleton)-len(sgTail)]...)
	out = append(out, `"ingress":`...)
	out = appendRules(out, g.Ingress)
	out = append(out, `,"egress":`...)
	out = appendRules(out, g.Egress)
	return append(out, '}'), nil
}

// rulesSize is about the length of appendRules' output: exact unless strings need escaping.
func rulesSize(rules []model.Rule) int {
	n := 2
	for _, r := range rules {
		// {"ipProtocol":"","cidrIp":"","sgId":"","portRange":"","action":"","desc":""},
		n += 80 + len(r.IPProtocol) + len(r.CidrIP) + len(r.SgID) + len(r.PortRange) + len(r.Action) + len(r.Desc)
	}
	return n
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
		sep := false
		out, sep = appendField(out, sep, `"ipProtocol":`, r.IPProtocol, true)
		out, sep = appendField(out, sep, `"cidrIp":`, r.CidrIP, true)
		out, sep = appendField(out, sep, `"sgId":`, r.SgID, true)
		out, sep = appendField(out, sep, `"portRange":`, r.PortRange, true)
		out, sep = appendField(out, sep, `"action":`, r.Action, false)
		out, _ = appendField(out, sep, `"desc":`, r.Desc, true)
		out = append(out, '}')
	}
	return append(out, ']')
}

// appendField appends one member (key is `"name":`) unless it is omitted; sep tells whether a member
// came before.
func appendField(out []byte, sep bool, key, value string, omitEmpty bool) ([]byte, bool) {
	if omitEmpty && value == "" {
		return out, sep
	}
	if sep {
		out = append(out, ',')
	}
	out = append(out, key...)
	return appendString(out, value), true
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
