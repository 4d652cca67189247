package ctl

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "audit",
		Short:   "Check the admin audit log",
		Example: `  dassetctl audit verify`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "verify",
		Short: "Verify the audit log's hash chain against the head kept in the keystore",
		Long: `Verify that every entry of the audit log follows the one before it and that the
log ends at the head hash the gateway keeps in its keystore, so an altered entry, a
truncated log or an older restored copy is detected. Exits 1 when it does not verify.`,
		Example: `  dassetctl audit verify`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			ctx, client, conn, cancel, err := a.newClient(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer conn.Close()
			resp, err := client.VerifyAudit(ctx, &gatewayv1.VerifyAuditRequest{})
			if err != nil {
				return err
			}
			if err := a.print(cmd, resp, func(w io.Writer) {
				if resp.GetOk() {
					fmt.Fprintf(w, "audit log verifies: %d entries\n", resp.GetEntries())
				} else {
					fmt.Fprintf(w, "audit log does NOT verify: %s\n", resp.GetProblem())
				}
			}); err != nil {
				return err
			}
			if !resp.GetOk() {
				return errors.New("audit log does not verify")
			}
			return nil
		}),
	})
	return cmd
}
