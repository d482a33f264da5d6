package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/model"
)

func newCompileCmd() *cobra.Command {
	var eni string
	var asJSON bool
	cmd := newTopologyCmd("compile --topology F [--eni ID] [--json]", "Print each ENI's flattened first-match tables with provenance",
		func(cmd *cobra.Command, st *model.State, topo string) error {
			ids := st.ENIIDs()
			if eni != "" {
				if _, ok := st.ENI(eni); !ok {
					return fmt.Errorf("--eni %q: no such network interface in %s", eni, topo)
				}
				ids = []string{eni}
			}
			c := compiler.New(st)
			var all []*compiler.Tables
			for _, id := range ids {
				t, err := c.Compile(id)
				if err != nil {
					return err
				}
				all = append(all, t)
			}
			if asJSON {
				return writeTablesJSON(cmd.OutOrStdout(), st, all)
			}
			for _, t := range all {
				writeTablesText(cmd.OutOrStdout(), st, t)
			}
			return nil
		})
	cmd.Flags().StringVar(&eni, "eni", "", "only this network interface")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// newTopologyCmd is a command on a topology file (--topology, required) that takes no arguments; run
// gets the loaded state and the file's name.
func newTopologyCmd(use, short string, run func(cmd *cobra.Command, st *model.State, topo string) error) *cobra.Command {
	var topo string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := model.LoadTopologyFile(topo)
			if err != nil {
				return err
			}
			return run(cmd, st, topo)
		},
	}
	cmd.Flags().StringVar(&topo, "topology", "", "topology file (JSON, SPEC §7)")
	_ = cmd.MarkFlagRequired("topology")
	return cmd
}

// EntryJSON is one flattened-table row as the CLI and the daemon's table endpoint show it.
type EntryJSON struct {
	Index     int            `json:"index"`
	SgID      string         `json:"sgId,omitempty"`
	RuleIndex *int           `json:"ruleIndex,omitempty"`
	Action    model.Action   `json:"action"`
	Protocol  model.Protocol `json:"protocol"`
	Remotes   []string       `json:"remotes"`
	Ports     string         `json:"ports"`
	Rule      *model.Rule    `json:"rule,omitempty"`
	Implicit  bool           `json:"implicit,omitempty"`
}

type tablesJSON struct {
	ENI     string      `json:"eni"`
	SgIDs   []string    `json:"sgIds"`
	Ingress []EntryJSON `json:"ingress"`
	Egress  []EntryJSON `json:"egress"`
}

func entriesJSON(t *compiler.Table) []EntryJSON {
	out := make([]EntryJSON, len(t.Entries))
	for i := range t.Entries {
		e := &t.Entries[i]
		j := EntryJSON{Index: i, Action: e.Action, Protocol: e.Protocol, Ports: e.Ports.String(), Remotes: remoteStrings(e)}
		if e.Implicit() {
			j.Implicit = true
		} else {
			idx := e.RuleIndex
			r := e.Rule.Rule()
			j.SgID, j.RuleIndex, j.Rule = e.SgID, &idx, &r
		}
		out[i] = j
	}
	return out
}

func remoteStrings(e *compiler.Entry) []string {
	if e.AnyRemote {
		return []string{"any"}
	}
	out := make([]string, len(e.Remotes))
	for i, p := range e.Remotes {
		out[i] = p.String()
	}
	return out
}

func writeTablesJSON(w io.Writer, st *model.State, all []*compiler.Tables) error {
	out := make([]tablesJSON, len(all))
	for i, t := range all {
		eni, _ := st.ENI(t.ENI)
		out[i] = tablesJSON{ENI: t.ENI, SgIDs: eni.SgIDs, Ingress: entriesJSON(t.Ingress), Egress: entriesJSON(t.Egress)}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeTablesText(w io.Writer, st *model.State, t *compiler.Tables) {
	eni, _ := st.ENI(t.ENI)
	sgs := strings.Join(eni.SgIDs, ", ")
	if sgs == "" {
		sgs = "none: drops everything"
	}
	fmt.Fprintf(w, "%s  ips %s  sgs [%s]\n", t.ENI, strings.Join(eni.PrivateIPAddresses, ","), sgs)
	for _, tab := range []*compiler.Table{t.Ingress, t.Egress} {
		fmt.Fprintf(w, "  %s:\n", tab.Direction)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "    #\tSG\tRULE\tACTION\tPROTO\tREMOTE\tPORTS\tDESC")
		for i := range tab.Entries {
			e := &tab.Entries[i]
			sg, rule := e.SgID, strconv.Itoa(e.RuleIndex)
			if e.Implicit() {
				sg, rule = "-", "-"
			}
			remote := strings.Join(remoteStrings(e), ",")
			if e.Rule.RemoteSG != "" {
				remote = "sg:" + e.Rule.RemoteSG + " = {" + remote + "}"
			}
			fmt.Fprintf(tw, "    %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i, sg, rule, e.Action, e.Protocol, remote, e.Ports, e.Rule.Desc)
		}
		tw.Flush()
	}
}
