package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/bpf"
)

func newFlowsCmd() *cobra.Command {
	var (
		pinPath string
		asJSON  bool
		count   int
	)
	cmd := &cobra.Command{
		Use:   "flows [--pin-path /sys/fs/bpf/sgsim] [--json] [--count N]",
		Short: "Print, live, the packets the eBPF dataplane drops and which rule dropped them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if count < 0 {
				return fmt.Errorf("--count %d: must be 0 (no limit) or more", count)
			}
			rd, err := bpf.OpenDropReader(pinPath)
			if err != nil {
				return fmt.Errorf("flows: %w", err)
			}
			defer rd.Close()
			enc := json.NewEncoder(cmd.OutOrStdout())
			for n := 0; count == 0 || n < count; n++ {
				ev, err := rd.Read(cmd.Context())
				if err != nil {
					if errors.Is(err, cmd.Context().Err()) {
						return nil // interrupted: a normal end
					}
					return fmt.Errorf("flows: %w", err)
				}
				if asJSON {
					if err := enc.Encode(ev); err != nil {
						return fmt.Errorf("flows: write: %w", err)
					}
					continue
				}
				if _, err := fmt.Fprintln(cmd.OutOrStdout(), ev); err != nil {
					return fmt.Errorf("flows: write: %w", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pinPath, "pin-path", bpf.DefaultPinPath, "bpffs directory where the dataplane pins its maps")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per drop")
	cmd.Flags().IntVar(&count, "count", 0, "stop after N drops (0: until interrupted)")
	return cmd
}
