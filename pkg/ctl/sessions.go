package ctl

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) sessionsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sessions",
		Short: "List and close remote-control sessions",
		Example: `  dassetctl sessions list
  dassetctl sessions close 7f3c9a2e`,
	}
	cmd.AddCommand(a.sessionsListCommand(), a.sessionsCloseCommand())
	return cmd
}

func (a *app) sessionsListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List open sessions",
		Long: `List open remote-control sessions: id, device (masked serial number), account,
the client's and the device's virtual addresses, when it opened and when it expires.`,
		Example: `  dassetctl sessions list
  dassetctl sessions list -o json`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			now := a.env.Now()
			return listPages(a, cmd, pager[*gatewayv1.SessionInfo]{
				field:  "sessions",
				header: []string{"ID", "DEVICE", "ACCOUNT", "CLIENT ADDRESSES", "DEVICE ADDRESSES", "OPENED", "EXPIRES"},
				fetch: func(ctx context.Context, c gatewayv1.AdminServiceClient, token string) ([]*gatewayv1.SessionInfo, string, error) {
					resp, err := c.ListSessions(ctx, &gatewayv1.ListSessionsRequest{PageSize: listPageSize, PageToken: token})
					return resp.GetSessions(), resp.GetNextPageToken(), err
				},
				row: func(w io.Writer, s *gatewayv1.SessionInfo) {
					row(w, s.GetSessionId(), orNone(s.GetSerialNumber()), orNone(s.GetAccount()),
						joinOrNone(s.GetClientAddresses()), joinOrNone(s.GetDeviceAddresses()),
						ago(now, s.GetOpenedAt()), until(now, s.GetExpiresAt()))
				},
			})
		}),
	}
}

func (a *app) sessionsCloseCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "close ID",
		Short:   "Close a session: the client is removed from the tunnel",
		Example: `  dassetctl sessions close 7f3c9a2e`,
		Args:    exactArgs("ID"),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if args[0] == "" {
				return usagef("session_id: must not be empty")
			}
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.AdminCloseSessionResponse, error) {
				return c.CloseSession(ctx, &gatewayv1.AdminCloseSessionRequest{SessionId: args[0]})
			}, func(w io.Writer, resp *gatewayv1.AdminCloseSessionResponse) {
				fmt.Fprintf(w, "Closed session %s.\n", args[0])
			})
		}),
	}
}
