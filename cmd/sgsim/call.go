package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/client"
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
			if base, err := url.Parse(endpoint); err != nil || base.Host == "" {
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
			c := &client.Tencent{Endpoint: endpoint, SecretID: id, SecretKey: key, Method: method,
				SignatureMethod: sigMethod, Region: region}
			resp, err := c.Call(cmd.Context(), "", params)
			if resp != nil {
				fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(resp.Body)))
			}
			if errors.Is(err, client.ErrNotEnvelope) {
				return &exitError{code: 1, err: err}
			}
			if err != nil {
				return err
			}
			if err := resp.Err(); err != nil {
				return &exitError{code: 1, err: err}
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
			c := &client.Huawei{Endpoint: endpoint, Token: tok, Project: project, APIVersion: version}
			resp, err := c.PortAction(cmd.Context(), sg, action, args[1:])
			if resp != nil {
				fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(resp.Body)))
			}
			switch {
			case resp != nil && resp.Status != http.StatusOK:
				return &exitError{code: 1, err: fmt.Errorf("HTTP %d", resp.Status)}
			case errors.Is(err, client.ErrNotHuaweiResult):
				return &exitError{code: 1, err: err}
			case err != nil:
				return err
			case len(resp.Fail) > 0:
				return &exitError{code: 1, err: fmt.Errorf("%d port(s) failed", len(resp.Fail))}
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
