package scenario

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sgsim/sgsim/client"
)

// host is the Host of every call a scenario makes (it is signed into Tencent calls).
const host = "sgsim.scenario"

func (sr *run) tencent(ctx context.Context, where string, c *TencentCall) error {
	a, err := sr.account(c.AppID)
	if err != nil {
		return err
	}
	tc := &client.Tencent{Endpoint: "http://" + host, SecretID: a.SecretID, SecretKey: a.SecretKey,
		Region: "ap-guangzhou", HTTP: client.InProcess(sr.node.Handler()),
		Now:   func() time.Time { return epoch.Add(sr.now) },
		Nonce: func() (int64, error) { sr.nonce++; return sr.nonce, nil }}
	params := url.Values{}
	for k, v := range c.Params {
		params.Set(k, v)
	}
	resp, err := tc.Call(ctx, c.Action, params)
	if errors.Is(err, client.ErrNotEnvelope) {
		return fmt.Errorf("tencent %s: response is not JSON: %q", c.Action, resp.Body)
	}
	if err != nil {
		return err
	}
	want := 0
	if c.ExpectCode != nil {
		want = *c.ExpectCode
	}
	fmt.Fprintf(sr.out, "%s: tencent %s → code %d %s\n", where, c.Action, resp.Code, resp.Message)
	if resp.Code != want {
		sr.fail("%s: tencent %s: want code %d, got %d (%s)", where, c.Action, want, resp.Code, resp.Message)
	}
	if c.ExpectMessage != "" && !strings.Contains(resp.Message, c.ExpectMessage) {
		sr.fail("%s: tencent %s: message %q does not contain %q", where, c.Action, resp.Message, c.ExpectMessage)
	}
	return sr.afterCall()
}

func (sr *run) huawei(ctx context.Context, where string, c *HuaweiCall) error {
	a, err := sr.account(c.AppID)
	if err != nil {
		return err
	}
	hc := &client.Huawei{Endpoint: "http://" + host, Token: c.Token, Project: c.Project, HTTP: client.InProcess(sr.node.Handler())}
	if hc.Token == "" && len(a.HuaweiTokens) > 0 {
		hc.Token = a.HuaweiTokens[0]
	}
	if hc.Project == "" {
		hc.Project = a.HuaweiProjectID
	}
	resp, err := hc.PortAction(ctx, c.SgID, c.Action, c.Ports)
	// A 200 answer that is no result is asserted on below like any other body.
	if err != nil && !errors.Is(err, client.ErrNotHuaweiResult) {
		return err
	}
	want := c.ExpectStatus
	if want == 0 {
		want = http.StatusOK
	}
	got := strings.TrimSpace(string(resp.Body))
	fmt.Fprintf(sr.out, "%s: huawei %s %s %v → %d %s\n", where, c.Action, c.SgID, c.Ports, resp.Status, got)
	if resp.Status != want {
		sr.fail("%s: huawei %s: want status %d, got %d (%s)", where, c.Action, want, resp.Status, got)
	}
	if c.ExpectContains != "" && !strings.Contains(got, c.ExpectContains) {
		sr.fail("%s: huawei %s: body %s does not contain %q", where, c.Action, got, c.ExpectContains)
	}
	if c.ExpectStatus == 0 && c.ExpectContains == "" && len(resp.Fail) > 0 {
		// A 200 whose ports failed is a call that did not do what it said, unless the step expects it.
		sr.fail("%s: huawei %s: %d of %d ports failed (%s)", where, c.Action, len(resp.Fail), len(c.Ports), got)
	}
	return sr.afterCall()
}
