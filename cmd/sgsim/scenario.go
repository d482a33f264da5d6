package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/scenario"
)

func init() { extraCommands = append(extraCommands, newScenarioCmd) }

func newScenarioCmd() *cobra.Command {
	var opts scenario.Options
	cmd := &cobra.Command{
		Use:   "scenario [--engine go|ebpf|both] FILE...",
		Short: "Run end-to-end scenarios (YAML/JSON): a topology, API calls in either dialect, packets and assertions",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			out := cmd.OutOrStdout()
			var failed []string
			for _, f := range files {
				fails, err := scenario.Run(cmd.Context(), f, out, opts)
				if err != nil {
					return fmt.Errorf("scenario: %w", err)
				}
				if len(fails) > 0 {
					failed = append(failed, fmt.Sprintf("%s: %d assertion(s) failed", f, len(fails)))
				} else {
					fmt.Fprintf(out, "%s: ok\n", f)
				}
			}
			if len(failed) > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%s", strings.Join(failed, "; "))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&opts.Engine, "engine", "go", "what decides: go (the Go classifier), ebpf (the eBPF program through "+
		"BPF_PROG_TEST_RUN; root and a BPF-capable kernel) or both (go's verdicts are asserted, every check also runs through "+
		"ebpf and a disagreement is a failed assertion)")
	return cmd
}
