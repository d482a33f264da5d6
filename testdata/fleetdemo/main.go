// Command fleetdemo shows a fleet on one machine (`make fleet-demo`): an embedded etcd, two API
// replicas (`sgsim serve --etcd`) and three host agents (`sgsim agent`, Go dataplane) as processes,
// a signed call to one replica, the enforcement of its answer, the same from the other replica, the
// agent's verdict, and what an answer says while a host's agent is killed, after its lease expires,
// and once it is back.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/sgsim/sgsim/client"
)

const (
	adminToken = "fleet-demo-admin"
	secretID   = "AKIDdemo0000000000000000000000000001"
	secretKey  = "demo-secret-key-0000000000000001"
)

func main() {
	bin := flag.String("sgsim", "bin/sgsim", "the sgsim binary")
	topology := flag.String("topology", "testdata/fleetdemo/topology.json", "the fleet's topology")
	flag.Parse()
	if err := run(*bin, *topology); err != nil {
		fmt.Fprintln(os.Stderr, "fleetdemo:", err)
		os.Exit(1)
	}
}

// demo holds the processes it started, to stop them all at the end.
type demo struct {
	bin, dir string
	procs    []*exec.Cmd
}

// run is the demo's script, kept whole so it reads top to bottom as what the operator sees.
func run(bin, topology string) error {
	dir, err := os.MkdirTemp("", "sgsim-fleetdemo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d := &demo{bin: bin, dir: dir}
	etcdURL, stopEtcd, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return err
	}
	defer stopEtcd()
	defer d.stopAll() // before etcd stops, so that agents revoke their leases
	tokens := filepath.Join(dir, "admin-tokens")
	if err := os.WriteFile(tokens, []byte(adminToken+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Printf("== an embedded etcd at %s\n", etcdURL)

	replicas := make([]string, 2)
	for i := range replicas {
		if replicas[i], err = d.start("replica"+fmt.Sprint(i+1), "/livez", "serve", "--etcd", etcdURL,
			"--topology", topology, "--enforce-timeout", "1s"); err != nil {
			return err
		}
	}
	fmt.Printf("== two API replicas: sgsim serve --etcd %s --enforce-timeout 1s at %s and %s (the first seeds etcd with %s)\n",
		etcdURL, replicas[0], replicas[1], topology)
	agents := map[string]string{}
	var agentProc *exec.Cmd
	for _, host := range []string{"host1", "host2", "host3"} {
		if agents[host], err = d.start(host, "/healthz", "agent", "--etcd", etcdURL, "--host", host,
			"--admin-token-file", tokens); err != nil {
			return err
		}
		agentProc = d.procs[len(d.procs)-1]
	}
	fmt.Printf("== three agents: sgsim agent --etcd %s --host hostN --listen …  (host1, host2: eni-web1, eni-web2 in sg-web; host3: eni-db1 in sg-db)\n", etcdURL)

	ctx := context.Background()
	call := func(replica, sg, port string) (uint64, error) {
		tc := &client.Tencent{Endpoint: replica, SecretID: secretID, SecretKey: secretKey}
		params := url.Values{"sgId": {sg}, "ingress.0.ipProtocol": {"tcp"}, "ingress.0.cidrIp": {"0.0.0.0/0"},
			"ingress.0.portRange": {port}, "ingress.0.action": {"ACCEPT"}, "egress.0.action": {"ACCEPT"}}
		fmt.Printf("$ sgsim call tencent --endpoint %s Action=ModifySecurityGroupPolicy sgId=%s ingress.0.portRange=%s …\n", replica, sg, port)
		start := time.Now()
		resp, err := tc.Call(ctx, "ModifySecurityGroupPolicy", params)
		if err != nil {
			return 0, err
		}
		fmt.Printf("   %s  [answered in %s]\n", bytes.TrimSpace(resp.Body), time.Since(start).Round(time.Millisecond))
		var out struct {
			Enforcement struct{ Revision uint64 } `json:"enforcement"`
		}
		if err := json.Unmarshal(resp.Body, &out); err != nil || resp.Code != 0 {
			return 0, fmt.Errorf("call refused or not understood: %s", resp.Body)
		}
		return out.Enforcement.Revision, nil
	}
	changeOf := func(replica string, rev uint64) (string, error) {
		return get(replica, fmt.Sprintf("/sgsim/v1/changes/%d", rev), "")
	}

	fmt.Println("\n== sg-web's policy changes on replica1: only host1 and host2 hold sg-web, so only they are waited for")
	rev, err := call(replicas[0], "sg-web", "443")
	if err != nil {
		return err
	}
	fmt.Printf("\n== the same change, asked later of replica2: GET /sgsim/v1/changes/%d\n", rev)
	body, err := changeOf(replicas[1], rev)
	if err != nil {
		return err
	}
	fmt.Println("  ", body)
	fmt.Println("\n== host1's agent decides with the new table: POST /sgsim/v1/check")
	for _, port := range []int{443, 22} {
		q := fmt.Sprintf(`{"eni":"eni-web1","direction":"ingress","protocol":"tcp","remote":"203.0.113.7","port":%d}`, port)
		if body, err = get(agents["host1"], "/sgsim/v1/check", q); err != nil {
			return err
		}
		fmt.Printf("   tcp 203.0.113.7 → eni-web1:%d  %s\n", port, body)
	}

	fmt.Println("\n== host3's agent is killed (SIGKILL): its lease lives on for up to 5 s, so a change to sg-db is pending there")
	if err := agentProc.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	_ = agentProc.Wait()
	if rev, err = call(replicas[1], "sg-db", "5433"); err != nil {
		return err
	}
	fmt.Println("\n== once the lease has expired the host is down (not waited for)")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if body, err = changeOf(replicas[0], rev); err != nil {
			return err
		}
		if strings.Contains(body, `"down":["host3"]`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("   GET /sgsim/v1/changes/%d  %s\n", rev, body)
	fmt.Println("\n== host3's agent restarts: it re-reads its share at one revision, enforces it and acknowledges")
	if _, err := d.start("host3", "/healthz", "agent", "--etcd", etcdURL, "--host", "host3", "--admin-token-file", tokens); err != nil {
		return err
	}
	for deadline = time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if body, err = changeOf(replicas[0], rev); err != nil {
			return err
		}
		if strings.Contains(body, `"pending":[],"down":[]`) || time.Now().After(deadline) {
			break
		}
	}
	fmt.Printf("   GET /sgsim/v1/changes/%d  %s\n", rev, body)
	fmt.Println("\n== done: every process stopped, etcd's data removed")
	return nil
}

// start runs `sgsim ARGS… --listen ADDR` on a free port of 127.0.0.1 and waits until path answers 200.
func (d *demo) start(name, path string, args ...string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	logf, err := os.Create(filepath.Join(d.dir, name+".log"))
	if err != nil {
		return "", err
	}
	cmd := exec.Command(d.bin, append(args, "--listen", addr)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	d.procs = append(d.procs, cmd)
	base := "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(base + path); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base, nil
			}
		}
	}
	out, _ := os.ReadFile(logf.Name())
	return "", fmt.Errorf("%s did not answer %s: %s", name, path, out)
}

func (d *demo) stopAll() {
	for _, p := range d.procs {
		if p.ProcessState == nil {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}
	}
}

// get sends an admin request (POST when body is set) and returns the answer's body.
func get(base, path, body string) (string, error) {
	method, rd := http.MethodGet, io.Reader(nil)
	if body != "" {
		method, rd = http.MethodPost, strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	return string(bytes.TrimSpace(b)), nil
}

// startEtcd runs an etcd server in this process on free ports of 127.0.0.1.
func startEtcd(dir string) (string, func(), error) {
	port := func() (int, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	cp, err := port()
	if err != nil {
		return "", nil, err
	}
	pp, err := port()
	if err != nil {
		return "", nil, err
	}
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", cp)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", pp)}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Close()
		return "", nil, fmt.Errorf("etcd not ready")
	}
	return cu.String(), e.Close, nil
}
