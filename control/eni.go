package control

import (
	"context"
	"fmt"
	"slices"

	"github.com/sgsim/sgsim/model"
)

// PutENI creates or replaces the ENI n (SPEC §8): checked as a topology ENI is, against the API limits
// (SGs per ENI, ENIs per SG), with SGs that exist and belong to its account and private IPs no other
// ENI holds (model.CodeConflict). It returns a nil next state when n is what is stored already.
func (w *Writer) PutENI(s *model.State, n model.NetworkInterface) (*model.State, error) {
	if len(n.SgIDs) > w.limits.SGsPerENI {
		return nil, apiErr(model.CodeBadParameter, "sgIds", "", fmt.Sprintf("%d security groups, at most %d allowed per network interface", len(n.SgIDs), w.limits.SGsPerENI))
	}
	old, existed := s.ENI(n.NetworkInterfaceID)
	if existed && old.AppID != n.AppID {
		return nil, apiErr(model.CodeNotOwner, "appId", n.AppID, "network interface "+n.NetworkInterfaceID+" belongs to another account")
	}
	if err := w.checkENIsPerHost(s, old, existed, n); err != nil {
		return nil, err
	}
	b := s.Edit()
	if err := b.PutENI(n); err != nil {
		return nil, err
	}
	next := b.State()
	if existed && old.Equal(mustENI(next, n.NetworkInterfaceID)) {
		return nil, nil
	}
	touched := map[string]bool{}
	for _, id := range n.SgIDs {
		if !existed || !slices.Contains(old.SgIDs, id) {
			touched[id] = true
		}
	}
	if err := w.checkENIsPerSG(next, touched); err != nil {
		return nil, err
	}
	return next, nil
}

// DeleteENI removes the ENI id; every rule naming one of its SGs stops matching its addresses.
func (w *Writer) DeleteENI(s *model.State, id string) (*model.State, error) {
	b := s.Edit()
	if err := b.DeleteENI(id); err != nil {
		return nil, err
	}
	return b.State(), nil
}

// checkENIsPerHost refuses n, new or replacing old, where it would take its host past the ENIs it can
// enforce (Limits.ENIsPerHost, PerNamedHost).
func (w *Writer) checkENIsPerHost(s *model.State, old *model.NetworkInterface, existed bool, n model.NetworkInterface) error {
	max := w.limits.ENIsPerHost
	if max <= 0 {
		return nil
	}
	if !w.limits.PerNamedHost {
		if held := len(s.ENIIDs()); !existed && held >= max {
			return apiErr(model.CodeConflict, "networkInterfaceId", n.NetworkInterfaceID,
				fmt.Sprintf("this host enforces at most %d network interfaces and holds %d: delete one first", max, held))
		}
		return nil
	}
	if n.Host == "" || (existed && old.Host == n.Host) {
		return nil
	}
	held := 0
	for _, id := range s.ENIIDs() {
		if e, _ := s.ENI(id); e.Host == n.Host {
			held++
		}
	}
	if held >= max {
		return apiErr(model.CodeConflict, "networkInterfaceId", n.NetworkInterfaceID,
			fmt.Sprintf("host %q enforces at most %d network interfaces and holds %d: delete one first", n.Host, max, held))
	}
	return nil
}

func mustENI(s *model.State, id string) *model.NetworkInterface { n, _ := s.ENI(id); return n }

// PutENI creates or replaces an ENI and returns it as stored, once it is durable and in force.
func (c *Controller) PutENI(ctx context.Context, n model.NetworkInterface) (*model.NetworkInterface, error) {
	var stored *model.NetworkInterface
	err := c.write(ctx, func(s *model.State) (*model.State, error) {
		next, err := c.writer.PutENI(s, n)
		switch {
		case err != nil:
		case next == nil:
			stored = mustENI(s, n.NetworkInterfaceID)
		default:
			stored = mustENI(next, n.NetworkInterfaceID)
		}
		return next, err
	})
	if err != nil {
		return nil, err
	}
	return stored, nil
}

// DeleteENI deletes an ENI once its removal is durable and its tables are gone from every dataplane.
func (c *Controller) DeleteENI(ctx context.Context, id string) error {
	return c.write(ctx, func(s *model.State) (*model.State, error) { return c.writer.DeleteENI(s, id) })
}
