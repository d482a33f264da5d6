package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/scenario"
)

func init() { extraCommands = append(extraCommands, newDiffCmd) }

func newDiffCmd() *cobra.Command {
	var topo string
	var pcaps, applies []string
	var stateless bool
	cmd := &cobra.Command{
		Use:   "diff --topology F --pcap P --apply CALL...",
		Short: "What-if: replay a capture before and after API calls and list every flow whose verdict changes",
		Long: `CALL is tencent:Action?name=value&… (signed with the topology's first account) or
huawei:SGID:add|remove:PORT[,PORT…]. Calls go through the daemon's API code path in-process.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(applies) == 0 {
				return fmt.Errorf("give at least one --apply CALL")
			}
			calls := make([]scenario.Step, len(applies))
			for i, a := range applies {
				c, err := scenario.ParseCall(a)
				if err != nil {
					return fmt.Errorf("--apply: %w", err)
				}
				calls[i] = c
			}
			changes, err := scenario.Diff(cmd.Context(), topo, pcaps, calls, stateless, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("diff: %w", err)
			}
			scenario.WriteDiff(cmd.OutOrStdout(), changes)
			return nil
		},
	}
	cmd.Flags().StringVar(&topo, "topology", "", "topology file (JSON, SPEC §7)")
	cmd.Flags().StringSliceVar(&pcaps, "pcap", nil, "capture file(s)")
	cmd.Flags().StringArrayVar(&applies, "apply", nil, "API call to apply (repeatable, applied in order)")
	cmd.Flags().BoolVar(&stateless, "stateless", false, "no connection tracking")
	_ = cmd.MarkFlagRequired("topology")
	_ = cmd.MarkFlagRequired("pcap")
	return cmd
}
