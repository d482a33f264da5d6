package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/internal/netlab"
	"github.com/sgsim/sgsim/internal/netns"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/store"
)

// The durability test re-executes this test binary as the daemon (New and Serve, exactly what `sgsim
// serve` runs), so it can be killed with SIGKILL.
const (
	daemonEnv       = "SGSIM_API_TEST_DAEMON"
	daemonConfigEnv = "SGSIM_NODE_TEST_CONFIG" // JSON of the Config fields beyond DataDir and Topology
)

// The demo topology's first account, and its Huawei port the tables are read of.
const (
	secretID1    = "AKIDdemo0000000000000000000000000001"
	secretKey1   = "demo-secret-key-0000000000000001"
	dbPort       = "b9ac5247-c4ca-4c9b-b8fa-7d19132e560a"
	token1       = "tok-demo-1" // the Huawei tokens of the demo's two accounts
	token2       = "tok-demo-2"
	demoTopology = "../testdata/demo.json"
)

// tcResp is a Tencent v2 answer.
type tcResp struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

func TestMain(m *testing.M) {
	if dir := os.Getenv(daemonEnv); dir != "" {
		os.Exit(runDaemon(dir))
	}
	os.Exit(m.Run())
}

func runDaemon(dir string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	cfg := Config{DataDir: dir, Topology: os.Getenv("SGSIM_API_TEST_TOPOLOGY")}
	// A test that kills an enforcing daemon hands it the rest of its config.
	if extra := os.Getenv(daemonConfigEnv); extra != "" {
		var x daemonExtra
		if err := json.Unmarshal([]byte(extra), &x); err != nil {
			fmt.Fprintln(os.Stderr, "daemon config:", err)
			return 1
		}
		cfg.Dataplane, cfg.PinPath, cfg.HostNetns, cfg.API.AdminTokens = x.Dataplane, x.PinPath, x.HostNetns, x.AdminTokens
	}
	n, err := New(ctx, cfg)
	if err == nil {
		err = errors.Join(n.Serve(ctx, "127.0.0.1:0", func(addr string) {
			tmp := filepath.Join(dir, "addr.tmp")
			if err := os.WriteFile(tmp, []byte(addr), 0o600); err == nil {
				_ = os.Rename(tmp, filepath.Join(dir, "addr"))
			}
		}), n.Close())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	return 0
}

// daemonExtra is the config a test hands its daemon beyond DataDir and Topology.
type daemonExtra struct {
	Dataplane, PinPath, HostNetns string
	AdminTokens                   []string
}

type daemon struct {
	cmd  *exec.Cmd
	base string
}

func startDaemon(t *testing.T, dir string, seed bool) *daemon {
	t.Helper()
	return startDaemonWith(t, dir, seed, nil, "")
}

// startDaemonWith starts the daemon in dir with cfg's other fields (nil: none) and, when topology is
// set, that topology file instead of the demo's.
func startDaemonWith(t *testing.T, dir string, seed bool, cfg *daemonExtra, topology string) *daemon {
	t.Helper()
	_ = os.Remove(filepath.Join(dir, "addr"))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonEnv+"="+dir)
	if seed {
		if topology == "" {
			topology = demoTopology
		}
		cmd.Env = append(cmd.Env, "SGSIM_API_TEST_TOPOLOGY="+topology)
	}
	if cfg != nil {
		extra, err := json.Marshal(cfg)
		require.NoError(t, err)
		cmd.Env = append(cmd.Env, daemonConfigEnv+"="+string(extra))
	}
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	d := &daemon{cmd: cmd}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second) // a loaded machine verifies the BPF program slowly
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(dir, "addr")); err == nil {
			d.base = "http://" + string(b)
			return d
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("daemon did not start")
	return nil
}

func (d *daemon) kill(t *testing.T) {
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGKILL))
	_ = d.cmd.Wait()
}

var liveNonce int64

// call sends a Tencent call signed with the real clock as account 1.
func (d *daemon) call(kv ...string) (tcResp, error) { return d.post(d.sign(kv...)) }

func (d *daemon) sign(kv ...string) url.Values {
	p := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	liveNonce++
	p.Set("Nonce", strconv.FormatInt(liveNonce, 10))
	p.Set("Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	p.Set("SecretId", secretID1)
	api.Sign(http.MethodPost, strings.TrimPrefix(d.base, "http://"), p, secretKey1)
	return p
}

// post sends p; the Host (part of the signature) is always 127.0.0.1 with the daemon's port, which
// changes across restarts, so replays rewrite only the URL, never the signed parameters.
func (d *daemon) post(p url.Values) (tcResp, error) {
	return d.postAs(p, d.base)
}

// postAs sends p to d with the Host header of signedFor (the signature covers the host).
func (d *daemon) postAs(p url.Values, signedFor string) (tcResp, error) {
	req, err := http.NewRequest(http.MethodPost, d.base+api.TencentPath, strings.NewReader(p.Encode()))
	if err != nil {
		return tcResp{}, err
	}
	req.Host = strings.TrimPrefix(signedFor, "http://")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return tcResp{}, err
	}
	defer resp.Body.Close()
	var out tcResp
	err = json.NewDecoder(resp.Body).Decode(&out)
	return out, err
}

func (d *daemon) tables(t *testing.T) map[string]api.TableResponse {
	out := map[string]api.TableResponse{}
	for _, id := range []string{"eni-web1", "eni-web2", "eni-db1", dbPort, "eni-spare", "eni-other"} {
		req, err := http.NewRequest(http.MethodGet, d.base+"/sgsim/v1/enis/"+id+"/table", nil)
		require.NoError(t, err)
		token := token1 // inspection needs a credential: each ENI's own account's
		if id == "eni-other" {
			token = token2
		}
		req.Header.Set("X-Auth-Token", token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var tab api.TableResponse
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&tab))
		resp.Body.Close()
		tab.TableGeneration = 0 // when an ENI was last recompiled is history, not content
		out[id] = tab
	}
	return out
}

func TestDurabilityAcrossSIGKILL(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir, true)
	first := d.sign("Action", api.ActDescribePolicy, "sgId", "sg-web")
	r, err := d.post(first)
	require.NoError(t, err)
	require.Equal(t, 0, r.Code, r.Message)
	firstHost := d.base

	// Stream writes from another goroutine and kill the daemon while they flow.
	type ack struct {
		sgID string
		i    int
	}
	acks := make(chan ack, 1000)
	go func() {
		defer close(acks)
		for i := 0; ; i++ {
			r, err := d.call("Action", api.ActCreateSG, "sgName", fmt.Sprintf("d%d", i), "projectId", strconv.Itoa(100+i))
			if err != nil {
				return
			}
			var data struct{ SgID string }
			if r.Code != 0 || json.Unmarshal(r.Data, &data) != nil {
				return
			}
			acks <- ack{data.SgID, i}
			r, err = d.call("Action", api.ActModifyPolicy, "sgId", "sg-lockdown", "ingress.0.action", "DROP", "ingress.0.desc", fmt.Sprintf("w%d", i))
			if err != nil || r.Code != 0 {
				return
			}
			acks <- ack{"", i}
		}
	}()
	var created []string
	lastPolicy := -1
	for a := range acks {
		if a.sgID != "" {
			created = append(created, a.sgID)
		} else {
			lastPolicy = a.i
		}
		if len(created) == 40 {
			d.kill(t)
		}
	}
	require.GreaterOrEqual(t, len(created), 40)

	d = startDaemon(t, dir, false)
	// The Nonce record survived too: replaying the first call (to the host it was signed for) is refused.
	replayer := &daemon{base: d.base}
	r, err = replayer.postAs(first, firstHost)
	require.NoError(t, err)
	assert.Equal(t, 4500, r.Code, r.Message)
	for _, id := range created {
		r, err := d.call("Action", api.ActDescribePolicy, "sgId", id)
		require.NoError(t, err)
		assert.Equal(t, 0, r.Code, "acknowledged CreateSecurityGroup %s lost: %s", id, r.Message)
	}
	r, err = d.call("Action", api.ActDescribePolicy, "sgId", "sg-lockdown")
	require.NoError(t, err)
	var pol struct{ Ingress []struct{ Desc string } }
	require.NoError(t, json.Unmarshal(r.Data, &pol))
	require.Len(t, pol.Ingress, 1)
	got, err := strconv.Atoi(strings.TrimPrefix(pol.Ingress[0].Desc, "w"))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, got, lastPolicy, "the last acknowledged policy survived")

	// A restart recompiles identical tables.
	before := d.tables(t)
	d.kill(t)
	d = startDaemon(t, dir, false)
	assert.Equal(t, before, d.tables(t))

	// SIGTERM shuts down gracefully: exit status 0.
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, d.cmd.Wait())
	assert.Equal(t, 0, d.cmd.ProcessState.ExitCode())

	// And the store is readable by itself.
	st, err := store.OpenBolt(filepath.Join(dir, store.DBFile))
	require.NoError(t, err)
	defer st.Close()
	s, gen, err := st.Load(context.Background())
	require.NoError(t, err)
	assert.Equal(t, before["eni-web1"].Generation, gen)
	_, ok := s.SG(created[len(created)-1])
	assert.True(t, ok)
}

// benchNode is an enforcing node in a fresh lab, its state in bbolt (fsync per commit), whose one SG
// has rules ingress rules.
func benchNode(b *testing.B, rules int, guard ...string) (*Node, *netlab.Lab) {
	b.Helper()
	netlab.RequireRoot(b)
	lab := netlab.New(b, "nbn")
	g := model.SecurityGroup{SgID: "sg-b", AppID: "1", Egress: []model.Rule{{Action: "ACCEPT"}}}
	for i := range rules {
		g.Ingress = append(g.Ingress, model.Rule{IPProtocol: "tcp", PortRange: fmt.Sprint(1 + i%60000),
			CidrIP: fmt.Sprintf("10.%d.%d.0/24", i/256%256, i%256), Action: []string{"ACCEPT", "DROP"}[i%2]})
	}
	seed, err := model.NewState(model.Topology{Accounts: []model.Account{{AppID: "1"}}, SecurityGroups: []model.SecurityGroup{g}})
	if err != nil {
		b.Fatal(err)
	}
	n, err := New(context.Background(), Config{DataDir: b.TempDir(), Seed: seed, Dataplane: DataplaneEBPF, HostNetns: lab.Host, Guard: guard,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Skipf("kernel cannot run the BPF dataplane: %v", err)
	}
	b.Cleanup(func() { n.Close() })
	return n, lab
}

// reportQuantiles reports the p50 and p99 of ds in milliseconds under name.
func reportQuantiles(b *testing.B, name string, ds []time.Duration) {
	slices.Sort(ds)
	q := func(p float64) float64 { return float64(ds[int(p*float64(len(ds)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
}

// BenchmarkENIPut: an ENI PUT on an interface that exists, until it is answered, which is when its
// tables are in force and the program is attached (SPEC §8); each iteration creates one ENI and then
// (untimed) deletes it. guarded: the interface matches --guard, so the program stays on it and the
// ENI takes it over in one map update (how a host runs); unguarded: each PUT attaches the program and
// each delete detaches it, which costs the kernel's RCU grace periods.
func BenchmarkENIPut(b *testing.B) {
	for _, mode := range []string{"guarded", "unguarded"} {
		for _, rules := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/rules=%d", mode, rules), func(b *testing.B) { benchENIPut(b, mode == "guarded", rules) })
		}
	}
}

func benchENIPut(b *testing.B, guarded bool, rules int) {
	var guard []string
	if guarded {
		guard = []string{"sgb-*"}
	}
	n, lab := benchNode(b, rules, guard...)
	lab.IP("-n", lab.Host, "link", "add", "sgb-0", "type", "veth", "peer", "name", "pb-0")
	ctx := context.Background()
	eni := model.NetworkInterface{NetworkInterfaceID: "eni-b", AppID: "1", PrivateIPAddresses: []string{"198.18.213.1"},
		SgIDs: []string{"sg-b"}, HostInterface: "sgb-0"}
	ds := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := n.Controller().PutENI(ctx, eni); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		if !n.Interface("sgb-0").Attached {
			b.Fatal("answered before its interface was attached")
		}
		b.StopTimer()
		if err := n.Controller().DeleteENI(ctx, "eni-b"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportQuantiles(b, "put", ds)
}

// BenchmarkLinkAttach: from the netlink call that creates an ENI's veth returning until the program is
// attached to it, the ENI having been PUT before; each iteration removes the veth again (untimed).
func BenchmarkLinkAttach(b *testing.B) {
	n, lab := benchNode(b, 10)
	ctx := context.Background()
	if _, err := n.Controller().PutENI(ctx, model.NetworkInterface{NetworkInterfaceID: "eni-l", AppID: "1",
		PrivateIPAddresses: []string{"198.18.213.2"}, SgIDs: []string{"sg-b"}, HostInterface: "sgl-0"}); err != nil {
		b.Fatal(err)
	}
	ns, err := vnetns.GetFromPath(netns.Path(lab.Host))
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sgl-0"}, PeerName: "sglp-0"}
		start := time.Now()
		if err := h.LinkAdd(veth); err != nil {
			b.Fatal(err)
		}
		for !n.Interface("sgl-0").Attached {
			time.Sleep(20 * time.Microsecond)
			if time.Since(start) > 5*time.Second {
				b.Fatal("not attached within 5 s")
			}
		}
		ds = append(ds, time.Since(start))
		b.StopTimer()
		if err := h.LinkDel(veth); err != nil {
			b.Fatal(err)
		}
		for n.Interface("sgl-0").Ifindex != 0 {
			time.Sleep(20 * time.Microsecond)
		}
		b.StartTimer()
	}
	reportQuantiles(b, "attach", ds)
}

// BenchmarkENIChurn: ENIs created and deleted back to back (no interface), as ENIs per second.
func BenchmarkENIChurn(b *testing.B) {
	n, _ := benchNode(b, 10)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("eni-c%d", i)
		if _, err := n.Controller().PutENI(ctx, model.NetworkInterface{NetworkInterfaceID: id, AppID: "1",
			PrivateIPAddresses: []string{"198.18.214.1"}, SgIDs: []string{"sg-b"}}); err != nil {
			b.Fatal(err)
		}
		if err := n.Controller().DeleteENI(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enis/s")
}
