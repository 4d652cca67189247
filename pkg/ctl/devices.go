package ctl

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func (a *app) devicesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List, revoke and re-key enrolled devices",
		Example: `  dassetctl devices list
  dassetctl devices list --reveal --reason "ticket 4711: customer asks which box is theirs"
  dassetctl devices revoke DS-000123
  dassetctl devices reset-key DS-000123`,
	}
	cmd.AddCommand(a.devicesListCommand(), a.devicesRevokeCommand(), a.devicesResetKeyCommand())
	return cmd
}

func (a *app) devicesListCommand() *cobra.Command {
	var reveal bool
	var reason string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List enrolled devices",
		Long: `List enrolled devices: serial number, virtual addresses, whether a WireGuard
key is pinned, the day of the last login, and state (online, offline, revoked).

Serial numbers are masked (****34). --reveal shows them in full; it needs the
privacy role on the gateway and a --reason, which goes to the audit log.`,
		Example: `  dassetctl devices list
  dassetctl devices list -o json
  dassetctl devices list --reveal --reason "ticket 4711"`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if reveal && reason == "" {
				return usagef("--reveal needs --reason (it is written to the audit log)")
			}
			if reason != "" && !reveal {
				return usagef("--reason is only for --reveal")
			}
			return listPages(a, cmd, pager[*gatewayv1.Device]{
				field:  "devices",
				header: []string{"SERIAL", "ADDRESSES", "KEY", "LAST LOGIN", "STATE"},
				fetch: func(ctx context.Context, c gatewayv1.AdminServiceClient, token string) ([]*gatewayv1.Device, string, error) {
					resp, err := c.ListDevices(ctx, &gatewayv1.ListDevicesRequest{Reveal: reveal, Reason: reason, PageSize: listPageSize, PageToken: token})
					return resp.GetDevices(), resp.GetNextPageToken(), err
				},
				row: func(w io.Writer, d *gatewayv1.Device) {
					key := none
					if d.GetKeyPinned() {
						key = "pinned"
					}
					lastLogin := d.GetLastLoginDay()
					if lastLogin == "" {
						lastLogin = "never"
					}
					row(w, d.GetSerialNumber(), joinOrNone(d.GetAddresses()), key, lastLogin, deviceState(d))
				},
			})
		}),
	}
	cmd.Flags().BoolVar(&reveal, "reveal", false, "show full serial numbers (privacy role; needs --reason)")
	cmd.Flags().StringVar(&reason, "reason", "", "why the serial numbers are revealed (audit log)")
	return cmd
}

func deviceState(d *gatewayv1.Device) string {
	switch {
	case d.GetRevoked():
		return "revoked"
	case d.GetOnline():
		return "online"
	default:
		return "offline"
	}
}

func (a *app) devicesRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "revoke SN",
		Short:   "Revoke a device: it is disconnected and can no longer log in",
		Example: `  dassetctl devices revoke DS-000123`,
		Args:    exactArgs("SN"),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			sn, err := privacy.ParseSerialNumber(args[0])
			if err != nil {
				return &usageError{err: err}
			}
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.RevokeDeviceResponse, error) {
				return c.RevokeDevice(ctx, &gatewayv1.RevokeDeviceRequest{SerialNumber: sn.Reveal()})
			}, func(w io.Writer, resp *gatewayv1.RevokeDeviceResponse) {
				fmt.Fprintf(w, "Revoked device %s.\n", sn.Masked())
			})
		}),
	}
}

func (a *app) devicesResetKeyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "reset-key SN",
		Short: "Forget a device's pinned WireGuard key (after a board swap or reinstall)",
		Long: `Forget the WireGuard public key pinned to a device. Its next login pins the
key it presents. Use it when a device was reinstalled or its storage replaced.`,
		Example: `  dassetctl devices reset-key DS-000123`,
		Args:    exactArgs("SN"),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			sn, err := privacy.ParseSerialNumber(args[0])
			if err != nil {
				return &usageError{err: err}
			}
			return call(a, cmd, func(ctx context.Context, c gatewayv1.AdminServiceClient) (*gatewayv1.ResetDeviceKeyResponse, error) {
				return c.ResetDeviceKey(ctx, &gatewayv1.ResetDeviceKeyRequest{SerialNumber: sn.Reveal()})
			}, func(w io.Writer, resp *gatewayv1.ResetDeviceKeyResponse) {
				fmt.Fprintf(w, "Reset the pinned key of device %s; its next login pins a new one.\n", sn.Masked())
			})
		}),
	}
}
