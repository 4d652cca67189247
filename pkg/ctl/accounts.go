package ctl

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) accountsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "accounts",
		Short: "Create and delete end-user accounts",
		Example: `  dassetctl accounts create alice
  printf '%s' "$PW" | dassetctl accounts create alice --password-stdin
  dassetctl accounts delete alice`,
	}
	cmd.AddCommand(a.accountsCreateCommand(), a.accountsDeleteCommand())
	return cmd
}

func (a *app) accountsCreateCommand() *cobra.Command {
	var fromStdin bool
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an account",
		Long: `Create an end-user account. The password is asked twice on the terminal
(not echoed), or read from standard input with --password-stdin (one trailing
newline is dropped). It is never taken as an argument, so it stays out of the
shell history and the process list.`,
		Example: `  dassetctl accounts create alice
  dassetctl accounts create alice --password-stdin < alice.pw`,
		Args: exactArgs("NAME"),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if name == "" {
				return usagef("name: must not be empty")
			}
			var password string
			var err error
			if fromStdin {
				password, err = readPasswordStdin(cmd)
			} else {
				password, err = readNewPassword(cmd)
			}
			if err != nil {
				return err
			}

			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.CreateAccountResponse, error) {
				return c.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: name, Password: password})
			}, func(w io.Writer, resp *gatewayv1.CreateAccountResponse) {
				fmt.Fprintf(w, "Created account %s (id %s).\n", name, resp.GetAccountId())
			})
		}),
	}
	cmd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from standard input")
	return cmd
}

func (a *app) accountsDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete an account and everything stored about it",
		Long: `Delete an account (the user cancelled it): its bindings, sessions and stored
rows are removed. Prints the receipt: the rows removed per table.`,
		Example: `  dassetctl accounts delete alice
  dassetctl accounts delete alice -o json > receipt.json`,
		Args: exactArgs("NAME"),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.DeleteAccountResponse, error) {
				return c.DeleteAccount(ctx, &gatewayv1.DeleteAccountRequest{Name: args[0]})
			}, func(w io.Writer, resp *gatewayv1.DeleteAccountResponse) {
				fmt.Fprintf(w, "Deleted account %s.\n", args[0])
				printCounts(w, "ROWS REMOVED", resp.GetRemoved())
			})
		}),
	}
}
