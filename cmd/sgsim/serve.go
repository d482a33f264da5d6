package main

import (
	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/api"
	"github.com/sgsim/sgsim/control"
)

func init() { extraCommands = append(extraCommands, newServeCmd) }

func newServeCmd() *cobra.Command {
	var cfg api.ServeConfig
	lim := control.DefaultLimits()
	cfg.Control.Limits = &lim
	cmd := &cobra.Command{
		Use:   "serve [--listen 127.0.0.1:8080] [--data-dir DIR] [--topology FILE]",
		Short: "Run the control-plane daemon: Tencent and Huawei APIs, durable state, live tables",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return api.Serve(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "address to listen on")
	f.StringVar(&cfg.DataDir, "data-dir", "./sgsim-data", "directory of the durable store")
	f.StringVar(&cfg.Topology, "topology", "", "topology file that seeds an empty store (SPEC §7)")
	f.IntVar(&lim.RulesPerDirection, "max-rules", lim.RulesPerDirection, "API limit: rules per direction per SG")
	f.IntVar(&lim.SGsPerENI, "max-sgs-per-eni", lim.SGsPerENI, "API limit: SGs per ENI")
	f.IntVar(&lim.SGsPerProject, "max-sgs-per-project", lim.SGsPerProject, "API limit: SGs per account and project")
	f.IntVar(&lim.ENIsPerSG, "max-enis-per-sg", lim.ENIsPerSG, "API limit: ENIs per SG")
	f.IntVar(&lim.SGRefRulesPerSG, "max-sg-ref-rules", lim.SGRefRulesPerSG, "API limit: sgId-referencing rules per SG")
	return cmd
}
