package replay_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/replay"
)

// statelessDecider decides each Ethernet frame against the compiled tables with no connection
// tracking: a Decider that differs from the Go engine exactly where the Go engine answers from conntrack.
type statelessDecider struct {
	tables map[string]*compiler.Tables
	calls  int
}

func (s *statelessDecider) Decide(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
	s.calls++
	var d packet.Decoded
	packet.Decode(packet.LinkEthernet, frame, &d)
	switch d.Class {
	case packet.ClassARP:
		return replay.Decision{Accept: true, Reason: dataplane.ReasonARP, Entry: -1}, nil
	case packet.ClassND:
		return replay.Decision{Accept: true, Reason: dataplane.ReasonND, Entry: -1}, nil
	case packet.ClassNotIP:
		return replay.Decision{Reason: dataplane.ReasonNotIP, Entry: -1}, nil
	case packet.ClassMalformed:
		return replay.Decision{Reason: dataplane.ReasonMalformed, Entry: -1}, nil
	}
	remote := d.Src
	if dir == model.Egress {
		remote = d.Dst
	}
	p := dataplane.Packet{Remote: remote, Proto: d.Proto, Port: d.DstPort, HasPort: d.HasPorts && (d.Proto == packet.ProtoTCP || d.Proto == packet.ProtoUDP)}
	tab := s.tables[eni].Get(dir)
	v := dataplane.VerdictOf(tab, dataplane.NewLinearTable(tab).Lookup(&p))
	return replay.Decision{Accept: v.Action == model.Accept, Reason: v.Reason, Entry: v.Entry}, nil
}

type decideFunc func(frame []byte, eni string, dir model.Direction) (replay.Decision, error)

func (f decideFunc) Decide(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
	return f(frame, eni, dir)
}

func demoReplayer(t *testing.T, opts replay.Options) (*replay.Replayer, map[string]*compiler.Tables) {
	t.Helper()
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	tables := compiler.New(st).CompileAll()
	e := dataplane.NewEngine(dataplane.ClassifierFactory)
	e.Publish(1, tables, nil)
	r, err := replay.New(st, e, opts)
	require.NoError(t, err)
	return r, tables
}

var demoPcap = []string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")}

// TestCompareReportsDisagreements: DecideWithBoth keeps the Go verdicts and marks exactly the checks
// where the Decider differs; here the stateless decider differs on the two replies the Go engine
// answers from conntrack.
func TestCompareReportsDisagreements(t *testing.T) {
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	dec := &statelessDecider{tables: compiler.New(st).CompileAll()}
	r, _ := demoReplayer(t, replay.Options{DecideWith: replay.DecideWithBoth, Decider: dec})
	goOnly, _ := demoReplayer(t, replay.Options{})

	var lines []string
	var verdicts []replay.Verdict
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap, OnResult: func(res *replay.Result) {
		verdicts = append(verdicts, res.Verdict)
		lines = append(lines, replay.Disagreements(r, res, "go", "stub")...)
	}})
	require.NoError(t, err)
	var want []replay.Verdict
	var estPackets, estChecks int
	goSum, err := replay.Run(context.Background(), goOnly, replay.RunConfig{Pcaps: demoPcap, OnResult: func(res *replay.Result) {
		want = append(want, res.Verdict)
		n := 0
		for i := 0; i < res.NChecks; i++ {
			if res.Checks[i].Verdict.Reason == dataplane.ReasonEstablished {
				n++
			}
		}
		estChecks += n
		if n > 0 {
			estPackets++
		}
	}})
	require.NoError(t, err)
	assert.Equal(t, want, verdicts, "the results are the Go engine's")
	assert.Equal(t, goSum.Rows, sum.Rows)

	require.Equal(t, [2]int{4, 5}, [2]int{estPackets, estChecks}, "the demo's replies answered from conntrack")
	assert.Equal(t, estPackets, sum.Disagreements)
	assert.Equal(t, estPackets, sum.ConntrackDisagreements, "only conntrack answers differ")
	require.Len(t, lines, estChecks)
	for _, l := range lines {
		assert.Regexp(t, `^packet \d+ (tcp|icmp) .*: eni-\w+ (ingress|egress): go ACCEPT established, stub (ACCEPT sg-\w+ rule \d+|DROP default-drop) \(entry \d+\)$`, l)
	}
	assert.Contains(t, lines, "packet 5 tcp 198.18.2.10:5432 > 198.18.1.10:40200: eni-web1 ingress: go ACCEPT established, stub DROP default-drop (entry 6)")
	assert.Equal(t, 21, dec.calls, "every Go check is asked")
	assert.Equal(t, replay.DeciderStats{Asked: 21}, r.DeciderStats())
}

// TestDeciderEngineNamesRules: with DecideWithDecider every check is the Decider's, named through the
// compiled table like the Go engine's; the stateless decider gives what the Go engine gives stateless.
func TestDeciderEngineNamesRules(t *testing.T) {
	_, tables := demoReplayer(t, replay.Options{})
	r, _ := demoReplayer(t, replay.Options{DecideWith: replay.DecideWithDecider, Decider: &statelessDecider{tables: tables}})
	stateless, _ := demoReplayer(t, replay.Options{Stateless: true})
	var got, want []string
	collect := func(r *replay.Replayer, into *[]string) func(*replay.Result) {
		return func(res *replay.Result) { *into = append(*into, string(replay.AppendHuman(nil, r, res))) }
	}
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap, OnResult: collect(r, &got)})
	require.NoError(t, err)
	wantSum, err := replay.Run(context.Background(), stateless, replay.RunConfig{Pcaps: demoPcap, OnResult: collect(stateless, &want)})
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Equal(t, wantSum.Rows, sum.Rows)
	assert.Zero(t, r.ConnStats(), "the Decider tracks, not replay")
}

// TestCompareDisagreementKinds: action, reason and entry each count as a disagreement.
func TestCompareDisagreementKinds(t *testing.T) {
	_, tables := demoReplayer(t, replay.Options{})
	honest := &statelessDecider{tables: tables}
	tests := []struct {
		name   string
		change func(*replay.Decision)
	}{
		{"action", func(d *replay.Decision) { d.Accept = !d.Accept }},
		{"reason", func(d *replay.Decision) { d.Reason = dataplane.ReasonNoSG }},
		{"entry", func(d *replay.Decision) {
			if d.Entry > 0 {
				d.Entry--
			} else if d.Entry == 0 {
				d.Entry++
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Ingress, DecideWith: replay.DecideWithBoth,
				Decider: decideFunc(func(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
					d, err := honest.Decide(frame, eni, dir)
					if d.Reason == dataplane.ReasonRule {
						tc.change(&d)
					}
					return d, err
				})})
			sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap})
			require.NoError(t, err)
			assert.Positive(t, sum.Disagreements)
			assert.Zero(t, sum.ConntrackDisagreements)
		})
	}
}

func TestDeciderFailures(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		engine  replay.DecideWith
		decide  decideFunc
		wantErr string
		notRun  int
	}{
		{"error", replay.DecideWithDecider, func([]byte, string, model.Direction) (replay.Decision, error) { return replay.Decision{}, boom },
			"demo.pcap: packet 0: eni-web1 ingress: boom", 0},
		{"refused IP frame", replay.DecideWithBoth, func([]byte, string, model.Direction) (replay.Decision, error) {
			return replay.Decision{}, fmt.Errorf("too big: %w", replay.ErrRefused)
		}, "packet 0: eni-web1 ingress: too big: decider cannot run this frame", 0},
		{"entry beyond the table", replay.DecideWithDecider, func([]byte, string, model.Direction) (replay.Decision, error) {
			return replay.Decision{Reason: dataplane.ReasonRule, Entry: 1 << 20}, nil
		}, "eni-web1 ingress: decider named entry 1048576, the table has", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Ingress, DecideWith: tc.engine, Decider: tc.decide})
			_, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: demoPcap})
			require.ErrorContains(t, err, tc.wantErr)
		})
	}

	// A refused frame the decoder calls malformed keeps the decoder's verdict, and is counted.
	_, tables := demoReplayer(t, replay.Options{})
	honest := &statelessDecider{tables: tables}
	r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Ingress, DecideWith: replay.DecideWithDecider,
		Decider: decideFunc(func(frame []byte, eni string, dir model.Direction) (replay.Decision, error) {
			var d packet.Decoded
			packet.Decode(packet.LinkEthernet, frame, &d)
			if d.Class == packet.ClassMalformed {
				return replay.Decision{}, fmt.Errorf("short IP header: %w", replay.ErrRefused)
			}
			return honest.Decide(frame, eni, dir)
		})})
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{filepath.Join("..", "testdata", "pcaps", "truncated.pcap")}})
	require.NoError(t, err)
	assert.Equal(t, replay.DeciderStats{Asked: 1, NotRun: 2}, r.DeciderStats())
	assert.Equal(t, 2, sum.Rows[replay.SummaryKey{ENI: "eni-web1", Direction: model.Ingress, Reason: dataplane.ReasonMalformed, Action: model.Drop, RuleIndex: -1}])
}

func TestEngineOptions(t *testing.T) {
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	e := dataplane.NewEngine(dataplane.ClassifierFactory)
	_, err = replay.New(st, e, replay.Options{DecideWith: replay.DecideWithDecider})
	require.ErrorContains(t, err, "needs a Decider")
	_, err = replay.New(st, e, replay.Options{DecideWith: 9, Decider: decideFunc(nil)})
	require.ErrorContains(t, err, "unknown")
}

// TestDeciderSeesEthernet: every link type replay reads reaches the Decider as an Ethernet frame
// that decodes to the same packet.
func TestDeciderSeesEthernet(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "pcaps", "*.pcap*"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var seen packet.Decoded
			r, _ := demoReplayer(t, replay.Options{ForceENI: "eni-web1", ForceDirection: model.Egress, DecideWith: replay.DecideWithBoth,
				Decider: decideFunc(func(frame []byte, _ string, _ model.Direction) (replay.Decision, error) {
					packet.Decode(packet.LinkEthernet, frame, &seen)
					return replay.Decision{Entry: -1}, nil
				})})
			_, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{f}, OnResult: func(res *replay.Result) {
				if !res.Checks[0].Compared {
					assert.Equal(t, packet.ClassMalformed, res.Packet.Class, "only a frame without an Ethernet form is not asked")
					return
				}
				want := res.Packet
				// What only the link header carried: the cooked and loopback headers have no destination MAC.
				want.HasMAC, want.SrcMAC, want.DstMAC = seen.HasMAC, seen.SrcMAC, seen.DstMAC
				assert.Equal(t, want, seen, "packet %d", res.Index)
			}})
			require.NoError(t, err)
		})
	}
}
