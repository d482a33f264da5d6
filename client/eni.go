package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// ENISpec is an ENI as PUT sends it: the topology ENI object of SPEC §7 and the optional fleet host.
type ENISpec struct {
	NetworkInterfaceID string   `json:"networkInterfaceId"`
	AppID              string   `json:"appId"`
	MacAddress         string   `json:"macAddress,omitempty"`
	PrivateIPAddresses []string `json:"privateIpAddresses"`
	SgIDs              []string `json:"sgIds"`
	HostInterface      string   `json:"hostInterface,omitempty"`
	Host               string   `json:"host,omitempty"`
}

// ENI is an ENI as the admin endpoints store and show it (SPEC §8): its spec plus its state on the
// answering host.
type ENI struct {
	ENISpec
	// Attached tells whether HostInterface is filtered with this ENI's tables now (nil from a fleet
	// replica, which is on no ENI's host); Ifindex is its index (0 while it does not exist);
	// TableGeneration is the generation of the ENI's tables in force.
	Attached        *bool  `json:"attached,omitempty"`
	Ifindex         int    `json:"ifindex,omitempty"`
	TableGeneration uint64 `json:"tableGeneration,omitempty"`
}

// PutENI creates or replaces eni (PUT /sgsim/v1/enis/{id}) and returns it as stored, once it is in force.
func (c *Native) PutENI(ctx context.Context, eni ENISpec) (*ENI, error) {
	body, err := json.Marshal(eni)
	if err != nil {
		return nil, fmt.Errorf("put ENI %s: encode: %w", eni.NetworkInterfaceID, err)
	}
	return decodeENI(c.do(ctx, http.MethodPut, eniPath(eni.NetworkInterfaceID), bytes.NewReader(body)))
}

// DeleteENI deletes the ENI id (DELETE /sgsim/v1/enis/{id}).
func (c *Native) DeleteENI(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, eniPath(id), nil)
	return err
}

// GetENI returns the ENI id with its state on this host.
func (c *Native) GetENI(ctx context.Context, id string) (*ENI, error) {
	return decodeENI(c.do(ctx, http.MethodGet, eniPath(id), nil))
}

// ListENIs returns every stored ENI with its state on this host.
func (c *Native) ListENIs(ctx context.Context) ([]ENI, error) {
	raw, err := c.do(ctx, http.MethodGet, "/sgsim/v1/enis", nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		NetworkInterfaces []ENI `json:"networkInterfaces"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("list ENIs: decode: %w", err)
	}
	return out.NetworkInterfaces, nil
}

func eniPath(id string) string { return "/sgsim/v1/enis/" + url.PathEscape(id) }

func decodeENI(raw json.RawMessage, err error) (*ENI, error) {
	if err != nil {
		return nil, err
	}
	var e ENI
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("decode ENI: %w", err)
	}
	return &e, nil
}
