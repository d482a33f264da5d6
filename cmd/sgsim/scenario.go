package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/replay"
)

func init() { extraCommands = append(extraCommands, newScenarioCmd) }

func newScenarioCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "scenario FILE...",
		Short: "Run end-to-end scenarios (YAML/JSON): a topology, API calls in either dialect, packets and assertions",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			out := cmd.OutOrStdout()
			var failed []string
			for _, f := range files {
				fails, err := replay.RunScenario(cmd.Context(), f, out)
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
}
