package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/replay"
	"github.com/sgsim/sgsim/scenario"
	"github.com/sgsim/sgsim/store"
)

func init() { extraCommands = append(extraCommands, newReplayCmd) }

// replayFactory is the matcher replay builds tables with: the fastest one the dataplane offers.
var replayFactory dataplane.MatcherFactory = dataplane.ClassifierFactory

type replayFlags struct {
	topo, dataDir, eni, direction, expect, writeAcc, writeDrop, engine string
	pcaps                                                              []string
	asJSON, stateless                                                  bool
}

func newReplayCmd() *cobra.Command {
	var f replayFlags
	cmd := &cobra.Command{
		Use:   "replay (--topology F | --data-dir D) --pcap FILE... [--json] [--expect FILE] [--eni ID --direction ingress|egress] [--stateless] [--engine go|ebpf|both]",
		Short: "Replay captures through the security groups: each packet's verdict and the rule that decided",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplay(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.topo, "topology", "", "topology file (JSON, SPEC §7)")
	fl.StringVar(&f.dataDir, "data-dir", "", "the daemon's data directory (or its bbolt file): replay against its committed state")
	fl.StringSliceVar(&f.pcaps, "pcap", nil, "capture file(s), pcap or pcapng; repeat or comma-separate")
	fl.BoolVar(&f.asJSON, "json", false, "one JSON object per packet (SPEC §7)")
	fl.StringVar(&f.expect, "expect", "", "expected verdicts (JSON/YAML: [{index|flow, verdict}]); exit 1 when any fails")
	fl.StringVar(&f.eni, "eni", "", "check every packet on this ENI only (captures taken on one interface)")
	fl.StringVar(&f.direction, "direction", "", "with --eni: ingress or egress")
	fl.BoolVar(&f.stateless, "stateless", false, "no connection tracking: every packet is evaluated against the rules")
	fl.StringVar(&f.writeAcc, "write-accepted", "", "write accepted packets to this pcap")
	fl.StringVar(&f.writeDrop, "write-dropped", "", "write dropped packets to this pcap")
	fl.StringVar(&f.engine, "engine", "go", "what decides: go (the Go classifier), ebpf (the eBPF program, through BPF_PROG_TEST_RUN; "+
		"root and a BPF-capable kernel), or both (output is go's; every check also runs through ebpf, disagreements go to stderr "+
		"and exit 1). ebpf's conntrack ages flows on the kernel clock, not capture timestamps, so a capture with idle gaps "+
		"longer than SPEC §3's timeouts can legitimately disagree (reported, marked conntrack). Not with --stateless")
	_ = cmd.MarkFlagRequired("pcap")
	return cmd
}

// replayLoadState reads the state from a topology file or the daemon's store.
func replayLoadState(ctx context.Context, topo, dataDir string) (*model.State, error) {
	switch {
	case topo != "" && dataDir != "":
		return nil, errors.New("give --topology or --data-dir, not both")
	case topo != "":
		return model.LoadTopologyFile(topo)
	case dataDir != "":
		path := dataDir
		if st, err := os.Stat(dataDir); err != nil {
			return nil, fmt.Errorf("--data-dir %s: %w", dataDir, err)
		} else if st.IsDir() {
			path = filepath.Join(dataDir, store.DBFile)
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("--data-dir %s: no store file %s in it: %w", dataDir, store.DBFile, err)
			}
		}
		db, err := store.OpenBolt(path)
		if err != nil {
			return nil, fmt.Errorf("--data-dir: %w", err)
		}
		defer db.Close()
		s, _, err := db.Load(ctx)
		if err != nil {
			return nil, fmt.Errorf("--data-dir %s: %w", dataDir, err)
		}
		if s == nil {
			return nil, fmt.Errorf("--data-dir %s: the store holds no state yet", dataDir)
		}
		return s, nil
	}
	return nil, errors.New("give --topology FILE or --data-dir DIR")
}

// replayEngine publishes compiled tables into a fresh engine.
func replayEngine(tables map[string]*compiler.Tables) *dataplane.Engine {
	e := dataplane.NewEngine(replayFactory)
	e.Publish(1, tables, nil)
	return e
}

func replayOptions(f replayFlags) (replay.Options, error) {
	o := replay.Options{Stateless: f.stateless, ForceENI: f.eni}
	eng, err := scenario.ParseEngine(f.engine)
	if err != nil {
		return o, err
	}
	o.DecideWith = eng
	switch {
	case f.stateless && eng != replay.DecideWithGo:
		// The program always tracks, and flushing its table per packet costs a walk of the whole map.
		return o, fmt.Errorf("--stateless works with --engine go only: the eBPF program always tracks connections")
	case f.eni == "" && f.direction != "":
		return o, errors.New("--direction needs --eni")
	case f.eni != "" && f.direction == "":
		return o, errors.New("--eni needs --direction ingress|egress")
	case f.eni != "":
		d, err := model.ParseDirection(f.direction)
		if err != nil {
			return o, fmt.Errorf("--direction: %w", err)
		}
		o.ForceDirection = d
	}
	return o, nil
}

func runReplay(ctx context.Context, stdout, stderr io.Writer, f replayFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	st, err := replayLoadState(ctx, f.topo, f.dataDir)
	if err != nil {
		return err
	}
	opts, err := replayOptions(f)
	if err != nil {
		return err
	}
	tables := compiler.New(st).CompileAll()
	if opts.DecideWith != replay.DecideWithGo {
		d, err := scenario.LoadBPF(ctx, f.engine, tables)
		if err != nil {
			return err
		}
		defer d.Close()
		opts.Decider = scenario.NewBPFDecider(d)
	}
	r, err := replay.New(st, replayEngine(tables), opts)
	if err != nil {
		return err
	}
	var ex *replay.Expectations
	if f.expect != "" {
		if ex, err = replay.LoadExpectations(f.expect); err != nil {
			return err
		}
	}
	sum, err := replay.Run(ctx, r, replayRunConfig(f, r, ex, stdout, stderr))
	stopped := err != nil && sum != nil && sum.Packets > 0
	if err == nil || stopped {
		for _, u := range sum.Unreadable {
			fmt.Fprintln(stderr, u)
		}
		if !f.asJSON {
			replay.WriteSummary(stdout, sum)
		}
	}
	if err != nil {
		if stopped {
			// Everything before the failure is out, whole: say so, so a reader trusts it.
			return fmt.Errorf("%w (replay stopped after %d packet(s); their output is complete)", err, sum.Packets)
		}
		return err
	}
	return replayReport(stderr, f, r, ex, sum)
}

// replayRunConfig is what replay.Run writes: per-packet output, --write-* files, the progress bar (on
// a terminal, never with --json), and expectations and disagreements seen per packet.
func replayRunConfig(f replayFlags, r *replay.Replayer, ex *replay.Expectations, stdout, stderr io.Writer) replay.RunConfig {
	cfg := replay.RunConfig{Pcaps: f.pcaps, Out: stdout, JSON: f.asJSON, WriteAccepted: f.writeAcc, WriteDropped: f.writeDrop,
		Progress: progressWriter(stderr, f.asJSON)}
	compare := r.DecideWith() == replay.DecideWithBoth
	if ex != nil || compare {
		cfg.OnResult = func(res *replay.Result) {
			if ex != nil {
				ex.Observe(r, res)
			}
			if res.Disagrees() {
				for _, line := range replay.Disagreements(r, res, "go", "ebpf") {
					fmt.Fprintf(stderr, "disagreement: %s\n", line)
				}
			}
		}
	}
	return cfg
}

// progressWriter is stderr when it is a terminal and the output is not JSON, else nil (no progress).
func progressWriter(stderr io.Writer, asJSON bool) io.Writer {
	if asJSON {
		return nil
	}
	if file, ok := stderr.(*os.File); ok && term.IsTerminal(int(file.Fd())) {
		return stderr
	}
	return nil
}

// replayReport says on stderr what the decider did not run, how expectations and the engines'
// comparison went, and fails (exit 1) when either did.
func replayReport(stderr io.Writer, f replayFlags, r *replay.Replayer, ex *replay.Expectations, sum *replay.Summary) error {
	var failed []error
	if ds := r.DeciderStats(); ds.NotRun > 0 {
		fmt.Fprintf(stderr, "%d check(s) of malformed or non-IP packets were not run through the eBPF program "+
			"(no Ethernet form, or BPF_PROG_TEST_RUN refused the frame): the decoder's verdict stands\n", ds.NotRun)
	}
	if ex != nil {
		if fails := ex.Failures(); len(fails) > 0 {
			fmt.Fprintf(stderr, "%d expectation(s) of %s failed:\n  %s\n", len(fails), f.expect, strings.Join(fails, "\n  "))
			failed = append(failed, fmt.Errorf("%d expectation(s) failed", len(fails)))
		} else {
			fmt.Fprintf(stderr, "all %d expectation(s) of %s met\n", len(ex.List), f.expect)
		}
	}
	if r.DecideWith() == replay.DecideWithBoth {
		asked := r.DeciderStats().Asked
		if sum.Disagreements > 0 {
			fmt.Fprintf(stderr, "go and ebpf engines disagree on %d of %d packet(s)", sum.Disagreements, sum.Packets)
			if sum.ConntrackDisagreements > 0 {
				fmt.Fprintf(stderr, " (%d of them conntrack only: one engine answered established, the other from the rules; "+
					"expected when the capture idles longer than SPEC §3's timeouts, as the kernel ages flows on its own clock)",
					sum.ConntrackDisagreements)
			}
			fmt.Fprintln(stderr)
			failed = append(failed, fmt.Errorf("go and ebpf engines disagree on %d packet(s)", sum.Disagreements))
		} else {
			fmt.Fprintf(stderr, "go and ebpf engines agree on all %d compared check(s) of %d packet(s)\n", asked, sum.Packets)
		}
	}
	if len(failed) > 0 {
		return &exitError{code: 1, err: errors.Join(failed...)}
	}
	return nil
}
