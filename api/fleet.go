package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/sgsim/sgsim/control"
)

// Enforcement is SPEC §9's "enforcement" of a fleet replica's answer: the revision the call committed,
// how many hosts it affects, those alive that have not acknowledged it yet and those whose lease expired.
type Enforcement struct {
	Revision uint64   `json:"revision"`
	Hosts    int      `json:"hosts"`
	Pending  []string `json:"pending"`
	Down     []string `json:"down"`
}

// The errors Options.Change wraps to say why it has no answer for a revision; any other error is the
// store failing (503).
var (
	// ErrNoSuchChange: no change was committed at that revision (404).
	ErrNoSuchChange = errors.New("no change was committed at this revision")
	// ErrChangeForgotten: the store no longer keeps that revision (410).
	ErrChangeForgotten = errors.New("the store no longer keeps this revision")
)

// fleetContext returns ctx with a commit note when the handler answers with enforcement (fleet mode),
// else ctx and nil, so that a single host's answers stay as they are.
func (h *Handler) fleetContext(ctx context.Context) (context.Context, *control.Committed) {
	if h.opts.Enforcement == nil {
		return ctx, nil
	}
	return control.WithCommitNote(ctx)
}

// enforcement waits, in fleet mode, for what note's change needs and returns the answer's enforcement;
// nil on a single host.
func (h *Handler) enforcement(ctx context.Context, note *control.Committed) *Enforcement {
	if note == nil {
		return nil
	}
	return h.opts.Enforcement(ctx, *note)
}

// serveChange is GET /sgsim/v1/changes/{R}: the enforcement of an earlier change, from any replica. Admin
// tokens only: a change's hosts, pending and down are the fleet's, not one account's (a tenant has its
// own calls' in their answers).
func (h *Handler) serveChange(w http.ResponseWriter, r *http.Request) {
	insp, ok := h.inspector(w, r)
	if !ok {
		return
	}
	if !insp.admin {
		writeJSON(w, http.StatusForbidden, inspectError{"changes are reported to admin tokens only: a tenant finds its call's enforcement in the call's answer"})
		return
	}
	rev, err := strconv.ParseUint(r.PathValue("rev"), 10, 64)
	if err != nil || rev == 0 {
		writeJSON(w, http.StatusBadRequest, inspectError{fmt.Sprintf("revision %q: want a positive integer", r.PathValue("rev"))})
		return
	}
	e, err := h.opts.Change(r.Context(), rev)
	switch {
	case errors.Is(err, ErrNoSuchChange):
		writeJSON(w, http.StatusNotFound, inspectError{err.Error()})
		return
	case errors.Is(err, ErrChangeForgotten):
		writeJSON(w, http.StatusGone, inspectError{err.Error()})
		return
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, inspectError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, e)
}
