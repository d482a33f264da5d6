package main

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

func TestCall(t *testing.T) {
	s, err := model.LoadTopologyFile("../../testdata/demo.json")
	require.NoError(t, err)
	ctrl, err := control.New(context.Background(), store.NewMemory(), s, control.Options{})
	require.NoError(t, err)
	srv := httptest.NewServer(api.NewHandler(ctrl, api.Options{}))
	defer srv.Close()
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
	eni, _ := ctrl.View().State.ENI("eni-spare")
	assert.Equal(t, []string{"sg-ssh"}, eni.SgIDs)
}
