package api

import (
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store/nonce"
)

// Tencent actions of SPEC §4.
const (
	ActModifyPolicy   = "ModifySecurityGroupPolicy"
	ActModifyENISGs   = "ModifySecurityGroupsOfNetworkInterface"
	ActCreateSG       = "CreateSecurityGroup"
	ActDeleteSG       = "DeleteSecurityGroup"
	ActDescribePolicy = "DescribeSecurityGroupPolicy"
	ActDescribeSGEx   = "DescribeSecurityGroupEx"
	ActDescribeENIs   = "DescribeNetworkInterfaces"
)

// publicParams are accepted with every action (SPEC §4): the last four are what the official SDKs add
// on their own; they are signed like the rest and change nothing.
var publicParams = []string{"Action", "Region", "Timestamp", "Nonce", "SecretId", "Signature", "SignatureMethod",
	"Token", "RequestClient", "Language", "Version"}

// listParams are the parameters that are lists (their names have more than one segment).
var listParams = []string{"ingress", "egress", "networkInterfaceSet"}

// Bounds on every parameter, checked before the signature so that what an unauthenticated request can
// cost stays proportional to its size. Each is well above what a legal call needs: the deepest legal
// name is networkInterfaceSet.N.sgIds.M (4 segments, 45 bytes with 9-digit indexes); the longest legal
// value is a 100-character sgRemark (400 bytes of UTF-8), and an STS Token can run to a few kilobytes.
const (
	maxNameSegments = 4
	maxNameBytes    = 64
	maxValueBytes   = 4096
)

// actionParams lists, per action, the top-level parameter names it accepts (lists by their first segment).
var actionParams = map[string][]string{
	ActModifyPolicy:   {"sgId", "ingress", "egress"},
	ActModifyENISGs:   {"networkInterfaceSet"},
	ActCreateSG:       {"sgName", "sgRemark", "projectId"},
	ActDeleteSG:       {"sgId"},
	ActDescribePolicy: {"sgId"},
	ActDescribeSGEx:   {"projectId", "sgId", "offset", "limit"},
	ActDescribeENIs:   {"networkInterfaceId", "offset", "limit"},
}

// ruleFields are a rule's parameters, in the order decodeRules reads them into a model.Rule.
var ruleFields = [...]string{"ipProtocol", "cidrIp", "sgId", "portRange", "action", "desc"}

// tencentCall is a decoded (not yet authenticated) Tencent request.
type tencentCall struct {
	Action string
	// decoded arguments, depending on Action
	SgID              string
	Ingress, Egress   []model.Rule
	Set               []control.ENISGs
	Name, Remark      string
	ProjectID         *int
	ENIID             string
	Offset, Limit     int
	SecretID, Nonce   string
	Timestamp         int64
	Signature, Method string
}

// tencentError is an API answer other than success.
type tencentError struct {
	Code int
	Msg  string
}

func (e *tencentError) Error() string { return fmt.Sprintf("%d: %s", e.Code, e.Msg) }

func badParam(format string, args ...any) *tencentError {
	return &tencentError{Code: model.CodeBadParameter, Msg: fmt.Sprintf(format, args...)}
}

// decodeCall decodes an admissible form: a ModifySecurityGroupPolicy without a tree when it is well
// formed, anything else through the tree.
func decodeCall(params *form) (*tencentCall, error) {
	if c, ok := decodeModifyPolicy(params); ok {
		return c, nil
	}
	return decodeTencentTree(params)
}

// admissible checks what can be checked of a request before its signature at a cost independent of
// the values and with no allocation: the bounds, that no name repeats, a known Action, the top-level
// names that action accepts, that single-valued ones are single, and Timestamp and Nonce (SPEC §4).
// What remains (list shapes, indexes, rule fields) is decoded once the caller is authenticated.
func admissible(f *form, maxParams int) *tencentError {
	if len(f.keys) > maxParams {
		return badParam("%d parameters, at most %d allowed", len(f.keys), maxParams)
	}
	for i, k := range f.keys {
		if n := strings.Count(k, ".") + 1; n > maxNameSegments {
			return badParam("parameter %.64q…: %d name segments, at most %d allowed", k, n, maxNameSegments)
		}
		if len(k) > maxNameBytes {
			return badParam("parameter %.64q…: name of %d bytes, at most %d allowed", k, len(k), maxNameBytes)
		}
		if v := f.vals[i]; len(v) > maxValueBytes {
			return badParam("parameter %q: value of %d bytes, at most %d allowed", k, len(v), maxValueBytes)
		}
	}
	if f.at != nil {
		for i, k := range f.names {
			if n := len(f.values(i)); n > 1 {
				return badParam("parameter %q given %d times", k, n)
			}
		}
	}
	action := f.get("Action")
	if action == "" {
		return badParam("parameter \"Action\" is required")
	}
	allowed, known := actionParams[action]
	if !known {
		return badParam("parameter \"Action\": unknown action %.64q", action)
	}
	// A big call's names share a few tops ("SecurityGroupPolicySet" ten thousand times): the last
	// accepted one is not looked up again.
	lastTop, lastNested := "", false
	for _, k := range f.names {
		top, _, nested := strings.Cut(k, ".")
		if top == lastTop && nested == lastNested {
			continue
		}
		if !slices.Contains(publicParams, top) && !slices.Contains(allowed, top) {
			return badParam("parameter %q is not accepted by %s", top, action)
		}
		if nested && !slices.Contains(listParams, top) {
			return badParam("parameter %q must be a single value", top)
		}
		lastTop, lastNested = top, nested
	}
	if _, err := strconv.ParseInt(f.get("Timestamp"), 10, 64); err != nil {
		if !slices.Contains(f.names, "Timestamp") {
			return badParam("parameter \"Timestamp\" is required")
		}
		return badParam("parameter \"Timestamp\": %.32q is not a Unix time in seconds", f.get("Timestamp"))
	}
	switch nonce := f.get("Nonce"); {
	case nonce == "":
		return badParam("parameter \"Nonce\" is required")
	case !validNonce(nonce):
		return badParam("parameter \"Nonce\": %.32q is not a positive integer up to 9223372036854775807", nonce)
	}
	return nil
}

// validNonce reports whether s is a positive decimal integer up to 2^63-1, written without sign or
// leading zero (SPEC §4).
func validNonce(s string) bool {
	if s == "" || len(s) > 19 || s[0] == '0' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

// decodeTencentTree decodes an admissible form through the tree of every parameter: any action, any
// shape, and the error for bad input.
func decodeTencentTree(params *form) (*tencentCall, error) {
	root, err := decodeFlat(params)
	if err != nil {
		return nil, badParam("%v", err)
	}
	c := &tencentCall{Action: params.get("Action"), SecretID: params.get("SecretId"), Nonce: params.get("Nonce"),
		Signature: params.get("Signature"), Method: params.get("SignatureMethod")}
	c.Timestamp, _ = strconv.ParseInt(params.get("Timestamp"), 10, 64)
	get := func(k string) (string, bool, error) { return root.str(k) }
	switch c.Action {
	case ActModifyPolicy:
		if c.SgID, err = required(root, "sgId"); err != nil {
			return nil, err
		}
		if c.Ingress, err = decodeRules(root, "ingress"); err != nil {
			return nil, err
		}
		if c.Egress, err = decodeRules(root, "egress"); err != nil {
			return nil, err
		}
	case ActModifyENISGs:
		if c.Set, err = decodeENISet(root); err != nil {
			return nil, err
		}
	case ActCreateSG:
		if c.Name, _, err = get("sgName"); err != nil {
			return nil, badParam("%v", err)
		}
		if c.Remark, _, err = get("sgRemark"); err != nil {
			return nil, badParam("%v", err)
		}
		if c.ProjectID, err = optInt(root, "projectId", 0, 1<<31-1); err != nil {
			return nil, err
		}
	case ActDeleteSG, ActDescribePolicy:
		if c.SgID, err = required(root, "sgId"); err != nil {
			return nil, err
		}
	case ActDescribeSGEx, ActDescribeENIs:
		if err := decodeDescribe(c, root); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// decodeENISet decodes ModifySecurityGroupsOfNetworkInterface's networkInterfaceSet.
func decodeENISet(root *flatNode) ([]control.ENISGs, error) {
	l, err := root.list("networkInterfaceSet")
	if err != nil {
		return nil, badParam("%v", err)
	}
	var set []control.ENISGs
	for _, e := range l {
		for _, c := range e.children {
			if k := c.seg; k != "networkInterfaceId" && k != "sgIds" {
				return nil, badParam("parameter %q is not accepted", e.name+"."+k)
			}
		}
		id, err := required(e, "networkInterfaceId")
		if err != nil {
			return nil, err
		}
		ids, err := e.strList("sgIds")
		if err != nil {
			return nil, badParam("%v", err)
		}
		set = append(set, control.ENISGs{ENI: id, SgIDs: ids})
	}
	return set, nil
}

// decodeDescribe decodes the filter and paging of DescribeSecurityGroupEx and
// DescribeNetworkInterfaces into c.
func decodeDescribe(c *tencentCall, root *flatNode) error {
	key, maxLimit := "sgId", 100
	if c.Action == ActDescribeENIs {
		key, maxLimit = "networkInterfaceId", 50
	}
	id, _, err := root.str(key)
	if err != nil {
		return badParam("%v", err)
	}
	c.SgID, c.ENIID = id, id
	if c.Action == ActDescribeSGEx {
		if c.ProjectID, err = optInt(root, "projectId", 0, 1<<31-1); err != nil {
			return err
		}
	}
	off, err := optInt(root, "offset", 0, 1<<31-1)
	if err != nil {
		return err
	}
	lim, err := optInt(root, "limit", 1, maxLimit)
	if err != nil {
		return err
	}
	c.Limit = 20
	if off != nil {
		c.Offset = *off
	}
	if lim != nil {
		c.Limit = *lim
	}
	return nil
}

// decodeModifyPolicy decodes a well-formed ModifySecurityGroupPolicy without building a tree (a 10k-rule
// policy's has ~50k nodes): public parameters, sgId and ingress.N.field / egress.N.field names, each
// given once, lists dense, required values present. ok is false for anything else, which
// decodeTencentTree then decodes, so every refusal still comes from there; where both succeed, they
// agree (FuzzDecodeTencent checks).
func decodeModifyPolicy(f *form) (c *tencentCall, ok bool) {
	if len(f.names) != len(f.keys) || f.get("Action") != ActModifyPolicy {
		return nil, false
	}
	c = &tencentCall{Action: ActModifyPolicy, Ingress: []model.Rule{}, Egress: []model.Rule{}}
	var ts, sgID string
	var haveTS bool
	for i := 0; i < len(f.names); {
		k := f.names[i]
		dir, _, isList := strings.Cut(k, ".")
		if !isList {
			switch v := f.vals[i]; k {
			case "Action", "Region", "Token", "RequestClient", "Language", "Version":
			case "Timestamp":
				ts, haveTS = v, true
			case "Nonce":
				c.Nonce = v
			case "SecretId":
				c.SecretID = v
			case "Signature":
				c.Signature = v
			case "SignatureMethod":
				c.Method = v
			case "sgId":
				sgID = v
			default:
				return nil, false
			}
			i++
			continue
		}
		if dir != "ingress" && dir != "egress" {
			return nil, false
		}
		// Sorted, a list's names are one run.
		end := i + 1
		for end < len(f.names) && strings.HasPrefix(f.names[end], k[:len(dir)+1]) {
			end++
		}
		rules, ok := decodeRuleRun(f.names[i:end], f.vals[i:end], len(dir)+1)
		if !ok {
			return nil, false
		}
		if dir == "ingress" {
			c.Ingress = rules
		} else {
			c.Egress = rules
		}
		i = end
	}
	var err error
	if c.Timestamp, err = strconv.ParseInt(ts, 10, 64); err != nil || !haveTS || c.Nonce == "" || sgID == "" {
		return nil, false
	}
	c.SgID = sgID
	return c, true
}

// decodeRuleRun reads the rules of one list's sorted names (prefix "ingress." or "egress.", of length
// skip) and their values; ok is false unless every name is list.N.field with N a list index and field a
// rule field, and the indexes are dense from 0.
func decodeRuleRun(names, vals []string, skip int) (rules []model.Rule, ok bool) {
	// First pass: check the names and count the rules. A sorted rule's fields are adjacent (`ingress.1.`
	// sorts before `ingress.10`), and an index has one spelling, so each run of one index is one rule.
	count, maxIndex, prev := 0, -1, ""
	for _, k := range names {
		rest := k[skip:]
		dot := strings.IndexByte(rest, '.')
		if dot < 0 || ruleField(rest[dot+1:]) < 0 {
			return nil, false
		}
		index, ok := listIndex(rest[:dot])
		if !ok {
			return nil, false
		}
		if count == 0 || rest[:dot] != prev {
			count, prev = count+1, rest[:dot]
		}
		maxIndex = max(maxIndex, index)
	}
	if count != maxIndex+1 {
		return nil, false
	}
	rules = make([]model.Rule, count)
	for j, k := range names {
		rest := k[skip:]
		dot := strings.IndexByte(rest, '.')
		index, _ := listIndex(rest[:dot])
		*ruleFieldsOf(&rules[index])[ruleField(rest[dot+1:])] = vals[j] // the first pass checked the field
	}
	return rules, true
}

// ruleFieldsOf is r's fields in ruleFields order.
func ruleFieldsOf(r *model.Rule) [len(ruleFields)]*string {
	return [...]*string{&r.IPProtocol, &r.CidrIP, &r.SgID, &r.PortRange, &r.Action, &r.Desc}
}

// ruleField is the index of s in ruleFields, or -1.
func ruleField(s string) int {
	switch s {
	case "ipProtocol":
		return 0
	case "cidrIp":
		return 1
	case "sgId":
		return 2
	case "portRange":
		return 3
	case "action":
		return 4
	case "desc":
		return 5
	}
	return -1
}

func required(n *flatNode, k string) (string, error) {
	v, ok, err := n.str(k)
	if err != nil {
		return "", badParam("%v", err)
	}
	if !ok || v == "" {
		name := k
		if n.name != "" {
			name = n.name + "." + k
		}
		return "", badParam("parameter %q is required", name)
	}
	return v, nil
}

func optInt(n *flatNode, k string, lo, hi int) (*int, error) {
	v, ok, err := n.str(k)
	if err != nil {
		return nil, badParam("%v", err)
	}
	if !ok {
		return nil, nil
	}
	i, err := strconv.Atoi(v)
	if err != nil || i < lo || i > hi {
		return nil, badParam("parameter %q: %q is not an integer in %d-%d", k, v, lo, hi)
	}
	return &i, nil
}

// decodeRules reads ingress.n.* or egress.n.*; an absent list is empty (SPEC §4).
func decodeRules(root *flatNode, dir string) ([]model.Rule, error) {
	l, err := root.list(dir)
	if err != nil {
		return nil, badParam("%v", err)
	}
	rules := make([]model.Rule, 0, len(l))
	for _, e := range l {
		if e.hasValue {
			return nil, &tencentError{Code: model.CodeBadRuleFormat, Msg: fmt.Sprintf("parameter %q must be a rule (%s.action, …)", e.name, e.name)}
		}
		// One pass over the rule's fields: the first unknown one is the error; then, in ruleFields
		// order, the first that is not a single value.
		var fields [len(ruleFields)]*flatNode
		for _, c := range e.children {
			i := slices.Index(ruleFields[:], c.seg)
			if i < 0 {
				return nil, &tencentError{Code: model.CodeBadRuleFormat, Msg: fmt.Sprintf("parameter %q: unknown rule field %q", e.name+"."+c.seg, c.seg)}
			}
			fields[i] = c
		}
		var r model.Rule
		for i, dst := range ruleFieldsOf(&r) {
			switch c := fields[i]; {
			case c == nil:
			case !c.hasValue:
				return nil, &tencentError{Code: model.CodeBadRuleFormat, Msg: fmt.Sprintf("parameter %q must be a single value", c.name)}
			default:
				*dst = c.value
			}
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// tencentResponse is the v2 envelope.
type tencentResponse struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	// CodeDesc repeats a refusal's code as a string: the official SDKs report a v2 error by its
	// codeDesc and drop the numeric code.
	CodeDesc   string `json:"codeDesc,omitempty"`
	TotalCount *int   `json:"totalCount,omitempty"`
	Data       any    `json:"data,omitempty"`
	// Enforcement is set in fleet mode only (SPEC §9).
	Enforcement *Enforcement `json:"enforcement,omitempty"`
}

func (h *Handler) serveTencent(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	resp, action := h.tencent(r)
	h.metrics.apiCall("tencent", action, strconv.Itoa(resp.Code), start)
	if resp.Code != 0 {
		resp.CodeDesc = strconv.Itoa(resp.Code)
	}
	status := http.StatusOK
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		status = http.StatusMethodNotAllowed
	}
	writeJSON(w, status, resp)
}

// readBody returns a POST's form body ("" for a GET).
func (h *Handler) readBody(r *http.Request) (string, error) {
	if r.Method != http.MethodPost {
		return "", nil
	}
	if err := formContentType(r.Header.Get("Content-Type")); err != nil {
		return "", err
	}
	// Read straight into the string, sized from Content-Length (at most the body limit): a big
	// policy's megabyte would otherwise be regrown several times and then copied once more.
	var sb strings.Builder
	if r.ContentLength > 0 {
		sb.Grow(int(min(r.ContentLength, h.opts.MaxBodyBytes)))
	}
	if _, err := io.Copy(&sb, r.Body); err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	return sb.String(), nil
}

// formContentType refuses a content type other than a form's: the media type is what precedes any
// parameter, in any case, without the whitespace around it (RFC 9110 §8.3.1). A form's bytes are read
// as UTF-8, so a charset parameter naming another is refused rather than its text misread.
func formContentType(ct string) error {
	if ct == "" {
		return nil
	}
	mt, params, _ := strings.Cut(ct, ";")
	if !asciiEqualFold(strings.Trim(mt, " \t"), "application/x-www-form-urlencoded") {
		return fmt.Errorf("content type %q: want application/x-www-form-urlencoded", ct)
	}
	for _, p := range strings.Split(params, ";") {
		name, value, _ := strings.Cut(p, "=")
		if !asciiEqualFold(strings.Trim(name, " \t"), "charset") {
			continue
		}
		cs := strings.Trim(strings.Trim(value, " \t"), `"`)
		if !asciiEqualFold(cs, "utf-8") && !asciiEqualFold(cs, "us-ascii") {
			return fmt.Errorf("content type %q: charset %q: a form is read as utf-8", ct, cs)
		}
	}
	return nil
}

// asciiEqualFold compares a and b with ASCII letters in either case, as HTTP compares tokens
// (strings.EqualFold would also take "ſ" for "s").
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// parseParams returns the parameters of the query plus the form body, values decoded.
func (h *Handler) parseParams(query, body string) (*form, error) {
	// Sized up front: a big policy's tens of thousands of parameters would otherwise regrow the lists.
	n := min(strings.Count(query, "&")+strings.Count(body, "&")+2, 2*h.opts.MaxParams)
	params := &form{keys: make([]string, 0, n), vals: make([]string, 0, n)}
	if err := parseForm(query, params, h.opts.MaxParams); err != nil {
		return nil, fmt.Errorf("query string: %w", err)
	}
	if err := parseForm(body, params, h.opts.MaxParams); err != nil {
		return nil, fmt.Errorf("form body: %w", err)
	}
	params.done()
	return params, nil
}

// parseForm adds the name=value pairs of s to into, decoded as url.ParseQuery decodes them. Its bound is
// maxParams rather than net/url's fixed 10,000 pairs, which a ModifySecurityGroupPolicy under raised
// limits exceeds (a 10k-rule SG is ~40k parameters).
func parseForm(s string, into *form, maxParams int) error {
	if n := strings.Count(s, "&") + 1; s != "" && n > maxParams {
		return fmt.Errorf("%d parameters, at most %d allowed", n, maxParams)
	}
	semicolons := strings.IndexByte(s, ';') >= 0
	var u unescaper
	for s != "" {
		var pair string
		pair, s, _ = strings.Cut(s, "&")
		if semicolons && strings.Contains(pair, ";") {
			return fmt.Errorf("invalid semicolon separator in %q", pair)
		}
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		// Most pairs need no decoding: one search over the pair rather than one per name and value.
		if strings.IndexByte(pair, '%') >= 0 || strings.IndexByte(pair, '+') >= 0 {
			var err error
			if k, err = u.unescape(k, len(s)); err != nil {
				return err
			}
			if v, err = u.unescape(v, len(s)); err != nil {
				return err
			}
		}
		into.add(k, v)
	}
	return nil
}

// unescaper is url.QueryUnescape with the decoded strings cut from shared chunks rather than allocated
// one by one: every CIDR of a big policy carries a %2F.
type unescaper struct {
	chunk strings.Builder // strings already cut from it stay valid: a Builder only ever appends
}

// unescape decodes s; rest is how much input follows, to size a new chunk. A string without '%' or '+'
// is its own decoding and comes back as it is, found by a vectorised search rather than a byte loop.
func (u *unescaper) unescape(s string, rest int) (string, error) {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s, nil
	}
	if u.chunk.Cap()-u.chunk.Len() < len(s) { // decoding never lengthens
		u.chunk = strings.Builder{}
		u.chunk.Grow(max(len(s), min(rest, 32<<10)))
	}
	start := u.chunk.Len()
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '+':
			u.chunk.WriteByte(' ')
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return url.QueryUnescape(s) // its error for the bad escape
			}
			u.chunk.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			u.chunk.WriteByte(c)
		}
	}
	return u.chunk.String()[start:], nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func (h *Handler) tencent(r *http.Request) (tencentResponse, string) {
	call, acct, action, terr := h.admitTencent(r)
	if terr != nil {
		return tencentResponse{Code: terr.Code, Message: terr.Msg}, action
	}
	ctx, note := h.fleetContext(r.Context())
	resp, err := h.dispatch(r.WithContext(ctx), acct.AppID, call)
	if err != nil {
		return tencentResponse{Code: model.CodeOf(err), Message: err.Error()}, call.Action
	}
	switch call.Action {
	case ActModifyPolicy, ActModifyENISGs, ActCreateSG, ActDeleteSG:
		resp.Enforcement = h.enforcement(ctx, note)
	}
	return resp, call.Action
}

func nonceKey(c *tencentCall) nonce.Key { return nonce.KeyOf(c.SecretID, c.Timestamp, c.Nonce) }

func replayRefusal(c *tencentCall) *tencentError {
	return &tencentError{Code: model.CodeReplay, Msg: fmt.Sprintf("Nonce %s was already used", c.Nonce)}
}

// admitTencent does everything before dispatch: read and decode the parameters, authenticate, check
// Timestamp and Nonce. It returns the call and its account, or the refusal; action is the call's
// action when known (for metrics).
func (h *Handler) admitTencent(r *http.Request) (call *tencentCall, acct *model.Account, action string, refusal *tencentError) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		return nil, nil, "", badParam("method %s: use GET or POST", r.Method)
	}
	body, err := h.readBody(r)
	if err != nil {
		return nil, nil, "", badParam("%v", err)
	}
	// Parsing, authenticating and decoding cost CPU in proportion to the request: at most GOMAXPROCS
	// requests do it at once, so a flood of big ones waits here, costing no CPU, rather than taking
	// turns with /healthz and the calls already admitted.
	select {
	case h.parsing <- struct{}{}:
		defer func() { <-h.parsing }()
	case <-r.Context().Done():
		return nil, nil, "", &tencentError{Code: model.CodeInternal, Msg: "request cancelled while waiting to be parsed"}
	}
	params, err := h.parseParams(r.URL.RawQuery, body)
	if err != nil {
		return nil, nil, "", badParam("%v", err)
	}
	// Nothing that grows with the request beyond reading it happens before the signature is checked.
	if te := admissible(params, h.opts.MaxParams); te != nil {
		if _, ok := actionParams[params.get("Action")]; ok {
			action = params.get("Action")
		}
		return nil, nil, action, te
	}
	action = params.get("Action")
	if acct = h.authTencent(r, params); acct == nil {
		return nil, nil, action, &tencentError{Code: model.CodeAuthFailed, Msg: "authentication failed: unknown SecretId or bad Signature"}
	}
	if call, err = decodeCall(params); err != nil {
		te := &tencentError{}
		if !errors.As(err, &te) {
			te = badParam("%v", err)
		}
		return nil, nil, action, te
	}
	now := h.opts.Now()
	if d := now.Sub(time.Unix(call.Timestamp, 0)); d > h.opts.ReplayWindow || d < -h.opts.ReplayWindow {
		return nil, nil, call.Action, &tencentError{Code: model.CodeReplay, Msg: fmt.Sprintf("Timestamp %d is more than %s off the server's clock", call.Timestamp, h.opts.ReplayWindow)}
	}
	// Recorded before the call does anything: a durable record then writes it with the call's commit.
	switch err := h.nonces.UseNonce(r.Context(), nonceKey(call), now, h.opts.ReplayWindow); {
	case errors.Is(err, nonce.ErrReplay):
		return nil, nil, call.Action, replayRefusal(call)
	case errors.Is(err, nonce.ErrFull):
		// Refused rather than forgetting a live Nonce: replay protection holds under a flood.
		return nil, nil, call.Action, &tencentError{Code: model.CodeReplay, Msg: fmt.Sprintf("SecretId %s: %v; retry later", call.SecretID, err)}
	case err != nil:
		return nil, nil, call.Action, &tencentError{Code: model.CodeInternal, Msg: err.Error()}
	}
	return call, acct, call.Action, nil
}

// authTencent returns the account whose SecretId signed the request, or nil.
func (h *Handler) authTencent(r *http.Request, params *form) *model.Account {
	id, sig := params.get("SecretId"), params.get("Signature")
	if id == "" || sig == "" {
		return nil
	}
	st := h.ctrl.View().State
	for _, app := range st.AppIDs() {
		a, _ := st.Account(app)
		if a.SecretID == "" || a.SecretID != id {
			continue
		}
		want := signForm(r.Method, r.Host, params, a.SecretKey, params.get("SignatureMethod"))
		if hmac.Equal([]byte(want), []byte(sig)) {
			return a
		}
		return nil
	}
	return nil
}

func (h *Handler) dispatch(r *http.Request, appID string, c *tencentCall) (tencentResponse, error) {
	ctx := r.Context()
	ok := tencentResponse{}
	switch c.Action {
	case ActModifyPolicy:
		return ok, h.ctrl.ModifySecurityGroupPolicy(ctx, appID, c.SgID, c.Ingress, c.Egress)
	case ActModifyENISGs:
		return ok, h.ctrl.ModifySecurityGroupsOfNetworkInterface(ctx, appID, c.Set)
	case ActCreateSG:
		pid := 0
		if c.ProjectID != nil {
			pid = *c.ProjectID
		}
		g, err := h.ctrl.CreateSecurityGroup(ctx, appID, c.Name, c.Remark, pid)
		if err != nil {
			return ok, err
		}
		ok.Data = map[string]string{"sgId": g.SgID, "sgName": g.SgName, "sgRemark": g.SgRemark}
		return ok, nil
	case ActDeleteSG:
		return ok, h.ctrl.DeleteSecurityGroup(ctx, appID, c.SgID)
	}
	v := h.ctrl.View()
	switch c.Action {
	case ActDescribePolicy:
		g, ok2 := v.State.SG(c.SgID)
		if !ok2 {
			return ok, &model.Error{Code: model.CodeNotFound, Path: "sgId", Value: c.SgID, Quoted: true, Reason: "no such security group"}
		}
		if g.AppID != appID {
			return ok, &model.Error{Code: model.CodeNotOwner, Path: "sgId", Value: c.SgID, Quoted: true, Reason: "security group does not belong to the current user"}
		}
		ok.Data = map[string][]model.Rule{"ingress": apiRules(g, model.Ingress), "egress": apiRules(g, model.Egress)}
	case ActDescribeSGEx:
		ok.Data = describeSGEx(v.State, v.Index, appID, c)
	case ActDescribeENIs:
		total, data := describeENIs(v.State, appID, c)
		ok.TotalCount, ok.Data = &total, data
	}
	return ok, nil
}

func apiRules(g *model.SecurityGroup, d model.Direction) []model.Rule {
	out := make([]model.Rule, 0, len(g.Rules(d)))
	for _, r := range g.Rules(d) {
		out = append(out, r.Rule())
	}
	return out
}

type sgDetail struct {
	SgID             string `json:"sgId"`
	SgName           string `json:"sgName"`
	SgRemark         string `json:"sgRemark"`
	ProjectID        int    `json:"projectId"`
	Version          int    `json:"version"`
	BeAssociateCount int    `json:"beAssociateCount"`
}

func describeSGEx(s *model.State, ix *compiler.Index, appID string, c *tencentCall) map[string]any {
	detail := []sgDetail{}
	total := 0
	for _, id := range s.SGIDs() {
		g, _ := s.SG(id)
		if g.AppID != appID || (c.SgID != "" && id != c.SgID) || (c.ProjectID != nil && g.ProjectID != *c.ProjectID) {
			continue
		}
		if total >= c.Offset && len(detail) < c.Limit {
			detail = append(detail, sgDetail{id, g.SgName, g.SgRemark, g.ProjectID, g.Version, len(ix.Users(id))})
		}
		total++
	}
	return map[string]any{"totalNum": total, "detail": detail}
}

type eniAddr struct {
	PrivateIPAddress string `json:"privateIpAddress"`
}

type eniGroup struct {
	SgID   string `json:"sgId"`
	SgName string `json:"sgName"`
}

type eniDetail struct {
	NetworkInterfaceID    string     `json:"networkInterfaceId"`
	MacAddress            string     `json:"macAddress"`
	PrivateIPAddressesSet []eniAddr  `json:"privateIpAddressesSet"`
	GroupSet              []eniGroup `json:"groupSet"`
}

func describeENIs(s *model.State, appID string, c *tencentCall) (int, []eniDetail) {
	out := []eniDetail{}
	total := 0
	for _, id := range s.ENIIDs() {
		n, _ := s.ENI(id)
		if n.AppID != appID || (c.ENIID != "" && id != c.ENIID) {
			continue
		}
		if total >= c.Offset && len(out) < c.Limit {
			d := eniDetail{NetworkInterfaceID: id, MacAddress: n.MacAddress, PrivateIPAddressesSet: []eniAddr{}, GroupSet: []eniGroup{}}
			for _, a := range n.PrivateIPAddresses {
				d.PrivateIPAddressesSet = append(d.PrivateIPAddressesSet, eniAddr{a})
			}
			for _, sg := range n.SgIDs {
				g, _ := s.SG(sg)
				d.GroupSet = append(d.GroupSet, eniGroup{sg, g.SgName})
			}
			out = append(out, d)
		}
		total++
	}
	return total, out
}
