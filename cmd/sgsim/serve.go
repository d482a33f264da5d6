package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/bpf"
	"github.com/sgsim/sgsim/control"
	"github.com/sgsim/sgsim/node"
)

// Values of --dataplane.
const (
	dataplaneGo   = node.DataplaneGo
	dataplaneEBPF = node.DataplaneEBPF
	dataplaneBoth = node.DataplaneBoth
)

// serveOptions is everything `sgsim serve` runs with; tests call runServe with their own.
type serveOptions struct {
	node.Config
	Listen string // host:port; port 0 picks a free one
	// AdminTokenFile holds admin tokens, one per line, beside the topology's adminTokens (SPEC §8).
	AdminTokenFile string
	// Ready, if set, is called with the bound address once the server accepts connections.
	Ready func(addr string)
}

const serveLong = `Run the control-plane daemon: Tencent and Huawei APIs, durable state, live tables.

--dataplane chooses where the tables go; every accepted API call is in force in each of them before its
answer is sent:
  go    the pure-Go engine only. It answers /sgsim/v1/check; nothing is enforced on any interface
        (simulation, today's behaviour, the default).
  ebpf  the eBPF TC program enforces each ENI's tables on its hostInterface (TC ingress = ENI egress,
        TC egress = ENI ingress). The daemon keeps no Go engine: /sgsim/v1/check and the table endpoint
        answer 409 (use both for them).
  both  the kernel enforces as with ebpf and the Go engine answers /sgsim/v1/check from the same tables.

With ebpf or both the daemon needs root (at least CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; CAP_SYS_ADMIN
to mount bpffs where it is not mounted, or for --host-netns) and a kernel with BTF; otherwise it stops
with an error. On start it loads the program (adopting the maps and
links pinned under --pin-path by an earlier run, so a restart leaves no unprotected moment), publishes
every ENI's tables and attaches to the hostInterface of every ENI whose interface exists, before the API
accepts a call. From then on it follows the kernel's link events (in --host-netns): an interface is
attached the moment it appears, re-attached when it is re-created or renamed to an ENI's hostInterface,
and forgotten when it goes; ENIs created through PUT /sgsim/v1/enis/{id} (or sgsim eni put) are attached
the same way. --guard GLOB (repeatable, e.g. 'tap*') gives every matching interface that no ENI claims a
drop-everything program the moment it appears, so nothing crosses a new VM's tap before its ENI is
known; the ENI's tables replace it in one map update. On shutdown (SIGINT/SIGTERM) the links stay pinned
and keep enforcing the last tables until the next start adopts them; to stop enforcing, delete the
interfaces or the pin directory's link-* files. With --pin-path "" nothing is pinned and enforcement ends
with the process.

--etcd URL[,URL…] makes the daemon one of any number of stateless API replicas of a fleet (SPEC §9): the
state lives in etcd (--data-dir is not used; --topology seeds an empty etcd and is ignored otherwise),
Nonces too (a call replayed to another replica is refused), and nothing is enforced here: each host runs
` + "`sgsim agent`" + `. Every change is one etcd transaction; its answer waits, up to --enforce-timeout, until
every affected host that is alive has acknowledged it, and carries "enforcement": {"revision", "hosts",
"pending", "down"}. GET /sgsim/v1/changes/{R} reports the same later, from any replica.`

func newServeCmd() *cobra.Command {
	var o serveOptions
	lim := control.DefaultLimits()
	o.Control.Limits = &lim
	cmd := &cobra.Command{
		Use:   "serve [--listen 127.0.0.1:8080] [--data-dir DIR | --etcd URL,…] [--topology FILE] [--dataplane go|ebpf|both]",
		Short: "Run the control-plane daemon: Tencent and Huawei APIs, durable state, live tables",
		Long:  serveLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8080", "address to listen on")
	f.StringVar(&o.DataDir, "data-dir", "./sgsim-data", "directory of the durable store")
	f.StringVar(&o.Topology, "topology", "", "topology file that seeds an empty store (SPEC §7)")
	f.StringVar(&o.Dataplane, "dataplane", dataplaneGo, "go (simulate), ebpf (enforce in the kernel) or both")
	f.StringVar(&o.PinPath, "pin-path", bpf.DefaultPinPath, "ebpf/both: bpffs directory for the pinned maps and links (\"\" = no pinning)")
	f.StringVar(&o.HostNetns, "host-netns", "", "ebpf/both: network namespace of the host interfaces (ip netns name or path; default: the daemon's)")
	f.StringVar(&o.AdminTokenFile, "admin-token-file", "", "file of admin tokens, one per line, for the admin and inspection endpoints (besides the topology's adminTokens)")
	f.StringArrayVar(&o.Guard, "guard", nil, "ebpf/both: drop everything on unclaimed interfaces whose name matches this pattern (path.Match, repeatable)")
	f.BoolVar(&o.Clsact, "clsact", false, "ebpf/both: attach as a clsact qdisc's cls_bpf filters (made through netlink; no RCU grace period per attachment, so an interface is filtered within milliseconds of appearing) instead of TCX links; kernels without TCX do this anyway")
	f.StringSliceVar(&o.Etcd, "etcd", nil, "fleet mode (SPEC §9): etcd endpoints URL[,URL…]; the node is a stateless API replica (no --data-dir, no dataplane) whose answers wait for the affected hosts' agents")
	f.StringVar(&o.EtcdPrefix, "etcd-prefix", node.DefaultEtcdPrefix, "fleet mode: the fleet's etcd key prefix")
	f.DurationVar(&o.EnforceTimeout, "enforce-timeout", node.DefaultEnforceTimeout, "fleet mode: how long an answer waits for the affected hosts to acknowledge (those still late are listed as pending)")
	f.IntVar(&lim.RulesPerDirection, "max-rules", lim.RulesPerDirection, "API limit: rules per direction per SG")
	f.IntVar(&lim.SGsPerENI, "max-sgs-per-eni", lim.SGsPerENI, "API limit: SGs per ENI")
	f.IntVar(&lim.SGsPerProject, "max-sgs-per-project", lim.SGsPerProject, "API limit: SGs per account and project")
	f.IntVar(&lim.ENIsPerSG, "max-enis-per-sg", lim.ENIsPerSG, "API limit: ENIs per SG")
	f.IntVar(&lim.SGRefRulesPerSG, "max-sg-ref-rules", lim.SGRefRulesPerSG, "API limit: sgId-referencing rules per SG")
	return cmd
}

// runServe runs the daemon until ctx is cancelled: `sgsim serve` and the end-to-end tests both come here.
func runServe(ctx context.Context, o serveOptions) (err error) {
	if lim := o.Control.Limits; lim != nil {
		for _, l := range []struct {
			flag string
			v    int
		}{{"--max-rules", lim.RulesPerDirection}, {"--max-sgs-per-eni", lim.SGsPerENI}, {"--max-sgs-per-project", lim.SGsPerProject},
			{"--max-enis-per-sg", lim.ENIsPerSG}, {"--max-sg-ref-rules", lim.SGRefRulesPerSG}} {
			if l.v < 1 {
				return fmt.Errorf("%s %d: must be at least 1", l.flag, l.v)
			}
		}
	}
	if o.AdminTokenFile != "" {
		tokens, err := readAdminTokens(o.AdminTokenFile)
		if err != nil {
			return err
		}
		o.API.AdminTokens = append(o.API.AdminTokens, tokens...)
	}
	// Bound before the node starts: a bad or busy --listen must fail before the store is seeded and
	// the program loaded, so a corrected start finds them as they were.
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.Listen, err)
	}
	n, err := node.New(ctx, o.Config)
	if err != nil {
		ln.Close()
		return err
	}
	defer func() { err = errors.Join(err, n.Close()) }()
	return n.ServeOn(ctx, ln, o.Ready)
}

// readAdminTokens reads an --admin-token-file: one token per line; blank lines and #-comments skipped.
func readAdminTokens(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--admin-token-file: %w", err)
	}
	var tokens []string
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("--admin-token-file %s:%d: a token may not contain spaces", path, i+1)
		}
		tokens = append(tokens, line)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("--admin-token-file %s: no token in it", path)
	}
	return tokens, nil
}
