package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sgsim/sgsim/client"
	"github.com/sgsim/sgsim/model"
)

// eniFlags are the flags every `sgsim eni` command shares.
type eniFlags struct {
	endpoint, token string
}

func (f *eniFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.endpoint, "endpoint", "http://127.0.0.1:8080", "base URL of sgsim serve")
	cmd.Flags().StringVar(&f.token, "token", "", "admin token (default $SGSIM_ADMIN_TOKEN)")
}

func (f *eniFlags) client() *client.Native {
	return &client.Native{Endpoint: f.endpoint, Token: envOr(f.token, "SGSIM_ADMIN_TOKEN")}
}

func newENICmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "eni put|delete|get|list …",
		Short: "Create, replace, delete and list ENIs of a running `sgsim serve` at run time (SPEC §8)",
	}
	cmd.AddCommand(newENIPutCmd(), newENIDeleteCmd(), newENIGetCmd(), newENIListCmd())
	return cmd
}

func newENIPutCmd() *cobra.Command {
	var f eniFlags
	var e client.ENISpec
	var file string
	cmd := &cobra.Command{
		Use:   "put ID --app-id A --ip IP… [--sg SG…] [--host-interface IF] [--mac MAC] | put ID --file F",
		Short: "Create or replace an ENI; prints it as stored once it is in force (attached tells whether its interface is filtered)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file != "" {
				for _, fl := range []string{"app-id", "ip", "sg", "host-interface", "mac"} {
					if cmd.Flags().Changed(fl) {
						return fmt.Errorf("--file %s and --%s: the file gives the whole ENI; give one or the other", file, fl)
					}
				}
				data, err := readFileOrStdin(cmd, file)
				if err != nil {
					return err
				}
				if err := model.DecodeFile("--file "+file, data, &e); err != nil {
					return err
				}
				if e.NetworkInterfaceID != "" && e.NetworkInterfaceID != args[0] {
					return fmt.Errorf("--file %s: networkInterfaceId %q is not the %q given", file, e.NetworkInterfaceID, args[0])
				}
			}
			if e.NetworkInterfaceID == "" {
				e.NetworkInterfaceID = args[0]
			}
			if e.SgIDs == nil {
				e.SgIDs = []string{}
			}
			got, err := f.client().PutENI(cmd.Context(), e)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			return printJSON(cmd.OutOrStdout(), got)
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.StringVar(&e.AppID, "app-id", "", "owner account")
	fl.StringSliceVar(&e.PrivateIPAddresses, "ip", nil, "private IP address (repeatable)")
	fl.StringSliceVar(&e.SgIDs, "sg", nil, "security group, in priority order (repeatable)")
	fl.StringVar(&e.HostInterface, "host-interface", "", "the host's veth/tap carrying this ENI's traffic")
	fl.StringVar(&e.MacAddress, "mac", "", "MAC address")
	fl.StringVar(&file, "file", "", "read the ENI object (SPEC §7) from this JSON file, - for stdin")
	return cmd
}

func readFileOrStdin(cmd *cobra.Command, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("--file: %w", err)
	}
	return data, nil
}

// newENICallCmd is an eni subcommand making its calls with the client its shared flags configure.
func newENICallCmd(use, short string, args cobra.PositionalArgs, run func(cmd *cobra.Command, c *client.Native, args []string) error) *cobra.Command {
	var f eniFlags
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE:  func(cmd *cobra.Command, args []string) error { return run(cmd, f.client(), args) },
	}
	f.add(cmd)
	return cmd
}

func newENIDeleteCmd() *cobra.Command {
	return newENICallCmd("delete ID", "Delete an ENI: its tables are freed, its interface detached, its tracked flows forgotten",
		cobra.ExactArgs(1), func(cmd *cobra.Command, c *client.Native, args []string) error {
			if err := c.DeleteENI(cmd.Context(), args[0]); err != nil {
				return &exitError{code: 1, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", args[0])
			return nil
		})
}

func newENIGetCmd() *cobra.Command {
	return newENICallCmd("get ID", "Show an ENI as stored, with its state on this host",
		cobra.ExactArgs(1), func(cmd *cobra.Command, c *client.Native, args []string) error {
			e, err := c.GetENI(cmd.Context(), args[0])
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			return printJSON(cmd.OutOrStdout(), e)
		})
}

func newENIListCmd() *cobra.Command {
	var asJSON bool
	cmd := newENICallCmd("list [--json]", "List every ENI with its state on this host",
		cobra.NoArgs, func(cmd *cobra.Command, c *client.Native, _ []string) error {
			enis, err := c.ListENIs(cmd.Context())
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), enis)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ENI\tAPP\tIPS\tSGS\tINTERFACE\tATTACHED\tIFINDEX")
			for _, e := range enis {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%d\n", e.NetworkInterfaceID, e.AppID, strings.Join(e.PrivateIPAddresses, ","),
					strings.Join(e.SgIDs, ","), dash(e.HostInterface), attachedCell(e.Attached), e.Ifindex)
			}
			return tw.Flush()
		})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// attachedCell is the ATTACHED column: "-" where the answering node cannot tell (a fleet replica).
func attachedCell(a *bool) string {
	if a == nil {
		return "-"
	}
	return fmt.Sprint(*a)
}
