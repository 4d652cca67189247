package ctl

import (
	"context"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) fleetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "fleet",
		Short: "List the gateways sharing the registry: heartbeat age, devices and sessions on each",
		Long: `List the gateways recorded in the registry (one on SQLite; every member of a
fleet on PostgreSQL): instance id (* marks the gateway that answered),
WireGuard public key (shortened; -o json has it in full), endpoint, when it
started, how long ago its last heartbeat was, the devices homed on it (the
admitted devices that last logged in to it, which it keeps as WireGuard
peers) and the open sessions of those devices (which it serves). A gateway
records a heartbeat every 10 seconds: an age well past that means it is down
or cut off from the database, and its devices move to the others as they
log in again. A gateway that holds devices but never recorded a heartbeat
in this registry is listed with its counts only.`,
		Example: `  dassetctl fleet
  dassetctl fleet -o json`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			now := a.env.Now()
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.ListGatewaysResponse, error) {
				return c.ListGateways(ctx, &gatewayv1.ListGatewaysRequest{})
			}, func(w io.Writer, resp *gatewayv1.ListGatewaysResponse) {
				row(w, "INSTANCE", "PUBLIC KEY", "ENDPOINT", "STARTED", "HEARTBEAT", "DEVICES", "SESSIONS")
				for _, g := range resp.GetGateways() {
					id := g.GetInstanceId()
					if g.GetSelf() {
						id += " *"
					}
					row(w, id, shortKey(g.GetPublicKey()), orNone(g.GetEndpoint()), ago(now, g.GetStartedAt()), ago(now, g.GetHeartbeatAt()),
						strconv.FormatInt(g.GetDevices(), 10), strconv.FormatInt(g.GetSessions(), 10))
				}
			})
		}),
	}
}
