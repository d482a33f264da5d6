package model

import (
	"errors"
	"fmt"
	"strconv"
)

// Tencent v2 API error codes (SPEC §4). Validation errors carry the code the API answers with, so the
// API layer never has to guess which code a failure maps to.
const (
	CodeBadParameter  = 4000
	CodeAuthFailed    = 4100
	CodeReplay        = 4500
	CodeNotFound      = 5000
	CodeInternal      = 6000
	CodeNotOwner      = 7001
	CodeLimit         = 7002
	CodeNameExists    = 7005
	CodePreset        = 7006
	CodeBadRuleFormat = 9003
	// CodeConflict is sgsim's own, for its native endpoints (SPEC §8 answers 409): the change collides
	// with what exists (a private IP another ENI holds, no ENI slot left on this host).
	CodeConflict = 9409
)

// Error is a validation or operation failure: which field (a JSON-ish path such as
// `ingress[3].portRange`), the offending value, why, and the API code it maps to.
type Error struct {
	Code   int
	Path   string
	Value  string
	Reason string
	// Quoted tells whether Value is shown; an empty value is still worth quoting ("").
	Quoted bool
	// Err is the cause when a lower layer failed (a store's commit, a dataplane); Reason already says it.
	Err error
}

// Unwrap returns the cause, so errors.Is sees through the API code to e.g. a store's error.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	s := ""
	if e.Path != "" {
		s = e.Path + ": "
	}
	if e.Quoted {
		s += strconv.Quote(e.Value) + ": "
	}
	return s + e.Reason
}

// errValue builds an Error that quotes the bad value.
func errValue(code int, path, value, reason string) *Error {
	return &Error{Code: code, Path: path, Value: value, Reason: reason, Quoted: true}
}

// errf builds an Error without a quoted value.
func errf(code int, path, format string, args ...any) *Error {
	return &Error{Code: code, Path: path, Reason: fmt.Sprintf(format, args...)}
}

// AtPath prefixes the path of err (if it is an *Error) so nested validators can report
// `securityGroups[2].ingress[0].cidrIp` while each only knows its own part.
func AtPath(prefix string, err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return fmt.Errorf("%s: %w", prefix, err)
	}
	c := *e
	switch {
	case c.Path == "":
		c.Path = prefix
	case c.Path[0] == '[':
		c.Path = prefix + c.Path
	default:
		c.Path = prefix + "." + c.Path
	}
	return &c
}

// CodeOf returns the API code carried by err, or CodeInternal when err carries none.
func CodeOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
