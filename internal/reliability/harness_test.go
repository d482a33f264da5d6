package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/api"
)

// sgsimBin is the binary TestMain builds; every test runs it as a separate process.
var sgsimBin string

func TestMain(m *testing.M) {
	// SGSIM_RELIABILITY_BIN runs the suite against another build (an older one, to see it fail).
	if sgsimBin = os.Getenv("SGSIM_RELIABILITY_BIN"); sgsimBin != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "sgsim-reliability-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	sgsimBin = filepath.Join(dir, "sgsim")
	build := exec.Command("go", "build", "-o", sgsimBin, "github.com/sgsim/sgsim/cmd/sgsim")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sgsim:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// soak is set by `make soak`: more clients, kills and time.
var soak = os.Getenv("SGSIM_SOAK") == "1"

// requireKernel skips when the kernel or host lacks what a test needs (loop devices, mounts), and fails
// instead under SGSIM_REQUIRE_KERNEL=1, the repository's convention.
func requireKernel(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s: %v", what, err)
}

// account is one tenant of the test topology.
type account struct {
	letter         string // "a" or "b": prefixes its SGs and ENIs
	appID, id, key string
	sgs, enis      []string // SG i's one ingress rule is an ACCEPT described "init"; ENI i is in SG i
	nonce          *atomic.Int64
}

// topology writes a two-account topology with perAccount SGs and ENIs each (ENI i in SG i) and returns
// its path and accounts.
func topology(t *testing.T, perAccount int) (string, [2]*account) {
	t.Helper()
	var accts [2]*account
	type rule struct {
		IPProtocol string `json:"ipProtocol,omitempty"`
		CidrIP     string `json:"cidrIp,omitempty"`
		PortRange  string `json:"portRange,omitempty"`
		Action     string `json:"action"`
		Desc       string `json:"desc,omitempty"`
	}
	type sg struct {
		SgID    string `json:"sgId"`
		AppID   string `json:"appId"`
		SgName  string `json:"sgName"`
		Ingress []rule `json:"ingress"`
		Egress  []rule `json:"egress"`
	}
	type eni struct {
		ID    string   `json:"networkInterfaceId"`
		AppID string   `json:"appId"`
		IPs   []string `json:"privateIpAddresses"`
		SgIDs []string `json:"sgIds"`
	}
	type acct struct {
		AppID     string `json:"appId"`
		SecretID  string `json:"secretId"`
		SecretKey string `json:"secretKey"`
	}
	var topo struct {
		Accounts []acct `json:"accounts"`
		SGs      []sg   `json:"securityGroups"`
		ENIs     []eni  `json:"networkInterfaces"`
	}
	for i, letter := range []string{"a", "b"} {
		a := &account{letter: letter, appID: fmt.Sprintf("125000000%d", i+1),
			id:  fmt.Sprintf("AKIDrel%s00000000000000000000000000%d", letter, i+1),
			key: fmt.Sprintf("reliability-secret-key-%s-%d", letter, i+1), nonce: &atomic.Int64{}}
		topo.Accounts = append(topo.Accounts, acct{a.appID, a.id, a.key})
		for j := range perAccount {
			sgID := fmt.Sprintf("sg-%s%07d", letter, j)
			eniID := fmt.Sprintf("eni-%s%07d", letter, j)
			a.sgs, a.enis = append(a.sgs, sgID), append(a.enis, eniID)
			topo.SGs = append(topo.SGs, sg{SgID: sgID, AppID: a.appID, SgName: sgID,
				Ingress: []rule{{Action: "ACCEPT", Desc: "init"}}, Egress: []rule{}})
			topo.ENIs = append(topo.ENIs, eni{ID: eniID, AppID: a.appID,
				IPs: []string{fmt.Sprintf("198.18.%d.%d", 10+i, j+1)}, SgIDs: []string{sgID}})
		}
		accts[i] = a
	}
	data, err := json.Marshal(topo)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "topology.json")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	return path, accts
}

// daemon is one running `sgsim serve`.
type daemon struct {
	cmd    *exec.Cmd
	host   string // 127.0.0.1:port, also the signed Host
	stderr *syncBuffer
	done   chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var servingAddr = regexp.MustCompile(`msg=serving addr=(\S+)|INFO serving addr=(\S+)`)

// startDaemon runs `sgsim serve --listen 127.0.0.1:0 --data-dir dataDir` with extra flags and waits until
// it serves.
func startDaemon(t *testing.T, dataDir string, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir}, extra...)
	cmd := exec.Command(sgsimBin, args...)
	pr, pw := io.Pipe()
	d := &daemon{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = pw
	require.NoError(t, cmd.Start())
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(d.stderr, line)
			if m := servingAddr.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1] + m[2]:
				default:
				}
			}
		}
	}()
	go func() { _ = cmd.Wait(); pw.Close(); close(d.done) }()
	t.Cleanup(func() { d.kill() })
	select {
	case d.host = <-addr:
		return d
	case <-d.done:
		t.Fatalf("sgsim serve exited before serving: %s", d.stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("sgsim serve did not start: %s", d.stderr.String())
	}
	return nil
}

// kill SIGKILLs the daemon and waits for it to be gone.
func (d *daemon) kill() {
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

// tcResp is a Tencent answer.
type tcResp struct {
	Code       int             `json:"code"`
	Message    string          `json:"message"`
	TotalCount *int            `json:"totalCount"`
	Data       json.RawMessage `json:"data"`
}

var httpClient = &http.Client{Timeout: 20 * time.Second}

// call sends a Tencent call signed as a; an error means no answer came (the daemon died, or timeout).
func (d *daemon) call(ctx context.Context, a *account, kv ...string) (tcResp, error) {
	p := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	p.Set("SecretId", a.id)
	p.Set("Region", "ap-guangzhou")
	p.Set("Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	p.Set("Nonce", strconv.FormatInt(a.nonce.Add(1), 10))
	p.Set("SignatureMethod", "HmacSHA256")
	api.Sign(http.MethodPost, d.host, p, a.key)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+d.host+api.TencentPath, strings.NewReader(p.Encode()))
	if err != nil {
		return tcResp{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := httpClient.Do(req)
	if err != nil {
		return tcResp{}, err
	}
	defer resp.Body.Close()
	var out tcResp
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return tcResp{}, fmt.Errorf("decode answer: %w", err)
	}
	return out, nil
}

// mustCall is call that fails the test when no answer comes.
func (d *daemon) mustCall(t *testing.T, a *account, kv ...string) tcResp {
	t.Helper()
	r, err := d.call(context.Background(), a, kv...)
	require.NoError(t, err)
	return r
}

// probe GETs path with the given timeout and returns the status and body.
func (d *daemon) probe(path string, timeout time.Duration) (int, string, error) {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get("http://" + d.host + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// policy is an SG's rules as DescribeSecurityGroupPolicy answers them.
type policy struct {
	Ingress []struct {
		Action, Desc string
	} `json:"ingress"`
	Egress []struct {
		Action, Desc string
	} `json:"egress"`
}

func (d *daemon) describePolicy(t *testing.T, a *account, sgID string) policy {
	t.Helper()
	r := d.mustCall(t, a, "Action", api.ActDescribePolicy, "sgId", sgID)
	require.Equal(t, 0, r.Code, "DescribeSecurityGroupPolicy %s: %s", sgID, r.Message)
	var p policy
	require.NoError(t, json.Unmarshal(r.Data, &p))
	return p
}

// eniGroups is an ENI's ordered SG list as DescribeNetworkInterfaces answers it.
func (d *daemon) eniGroups(t *testing.T, a *account, eniID string) []string {
	t.Helper()
	r := d.mustCall(t, a, "Action", api.ActDescribeENIs, "networkInterfaceId", eniID)
	require.Equal(t, 0, r.Code, "DescribeNetworkInterfaces %s: %s", eniID, r.Message)
	var enis []struct {
		GroupSet []struct{ SgID string } `json:"groupSet"`
	}
	require.NoError(t, json.Unmarshal(r.Data, &enis))
	require.Len(t, enis, 1, eniID)
	out := []string{}
	for _, g := range enis[0].GroupSet {
		out = append(out, g.SgID)
	}
	return out
}

// run runs a command (a host tool such as mount) and returns its combined output in the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
