package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

func newCheckCmd() *cobra.Command {
	var eni, dir, proto, remote string
	var port int
	var asJSON bool
	cmd := newTopologyCmd("check --topology F --eni ID --direction ingress|egress --protocol P --remote IP [--port N]",
		"Explain the verdict for one packet (exit 0 whatever the verdict)",
		func(cmd *cobra.Command, st *model.State, topo string) error {
			d, err := model.ParseDirection(dir)
			if err != nil {
				return err
			}
			pkt, err := parseCheckPacket(proto, remote, port, cmd.Flags().Changed("port"))
			if err != nil {
				return err
			}
			tables, err := compiler.New(st).Compile(eni)
			if errors.Is(err, compiler.ErrNoENI) {
				return fmt.Errorf("--eni %q: no such network interface in %s", eni, topo)
			}
			if err != nil {
				return fmt.Errorf("--eni %q: %w", eni, err)
			}
			t := tables.Get(d)
			v := dataplane.VerdictOf(t, dataplane.NewLinearTable(t).Lookup(&pkt))
			if asJSON {
				return writeCheckJSON(cmd.OutOrStdout(), eni, d, v, t)
			}
			writeCheckText(cmd.OutOrStdout(), eni, d, &pkt, v, t)
			return nil
		})
	f := cmd.Flags()
	f.StringVar(&eni, "eni", "", "network interface ID")
	f.StringVar(&dir, "direction", "", "ingress or egress")
	f.StringVar(&proto, "protocol", "", "tcp, udp, icmp, icmpv6 or an IP protocol number")
	f.StringVar(&remote, "remote", "", "remote address (source for ingress, destination for egress)")
	f.IntVar(&port, "port", 0, "destination port (tcp/udp only)")
	f.BoolVar(&asJSON, "json", false, "print the verdict as JSON")
	for _, name := range []string{"eni", "direction", "protocol", "remote"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// parseCheckPacket turns the check flags into a Packet; errors name the flag.
func parseCheckPacket(proto, remote string, port int, hasPort bool) (dataplane.Packet, error) {
	var portp *int
	if hasPort {
		portp = &port
	}
	p, err := dataplane.NewPacket(proto, remote, portp)
	if err != nil {
		return p, fmt.Errorf("--%w", err)
	}
	return p, nil
}

func writeCheckJSON(w io.Writer, eni string, d model.Direction, v dataplane.Verdict, t *compiler.Table) error {
	out := v.Explain(eni, d, t)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeCheckText(w io.Writer, eni string, d model.Direction, p *dataplane.Packet, v dataplane.Verdict, t *compiler.Table) {
	fmt.Fprintf(w, "%-6s %s %s %s\n", v.Action, eni, d, describePacket(p))
	switch v.Reason {
	case dataplane.ReasonRule:
		fmt.Fprintf(w, "  decided by %s %s[%d]: %s\n", v.SgID, d, v.RuleIndex, t.Entries[v.Entry].Rule)
	case dataplane.ReasonNoSG:
		fmt.Fprintf(w, "  no-sg: %s has no security groups, so it drops everything\n", eni)
	default:
		fmt.Fprintf(w, "  default-drop: no rule of %s matched (%d rules checked)\n", eni, len(t.Entries)-1)
	}
}

func describePacket(p *dataplane.Packet) string {
	s := model.IPProtocolName(p.Proto) + " remote " + p.Remote.String()
	if p.HasPort {
		s += " port " + strconv.Itoa(int(p.Port))
	}
	return s
}
