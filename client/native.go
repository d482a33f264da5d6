package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Native is a client of the /sgsim/v1 endpoints.
type Native struct {
	Endpoint string // the daemon's base URL
	// Token, when set, is sent as "Authorization: Bearer <Token>" (the inspection endpoints' admin token).
	Token string
	HTTP  *http.Client // nil = DefaultHTTP()
}

// CheckRequest asks for the verdict of one packet (POST /sgsim/v1/check).
type CheckRequest struct {
	ENI       string `json:"eni"`
	Direction string `json:"direction"`
	Protocol  string `json:"protocol"`
	Remote    string `json:"remote"`
	Port      *int   `json:"port,omitempty"`
}

// StatusError is a native answer other than 200: its status and the server's error text.
type StatusError struct {
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
}

// Check returns the daemon's verdict for one packet as raw JSON (decode it into the server's
// CheckResponse shape, or read it as it is).
func (c *Native) Check(ctx context.Context, q CheckRequest) (json.RawMessage, error) {
	body, err := json.Marshal(q)
	if err != nil {
		return nil, fmt.Errorf("check: encode: %w", err)
	}
	return c.do(ctx, http.MethodPost, "/sgsim/v1/check", bytes.NewReader(body))
}

// Table returns an ENI's compiled tables as raw JSON (GET /sgsim/v1/enis/{id}/table).
func (c *Native) Table(ctx context.Context, eni string) (json.RawMessage, error) {
	return c.do(ctx, http.MethodGet, "/sgsim/v1/enis/"+url.PathEscape(eni)+"/table", nil)
}

func (c *Native) do(ctx context.Context, method, path string, body io.Reader) (json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Endpoint, "/")+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	status, out, err := do(ctx, c.HTTP, req)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(out))
		if json.Unmarshal(out, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, &StatusError{Status: status, Message: msg})
	}
	return out, nil
}
