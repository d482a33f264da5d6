package api

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
)

// MaxHuaweiPorts is the most ports one Huawei call may name (SPEC §5).
const MaxHuaweiPorts = 20

// HuaweiRequest is the body of the Huawei port action.
type HuaweiRequest struct {
	Ports  []HuaweiPort `json:"ports"`
	Action string       `json:"action"`
}

// HuaweiPort names one port.
type HuaweiPort struct {
	ID string `json:"id"`
}

type huaweiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func invalid(format string, args ...any) *huaweiError {
	return &huaweiError{Status: http.StatusBadRequest, Code: control.HuaweiBadRequest, Message: "Request is invalid: " + fmt.Sprintf(format, args...)}
}

// decodeHuawei parses and checks a port-action body; add tells whether the action is add.
func decodeHuawei(body []byte) (req HuaweiRequest, add bool, herr *huaweiError) {
	// As the other JSON bodies: one object, its keys exact and once each, nothing after it.
	if err := decodeObject(body, &req); err != nil {
		return req, false, invalid("body: %v", err)
	}
	switch strings.ToLower(req.Action) {
	case "add":
		add = true
	case "remove":
	default:
		return req, false, invalid("action %q: must be add or remove", req.Action)
	}
	if len(req.Ports) == 0 {
		return req, false, invalid("ports is empty")
	}
	if len(req.Ports) > MaxHuaweiPorts {
		return req, false, &huaweiError{Status: http.StatusBadRequest, Code: "VPC.0609", Message: "Ports list exceeds limit"}
	}
	for i, p := range req.Ports {
		if !model.ValidID(p.ID) {
			return req, false, invalid("ports[%d].id %q: not a port ID", i, p.ID)
		}
	}
	return req, add, nil
}

// accountOfToken returns the account holding Huawei API token, or nil.
func accountOfToken(st *model.State, token string) *model.Account {
	if token == "" {
		return nil
	}
	for _, app := range st.AppIDs() {
		a, _ := st.Account(app)
		for _, t := range a.HuaweiTokens {
			if subtle.ConstantTimeCompare([]byte(t), []byte(token)) == 1 {
				return a
			}
		}
	}
	return nil
}

func (h *Handler) serveHuawei(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	action := "instance/action"
	out, status := h.huawei(r)
	code := fmt.Sprint(status)
	if e, ok := out.(*huaweiError); ok {
		code = e.Code
	}
	h.metrics.apiCall("huawei", action, code, start)
	writeJSON(w, status, out)
}

func (h *Handler) huawei(r *http.Request) (any, int) {
	fail := func(e *huaweiError) (any, int) { return e, e.Status }
	acct := accountOfToken(h.ctrl.View().State, r.Header.Get("X-Auth-Token"))
	if acct == nil {
		return fail(&huaweiError{Status: http.StatusUnauthorized, Code: "VPC.0008", Message: "Invalid token in the header"})
	}
	if acct.HuaweiProjectID != r.PathValue("project") {
		return fail(&huaweiError{Status: http.StatusBadRequest, Code: "VPC.0007", Message: "Inconsistent tenant IDs"})
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return fail(invalid("read body: %v", err))
	}
	req, add, herr := decodeHuawei(body)
	if herr != nil {
		return fail(herr)
	}
	ids := make([]string, len(req.Ports))
	for i, p := range req.Ports {
		ids[i] = p.ID
	}
	sg := r.PathValue("sg")
	ctx, note := h.fleetContext(r.Context())
	fails, err := h.ctrl.PortAction(ctx, acct.AppID, sg, add, ids)
	switch {
	case errors.Is(err, control.ErrUnknownSG):
		return fail(invalid("security group %s not found", sg))
	case err != nil && model.CodeOf(err) != model.CodeInternal:
		// A refusal of the call as a whole (a quota): a request error, nothing applied (SPEC §5); only
		// a failure of the server is a 500.
		return fail(invalid("%v", err))
	case err != nil:
		return fail(&huaweiError{Status: http.StatusInternalServerError, Code: "VPC.0001", Message: err.Error()})
	}
	if e := h.enforcement(ctx, note); e != nil {
		return map[string]any{"fail": fails, "enforcement": e}, http.StatusOK
	}
	return map[string][]control.PortFailure{"fail": fails}, http.StatusOK
}
