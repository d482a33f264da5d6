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

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/replay"
	"github.com/sgsim/sgsim/store"
)

func init() { extraCommands = append(extraCommands, newReplayCmd) }

// replayFactory is the matcher replay builds tables with: the fastest one the dataplane offers.
var replayFactory dataplane.MatcherFactory = dataplane.ClassifierFactory

type replayFlags struct {
	topo, dataDir, eni, direction, expect, writeAcc, writeDrop string
	pcaps                                                      []string
	asJSON, stateless                                          bool
}

func newReplayCmd() *cobra.Command {
	var f replayFlags
	cmd := &cobra.Command{
		Use:   "replay (--topology F | --data-dir D) --pcap FILE... [--json] [--expect FILE] [--eni ID --direction ingress|egress] [--stateless]",
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
			path = filepath.Join(dataDir, api.DBFile)
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("--data-dir %s: no store file %s in it: %w", dataDir, api.DBFile, err)
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

// replayEngine compiles st and publishes it into a fresh engine.
func replayEngine(st *model.State) *dataplane.Engine {
	e := dataplane.NewEngine(replayFactory)
	e.Publish(1, compiler.New(st).CompileAll(), nil)
	return e
}

func replayOptions(f replayFlags) (replay.Options, error) {
	o := replay.Options{Stateless: f.stateless, ForceENI: f.eni}
	switch {
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
	r, err := replay.New(st, replayEngine(st), opts)
	if err != nil {
		return err
	}
	var ex *replay.Expectations
	if f.expect != "" {
		if ex, err = replay.LoadExpectations(f.expect); err != nil {
			return err
		}
	}
	cfg := replay.RunConfig{Pcaps: f.pcaps, Out: stdout, JSON: f.asJSON, WriteAccepted: f.writeAcc, WriteDropped: f.writeDrop}
	if file, ok := stderr.(*os.File); ok && term.IsTerminal(int(file.Fd())) {
		cfg.Progress = stderr
	}
	if ex != nil {
		cfg.OnResult = func(res *replay.Result) { ex.Observe(r, res) }
	}
	sum, err := replay.Run(ctx, r, cfg)
	if err != nil {
		return err
	}
	if !f.asJSON {
		replay.WriteSummary(stdout, sum)
	}
	if ex != nil {
		if fails := ex.Failures(); len(fails) > 0 {
			fmt.Fprintf(stderr, "%d expectation(s) of %s failed:\n  %s\n", len(fails), f.expect, strings.Join(fails, "\n  "))
			return &exitError{code: 1, err: fmt.Errorf("%d expectation(s) failed", len(fails))}
		}
		fmt.Fprintf(stderr, "all %d expectation(s) of %s met\n", len(ex.List), f.expect)
	}
	return nil
}
