package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/api"
)

func init() { extraCommands = append(extraCommands, newCallCmd) }

func newCallCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "call tencent|huawei …",
		Short: "Sign and send one API call to a running `sgsim serve`; exit 1 when the answer is an error",
	}
	cmd.AddCommand(newCallTencentCmd(), newCallHuaweiCmd())
	return cmd
}

func envOr(flag, env string) string {
	if flag != "" {
		return flag
	}
	return os.Getenv(env)
}

func newCallTencentCmd() *cobra.Command {
	var endpoint, secretID, secretKey, method, sigMethod, region string
	cmd := &cobra.Command{
		Use:   "tencent [--endpoint URL] [--secret-id ID --secret-key KEY] Action=… key=value…",
		Short: "Sign (SPEC §4) and send a Tencent v2 call; credentials also from SGSIM_SECRET_ID/SGSIM_SECRET_KEY",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, key := envOr(secretID, "SGSIM_SECRET_ID"), envOr(secretKey, "SGSIM_SECRET_KEY")
			if id == "" || key == "" {
				return errors.New("credentials: give --secret-id and --secret-key or set SGSIM_SECRET_ID and SGSIM_SECRET_KEY")
			}
			base, err := url.Parse(endpoint)
			if err != nil || base.Host == "" {
				return fmt.Errorf("--endpoint %q: not an http URL", endpoint)
			}
			params := url.Values{}
			for i, a := range args {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return fmt.Errorf("argument %d %q: want name=value", i+1, a)
				}
				params.Add(k, v)
			}
			if params.Get("Action") == "" {
				return errors.New("arguments: Action=… is required")
			}
			n, err := rand.Int(rand.Reader, big.NewInt(1<<31))
			if err != nil {
				return fmt.Errorf("nonce: %w", err)
			}
			params.Set("Nonce", n.String())
			params.Set("Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
			params.Set("SecretId", id)
			params.Set("SignatureMethod", sigMethod)
			if params.Get("Region") == "" {
				params.Set("Region", region)
			}
			method = strings.ToUpper(method)
			api.Sign(method, base.Host, params, key)
			u := *base
			u.Path = api.TencentPath
			var req *http.Request
			if method == http.MethodGet {
				u.RawQuery = params.Encode()
				req, err = http.NewRequestWithContext(cmd.Context(), method, u.String(), nil)
			} else {
				req, err = http.NewRequestWithContext(cmd.Context(), method, u.String(), strings.NewReader(params.Encode()))
				if req != nil {
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				}
			}
			if err != nil {
				return fmt.Errorf("request: %w", err)
			}
			body, _, err := doCall(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(body)))
			var env struct {
				Code    *int   `json:"code"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(body, &env); err != nil || env.Code == nil {
				return &exitError{code: 1, err: fmt.Errorf("response is not a Tencent envelope: %.200s", body)}
			}
			if *env.Code != 0 {
				return &exitError{code: 1, err: fmt.Errorf("code %d: %s", *env.Code, env.Message)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&endpoint, "endpoint", "http://127.0.0.1:8080", "base URL of sgsim serve")
	f.StringVar(&secretID, "secret-id", "", "SecretId (default $SGSIM_SECRET_ID)")
	f.StringVar(&secretKey, "secret-key", "", "SecretKey (default $SGSIM_SECRET_KEY)")
	f.StringVar(&method, "method", "POST", "GET or POST")
	f.StringVar(&sigMethod, "signature-method", "HmacSHA256", "HmacSHA256 or HmacSHA1")
	f.StringVar(&region, "region", "ap-guangzhou", "Region parameter")
	return cmd
}

func newCallHuaweiCmd() *cobra.Command {
	var endpoint, sg, project, token, version string
	cmd := &cobra.Command{
		Use:   "huawei --sg ID [--project P] [--token T] add|remove PORT…",
		Short: "Send a Huawei port action (SPEC §5); token also from SGSIM_TOKEN",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok := envOr(token, "SGSIM_TOKEN")
			if tok == "" {
				return errors.New("credentials: give --token or set SGSIM_TOKEN")
			}
			if sg == "" || project == "" {
				return errors.New("--sg and --project are required")
			}
			action := strings.ToLower(args[0])
			if action != "add" && action != "remove" {
				return fmt.Errorf("argument 1 %q: want add or remove", args[0])
			}
			body := api.HuaweiRequest{Action: action}
			for _, p := range args[1:] {
				body.Ports = append(body.Ports, api.HuaweiPort{ID: p})
			}
			data, err := json.Marshal(body)
			if err != nil {
				return fmt.Errorf("encode body: %w", err)
			}
			u := strings.TrimRight(endpoint, "/") + "/" + version + "/" + url.PathEscape(project) + "/security-groups/" + url.PathEscape(sg) + "/instance/action"
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodPost, u, bytes.NewReader(data))
			if err != nil {
				return fmt.Errorf("request: %w", err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Auth-Token", tok)
			out, status, err := doCall(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(out)))
			var res struct {
				Fail []json.RawMessage `json:"fail"`
			}
			if status != http.StatusOK {
				return &exitError{code: 1, err: fmt.Errorf("HTTP %d", status)}
			}
			if err := json.Unmarshal(out, &res); err != nil {
				return &exitError{code: 1, err: fmt.Errorf("response is not a Huawei result: %.200s", out)}
			}
			if len(res.Fail) > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d port(s) failed", len(res.Fail))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&endpoint, "endpoint", "http://127.0.0.1:8080", "base URL of sgsim serve")
	f.StringVar(&sg, "sg", "", "security group ID")
	f.StringVar(&project, "project", os.Getenv("SGSIM_PROJECT"), "Huawei project ID (default $SGSIM_PROJECT)")
	f.StringVar(&token, "token", "", "X-Auth-Token (default $SGSIM_TOKEN)")
	f.StringVar(&version, "api-version", "v2.0", "path prefix: v2.0 or v1")
	return cmd
}

func doCall(ctx context.Context, req *http.Request) ([]byte, int, error) {
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("call %s: %w", req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, 0, fmt.Errorf("read response of %s: %w", req.URL.Redacted(), err)
	}
	return body, resp.StatusCode, nil
}
