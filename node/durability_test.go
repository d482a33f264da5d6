package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

// call sends a Tencent call signed with the real clock as account 1.
func (d *daemon) call(kv ...string) (tcResp, error) { return d.post(d.sign(kv...)) }

func (d *daemon) sign(kv ...string) url.Values {
	p := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	// The clock's nanoseconds: unique across the daemons one data directory sees (its Nonce record
	// outlives each), with no counter to share between them.
	p.Set("Nonce", strconv.FormatInt(time.Now().UnixNano(), 10))
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

// TestDurabilityAcrossSIGKILL: every call the daemon answered survives SIGKILLs and the restarts, with
// its Nonce still refused; a restart recompiles identical tables; SIGTERM exits 0 and leaves a store
// readable by itself. It stays whole: the calls, the kills and the checks share one data directory.
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

// kernelMemory counts the BPF maps this process holds open and the kernel memory they are charged
// (memlock), read from /proc/self/fdinfo: what the kernel keeps for us, whatever the Go side believes.
func kernelMemory(t *testing.T) (maps int, bytes uint64) {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil || target != "anon_inode:bpf-map" {
			continue
		}
		f, err := os.Open(filepath.Join("/proc/self/fdinfo", fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
				n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				require.NoError(t, err)
				bytes += n
				maps++
			}
		}
		f.Close()
	}
	return maps, bytes
}

func goHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// churnTopology: eni-tx sends udp/5000 (and nothing else) to eni-rx, which accepts udp/5000 from tx
// only; sg-churn is what the churned ENIs use (an sgId rule naming its own members would make every
// create re-target every other member: TestInterfacesFollowENIs covers re-targeting).
const churnTopology = `{
  "accounts": [{"appId": "1"}],
  "securityGroups": [
    {"sgId": "sg-tx", "appId": "1", "ingress": [], "egress": [{"ipProtocol": "udp", "portRange": "5000", "action": "ACCEPT"}]},
    {"sgId": "sg-rx", "appId": "1", "ingress": [{"ipProtocol": "udp", "portRange": "5000", "cidrIp": "198.18.212.1", "action": "ACCEPT"}], "egress": []},
    {"sgId": "sg-churn", "appId": "1", "ingress": [
       {"ipProtocol": "tcp", "portRange": "22", "cidrIp": "198.18.0.0/15", "action": "ACCEPT"}], "egress": [{"action": "ACCEPT"}]}
  ],
  "networkInterfaces": [
    {"networkInterfaceId": "eni-tx", "appId": "1", "privateIpAddresses": ["198.18.212.1"], "sgIds": ["sg-tx"], "hostInterface": "sgc-tx"},
    {"networkInterfaceId": "eni-rx", "appId": "1", "privateIpAddresses": ["198.18.212.2"], "sgIds": ["sg-rx"], "hostInterface": "sgc-rx"}
  ]
}`

// TestChurnLeavesStreamAndMemoryAlone: 300 ENIs (every tenth on a real veth) are created and deleted
// back to back while a UDP stream crosses two ENIs whose tables never change: every
// packet of the stream is delivered, every packet to the port their rules refuse is dropped, and
// afterwards the kernel maps and the Go heap are back to where they were.
// It stays whole: the churn, the stream and the memory readings share one measurement window.
func TestChurnLeavesStreamAndMemoryAlone(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	lab := netlab.New(t, "chu")
	lab.AddVM("eni-tx", "sgc-tx", "198.18.212.1")
	lab.AddVM("eni-rx", "sgc-rx", "198.18.212.2")
	seed, err := model.ParseTopology("churn", []byte(churnTopology))
	require.NoError(t, err)
	n, err := New(ctx, Config{Seed: seed, Dataplane: DataplaneEBPF, PinPath: pinDir(t), HostNetns: lab.Host,
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })

	// The churned ENIs' veths exist before the churn, as a host's taps do before their ENIs arrive.
	const churned, withVeth = 300, 10
	for i := 0; i < churned; i += withVeth {
		lab.IP("-n", lab.Host, "link", "add", fmt.Sprintf("sgc-%d", i), "type", "veth", "peer", "name", fmt.Sprintf("sgp-%d", i))
	}
	// One round first, so the baseline holds what a first round allocates once (spare maps, buffers).
	churn := func() time.Duration {
		start := time.Now()
		for i := range churned {
			eni := model.NetworkInterface{NetworkInterfaceID: fmt.Sprintf("eni-c%d", i), AppID: "1",
				PrivateIPAddresses: []string{fmt.Sprintf("198.19.%d.%d", i/200, 1+i%200)}, SgIDs: []string{"sg-churn"}}
			if i%withVeth == 0 {
				eni.HostInterface = fmt.Sprintf("sgc-%d", i)
			}
			_, err := n.Controller().PutENI(ctx, eni)
			require.NoError(t, err)
			if i%withVeth == 0 {
				require.True(t, n.Interface(eni.HostInterface).Attached, "attached when its PUT returns")
			}
		}
		for i := range churned {
			require.NoError(t, n.Controller().DeleteENI(ctx, fmt.Sprintf("eni-c%d", i)))
		}
		return time.Since(start)
	}
	churn()
	baseMaps, baseBytes := kernelMemory(t)
	baseHeap := goHeap()

	rx, err := netns.Do(lab.VMs["eni-rx"], func() (*net.UDPConn, error) {
		return net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("198.18.212.2"), Port: 5000})
	})
	require.NoError(t, err)
	defer rx.Close()
	refusedRx, err := netns.Do(lab.VMs["eni-rx"], func() (*net.UDPConn, error) {
		return net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("198.18.212.2"), Port: 5001})
	})
	require.NoError(t, err)
	defer refusedRx.Close()
	var received, receivedRefused atomic.Int64
	count := func(c *net.UDPConn, n *atomic.Int64) {
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}
	go count(rx, &received)
	go count(refusedRx, &receivedRefused)
	tx, err := netns.Do(lab.VMs["eni-tx"], func() (*net.UDPConn, error) { return net.DialUDP("udp4", nil, nil) })
	if err != nil {
		tx, err = netns.Do(lab.VMs["eni-tx"], func() (*net.UDPConn, error) {
			return net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("198.18.212.1")})
		})
	}
	require.NoError(t, err)
	defer tx.Close()
	stop := make(chan struct{})
	sent := make(chan [2]int, 1)
	go func() {
		var ok, refused int
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sent <- [2]int{ok, refused}
				return
			case <-tick.C:
			}
			if _, err := tx.WriteToUDP([]byte("stream"), &net.UDPAddr{IP: net.ParseIP("198.18.212.2"), Port: 5000}); err == nil {
				ok++
			}
			if _, err := tx.WriteToUDP([]byte("refused"), &net.UDPAddr{IP: net.ParseIP("198.18.212.2"), Port: 5001}); err == nil {
				refused++
			}
		}
	}()
	took := churn()
	time.Sleep(100 * time.Millisecond) // the stream goes on a little after the churn
	close(stop)
	counts := <-sent
	time.Sleep(200 * time.Millisecond) // in flight
	rate := float64(2*churned) / took.Seconds()
	// The rate is BenchmarkENIChurn's to measure (a timed assertion here would fail on a loaded machine).
	t.Logf("%d ENIs created and deleted in %v (%.0f changes/s) while %d stream packets flowed", churned, took, rate, counts[0])
	require.Greater(t, counts[0], 100, "the stream flowed")
	assert.Equal(t, int64(counts[0]), received.Load(), "every stream packet was accepted")
	assert.Zero(t, receivedRefused.Load(), "every packet to the refused port was dropped")

	maps, bytes := kernelMemory(t)
	heap := goHeap()
	t.Logf("kernel maps %d → %d, %d → %d bytes; Go heap %d → %d bytes", baseMaps, maps, baseBytes, bytes, baseHeap, heap)
	assert.Equal(t, baseMaps, maps, "BPF maps back to the baseline")
	assert.Equal(t, baseBytes, bytes, "kernel memory back to the baseline")
	assert.Less(t, heap, baseHeap+2<<20, "Go heap back near the baseline (2 MiB of slack for the runtime)")
	assert.Len(t, n.Controller().View().State.ENIIDs(), 2)
}
