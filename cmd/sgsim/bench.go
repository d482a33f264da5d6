package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/bench"
	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

// maxBenchPackets bounds --packets: the packets are held in memory, tens of bytes each.
const maxBenchPackets = 10_000_000

func newBenchCmd() *cobra.Command {
	var files []string
	var rules, synthetic, packets, sgs int
	var v6 bool
	var seed uint64
	cmd := &cobra.Command{
		Use:   "bench (--classbench FILE ... | --synthetic N) [--rules N] [--packets N]",
		Short: "Time the fast classifier against the reference linear matcher",
		Long: "Builds the ingress table of each ClassBench file (SPEC §7) or a synthetic table and prints, from one run: " +
			"build time, lookups/s and median ns/lookup of the fast classifier and of the reference, their ratio, " +
			"bytes of the compiled structure per rule and allocations per lookup. A nonzero diff column is a bug.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 && synthetic <= 0 {
				return fmt.Errorf("bench: give --classbench FILE or --synthetic N")
			}
			if packets <= 0 || packets > maxBenchPackets {
				return fmt.Errorf("bench: --packets %d: must be 1 to %d", packets, maxBenchPackets)
			}
			type job struct {
				name string
				st   *model.State
			}
			var jobs []job
			for _, f := range files {
				st, err := bench.LoadClassBench(f, rules, sgs)
				if err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				jobs = append(jobs, job{filepath.Base(f), st})
			}
			if synthetic > 0 {
				st, err := bench.StateFromRules(bench.Synthetic(synthetic, seed, v6), sgs)
				if err != nil {
					return fmt.Errorf("bench: synthetic: %w", err)
				}
				jobs = append(jobs, job{fmt.Sprintf("synth_%d", synthetic), st})
			}
			out := cmd.OutOrStdout()
			bench.WriteHeader(out)
			bad := 0
			for _, j := range jobs {
				ts, err := compiler.New(j.st).Compile(bench.ENIID)
				if err != nil {
					return fmt.Errorf("bench %s: %w", j.name, err)
				}
				corner := packets / 2
				pkts := bench.Packets(ts.Ingress, corner, packets-min(corner, packets), seed)
				pkts = pkts[:min(len(pkts), packets)] // a corner cap of 0 keeps every corner
				r, err := bench.Run(cmd.Context(), j.name, ts.Ingress, pkts)
				if err != nil {
					return fmt.Errorf("bench %s: %w", j.name, err)
				}
				bench.Write(out, r)
				bad += r.Mismatches
			}
			if bad > 0 {
				return &exitError{code: 1, err: fmt.Errorf("bench: %d packets where the classifier and the reference disagree", bad)}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&files, "classbench", nil, "ClassBench rule file (repeatable)")
	cmd.Flags().IntVar(&rules, "rules", 0, "keep at most N rules of each ClassBench file (0: all)")
	cmd.Flags().IntVar(&synthetic, "synthetic", 0, "also bench a synthetic table of N rules")
	cmd.Flags().BoolVar(&v6, "v6", true, "synthetic table mixes IPv4 and IPv6 rules")
	cmd.Flags().IntVar(&packets, "packets", 20000, "packets per table (half rule corners, half random)")
	cmd.Flags().IntVar(&sgs, "sgs", 1, "split the rules over N security groups")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "random seed")
	return cmd
}
