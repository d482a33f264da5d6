package api

import (
	"bytes"
	"fmt"
	"net/http"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// CheckRequest is the body of POST /sgsim/v1/check.
type CheckRequest struct {
	ENI       string `json:"eni"`
	Direction string `json:"direction"`
	Protocol  string `json:"protocol"`
	Remote    string `json:"remote"`
	Port      *int   `json:"port,omitempty"`
}

// CheckResponse is the explained verdict of SPEC §2 plus the generation it was decided at.
type CheckResponse struct {
	dataplane.Explained
	Generation uint64 `json:"generation"`
}

type inspectError struct {
	Error string `json:"error"`
}

func parseCheck(body []byte) (model.Direction, dataplane.Packet, CheckRequest, error) {
	var req CheckRequest
	var p dataplane.Packet
	if err := decodeObject(body, &req); err != nil {
		return 0, p, req, fmt.Errorf("body: want {\"eni\",\"direction\",\"protocol\",\"remote\",\"port\"}: %w", err)
	}
	d, err := model.ParseDirection(req.Direction)
	if err != nil {
		return 0, p, req, err
	}
	if p, err = dataplane.NewPacket(req.Protocol, req.Remote, req.Port); err != nil {
		return 0, p, req, err
	}
	return d, p, req, nil
}

// Check decides one packet against the live tables, counting it in the metrics like an HTTP /check.
func (h *Handler) Check(eni string, d model.Direction, p *dataplane.Packet) (CheckResponse, bool) {
	snap, t, ok := h.liveENI(eni)
	if !ok {
		return CheckResponse{}, false
	}
	v := t.Match(d, p)
	out := CheckResponse{Explained: v.Explain(eni, d, t.Tables.Get(d)), Generation: snap.Generation}
	h.metrics.verdict(h.ctrl.View().State, snap.Generation, eni, d, v)
	return out, true
}

// noEngine answers an inspection request on a daemon that keeps no Go engine (serve --dataplane ebpf).
func (h *Handler) noEngine(w http.ResponseWriter) bool {
	if h.ctrl.Engine() != nil {
		return false
	}
	writeJSON(w, http.StatusConflict, inspectError{"this daemon keeps no Go engine (serve --dataplane ebpf): run it with --dataplane both to inspect tables"})
	return true
}

func (h *Handler) serveCheck(w http.ResponseWriter, r *http.Request) {
	who, ok := h.inspector(w, r)
	if !ok || h.noEngine(w) {
		return
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r.Body); err != nil {
		writeJSON(w, http.StatusBadRequest, inspectError{fmt.Sprintf("read body: %v", err)})
		return
	}
	d, p, req, err := parseCheck(buf.Bytes())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, inspectError{err.Error()})
		return
	}
	// Another tenant's ENI is as absent as one that does not exist, and its lookup is not counted.
	if who.sees(h, req.ENI) {
		if out, found := h.Check(req.ENI, d, &p); found {
			writeJSON(w, http.StatusOK, out)
			return
		}
	}
	writeJSON(w, http.StatusNotFound, inspectError{fmt.Sprintf("eni %q: no such network interface", req.ENI)})
}

// TableEntry is one row of a flattened table with its provenance.
type TableEntry struct {
	SgID      string   `json:"sgId,omitempty"`
	RuleIndex int      `json:"ruleIndex"`
	Implicit  bool     `json:"implicit,omitempty"`
	Action    string   `json:"action"`
	Protocol  string   `json:"protocol"`
	Remotes   []string `json:"remotes,omitempty"` // absent with anyRemote
	AnyRemote bool     `json:"anyRemote,omitempty"`
	Ports     string   `json:"ports"`
	Rule      string   `json:"rule"` // the source rule, for people
	Desc      string   `json:"desc,omitempty"`
}

// TableResponse is GET /sgsim/v1/enis/{id}/table.
type TableResponse struct {
	ENI string `json:"eni"`
	// Generation is the live snapshot's; TableGeneration the one at which this ENI was last recompiled.
	Generation      uint64       `json:"generation"`
	TableGeneration uint64       `json:"tableGeneration"`
	NoSG            bool         `json:"noSg,omitempty"`
	Ingress         []TableEntry `json:"ingress"`
	Egress          []TableEntry `json:"egress"`
}

// liveENI is eni's tables in the Go engine's live snapshot, with that snapshot; false when there is no
// Go engine (an eBPF-only daemon) or no such ENI.
func (h *Handler) liveENI(eni string) (*dataplane.Snapshot, *dataplane.ENITables, bool) {
	if h.ctrl.Engine() == nil {
		return nil, nil, false
	}
	snap := h.ctrl.Engine().Snapshot()
	t, ok := snap.ENI(eni)
	return snap, t, ok
}

// Table returns the live tables of eni.
func (h *Handler) Table(eni string) (TableResponse, bool) {
	snap, t, ok := h.liveENI(eni)
	if !ok {
		return TableResponse{}, false
	}
	return TableResponse{ENI: eni, Generation: snap.Generation, TableGeneration: t.Generation, NoSG: t.Tables.Ingress.NoSG,
		Ingress: tableEntries(t.Tables.Ingress), Egress: tableEntries(t.Tables.Egress)}, true
}

func tableEntries(t *compiler.Table) []TableEntry {
	out := make([]TableEntry, len(t.Entries))
	for i := range t.Entries {
		e := &t.Entries[i]
		te := TableEntry{SgID: e.SgID, RuleIndex: e.RuleIndex, Implicit: e.Implicit(), Action: e.Action.String(),
			Protocol: e.Protocol.String(), AnyRemote: e.AnyRemote, Ports: e.Ports.String(), Rule: e.Rule.String(), Desc: e.Rule.Desc}
		if !e.AnyRemote {
			te.Remotes = make([]string, len(e.Remotes))
			for j, p := range e.Remotes {
				te.Remotes[j] = p.String()
			}
		}
		out[i] = te
	}
	return out
}

func (h *Handler) serveTable(w http.ResponseWriter, r *http.Request) {
	who, ok := h.inspector(w, r)
	if !ok || h.noEngine(w) {
		return
	}
	id := r.PathValue("id")
	out, ok := h.Table(id)
	if !ok || !who.sees(h, id) { // another tenant's ENI is as absent as one that does not exist
		writeJSON(w, http.StatusNotFound, inspectError{fmt.Sprintf("eni %q: no such network interface", id)})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// inspectorOf is who asks an inspection endpoint: an admin sees every ENI, a tenant only its own.
type inspectorOf struct {
	admin bool
	appID string
}

// sees reports whether eni is visible to i.
func (i inspectorOf) sees(h *Handler, eni string) bool {
	if i.admin {
		return true
	}
	n, ok := h.ctrl.View().State.ENI(eni)
	return ok && n.AppID == i.appID
}

// inspector authenticates an inspection request: "Authorization: Bearer TOKEN" with an admin token
// (Options.AdminTokens or the topology's, SPEC §8), or a tenant's Huawei X-Auth-Token. Without either
// it answers 401 and returns false.
func (h *Handler) inspector(w http.ResponseWriter, r *http.Request) (inspectorOf, bool) {
	st := h.ctrl.View().State
	if bearer, ok := bearerOf(r); ok {
		if h.isAdminToken(st, bearer) {
			return inspectorOf{admin: true}, true
		}
	} else if a := accountOfToken(st, r.Header.Get("X-Auth-Token")); a != nil {
		return inspectorOf{appID: a.AppID}, true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="sgsim"`)
	writeJSON(w, http.StatusUnauthorized, inspectError{"a credential is required: Authorization: Bearer ADMIN-TOKEN, or your account's X-Auth-Token"})
	return inspectorOf{}, false
}

// ownENIs are the ENIs of appID.
func (h *Handler) ownENIs(appID string) map[string]bool {
	st := h.ctrl.View().State
	own := map[string]bool{}
	for _, id := range st.ENIIDs() {
		if n, _ := st.ENI(id); n.AppID == appID {
			own[id] = true
		}
	}
	return own
}
