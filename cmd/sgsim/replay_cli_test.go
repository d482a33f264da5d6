package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/kerneltest"
	"github.com/sgsim/sgsim/internal/testkit"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/packet/craft"
	"github.com/sgsim/sgsim/store"
)

const demoPcap = "../../testdata/pcaps/demo.pcap"

func TestReplayJSON(t *testing.T) {
	out, err := runCore(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--json")
	require.NoError(t, err)
	sc := bufio.NewScanner(strings.NewReader(out))
	n := 0
	for sc.Scan() {
		var obj struct {
			Index   int    `json:"index"`
			Verdict string `json:"verdict"`
			Checks  []map[string]any
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &obj), sc.Text())
		assert.Equal(t, n, obj.Index)
		assert.Contains(t, []string{"ACCEPT", "DROP", "UNMANAGED"}, obj.Verdict)
		n++
	}
	assert.Equal(t, 20, n)
}

func TestReplayExpectExitCode(t *testing.T) {
	_, err := runCore(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--expect", "../../testdata/pcaps/demo.expect.yaml")
	require.NoError(t, err)

	bad := testkit.WriteFile(t, "bad.yaml", "- {index: 3, verdict: ACCEPT}\n")
	_, err = runCore(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--expect", bad)
	var ee *exitError
	require.True(t, errors.As(err, &ee), "%v", err)
	assert.Equal(t, 1, ee.code)
}

func TestReplayBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no state", []string{"replay", "--pcap", demoPcap}, "--topology"},
		{"both", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--data-dir", "x"}, "not both"},
		{"direction without eni", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--direction", "ingress"}, "--direction needs --eni"},
		{"bad direction", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--eni", "eni-web1", "--direction", "up"}, "--direction"},
		{"unknown eni", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--eni", "eni-x", "--direction", "ingress"}, "eni-x"},
		{"missing pcap", []string{"replay", "--pcap", "nope.pcap", "--topology", demoTopology}, "nope.pcap"},
		{"corrupt pcap", []string{"replay", "--pcap", demoTopology, "--topology", demoTopology}, "demo.json"},
		{"bad expect", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--expect", demoTopology}, "demo.json"},
		{"bad engine", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--engine", "gpu"}, `--engine "gpu": want go, ebpf or both`},
		{"stateless ebpf", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--engine", "ebpf", "--stateless"}, "--stateless works with --engine go only"},
		{"stateless both", []string{"replay", "--pcap", demoPcap, "--topology", demoTopology, "--engine", "both", "--stateless"}, "--stateless works with --engine go only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCore(t, tc.args...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestReplayDataDir(t *testing.T) {
	dir := t.TempDir()
	st, err := model.LoadTopologyFile(demoTopology)
	require.NoError(t, err)
	db, err := store.OpenBolt(filepath.Join(dir, store.DBFile))
	require.NoError(t, err)
	require.NoError(t, db.Commit(context.Background(), st, 3))
	require.NoError(t, db.Close())
	out, err := runCore(t, "replay", "--data-dir", dir, "--pcap", demoPcap)
	require.NoError(t, err)
	assert.Contains(t, out, "20 packets: 12 accepted, 7 dropped, 1 unmanaged")
}

func TestScenarioAndDiffCommands(t *testing.T) {
	out, err := runCore(t, "scenario", "../../testdata/scenarios/neutron-icmp-related.yaml")
	require.NoError(t, err)
	assert.Contains(t, out, ": ok")
	out, err = runCore(t, "diff", "--topology", demoTopology, "--pcap", demoPcap, "--apply", "huawei:sg-lockdown:remove:eni-web2")
	require.NoError(t, err)
	assert.Contains(t, out, "1 flow(s) change verdict")
	assert.Contains(t, out, "sg-lockdown rule 0")
	_, err = runCore(t, "diff", "--topology", demoTopology, "--pcap", demoPcap, "--apply", "bogus")
	require.ErrorContains(t, err, "--apply")
}

// TestScenarioEngines: sgsim scenario --engine prints the same narration under every engine (the
// kernel engines need root), and refuses an unknown one.
func TestScenarioEngines(t *testing.T) {
	const file = "../../testdata/scenarios/spec3-timeouts.yaml"
	goOut, err := runCore(t, "scenario", file)
	require.NoError(t, err)
	_, err = runCore(t, "scenario", "--engine", "bogus", file)
	require.ErrorContains(t, err, `--engine "bogus"`)
	kerneltest.LoadOrSkip(t)
	for _, engine := range []string{"ebpf", "both"} {
		out, err := runCore(t, "scenario", "--engine", engine, file)
		require.NoError(t, err, out)
		assert.Equal(t, goOut, out, engine)
	}
}

// runReplayCLI runs sgsim with args (any command) and returns stdout and stderr apart.
func runReplayCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

// TestReplayEngines replays every repository capture (in one run, so the program is loaded once per
// placement) with --engine both and --engine ebpf: no disagreement, and ebpf prints what go prints.
func TestReplayEngines(t *testing.T) {
	kerneltest.LoadOrSkip(t)
	files, err := filepath.Glob("../../testdata/pcaps/*.pcap*")
	require.NoError(t, err)
	require.Len(t, files, 13)
	pcaps := strings.Join(files, ",")
	for _, place := range [][]string{nil, {"--eni", "eni-web1", "--direction", "ingress"}, {"--eni", "eni-web1", "--direction", "egress"}} {
		t.Run(strings.Join(append([]string{"placement"}, place...), " "), func(t *testing.T) {
			args := append([]string{"replay", "--topology", demoTopology, "--pcap", pcaps}, place...)
			goOut, _, err := runReplayCLI(t, args...)
			require.NoError(t, err)
			require.Contains(t, goOut, "74 packets:")

			out, stderr, err := runReplayCLI(t, append(args, "--engine", "both")...)
			require.NoError(t, err, stderr)
			assert.Equal(t, goOut, out, "both prints the Go engine's output")
			assert.NotContains(t, stderr, "disagreement")
			assert.Regexp(t, `(?m)^go and ebpf engines agree on all \d+ compared check\(s\) of 74 packet\(s\)$`, stderr)
			// truncated.pcap's IPv4 frame shorter than an IP header: BPF_PROG_TEST_RUN refuses it.
			assert.Contains(t, stderr, "1 check(s) of malformed or non-IP packets were not run through the eBPF program")

			out, stderr, err = runReplayCLI(t, append(args, "--engine", "ebpf")...)
			require.NoError(t, err, stderr)
			assert.Equal(t, goOut, out, "the eBPF program decides every check as the Go engine does")
		})
	}
	out, stderr, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", demoPcap, "--expect", "../../testdata/pcaps/demo.expect.yaml", "--engine", "both")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "20 packets: 12 accepted, 7 dropped, 1 unmanaged")
	assert.Contains(t, stderr, "all 11 expectation(s) of ../../testdata/pcaps/demo.expect.yaml met\n")
	assert.Contains(t, stderr, "go and ebpf engines agree on all 21 compared check(s) of 20 packet(s)\n")
}

// TestReplayEngineIdleGap: a reply 700 s after its flow's last packet (longer than SPEC §3's 600 s for
// established TCP) is a new decision for the Go engine, which ages flows on capture time, and still
// established for the kernel, which ages them on its own clock: both reports it and exits 1.
func TestReplayEngineIdleGap(t *testing.T) {
	kerneltest.LoadOrSkip(t)
	client, web := netip.MustParseAddr("198.19.5.7"), netip.MustParseAddr("198.18.1.10")
	macC, macW := craft.MAC("02:00:00:00:00:99"), craft.MAC("02:00:00:00:01:01")
	frame := func(src, dst netip.Addr, sp, dp uint16, flags uint8) []byte {
		ip := craft.IPv4(src, dst, packet.ProtoTCP, craft.TCP(sp, dp, flags, nil), nil)
		from, to := macC, macW
		if src == web {
			from, to = macW, macC
		}
		return craft.Ethernet(to, from, craft.EtherTypeOf(ip), nil, ip)
	}
	path := filepath.Join(t.TempDir(), "gap.pcap")
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 700 * time.Second}
	testkit.WritePcap(t, path, layers.LinkTypeEthernet, [][]byte{
		frame(client, web, 40000, 80, packet.TCPSyn),
		frame(web, client, 80, 40000, packet.TCPSyn|packet.TCPAck),
		frame(client, web, 40000, 80, packet.TCPAck),
		frame(web, client, 80, 40000, packet.TCPAck),
	}, func(i int) time.Time { return start.Add(at[i]) })

	goOut, _, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path)
	require.NoError(t, err)
	out, stderr, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path, "--engine", "both")
	var ee *exitError
	require.True(t, errors.As(err, &ee), "%v", err)
	assert.Equal(t, 1, ee.code)
	assert.Equal(t, goOut, out)
	assert.Contains(t, stderr, "disagreement: packet 3 tcp 198.18.1.10:80 > 198.19.5.7:40000: eni-web1 egress: go ACCEPT sg-web rule 0 (entry 0), ebpf ACCEPT established\n")
	assert.Contains(t, stderr, "go and ebpf engines disagree on 1 of 4 packet(s) (1 of them conntrack only")
	assert.Equal(t, 1, strings.Count(stderr, "disagreement:"))
}

// synPcap writes n TCP SYNs to the demo's eni-web1 (port 80, accepted) as a pcap of link type link
// and returns its path.
func synPcap(t *testing.T, n int, link layers.LinkType) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "syn.pcap")
	src, dst := netip.MustParseAddr("198.19.5.7"), netip.MustParseAddr("198.18.1.10")
	frames := make([][]byte, n)
	for i := range frames {
		ip := craft.IPv4(src, dst, packet.ProtoTCP, craft.TCP(uint16(10000+i%50000), 80, packet.TCPSyn, nil), nil)
		frames[i] = craft.Ethernet(craft.MAC("02:00:00:00:00:01"), craft.MAC("02:00:00:00:00:09"), 0x0800, nil, ip)
	}
	testkit.WritePcap(t, path, link, frames, func(i int) time.Time { return time.Unix(1_700_000_000, int64(i)*1000) })
	return path
}

// TestReplayStopsWhole: a capture whose last record is cut short (issue 17 item 7) fails, but only
// after every packet before it is out as a whole line (JSON objects that parse, past the output
// buffer's size) and, without --json, the summary of those packets.
func TestReplayStopsWhole(t *testing.T) {
	const n = 2000 // ~100 bytes of JSON each: several times the 64 KiB output buffer
	path := synPcap(t, n, layers.LinkTypeEthernet)
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, st.Size()-10))

	out, _, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path, "--json")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "truncated capture")
	assert.Contains(t, err.Error(), "stopped after 1999 packet(s)")
	require.True(t, strings.HasSuffix(out, "}\n"), "the output ends with a whole object")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, n-1)
	for i, line := range lines {
		var obj struct {
			Index   int    `json:"index"`
			Verdict string `json:"verdict"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &obj), "line %d: %s", i, line)
		require.Equal(t, i, obj.Index)
		require.Equal(t, "ACCEPT", obj.Verdict)
	}

	out, _, err = runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path)
	require.Error(t, err)
	assert.Contains(t, out, "\n1999 packets: 1999 accepted, 0 dropped, 0 unmanaged\n")
	assert.Regexp(t, `eni-web1\s+ingress\s+sg-web rule 1\s+ACCEPT\s+1999`, out)

	// A capture that fails before its first packet prints nothing on stdout.
	empty := testkit.WriteFile(t, "empty.pcap", "not a capture at all")
	out, _, err = runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", empty)
	require.Error(t, err)
	assert.Empty(t, out)
}

// TestReplaySaysWhyUnmanaged: frames of a link type replay cannot read (802.11 here) are UNMANAGED,
// and stderr says so once per capture, naming the link type and the count (issue 17 item 9).
func TestReplaySaysWhyUnmanaged(t *testing.T) {
	path := synPcap(t, 3, layers.LinkTypeIEEE802_11)
	out, stderr, err := runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", path)
	require.NoError(t, err)
	assert.Contains(t, out, "3 packets: 0 accepted, 0 dropped, 3 unmanaged")
	assert.Equal(t, path+": 3 packet(s) of link type 105 ("+layers.LinkTypeIEEE802_11.String()+") are UNMANAGED: replay reads "+
		"Ethernet, Linux cooked (SLL, SLL2), raw IP and loopback captures only, so it finds no addresses in them\n", stderr)

	_, stderr, err = runReplayCLI(t, "replay", "--topology", demoTopology, "--pcap", synPcap(t, 3, layers.LinkTypeEthernet))
	require.NoError(t, err)
	assert.Empty(t, stderr, "readable captures get no warning")
}

// TestReplayNoProgressOffTerminal: with stderr a file or a pipe there is no progress bar, even on a
// replay long enough to show one on a terminal.
func TestReplayNoProgressOffTerminal(t *testing.T) {
	path := synPcap(t, 10_000, layers.LinkTypeEthernet)
	errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	require.NoError(t, err)
	defer errFile.Close()
	require.NoError(t, runReplay(t.Context(), &strings.Builder{}, errFile, replayFlags{topo: demoTopology, pcaps: []string{path}, engine: "go"}))
	got, err := os.ReadFile(errFile.Name())
	require.NoError(t, err)
	assert.Empty(t, string(got))

	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	defer pr.Close()
	defer pw.Close()
	for _, w := range []*os.File{errFile, pw} {
		assert.Nil(t, progressWriter(w, false))
		assert.Nil(t, progressWriter(w, true))
	}
}
