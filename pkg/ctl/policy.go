package ctl

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) policyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "policy",
		Short:   "Show the privacy policy in force",
		Example: `  dassetctl policy show`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the privacy policy the gateway runs with, as YAML",
		Long: `Print the privacy policy the gateway loaded (fields, purposes, the form of each
field in each sink, retention periods), as YAML; -o json wraps it in {"yaml": ...}.`,
		Example: `  dassetctl policy show
  dassetctl policy show > policy-in-force.yaml`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.GetPolicyResponse, error) {
				return c.GetPolicy(ctx, &gatewayv1.GetPolicyRequest{})
			}, func(w io.Writer, resp *gatewayv1.GetPolicyResponse) {
				y := resp.GetYaml()
				if !strings.HasSuffix(y, "\n") {
					y += "\n"
				}
				_, _ = io.WriteString(w, y)
			})
		}),
	})
	return cmd
}

func (a *app) retentionCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "retention",
		Short:   "Run the retention pruner",
		Example: `  dassetctl retention run`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "run",
		Short: "Prune expired rows and destroy expired pseudonym keys now",
		Long: `Run the retention pruner now instead of waiting for its schedule. Prints the
rows pruned per table and how many daily pseudonym keys were destroyed.`,
		Example: `  dassetctl retention run
  dassetctl retention run -o json`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.RunRetentionResponse, error) {
				return c.RunRetention(ctx, &gatewayv1.RunRetentionRequest{})
			}, func(w io.Writer, resp *gatewayv1.RunRetentionResponse) {
				if t := resp.GetRanAt(); t != nil {
					fmt.Fprintf(w, "Retention ran at %s.\n", t.AsTime().UTC().Format(time.RFC3339))
				}
				printCounts(w, "ROWS PRUNED", resp.GetPruned())
				fmt.Fprintf(w, "%d pseudonym key(s) destroyed.\n", resp.GetKeysDestroyed())
			})
		}),
	})
	return cmd
}
