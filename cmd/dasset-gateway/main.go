// Command dasset-gateway is the DASSET gateway daemon: it admits DASSET
// devices and client apps to a WireGuard virtual network.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	"github.com/planetxlabs/dasset-gateway/tunnel/link"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "dasset-gateway:", err)
		var ce *configError
		if errors.As(err, &ce) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "dasset-gateway",
		Short:         "Admit DASSET devices and client apps to a WireGuard virtual network",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServe(), newCheckConfig(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), daemon.Version) },
	})
	return root
}

func loadConfig(cmd *cobra.Command) (config.Config, error) {
	path, _ := cmd.Flags().GetString("config")
	cfg, err := config.Load(path, cmd.Flags())
	if err != nil {
		return cfg, &configError{err}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, &configError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	// The checks serve makes before it touches anything (privacy policy vs
	// retention), shared so that check-config accepts exactly what serve does.
	if err := daemon.CheckConfig(cfg); err != nil {
		return cfg, &configError{err}
	}
	return cfg, nil
}

func newServe() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway",
		Long: `Run the gateway: WireGuard on a TUN interface (or userspace netstack with
tunnel.mode: netstack), DeviceService and ClientService over TLS on grpc.listen,
AdminService on admin.socket, metrics and health on metrics.listen.

Configuration comes from --config (YAML), DASSET_* environment variables
(tunnel.mode ↔ DASSET_TUNNEL_MODE) and flags; flags win over the environment,
the environment over the file. configs/gateway.yaml documents every key.`,
		Example: "  dasset-gateway serve --config configs/gateway.yaml\n  DASSET_TUNNEL_MODE=netstack dasset-gateway serve --config configs/gateway.yaml",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			d, err := daemon.New(ctx, cfg, daemon.Options{})
			if err != nil {
				if errors.Is(err, link.ErrPermission) {
					return fmt.Errorf("cannot create the TUN interface %q: needs root or CAP_NET_ADMIN and /dev/net/tun (or set tunnel.mode: netstack to run unprivileged)", cfg.Tunnel.Interface)
				}
				return err
			}
			return d.Run(ctx)
		},
	}
	addConfigFlags(cmd)
	return cmd
}

func newCheckConfig() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check-config",
		Short: "Validate the configuration and exit",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := loadConfig(cmd); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "configuration is valid")
			return nil
		},
	}
	addConfigFlags(cmd)
	return cmd
}

func addConfigFlags(cmd *cobra.Command) {
	cmd.Flags().String("config", "", "YAML configuration file (configs/gateway.yaml documents every key)")
	config.BindFlags(cmd.Flags())
	cmd.SetContext(context.Background())
}
