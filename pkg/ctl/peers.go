package ctl

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) peersCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "peers",
		Short: "List the gateway's WireGuard peers",
		Long: `List the WireGuard peers of the gateway's interface: public key (shortened;
-o json has it in full), kind (device or client), allowed IPs, time since the
last handshake, and bytes received and sent.`,
		Example: `  dassetctl peers
  dassetctl peers -o json`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			now := a.env.Now()
			return listPages(a, cmd, pager[*gatewayv1.Peer]{
				field:  "peers",
				header: []string{"PUBLIC KEY", "KIND", "ALLOWED IPS", "LAST HANDSHAKE", "RX", "TX"},
				fetch: func(ctx context.Context, c gatewayv1.AdminServiceClient, token string) ([]*gatewayv1.Peer, string, error) {
					resp, err := c.ListPeers(ctx, &gatewayv1.ListPeersRequest{PageSize: listPageSize, PageToken: token})
					return resp.GetPeers(), resp.GetNextPageToken(), err
				},
				row: func(w io.Writer, p *gatewayv1.Peer) {
					row(w, shortKey(p.GetPublicKey()), orNone(p.GetKind()), joinOrNone(p.GetAllowedIps()),
						ago(now, p.GetLastHandshake()), bytesHuman(p.GetRxBytes()), bytesHuman(p.GetTxBytes()))
				},
			})
		}),
	}
}
