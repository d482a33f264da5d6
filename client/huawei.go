package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// HuaweiRequest is the body of a Huawei port action (SPEC §5).
type HuaweiRequest struct {
	Ports  []HuaweiPort `json:"ports"`
	Action string       `json:"action"`
}

// HuaweiPort names one port.
type HuaweiPort struct {
	ID string `json:"id"`
}

// HuaweiFailure is one port a call could not apply.
type HuaweiFailure struct {
	ID        string `json:"id"`
	ErrorCode string `json:"error_code"`
	ErrorMsg  string `json:"error_msg"`
}

// Huawei is a client of the Huawei port-action dialect.
type Huawei struct {
	Endpoint string // the daemon's base URL
	Token    string // X-Auth-Token
	Project  string
	// APIVersion is the path prefix, v2.0 (default) or v1.
	APIVersion string
	HTTP       *http.Client // nil = DefaultHTTP()
}

// HuaweiResponse is a Huawei answer: HTTP status, body, and the failed ports of a 200 answer.
type HuaweiResponse struct {
	Status int
	Body   []byte
	Fail   []HuaweiFailure
}

// ErrNotHuaweiResult is wrapped by errors for 200 answers that are not {"fail":[…]}.
var ErrNotHuaweiResult = errors.New("response is not a Huawei result")

// PortAction adds (action "add") or removes ("remove") ports to or from security group sgID. Any HTTP
// answer is a response (the caller reads Status and Fail); only a 200 answer that is not a result, or a
// failure to call, is an error.
func (c *Huawei) PortAction(ctx context.Context, sgID, action string, ports []string) (*HuaweiResponse, error) {
	body := HuaweiRequest{Action: action, Ports: make([]HuaweiPort, 0, len(ports))}
	for _, p := range ports {
		body.Ports = append(body.Ports, HuaweiPort{ID: p})
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("huawei: encode body: %w", err)
	}
	version := c.APIVersion
	if version == "" {
		version = "v2.0"
	}
	u := strings.TrimRight(c.Endpoint, "/") + "/" + version + "/" + url.PathEscape(c.Project) + "/security-groups/" +
		url.PathEscape(sgID) + "/instance/action"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("huawei: request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Auth-Token", c.Token)
	status, out, err := do(ctx, c.HTTP, req)
	if err != nil {
		return nil, err
	}
	resp := &HuaweiResponse{Status: status, Body: out}
	if status != http.StatusOK {
		return resp, nil
	}
	var res struct {
		Fail *[]HuaweiFailure `json:"fail"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Fail == nil {
		return resp, fmt.Errorf("huawei %s: %w: %.200s", action, ErrNotHuaweiResult, out)
	}
	resp.Fail = *res.Fail
	return resp, nil
}
