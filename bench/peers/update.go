package peers

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/node"
)

// SgsimAPI is sgsim enforcing through its daemon: a rule change is a signed Tencent API call into a
// Daemon, which answers once the new table is live in the TC program. Path.Load does not take it.
const SgsimAPI Firewall = "sgsim-api"

// Probe is a paced stream of sequence-numbered UDP datagrams from gen to fw. It keeps every datagram's
// send time and whether it arrived, so the moment a rule change took effect on the path can be read off.
type Probe struct {
	base   time.Duration // CLOCK_MONOTONIC at start; send times are kept relative to it
	sender *exec.Cmd
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	sent      []time.Duration // send time of datagram i, since base
	delivered []bool          // datagram i reached the sink (may run ahead of sent)
	err       error
}

// ProbeSenderEnv, when set in the environment, makes a binary that calls ProbeSenderMain first thing a
// probe sender: StartProbe runs the current executable that way.
const ProbeSenderEnv = "SGSIM_PROBE_SENDER"

// StartProbe sends one datagram to fw's dport every interval until Stop. The gaps actually achieved
// (interval plus wake-up latency) are what bounds a reading's resolution.
//
// The sender is a child process (this executable again, see ProbeSenderMain) running SCHED_FIFO with
// 1 ns timer slack: in this process it would share the Go scheduler and garbage collector with the
// daemon under test, whose pauses stalled it.
// It stays whole: starting the child, handing it the socket and reading its reports are one protocol.
func (p *Path) StartProbe(ctx context.Context, dport uint16, interval time.Duration) (*Probe, error) {
	sink, gen, err := p.udpPair(dport)
	if err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	// The child gets its own descriptor of the generator socket; ours is not needed after the start.
	genFile, err := gen.File()
	gen.Close()
	if err != nil {
		sink.Close()
		return nil, fmt.Errorf("probe generator socket: %w", err)
	}
	defer genFile.Close()
	self, err := os.Executable()
	if err != nil {
		sink.Close()
		return nil, fmt.Errorf("probe sender: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr := &Probe{base: monotonic(), cancel: cancel}
	pr.sender = exec.Command(self)
	pr.sender.Env = append(os.Environ(), ProbeSenderEnv+"="+strconv.FormatInt(interval.Nanoseconds(), 10))
	pr.sender.ExtraFiles = []*os.File{genFile}
	pr.sender.Stderr = os.Stderr
	times, err := pr.sender.StdoutPipe()
	if err != nil {
		cancel()
		sink.Close()
		return nil, fmt.Errorf("probe sender: %w", err)
	}
	if err := pr.sender.Start(); err != nil {
		cancel()
		sink.Close()
		return nil, fmt.Errorf("probe sender: %w", err)
	}
	pr.wg.Add(2)
	go func() {
		defer pr.wg.Done()
		r := bufio.NewReaderSize(times, 4096)
		var rec [8]byte
		for {
			if _, err := io.ReadFull(r, rec[:]); err != nil {
				if ctx.Err() == nil {
					pr.fail(fmt.Errorf("probe sender stopped: %w", err))
				}
				return
			}
			t := time.Duration(binary.LittleEndian.Uint64(rec[:])) - pr.base
			pr.mu.Lock()
			pr.sent = append(pr.sent, t)
			pr.mu.Unlock()
		}
	}()
	go func() {
		defer pr.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, err := sink.Read(buf)
			if err != nil {
				return // Stop closes the socket
			}
			if n < 8 {
				continue
			}
			// A datagram may arrive before its send time comes through the pipe: delivered grows on its own
			// (by a bounded step; the pipe lags by a batch, not more).
			seq := binary.LittleEndian.Uint64(buf)
			pr.mu.Lock()
			if seq > uint64(len(pr.sent))+1<<16 {
				pr.mu.Unlock()
				continue
			}
			if i := int(seq); i >= len(pr.delivered) {
				pr.delivered = append(pr.delivered, make([]bool, i+1-len(pr.delivered))...)
			}
			pr.delivered[seq] = true
			pr.mu.Unlock()
		}
	}()
	context.AfterFunc(ctx, func() {
		sink.Close()
		_ = pr.sender.Process.Kill()
	})
	return pr, nil
}

// ProbeSenderMain is the probe's sender process. When ProbeSenderEnv is set it never returns: it sends
// a datagram on descriptor 3 every interval (the variable's value, ns), each carrying its sequence
// number, and writes each send time (CLOCK_MONOTONIC ns, 8 bytes little-endian) to stdout, until
// killed. Call it first thing in main or TestMain.
func ProbeSenderMain() {
	v := os.Getenv(ProbeSenderEnv)
	if v == "" {
		return
	}
	interval, err := strconv.ParseInt(v, 10, 64)
	if err != nil || interval <= 0 {
		fmt.Fprintf(os.Stderr, "probe sender: %s=%q: want an interval in ns\n", ProbeSenderEnv, v)
		os.Exit(2)
	}
	if err := probeSend(time.Duration(interval)); err != nil {
		fmt.Fprintf(os.Stderr, "probe sender: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func probeSend(interval time.Duration) error {
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("parent-death signal: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("timer slack: %w", err)
	}
	if err := unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_FIFO, Priority: 1}, 0); err != nil {
		return fmt.Errorf("real-time priority: %w", err)
	}
	const sock, out = 3, 1
	buf := make([]byte, 64)
	// Send times go out in small batches: one pipe write per batch, at most a few ms behind.
	const batch = 16
	times := make([]byte, 0, 8*batch)
	ts := unix.NsecToTimespec(interval.Nanoseconds())
	for seq := uint64(0); ; seq++ {
		binary.LittleEndian.PutUint64(buf, seq)
		times = binary.LittleEndian.AppendUint64(times, uint64(monotonic()))
		// A send error (e.g. ENOBUFS) is a datagram that never arrives, as a drop would be; the
		// readings need no special case for it.
		_, _ = unix.Write(sock, buf)
		if len(times) == cap(times) {
			if _, err := unix.Write(out, times); err != nil {
				return fmt.Errorf("send times: %w", err)
			}
			times = times[:0]
		}
		_ = unix.Nanosleep(&ts, nil)
	}
}

// monotonic reads CLOCK_MONOTONIC, the clock the sender process and this one share.
func monotonic() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func (pr *Probe) fail(err error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.err = errors.Join(pr.err, err)
}

// Stop ends the stream and waits for the sender and the readers.
func (pr *Probe) Stop() error {
	pr.cancel()
	pr.wg.Wait()
	_ = pr.sender.Wait() // killed: its exit status says nothing
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.err
}

// Now is the probe's clock: time since it started, the scale of its send times.
func (pr *Probe) Now() time.Duration { return monotonic() - pr.base }

// snapshot copies the send times and arrivals of datagrams from on (index 0 of the copies is from).
func (pr *Probe) snapshot(from int) (sent []time.Duration, delivered []bool, err error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	from = min(from, len(pr.sent))
	sent = slices.Clone(pr.sent[from:])
	delivered = make([]bool, len(sent))
	if from < len(pr.delivered) {
		copy(delivered, pr.delivered[from:])
	}
	return sent, delivered, pr.err
}

// sentSince is the sequence number of the first datagram sent at or after t.
func (pr *Probe) sentSince(t time.Duration) int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	i, _ := slices.BinarySearch(pr.sent, t)
	return i
}

// Reading is one rule change seen from the caller and from the path.
type Reading struct {
	Call     time.Duration // the command or API call, until it returned
	Enforced time.Duration // until the first datagram that got the new verdict was sent
	// Resolution is the gap between that datagram and the one before it: the switch happened inside it,
	// so Enforced is exact to within Resolution (an upper bound).
	Resolution time.Duration
}

// enforcedAt reads when a change made at t0 took effect, from the datagrams sent since from (a sequence
// number from before the change). A cut takes effect with the first datagram after the last one
// delivered; an opening with the first delivered. It is an error if that datagram was sent before t0
// (the path had the new verdict before the change) or if the stream has not yet shown the new verdict.
func enforcedAt(sent []time.Duration, delivered []bool, from int, t0 time.Duration, cut bool) (at, res time.Duration, err error) {
	first := -1
	if cut {
		last := -1
		for i := len(sent) - 1; i >= from; i-- {
			if delivered[i] {
				last = i
				break
			}
		}
		if last < 0 {
			return 0, 0, fmt.Errorf("no datagram since #%d was delivered: the stream was cut before the change", from)
		}
		if last+1 >= len(sent) {
			return 0, 0, fmt.Errorf("datagram #%d, the last one sent, was delivered: not cut yet", last)
		}
		first = last + 1
	} else {
		for i := from; i < len(sent); i++ {
			if delivered[i] {
				first = i
				break
			}
		}
		if first < 0 {
			return 0, 0, fmt.Errorf("no datagram since #%d was delivered: not open yet", from)
		}
		if first == from {
			return 0, 0, fmt.Errorf("datagram #%d, the first one considered, was delivered: the stream was open before the change", from)
		}
	}
	if sent[first] < t0 {
		return 0, 0, fmt.Errorf("datagram #%d sent %v before the change already had the new verdict", first, t0-sent[first])
	}
	return sent[first] - t0, sent[first] - sent[first-1], nil
}

// Change makes a rule change and returns when its timed part started (CLOCK_MONOTONIC) and how long it
// took; work done before the start (rendering a script, signing a request) is the client's, not timed.
type Change func(ctx context.Context) (start, took time.Duration, err error)

// Measure makes one rule change, which must leave the stream cut (cut) or open (!cut), and reads the
// call's duration and the time from its start until the path enforced it. It waits until the stream has
// shown the new verdict for settle, at most timeout.
func (pr *Probe) Measure(ctx context.Context, cut bool, settle, timeout time.Duration, change Change) (Reading, error) {
	// The previous verdict has held for a settle period (the caller waited): start from the datagrams
	// sent in its last half.
	from := pr.sentSince(pr.Now() - settle/2)
	start, call, err := change(ctx)
	if err != nil {
		return Reading{}, err
	}
	t0 := start - pr.base
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-ctx.Done():
			return Reading{}, ctx.Err()
		case <-time.After(settle / 4):
		}
		sent, delivered, err := pr.snapshot(from)
		if err != nil {
			return Reading{}, err
		}
		at, res, err := enforcedAt(sent, delivered, 0, t0, cut)
		// Accept the reading once the new verdict has held for settle.
		if err == nil && sent[len(sent)-1]-(t0+at) >= settle {
			return Reading{Call: call, Enforced: at, Resolution: res}, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("the new verdict did not hold")
			}
			return Reading{}, fmt.Errorf("rule change (cut=%v) not enforced within %v: %w", cut, timeout, err)
		}
	}
}

// WaitOpen waits until every datagram sent in a settle-long window has been delivered (the newest 10 ms
// are left out: they may still be in flight).
func (pr *Probe) WaitOpen(ctx context.Context, settle, timeout time.Duration) error {
	const inFlight = 10 * time.Millisecond
	deadline := time.Now().Add(timeout)
	for {
		now := pr.Now()
		from := pr.sentSince(now - inFlight - settle)
		sent, delivered, err := pr.snapshot(from)
		if err != nil {
			return err
		}
		open := now > settle+inFlight && len(sent) > 0
		for i := range sent {
			if sent[i] <= now-inFlight && !delivered[i] {
				open = false
			}
		}
		if open {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the probe stream did not pass within %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(settle / 4):
		}
	}
}

// Daemon is sgsim's control plane in process, as `sgsim serve --dataplane ebpf` runs it: the Tencent API
// over HTTP on loopback, a bbolt store (each change committed with fsync), and the TC program enforcing
// BenchENI's tables on the path's generator end.
type Daemon struct {
	url, host  string
	secretKey  string
	client     *http.Client
	node       *node.Node
	stop       context.CancelFunc
	nonce      int
	serveError chan error
}

const benchSecretID, benchSecretKey = "AKIDbench", "bench-secret-key"

// StartDaemon seeds a daemon in dataDir with BenchTopology(rules), attaches its TC program to the path
// and serves the API. API limits are raised to take up to maxRules rules per direction.
func (p *Path) StartDaemon(ctx context.Context, dataDir string, rules []model.Rule, maxRules int) (*Daemon, error) {
	state, err := model.NewState(BenchTopology(rules, benchSecretID, benchSecretKey))
	if err != nil {
		return nil, fmt.Errorf("daemon state: %w", err)
	}
	d := &Daemon{secretKey: benchSecretKey, serveError: make(chan error, 1)}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	lim := control.DefaultLimits()
	lim.RulesPerDirection = maxRules
	d.node, err = node.New(ctx, node.Config{DataDir: dataDir, Seed: state, Dataplane: node.DataplaneBoth, NoAttach: true,
		Control: control.Options{Limits: &lim},
		// A 10k-rule ModifySecurityGroupPolicy is ~40k parameters and ~1 MB of form body.
		API:    api.Options{MaxBodyBytes: int64(maxRules) * 1024, MaxParams: maxRules*8 + 64},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if err := InNetns(p.GenNS, func() error { return d.node.BPF().Attach(ctx, p.GenIf, BenchENI) }); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	serveCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	d.stop = stop
	ready := make(chan string, 1)
	go func() { d.serveError <- d.node.Serve(serveCtx, "127.0.0.1:0", func(addr string) { ready <- addr }) }()
	select {
	case d.host = <-ready:
	case err := <-d.serveError:
		d.stop = nil
		return nil, fmt.Errorf("daemon: %w", err)
	}
	d.url = "http://" + d.host + api.TencentPath
	d.client = &http.Client{Timeout: 30 * time.Second}
	ok = true
	return d, nil
}

// SignedModify is one signed ModifySecurityGroupPolicy call, ready to send once (its Nonce is spent then).
type SignedModify struct {
	rules int
	call  *client.SignedCall
	err   error // signing failed; Send reports it
}

// SignModify signs a call that replaces sg-bench's ingress rules with rules. Encoding and signing a
// 10k-rule call takes CPU and makes garbage that a client spends in its own process, so a benchmark
// signs its calls ahead and lets the collector clear them before it times the daemon.
func (d *Daemon) SignModify(rules []model.Rule) SignedModify {
	v := url.Values{}
	v.Set("sgId", BenchSG)
	for i, r := range rules {
		p := "ingress." + strconv.Itoa(i) + "."
		for _, f := range [][2]string{{"ipProtocol", r.IPProtocol}, {"cidrIp", r.CidrIP}, {"portRange", r.PortRange}, {"action", r.Action}, {"desc", r.Desc}} {
			if f[1] != "" {
				v.Set(p+f[0], f[1])
			}
		}
	}
	c := &client.Tencent{Endpoint: "http://" + d.host, SecretID: benchSecretID, SecretKey: d.secretKey,
		Nonce: func() (int64, error) { d.nonce++; return int64(d.nonce), nil }}
	call, err := c.Sign(api.ActModifyPolicy, v)
	return SignedModify{rules: len(rules), call: call, err: err}
}

// Modify replaces sg-bench's ingress rules with one signed ModifySecurityGroupPolicy call.
func (d *Daemon) Modify(ctx context.Context, rules []model.Rule) (start, took time.Duration, err error) {
	return d.Send(ctx, d.SignModify(rules))
}

// Send makes a signed call and returns its start (CLOCK_MONOTONIC) and duration, request sent to answer
// read; the daemon answers after the new table is live.
func (d *Daemon) Send(ctx context.Context, call SignedModify) (start, took time.Duration, err error) {
	if call.err != nil {
		return 0, 0, fmt.Errorf("modify %d rules: sign: %w", call.rules, call.err)
	}
	req, err := call.call.Request(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("modify %d rules: %w", call.rules, err)
	}
	start = monotonic()
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("modify %d rules: %w", call.rules, err)
	}
	answer, err := io.ReadAll(resp.Body)
	took = monotonic() - start
	resp.Body.Close()
	if err != nil {
		return 0, 0, fmt.Errorf("modify %d rules: read answer: %w", call.rules, err)
	}
	if !strings.HasPrefix(string(answer), `{"code":0,`) {
		return 0, 0, fmt.Errorf("modify %d rules: daemon answered %s", call.rules, answer)
	}
	return start, took, nil
}

// Close stops the server, detaches the program (it is not pinned) and closes the store.
func (d *Daemon) Close() error {
	var errs []error
	if d.stop != nil {
		d.stop()
		errs = append(errs, <-d.serveError)
	}
	if d.node != nil {
		errs = append(errs, d.node.Close())
	}
	return errors.Join(errs...)
}
