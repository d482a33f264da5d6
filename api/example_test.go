package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// Applying an API call in-process, through exactly the code path of `sgsim serve`.
func ExampleNewHandler() {
	st, err := model.LoadTopologyFile("../testdata/demo.json")
	if err != nil {
		panic(err)
	}
	ctrl, err := control.New(context.Background(), store.NewMemory(), st, control.Options{})
	if err != nil {
		panic(err)
	}
	h := api.NewHandler(ctrl, api.Options{AdminTokens: []string{"admin-token"}})

	p := url.Values{"Action": {"ModifySecurityGroupsOfNetworkInterface"},
		"networkInterfaceSet.0.networkInterfaceId": {"eni-web2"},
		"networkInterfaceSet.0.sgIds.0":            {"sg-ssh"},
		"SecretId":                                 {"AKIDdemo0000000000000000000000000001"},
		"Nonce":                                    {"1"},
		"Timestamp":                                {strconv.FormatInt(time.Now().Unix(), 10)},
		"SignatureMethod":                          {"HmacSHA256"}}
	api.Sign(http.MethodPost, "sgsim.local", p, "demo-secret-key-0000000000000001")
	req := httptest.NewRequest(http.MethodPost, "http://sgsim.local/v2/index.php", strings.NewReader(p.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	fmt.Print(rec.Body.String())

	req = httptest.NewRequest(http.MethodPost, "http://sgsim.local/sgsim/v1/check",
		strings.NewReader(`{"eni":"eni-web2","direction":"ingress","protocol":"tcp","remote":"198.18.5.1","port":22}`))
	req.Header.Set("Authorization", "Bearer admin-token") // inspection needs a credential
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	fmt.Print(rec.Body.String())
	// Output:
	// {"code":0,"message":""}
	// {"verdict":"ACCEPT","eni":"eni-web2","direction":"ingress","sgId":"sg-ssh","ruleIndex":0,"reason":"rule","rule":{"ipProtocol":"tcp","cidrIp":"198.18.0.0/15","portRange":"22","action":"ACCEPT","desc":"ssh from the lab"},"generation":2}
}
