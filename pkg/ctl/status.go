package ctl

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// Summary is what dassetctl status prints.
type Summary struct {
	DevicesEnrolled int64  `json:"devices_enrolled"`
	DevicesOnline   int64  `json:"devices_online"`
	DevicesRevoked  int64  `json:"devices_revoked"`
	SessionsOpen    int64  `json:"sessions_open"`
	Peers           int64  `json:"peers"`
	PeersRecent     int64  `json:"peers_handshake_last_3m"`
	RxBytes         uint64 `json:"rx_bytes"`
	TxBytes         uint64 `json:"tx_bytes"`
}

func (a *app) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "One-screen summary of the gateway",
		Long: `Summarize the gateway on one screen: devices enrolled, online and revoked;
sessions open; WireGuard peers and how many handshook in the last 3 minutes;
total bytes received and sent.`,
		Example: `  dassetctl status
  dassetctl status -o json`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			ctx, client, conn, cancel, err := a.newClient(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer conn.Close()

			// The gateway counts: nothing is listed, whatever the fleet's size.
			r, err := client.GetSummary(ctx, &gatewayv1.GetSummaryRequest{})
			if err != nil {
				return err
			}
			s := Summary{
				DevicesEnrolled: r.GetDevicesEnrolled(), DevicesOnline: r.GetDevicesOnline(), DevicesRevoked: r.GetDevicesRevoked(),
				SessionsOpen: r.GetSessionsOpen(), Peers: r.GetPeers(), PeersRecent: r.GetPeersRecent(),
				RxBytes: r.GetRxBytes(), TxBytes: r.GetTxBytes(),
			}
			return a.printPlain(cmd, s, func(w io.Writer) {
				row(w, "Devices:", fmt.Sprintf("%d enrolled, %d online, %d revoked", s.DevicesEnrolled, s.DevicesOnline, s.DevicesRevoked))
				row(w, "Sessions:", fmt.Sprintf("%d open", s.SessionsOpen))
				row(w, "Peers:", fmt.Sprintf("%d, %d handshook in the last 3m", s.Peers, s.PeersRecent))
				row(w, "Traffic:", fmt.Sprintf("rx %s, tx %s", bytesHuman(s.RxBytes), bytesHuman(s.TxBytes)))
			})
		}),
	}
}
