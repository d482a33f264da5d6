package api

import (
	"bytes"
	"crypto/subtle"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/sgsim/sgsim/model"
)

// InterfaceState is what a node knows of one host interface (SPEC §8): its index (0 while it does not
// exist) and whether the ENI's tables are enforced on it now.
type InterfaceState struct {
	Ifindex  int
	Attached bool
}

// ENIResponse is an ENI as the admin endpoints show it: the stored object and its state on this host.
type ENIResponse struct {
	model.NetworkInterface
	// Attached says whether HostInterface is filtered now on this node's host; nil (left out) on a
	// fleet replica, which is on no ENI's host: the ENI's agent answers it.
	Attached *bool `json:"attached,omitempty"`
	Ifindex  int   `json:"ifindex,omitempty"`
	// Generation is the state in force; TableGeneration the one at which this ENI's tables were last
	// compiled, when this node keeps a Go engine to tell.
	Generation      uint64 `json:"generation"`
	TableGeneration uint64 `json:"tableGeneration,omitempty"`
	// Enforcement is set on a PUT's or DELETE's answer in fleet mode only (SPEC §9).
	Enforcement *Enforcement `json:"enforcement,omitempty"`
}

// ENIList is GET /sgsim/v1/enis.
type ENIList struct {
	NetworkInterfaces []ENIResponse `json:"networkInterfaces"`
}

// admin authenticates an admin request: "Authorization: Bearer TOKEN" with one of the admin tokens
// (Options.AdminTokens or the topology's). Otherwise it answers 401 and returns false.
func (h *Handler) admin(w http.ResponseWriter, r *http.Request) bool {
	if bearer, ok := bearerOf(r); ok && h.isAdminToken(h.ctrl.View().State, bearer) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="sgsim"`)
	writeJSON(w, http.StatusUnauthorized, inspectError{"an admin token is required: Authorization: Bearer ADMIN-TOKEN"})
	return false
}

// bearerOf is the token of an "Authorization: Bearer TOKEN" header, if the request has one.
func bearerOf(r *http.Request) (string, bool) {
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return bearer, ok && bearer != ""
}

// isAdminToken tells whether token is one of the admin tokens (Options.AdminTokens or st's), compared
// in constant time.
func (h *Handler) isAdminToken(st *model.State, token string) bool {
	for _, t := range slices.Concat(h.opts.AdminTokens, st.AdminTokens()) {
		if subtle.ConstantTimeCompare([]byte(t), []byte(token)) == 1 {
			return true
		}
	}
	return false
}

// eniResponse is n with its state on this host.
func (h *Handler) eniResponse(n *model.NetworkInterface) ENIResponse {
	out := ENIResponse{NetworkInterface: *n, Generation: h.ctrl.View().Generation}
	switch {
	case n.HostInterface != "" && h.opts.Interfaces != nil:
		st := h.opts.Interfaces(n.HostInterface)
		out.Attached, out.Ifindex = &st.Attached, st.Ifindex
	case h.opts.Enforcement == nil: // a single host that filters no interface
		out.Attached = new(bool)
	}
	if e := h.ctrl.Engine(); e != nil {
		if t, ok := e.Snapshot().ENI(n.NetworkInterfaceID); ok {
			out.TableGeneration = t.Generation
		}
	} else if h.opts.TableGeneration != nil {
		if g, ok := h.opts.TableGeneration(n.NetworkInterfaceID); ok {
			out.TableGeneration = g
		}
	}
	return out
}

// modelStatus is the HTTP status of a refused ENI change: a conflict is 409, an unknown ENI 404, an
// internal failure 500, any other refusal names a bad field (400).
func modelStatus(err error) int {
	switch model.CodeOf(err) {
	case model.CodeConflict:
		return http.StatusConflict
	case model.CodeInternal:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

func (h *Handler) servePutENI(w http.ResponseWriter, r *http.Request) {
	if !h.admin(w, r) {
		return
	}
	id := r.PathValue("id")
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r.Body); err != nil {
		writeJSON(w, http.StatusBadRequest, inspectError{fmt.Sprintf("read body: %v", err)})
		return
	}
	var n model.NetworkInterface
	if err := decodeObject(buf.Bytes(), &n); err != nil {
		writeJSON(w, http.StatusBadRequest, inspectError{fmt.Sprintf("body: want a topology network interface object (SPEC §7): %v", err)})
		return
	}
	switch n.NetworkInterfaceID {
	case "":
		n.NetworkInterfaceID = id
	case id:
	default:
		writeJSON(w, http.StatusBadRequest, inspectError{fmt.Sprintf("networkInterfaceId: %q is not the %q of the path", n.NetworkInterfaceID, id)})
		return
	}
	ctx, note := h.fleetContext(r.Context())
	stored, err := h.ctrl.PutENI(ctx, n)
	if err != nil {
		writeJSON(w, modelStatus(err), inspectError{err.Error()})
		return
	}
	out := h.eniResponse(stored)
	out.Enforcement = h.enforcement(ctx, note)
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) serveDeleteENI(w http.ResponseWriter, r *http.Request) {
	n, ok := h.adminENI(w, r)
	if !ok {
		return
	}
	ctx, note := h.fleetContext(r.Context())
	if err := h.ctrl.DeleteENI(ctx, n.NetworkInterfaceID); err != nil {
		status := modelStatus(err)
		if model.CodeOf(err) == model.CodeNotFound {
			status = http.StatusNotFound // deleted meanwhile by another call
		}
		writeJSON(w, status, inspectError{err.Error()})
		return
	}
	out := ENIResponse{NetworkInterface: *n, Generation: h.ctrl.View().Generation, Enforcement: h.enforcement(ctx, note)}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) serveGetENI(w http.ResponseWriter, r *http.Request) {
	if n, ok := h.adminENI(w, r); ok {
		writeJSON(w, http.StatusOK, h.eniResponse(n))
	}
}

// adminENI is the stored ENI named by the path of an admin request; when the caller is no admin or
// there is no such ENI it has answered already and says false.
func (h *Handler) adminENI(w http.ResponseWriter, r *http.Request) (*model.NetworkInterface, bool) {
	if !h.admin(w, r) {
		return nil, false
	}
	id := r.PathValue("id")
	n, ok := h.ctrl.View().State.ENI(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, inspectError{fmt.Sprintf("network interface %q: no such network interface", id)})
	}
	return n, ok
}

func (h *Handler) serveListENIs(w http.ResponseWriter, r *http.Request) {
	if !h.admin(w, r) {
		return
	}
	s := h.ctrl.View().State
	out := ENIList{NetworkInterfaces: make([]ENIResponse, 0, len(s.ENIIDs()))}
	for _, id := range s.ENIIDs() {
		n, _ := s.ENI(id)
		out.NetworkInterfaces = append(out.NetworkInterfaces, h.eniResponse(n))
	}
	writeJSON(w, http.StatusOK, out)
}
