// Command sgsim is the security-group dataplane and simulator: one binary, one subcommand per job.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sgsim:", err)
		os.Exit(exitCode(err))
	}
}

// exitError lets a subcommand choose its exit status (replay --expect exits 1 on a failed expectation).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.code
	}
	return 2
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "sgsim",
		Short:         "Security-group dataplane and simulator",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newCheckCmd(), newCompileCmd(), newAgentCmd(), newBenchCmd(), newCallCmd(), newDiffCmd(), newENICmd(),
		newFlowsCmd(), newReplayCmd(), newScenarioCmd(), newServeCmd())
	return root
}
