// Command dasset-agent is the DASSET device agent: it logs the device in to
// the gateway, keeps its WireGuard tunnel up and follows the gateway's
// events. Only wiring: the work is in pkg/agent.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/mdp/qrterminal/v3"
	"github.com/spf13/cobra"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func agentVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dasset-agent: %s\n", oneLine(err))
		os.Exit(1)
	}
}

// oneLine keeps an error message on a single line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// connFlags are the flags shared by every command that talks to the gateway.
type connFlags struct {
	gateways []string
	stateDir string
	ca       string
	pin      string
	insecure bool
}

// gateway is the --gateway values as agent.Config.Gateway takes them.
func (f *connFlags) gateway() string { return strings.Join(f.gateways, ",") }

func (f *connFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.gateways, "gateway", nil, "gateway gRPC address, HOST:PORT (e.g. gateway.example.com:8443); for a fleet, several (comma-separated or the flag repeated) or a name with several A/AAAA records: the agent starts on a random one and fails over to the others")
	fl.StringVar(&f.stateDir, "state-dir", agent.DefaultStateDir, "directory for the device's WireGuard key and token")
	fl.StringVar(&f.ca, "ca", "", "PEM file of CA certificates that sign the gateway's certificate")
	fl.StringVar(&f.pin, "pin", "", "SHA-256 of the gateway's certificate (64 hex digits, optional colons and \"sha256:\" prefix)")
	fl.BoolVar(&f.insecure, "insecure", false, "talk to the gateway without TLS (labs and tests only)")
	_ = cmd.MarkFlagRequired("gateway")
	cmd.MarkFlagsMutuallyExclusive("ca", "pin", "insecure")
}

type logFlags struct {
	level  string
	format string
}

func (f *logFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.level, "log-level", "info", "log level: debug, info, warn or error")
	cmd.Flags().StringVar(&f.format, "log-format", "text", "log format: text or json")
}

func (f *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.level)
	}
	if f.format != "text" && f.format != "json" {
		return nil, fmt.Errorf("--log-format %q: want text or json", f.format)
	}
	return privacy.NewLogger(w, lvl, f.format), nil
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "dasset-agent",
		Short:         "DASSET agent: a device's tunnel to the gateway (up, bind-code), or a client's remote-control sessions (login, bind, devices, session)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newUpCmd(stderr), newBindCodeCmd(stdout), newVersionCmd(stdout),
		newLoginCmd(stdout), newBindCmd(stdout), newUnbindCmd(stdout), newDevicesCmd(stdout), newSessionCmd(stdout, stderr),
		newExportDataCmd(stdout), newDeleteAccountCmd(stdout))
	return root
}

func newUpCmd(logOut io.Writer) *cobra.Command {
	var (
		conn       connFlags
		logs       logFlags
		serial     string
		hwid       string
		serialFile string
		hwidFile   string
		iface      string
		netstack   bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Log in, bring the tunnel up and follow the gateway until stopped or revoked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logs.logger(logOut)
			if err != nil {
				return err
			}
			id, err := deviceIdentity(logger, serial, hwid, serialFile, hwidFile)
			if err != nil {
				return err
			}
			serial, hwid = id.Serial, id.HardwareID
			a, err := agent.New(agent.Config{
				Gateway:    conn.gateway(),
				Serial:     serial,
				HardwareID: hwid,
				Interface:  iface,
				StateDir:   conn.stateDir,
				CAFile:     conn.ca,
				Pin:        conn.pin,
				Insecure:   conn.insecure,
				Netstack:   netstack,
				Logger:     logger,
				Version:    agentVersion(),
			})
			if err != nil {
				return err
			}
			if err := a.Run(cmd.Context()); err != nil {
				return err
			}
			logger.Info("stopped")
			return nil
		},
	}
	conn.add(cmd)
	logs.add(cmd)
	cmd.Flags().StringVar(&serialFile, "serial-file", "", "file holding the device's serial number (default: the platform's, "+agent.DMISerialPath+")")
	cmd.Flags().StringVar(&hwidFile, "hwid-file", "", "file holding the device's hardware id (default: the platform's, "+agent.DMIUUIDPath+", else "+agent.MachineIDPath+")")
	cmd.Flags().StringVar(&serial, "serial", "", "the serial number itself (labs only: every local user can read a command line; use --serial-file)")
	cmd.Flags().StringVar(&hwid, "hwid", "", "the hardware id itself (labs only: every local user can read a command line; use --hwid-file)")
	cmd.Flags().StringVar(&iface, "interface", agent.DefaultInterface, "WireGuard TUN interface name (at most 15 bytes)")
	cmd.Flags().BoolVar(&netstack, "netstack", false, "run the tunnel on a userspace network stack instead of a kernel TUN (no root needed; only this process can use it)")
	cmd.MarkFlagsMutuallyExclusive("serial", "serial-file")
	cmd.MarkFlagsMutuallyExclusive("hwid", "hwid-file")
	return cmd
}

// deviceIdentity finds the device's serial number and hardware id: from
// --serial-file and --hwid-file, or the platform, or (labs) the command line,
// which it warns about. It logs where each came from, never the values.
func deviceIdentity(log *slog.Logger, serial, hwid, serialFile, hwidFile string) (agent.Identity, error) {
	id, err := agent.ReadIdentity(agent.IdentitySources{Serial: serial, HWID: hwid, SerialFile: serialFile, HWIDFile: hwidFile})
	if err != nil {
		return agent.Identity{}, err
	}
	for _, f := range []struct {
		flag   string
		source *string
	}{{"--serial", &id.SerialSource}, {"--hwid", &id.HWIDSource}} {
		if *f.source == agent.SourceGiven {
			*f.source = "command line (" + f.flag + ")"
			log.Warn(f.flag+" puts a device identifier on the command line, where every local user can read it (/proc/PID/cmdline): use "+f.flag+"-file, or let the agent read the platform's identity", "flag", f.flag)
		}
	}
	// One attribute under a plain key: the log's safety net redacts any
	// value under a key naming a serial number or hardware id, paths too.
	log.Info("device identity", "sources", "serial number from "+id.SerialSource+", hardware id from "+id.HWIDSource)
	return id, nil
}

func newBindCodeCmd(stdout io.Writer) *cobra.Command {
	var conn connFlags
	var noQR bool
	cmd := &cobra.Command{
		Use:   "bind-code",
		Short: "Show a short-lived code (and its QR code) that binds this device to an app account",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			code, uri, expires, err := agent.BindCode(ctx, agent.Config{
				Gateway:  conn.gateway(),
				StateDir: conn.stateDir,
				CAFile:   conn.ca,
				Pin:      conn.pin,
				Insecure: conn.insecure,
			})
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					return errors.New("binding code: the gateway did not answer within 30s")
				}
				return err
			}
			fmt.Fprintf(stdout, "Binding code: %s\n", code)
			fmt.Fprintf(stdout, "Expires:      %s (in %s)\n", expires.Local().Format(time.RFC1123), time.Until(expires).Round(time.Second))
			if uri != "" {
				fmt.Fprintf(stdout, "URI:          %s\n", uri)
				if !noQR {
					fmt.Fprintln(stdout)
					qrterminal.GenerateHalfBlock(uri, qrterminal.M, stdout)
				}
			}
			return nil
		},
	}
	conn.add(cmd)
	cmd.Flags().BoolVar(&noQR, "no-qr", false, "do not print the QR code")
	return cmd
}

func newVersionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(stdout, "dasset-agent", agentVersion())
		},
	}
}
