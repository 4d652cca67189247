package ctl

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) fleetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "fleet",
		Short: "List the gateways sharing the registry, with their heartbeat age",
		Long: `List the gateways recorded in the registry (one on SQLite; every member of a
fleet on PostgreSQL): instance id (* marks the gateway that answered),
WireGuard public key (shortened; -o json has it in full), endpoint, when it
started and how long ago its last heartbeat was. A gateway records a
heartbeat every 10 seconds: an age well past that means it is down or cut
off from the database.`,
		Example: `  dassetctl fleet
  dassetctl fleet -o json`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			now := a.env.Now()
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.ListGatewaysResponse, error) {
				return c.ListGateways(ctx, &gatewayv1.ListGatewaysRequest{})
			}, func(w io.Writer, resp *gatewayv1.ListGatewaysResponse) {
				row(w, "INSTANCE", "PUBLIC KEY", "ENDPOINT", "STARTED", "HEARTBEAT")
				for _, g := range resp.GetGateways() {
					id := g.GetInstanceId()
					if g.GetSelf() {
						id += " *"
					}
					row(w, id, shortKey(g.GetPublicKey()), orNone(g.GetEndpoint()), ago(now, g.GetStartedAt()), ago(now, g.GetHeartbeatAt()))
				}
			})
		}),
	}
}
