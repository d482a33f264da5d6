package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/sgsim/sgsim/node"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCall(t *testing.T) {
	srv, n := demoServer(t)
	t.Setenv("SGSIM_SECRET_ID", "AKIDdemo0000000000000000000000000001")
	t.Setenv("SGSIM_SECRET_KEY", "demo-secret-key-0000000000000001")
	t.Setenv("SGSIM_TOKEN", "tok-demo-1")

	tests := []struct {
		name string
		args []string
		exit int // 0 = success
		out  string
	}{
		{"tencent describe", []string{"call", "tencent", "--endpoint", srv.URL, "Action=DescribeSecurityGroupPolicy", "sgId=sg-web"}, 0, `"code":0`},
		{"tencent GET SHA1", []string{"call", "tencent", "--method", "GET", "--signature-method", "HmacSHA1", "--endpoint", srv.URL, "Action=DescribeSecurityGroupPolicy", "sgId=sg-db"}, 0, `"code":0`},
		{"tencent error", []string{"call", "tencent", "--endpoint", srv.URL, "Action=DeleteSecurityGroup", "sgId=sg-web"}, 1, `"code":9003`},
		{"tencent bad key", []string{"call", "tencent", "--secret-key", "nope", "--endpoint", srv.URL, "Action=DescribeSecurityGroupPolicy", "sgId=sg-web"}, 1, `"code":4100`},
		{"tencent bad argument", []string{"call", "tencent", "--endpoint", srv.URL, "Action"}, 2, ""},
		{"huawei add", []string{"call", "huawei", "--endpoint", srv.URL, "--project", "0a1b2c3d4e5f40718293a4b5c6d7e8f9", "--sg", "sg-ssh", "add", "eni-spare"}, 0, `{"fail":[]}`},
		{"huawei partial", []string{"call", "huawei", "--endpoint", srv.URL, "--project", "0a1b2c3d4e5f40718293a4b5c6d7e8f9", "--sg", "sg-ssh", "add", "eni-spare", "nope"}, 1, `VPC.0608`},
		{"huawei wrong project", []string{"call", "huawei", "--endpoint", srv.URL, "--project", "x", "--sg", "sg-ssh", "remove", "eni-spare"}, 1, `VPC.0007`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(tt.args)
			err := root.ExecuteContext(context.Background())
			if tt.exit == 0 {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				var ee *exitError
				if tt.exit == 1 {
					require.True(t, errors.As(err, &ee), err)
				}
				assert.Equal(t, tt.exit, exitCode(err))
			}
			assert.Contains(t, out.String(), tt.out)
		})
	}
	eni, _ := n.Controller().View().State.ENI("eni-spare")
	assert.Equal(t, []string{"sg-ssh"}, eni.SgIDs)
}

// demoServer serves an in-memory node of the demo topology (its admin token is demo-admin-token).
func demoServer(t *testing.T) (*httptest.Server, *node.Node) {
	t.Helper()
	n, err := node.New(context.Background(), node.Config{Topology: "../../testdata/demo.json", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	return srv, n
}

func TestENICommands(t *testing.T) {
	srv, _ := demoServer(t)
	run := func(args ...string) (string, error) {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append(args, "--endpoint", srv.URL))
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	t.Setenv("SGSIM_ADMIN_TOKEN", "demo-admin-token")
	out, err := run("eni", "put", "eni-web3", "--app-id", "1250000001", "--ip", "198.18.1.30", "--sg", "sg-web", "--sg", "sg-ssh")
	require.NoError(t, err)
	assert.Contains(t, out, `"networkInterfaceId": "eni-web3"`)
	assert.Contains(t, out, `"attached": false`)
	out, err = run("eni", "list")
	require.NoError(t, err)
	assert.Regexp(t, `eni-web3\s+1250000001\s+198.18.1.30\s+sg-web,sg-ssh\s+-\s+false`, out)
	out, err = run("eni", "get", "eni-web3")
	require.NoError(t, err)
	assert.Contains(t, out, `"sg-ssh"`)
	_, err = run("eni", "put", "eni-x", "--app-id", "1250000001", "--ip", "198.18.1.30")
	require.Error(t, err)
	assert.Equal(t, 1, exitCode(err))
	assert.Contains(t, err.Error(), "409")
	assert.Contains(t, err.Error(), "already a private IP of network interface eni-web3")
	out, err = run("eni", "delete", "eni-web3")
	require.NoError(t, err)
	assert.Equal(t, "deleted eni-web3\n", out)
	_, err = run("eni", "get", "eni-web3")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "404")
	t.Setenv("SGSIM_ADMIN_TOKEN", "nope")
	_, err = run("eni", "list")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "401")
}
