package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/node"
)

// agentOptions is everything `sgsim agent` runs with; tests call runAgent with their own.
type agentOptions struct {
	node.AgentConfig
	AdminTokenFile string
}

const agentLong = `Run one host's agent of a fleet (SPEC §9): the state lives in etcd, written by any number of
` + "`sgsim serve --etcd`" + ` replicas. The agent registers --host under a lease (TTL 5 s), follows only what its
ENIs' tables need (the ENIs whose host is --host, their SGs, the SGs their sgId rules name and those SGs'
members' addresses), compiles and enforces them as serve does, and acknowledges the etcd revision it has
in force; a replica's answer waits for those acknowledgements. After a restart, a lost etcd or a
compacted watch it re-reads its share at one revision, enforces it, and only then acknowledges; pinned
tables stay in force meanwhile.

--dataplane go (default) simulates and answers POST /sgsim/v1/check; ebpf enforces each local ENI's
tables on its hostInterface with the TC program (root; --guard, --pin-path, --host-netns, --clsact as for
serve). --listen serves this host's /healthz, /livez, /readyz, /metrics, POST /sgsim/v1/check and the
read-only GET /sgsim/v1/enis[/{id}] and /sgsim/v1/enis/{id}/table (admin tokens from --admin-token-file).`

func newAgentCmd() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent --etcd URL[,URL…] --host NAME [--dataplane ebpf|go] [--guard GLOB]… [--listen ADDR]",
		Short: "Run one host's fleet agent: enforce this host's share of the state in etcd",
		Long:  agentLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Etcd, "etcd", nil, "etcd endpoints URL[,URL…] (required)")
	f.StringVar(&o.EtcdPrefix, "etcd-prefix", node.DefaultEtcdPrefix, "the fleet's etcd key prefix")
	f.StringVar(&o.Host, "host", "", "this host's name, as the ENIs' host field says it (required)")
	f.StringVar(&o.Dataplane, "dataplane", dataplaneGo, "go (simulate) or ebpf (enforce in the kernel)")
	f.StringArrayVar(&o.Guard, "guard", nil, "ebpf: drop everything on unclaimed interfaces whose name matches this pattern (path.Match, repeatable)")
	f.StringVar(&o.PinPath, "pin-path", bpf.DefaultPinPath, "ebpf: bpffs directory for the pinned maps and links (\"\" = no pinning)")
	f.StringVar(&o.HostNetns, "host-netns", "", "ebpf: network namespace of the host interfaces (ip netns name or path; default: the agent's)")
	f.BoolVar(&o.Clsact, "clsact", false, "ebpf: attach as a clsact qdisc's cls_bpf filters instead of TCX links")
	f.StringVar(&o.Listen, "listen", "", "serve this host's read-only endpoints on this address (none when empty)")
	f.StringVar(&o.AdminTokenFile, "admin-token-file", "", "file of admin tokens, one per line, for the inspection endpoints of --listen")
	_ = cmd.MarkFlagRequired("etcd")
	_ = cmd.MarkFlagRequired("host")
	return cmd
}

// runAgent runs the agent until ctx is cancelled: `sgsim agent` and its tests both come here.
func runAgent(ctx context.Context, o agentOptions) error {
	if o.AdminTokenFile != "" {
		tokens, err := readAdminTokens(o.AdminTokenFile)
		if err != nil {
			return err
		}
		o.API.AdminTokens = append(o.API.AdminTokens, tokens...)
	}
	return node.RunAgent(ctx, o.AgentConfig)
}
