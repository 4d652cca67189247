package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mdp/qrterminal/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
)

// callTimeout bounds every one-shot client command's talk with the gateway.
const callTimeout = 30 * time.Second

// clientFlags are the flags of the client-mode commands. login stores the
// gateway address and TLS choice with the token; the other commands use
// what it stored unless a flag here overrides it.
type clientFlags struct {
	gateway  string
	stateDir string
	ca       string
	pin      string
	insecure bool
}

func (f *clientFlags) add(cmd *cobra.Command, gatewayRequired bool) {
	fl := cmd.Flags()
	usage := "gateway gRPC address, HOST:PORT, or several gateways of one fleet comma-separated (default: the one stored by login)"
	if gatewayRequired {
		usage = "gateway gRPC address, HOST:PORT (e.g. gateway.example.com:8443), or several gateways of one fleet comma-separated (each call goes to the first that answers)"
	}
	fl.StringVar(&f.gateway, "gateway", "", usage)
	fl.StringVar(&f.stateDir, "state-dir", agent.DefaultClientStateDir, "directory for the client's access token and gateway settings")
	fl.StringVar(&f.ca, "ca", "", "PEM file of CA certificates that sign the gateway's certificate")
	fl.StringVar(&f.pin, "pin", "", "SHA-256 of the gateway's certificate (64 hex digits, optional colons and \"sha256:\" prefix)")
	fl.BoolVar(&f.insecure, "insecure", false, "talk to the gateway without TLS (labs and tests only)")
	if gatewayRequired {
		_ = cmd.MarkFlagRequired("gateway")
	}
	cmd.MarkFlagsMutuallyExclusive("ca", "pin", "insecure")
}

func (f *clientFlags) tls() agent.TLSOptions {
	return agent.TLSOptions{CAFile: f.ca, Pin: f.pin, Insecure: f.insecure}
}

// config is the stored client configuration with the flags given on top.
func (f *clientFlags) config(cmd *cobra.Command) (agent.ClientConfig, error) {
	cfg, err := agent.LoadClientConfig(f.stateDir)
	if err != nil && f.gateway == "" {
		if errors.Is(err, agent.ErrNotLoggedIn) {
			return cfg, fmt.Errorf("not logged in (nothing in %s): run `dasset-agent login --gateway HOST:PORT --account NAME` first", f.stateDir)
		}
		return cfg, err
	}
	cfg.StateDir = f.stateDir
	if f.gateway != "" {
		cfg.Gateway = f.gateway
	}
	if cmd.Flags().Changed("ca") || cmd.Flags().Changed("pin") || cmd.Flags().Changed("insecure") {
		cfg.TLS = f.tls()
	}
	return cfg, nil
}

// callErr makes a timeout readable.
func callErr(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: the gateway did not answer within %v", err, callTimeout)
	}
	if errors.Is(err, agent.ErrNotLoggedIn) && !strings.Contains(err.Error(), "dasset-agent login") {
		return fmt.Errorf("%w (run `dasset-agent login`)", err)
	}
	return err
}

func newLoginCmd(stdout io.Writer) *cobra.Command {
	var (
		flags         clientFlags
		account       string
		passwordStdin bool
	)
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Client mode: log in to an app account and store the access token (0600) in --state-dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var password string
			var err error
			if passwordStdin {
				password, err = readPasswordStdin(cmd.InOrStdin())
			} else {
				password, err = promptPassword(cmd)
			}
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			_, expires, err := agent.ClientLogin(ctx, agent.ClientConfig{
				Gateway: flags.gateway, TLS: flags.tls(), Account: account, Password: password, StateDir: flags.stateDir,
			})
			if err != nil {
				return callErr(err)
			}
			fmt.Fprintf(stdout, "Logged in. Access token stored in %s (expires %s).\n",
				filepath.Join(flags.stateDir, "access-token"), expires.Local().Format(time.RFC1123))
			return nil
		},
	}
	flags.add(cmd, true)
	cmd.Flags().StringVar(&account, "account", "", "account name")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input instead of prompting")
	_ = cmd.MarkFlagRequired("account")
	return cmd
}

// promptPassword asks on the terminal without echo.
func promptPassword(cmd *cobra.Command) (string, error) {
	f, ok := cmd.InOrStdin().(interface{ Fd() uintptr })
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", errors.New("standard input is not a terminal: pass the password with --password-stdin")
	}
	fmt.Fprint(cmd.ErrOrStderr(), "Password: ")
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(cmd.ErrOrStderr())
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	if len(b) == 0 {
		return "", errors.New("password: empty")
	}
	return string(b), nil
}

// readPasswordStdin reads standard input, less one trailing newline.
func readPasswordStdin(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return "", fmt.Errorf("read password from standard input: %w", err)
	}
	p := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if p == "" {
		return "", errors.New("password: standard input was empty")
	}
	return p, nil
}

func newBindCmd(stdout io.Writer) *cobra.Command {
	var (
		flags clientFlags
		code  string
	)
	cmd := &cobra.Command{
		Use:   "bind",
		Short: "Client mode: bind a device to the account with the code it shows (`dasset-agent bind-code` on the device)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var sn string
			if err := flags.call(cmd, func(ctx context.Context, cfg agent.ClientConfig) (err error) {
				sn, err = agent.Bind(ctx, cfg, code)
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "Bound device %s.\n", sn)
			return nil
		},
	}
	flags.add(cmd, false)
	cmd.Flags().StringVar(&code, "code", "", "binding code shown by the device")
	_ = cmd.MarkFlagRequired("code")
	return cmd
}

func newUnbindCmd(stdout io.Writer) *cobra.Command {
	var (
		flags  clientFlags
		serial string
	)
	cmd := &cobra.Command{
		Use:   "unbind",
		Short: "Client mode: remove a device from the account (its open sessions close at once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var removed map[string]int64
			if err := flags.call(cmd, func(ctx context.Context, cfg agent.ClientConfig) (err error) {
				removed, err = agent.Unbind(ctx, cfg, serial)
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "Unbound device %s.", serial)
			if len(removed) > 0 {
				fmt.Fprintf(stdout, " Removed: %s.", receipt(removed))
			}
			fmt.Fprintln(stdout)
			return nil
		},
	}
	flags.add(cmd, false)
	cmd.Flags().StringVar(&serial, "serial", "", "serial number of the device")
	_ = cmd.MarkFlagRequired("serial")
	return cmd
}

func newDevicesCmd(stdout io.Writer) *cobra.Command {
	var flags clientFlags
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "Client mode: list the devices bound to the account",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var devs []agent.BoundDevice
			if err := flags.call(cmd, func(ctx context.Context, cfg agent.ClientConfig) (err error) {
				devs, err = agent.ListDevices(ctx, cfg)
				return err
			}); err != nil {
				return err
			}
			if len(devs) == 0 {
				fmt.Fprintln(stdout, "No devices bound to this account.")
				return nil
			}
			w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SERIAL\tONLINE\tADDRESSES")
			for _, d := range devs {
				online := "no"
				if d.Online {
					online = "yes"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", d.Serial, online, joinPrefixes(d.Addresses))
			}
			return w.Flush()
		},
	}
	flags.add(cmd, false)
	return cmd
}

func joinPrefixes[T fmt.Stringer](ps []T) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}

func newSessionCmd(stdout, logOut io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "session",
		Short: "Client mode: open or close a remote-control session to a bound device",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newSessionOpenCmd(stdout, logOut), newSessionCloseCmd(stdout))
	return cmd
}

func newSessionOpenCmd(stdout, logOut io.Writer) *cobra.Command {
	var (
		flags    clientFlags
		logs     logFlags
		serial   string
		iface    string
		netstack bool
		poll     time.Duration
		wgQuick  string
		qr       bool
	)
	cmd := &cobra.Command{
		Use:   "open",
		Short: "Open a session and keep its tunnel up until interrupted or the gateway ends it",
		Long: `Open a session to a bound device: a fresh WireGuard key, a TUN interface with the
session's client addresses and routes to the virtual network, the gateway as the one peer.
Prints the session id and the client and device addresses, then runs until SIGINT or
SIGTERM (it closes the session and exits 0) or until the session ends without it (exit 1
with the reason).

With --wg-quick FILE or --qr the command brings up no tunnel of its own: a stock WireGuard
app carries the session instead. --wg-quick writes the session's configuration (its own
fresh private key, the client addresses, the gateway as the peer, only the device's
addresses routed) to FILE, mode 0600, for ` + "`wg-quick up FILE`" + ` or an app's "import from
file"; FILE must be NAME.conf, NAME (1-15 of a-z A-Z 0-9 _ = + . -) becoming the interface
name. --qr prints the same configuration as a QR code for the WireGuard app on a phone
("scan from QR code"). The session lives as long as this command keeps running, exactly
as above: leave it running while the app is connected, and stop it with Ctrl-C when done,
which closes the session at the gateway; the configuration then no longer works (take
the tunnel down with ` + "`wg-quick down FILE`" + `). The gateway also ends a session at its expiry
and when the app has made no WireGuard handshake for its idle timeout (the configuration
carries the gateway's persistent keepalive, so a connected app never goes idle). Should
this command be killed without the chance to close it, the session stands until it
expires or ` + "`dasset-agent session close --id ID`" + `.

How the end is noticed: every --poll the command asks the gateway about the session
(closed by an operator, by ` + "`session close`" + ` from elsewhere, by the idle reaper, or the device
unbound) and lists the account's devices (a refused access token), so the end is noticed
within one interval; the expiry is checked locally; and, with a tunnel of its own, a
gateway that stopped answering shows as WireGuard handshakes failing, noticed within about
3 minutes (with --wg-quick or --qr the handshakes are the app's, and the command waits
for the gateway to answer again).

In a fleet each poll also learns which gateway serves the session (the device's home).
When the device moves to another gateway, the session's tunnel replaces its gateway peer
(same key, same addresses) and its traffic resumes through the new gateway; with
--wg-quick the file is rewritten and the command says how to apply it (` + "`wg syncconf`" + `),
with --qr it prints the new QR code.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logs.logger(logOut)
			if err != nil {
				return err
			}
			cfg, err := flags.config(cmd)
			if err != nil {
				return err
			}
			if wgQuick != "" {
				if err := agent.CheckWGQuickPath(wgQuick); err != nil {
					return fmt.Errorf("--wg-quick: %w", err)
				}
			}
			cfg.Interface, cfg.Netstack, cfg.Logger, cfg.PollInterval = iface, netstack, logger, poll
			cfg.NoTunnel = wgQuick != "" || qr
			if netstack || cfg.NoTunnel {
				cfg.Interface = ""
			}
			// outMu orders what the session's watcher prints (the device
			// moved to another gateway) after the session's first lines.
			var outMu sync.Mutex
			if cfg.NoTunnel {
				cfg.OnGatewayPeer = func(w agent.WGQuick) {
					outMu.Lock()
					defer outMu.Unlock()
					printGatewayMoved(stdout, logger, wgQuick, qr, w)
				}
			}
			octx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			s, err := agent.OpenSession(octx, cfg, serial)
			cancel()
			if err != nil {
				return callErr(err)
			}
			if wgQuick != "" {
				if err := agent.WriteWGQuick(wgQuick, s.WGQuick()); err != nil {
					cctx, ccancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), callTimeout)
					defer ccancel()
					if cerr := s.Close(cctx); cerr != nil {
						logger.Warn("closing the session after the failed write", "session", s.ID(), "error", cerr)
					}
					return fmt.Errorf("--wg-quick: %w", err)
				}
			}
			outMu.Lock()
			fmt.Fprintf(stdout, "Session:   %s\n", s.ID())
			if !netstack && !cfg.NoTunnel {
				fmt.Fprintf(stdout, "Interface: %s\n", cfg.Interface)
			}
			if wgQuick != "" {
				fmt.Fprintf(stdout, "Config:    %s\n", wgQuick)
			}
			fmt.Fprintf(stdout, "Client:    %s\n", joinPrefixes(s.ClientAddresses()))
			fmt.Fprintf(stdout, "Device:    %s\n", joinPrefixes(s.DeviceAddresses()))
			fmt.Fprintf(stdout, "Expires:   %s\n", s.ExpiresAt().Local().Format(time.RFC1123))
			if cfg.NoTunnel {
				printAppHelp(stdout, wgQuick, qr, s.WGQuick())
			}
			if f, ok := stdout.(*os.File); ok {
				_ = f.Sync()
			}
			outMu.Unlock()
			werr := s.Wait(cmd.Context())
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), callTimeout)
			defer ccancel()
			cerr := s.Close(cctx)
			if errors.Is(werr, agent.ErrSessionEnded) {
				if wgQuick != "" {
					return fmt.Errorf("%w (the configuration in %s no longer works: `wg-quick down %s`)", werr, wgQuick, wgQuick)
				}
				return werr
			}
			if cerr != nil {
				return fmt.Errorf("session %s: %w", s.ID(), callErr(cerr))
			}
			logger.Info("session closed", "session", s.ID())
			return nil
		},
	}
	flags.add(cmd, false)
	logs.add(cmd)
	cmd.Flags().StringVar(&serial, "serial", "", "serial number of the bound device")
	cmd.Flags().StringVar(&iface, "interface", agent.DefaultClientInterface, "TUN interface name for the session (at most 15 bytes)")
	cmd.Flags().BoolVar(&netstack, "netstack", false, "run the tunnel on a userspace network stack (no root; only useful for tests)")
	cmd.Flags().DurationVar(&poll, "poll", agent.DefaultPollInterval, "how often to check with the gateway that the session still stands")
	cmd.Flags().StringVar(&wgQuick, "wg-quick", "", "write the session's WireGuard configuration to this NAME.conf file (0600) for wg-quick or a WireGuard app, instead of a tunnel of its own")
	cmd.Flags().BoolVar(&qr, "qr", false, "print the session's WireGuard configuration as a QR code for the WireGuard app, instead of a tunnel of its own")
	_ = cmd.MarkFlagRequired("serial")
	for _, f := range []string{"wg-quick", "qr"} {
		cmd.MarkFlagsMutuallyExclusive(f, "interface")
		cmd.MarkFlagsMutuallyExclusive(f, "netstack")
	}
	return cmd
}

// printGatewayMoved tells the user of a stock WireGuard app that the
// session's gateway peer changed (the device moved to another gateway of
// the fleet): it rewrites the --wg-quick file and says how to apply it, or
// prints the new QR code.
func printGatewayMoved(w io.Writer, logger *slog.Logger, file string, qr bool, conf agent.WGQuick) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The device moved to another gateway: the session's WireGuard peer changed.")
	if file != "" {
		if err := agent.WriteWGQuick(file, conf); err != nil {
			logger.Warn("rewriting the session's configuration for the new gateway failed", "session", conf.SessionID, "error", err)
			fmt.Fprintf(w, "Rewriting %s failed (%v); the tunnel keeps the old gateway.\n", file, err)
		} else {
			name := strings.TrimSuffix(filepath.Base(file), ".conf")
			fmt.Fprintf(w, "%s now names the new gateway; apply it with `wg syncconf %s <(wg-quick strip %s)`, or import the file again.\n", file, name, file)
		}
	}
	if qr {
		fmt.Fprintln(w, "Scan this QR code again with the WireGuard app:")
		fmt.Fprintln(w)
		qrterminal.GenerateHalfBlock(string(conf.Render()), qrterminal.L, w)
	}
}

// printAppHelp says how to use the session from a stock WireGuard app and
// prints the configuration as a QR code when asked.
func printAppHelp(w io.Writer, file string, qr bool, conf agent.WGQuick) {
	fmt.Fprintln(w)
	if file != "" {
		fmt.Fprintf(w, "Bring the tunnel up with `wg-quick up %s`, or import the file into a WireGuard app.\n", file)
	}
	if qr {
		fmt.Fprintln(w, "Scan this QR code with the WireGuard app (\"Add tunnel\", \"Scan from QR code\"):")
		fmt.Fprintln(w)
		qrterminal.GenerateHalfBlock(string(conf.Render()), qrterminal.L, w)
	}
	fmt.Fprintln(w, "The session stays open while this command runs; Ctrl-C closes it at the gateway.")
}

func newSessionCloseCmd(stdout io.Writer) *cobra.Command {
	var (
		flags clientFlags
		id    string
	)
	cmd := &cobra.Command{
		Use:   "close",
		Short: "Close one of the account's sessions by id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := flags.call(cmd, func(ctx context.Context, cfg agent.ClientConfig) error {
				return agent.CloseSession(ctx, cfg, id)
			}); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "Session %s closed.\n", id)
			return nil
		},
	}
	flags.add(cmd, false)
	cmd.Flags().StringVar(&id, "id", "", "session id (printed by session open)")
	_ = cmd.MarkFlagRequired("id")
	return cmd
}

// call resolves the client configuration from the flags and runs one
// gateway call under the call timeout; gateway errors become one line.
func (f *clientFlags) call(cmd *cobra.Command, fn func(ctx context.Context, cfg agent.ClientConfig) error) error {
	cfg, err := f.config(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
	defer cancel()
	if err := fn(ctx, cfg); err != nil {
		return callErr(err)
	}
	return nil
}

func newExportDataCmd(stdout io.Writer) *cobra.Command {
	var flags clientFlags
	cmd := &cobra.Command{
		Use:   "export-data",
		Short: "Client mode: print everything the gateway stores about the account (JSON: account, bound devices, sessions, connection log)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var doc string
			if err := flags.call(cmd, func(ctx context.Context, cfg agent.ClientConfig) (err error) {
				doc, err = agent.ExportMyData(ctx, cfg)
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintln(stdout, doc)
			return nil
		},
	}
	flags.add(cmd, false)
	return cmd
}

func newDeleteAccountCmd(stdout io.Writer) *cobra.Command {
	var (
		flags         clientFlags
		passwordStdin bool
		yes           bool
	)
	cmd := &cobra.Command{
		Use:   "delete-account",
		Short: "Client mode: cancel the account; the gateway erases everything stored about it (confirmed with the password)",
		Long: `Cancel the logged-in account. The gateway erases every row of it (sessions, bindings,
tokens, its connection-log rows) and prints the receipt. It cannot be undone, so --yes is
required; the password is asked on the terminal or read with --password-stdin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !yes {
				return errors.New("deleting the account cannot be undone: add --yes")
			}
			var password string
			var err error
			if passwordStdin {
				password, err = readPasswordStdin(cmd.InOrStdin())
			} else {
				password, err = promptPassword(cmd)
			}
			if err != nil {
				return err
			}
			var removed map[string]int64
			if err := flags.call(cmd, func(ctx context.Context, cfg agent.ClientConfig) (err error) {
				removed, err = agent.DeleteAccount(ctx, cfg, password)
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "Account deleted. Removed: %s.\n", receipt(removed))
			return nil
		},
	}
	flags.add(cmd, false)
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input instead of prompting")
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm: the account and everything stored about it are erased")
	return cmd
}

// receipt is an erasure receipt (rows removed per table) as "table=n ..."
// in table order.
func receipt(removed map[string]int64) string {
	tables := slices.Sorted(maps.Keys(removed))
	parts := make([]string, len(tables))
	for i, t := range tables {
		parts[i] = fmt.Sprintf("%s=%d", t, removed[t])
	}
	return strings.Join(parts, " ")
}
