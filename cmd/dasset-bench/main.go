// Command dasset-bench is the DASSET gateway's load generator.
//
//	dasset-bench bootstorm --gateway HOST:PORT[,HOST:PORT...] --pin SHA256 --devices N --concurrency C
//	dasset-bench baseline --devices N --concurrency C
//	dasset-bench compare baseline.json bootstorm.json
//
// bootstorm logs N devices in, C at once, each over a new TLS connection
// with a fresh WireGuard public key (against several gateways of one fleet,
// device i goes to the (i mod n)-th); baseline runs the same client loop
// against an in-process gRPC server with the same TLS setup whose Login does
// nothing, the reference the gateway is measured against. Both print a JSON
// summary on standard output; compare prints two of them side by side.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := rootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dasset-bench:", err)
		os.Exit(1)
	}
}

func rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "dasset-bench",
		Short:         "Load generator for the DASSET gateway (boot storms beside a bare TLS gRPC reference)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(bootstormCommand(), baselineCommand(), compareCommand(), freePortsCommand())
	return root
}

// stormFlags registers the flags bootstorm and baseline share.
func stormFlags(cmd *cobra.Command, c *stormConfig) {
	f := cmd.Flags()
	f.IntVar(&c.Devices, "devices", 2000, "number of devices (one login each)")
	f.IntVar(&c.Concurrency, "concurrency", 256, "logins in flight at once")
	f.StringVar(&c.Prefix, "prefix", "DS-BENCH-", "serial number prefix; device i is PREFIX%06d with hardware id HW-PREFIX%06d")
	f.DurationVar(&c.Timeout, "timeout", 60*time.Second, "limit for one login, handshake included")
	f.StringVar(&c.Version, "agent-version", "dasset-bench", "agent_version sent in Login")
}

func bootstormCommand() *cobra.Command {
	var c stormConfig
	var certFile, enrollSocket string
	var pids []int
	var label string
	cmd := &cobra.Command{
		Use:   "bootstorm --gateway HOST:PORT[,HOST:PORT...] (--pin SHA256 | --cert FILE) [--enroll-socket PATH] [--pid PID[,PID...]]",
		Short: "Log N devices in, C at once, each over a new TLS connection",
		Long: `Log N devices in, C at once. Each device dials a new gRPC connection (a new
TLS 1.3 handshake), calls DeviceService.Login once with a fresh Curve25519
public key, and closes the connection. With several gateways (a fleet on one
registry, sharing one certificate), device i logs in to the (i mod n)-th and
the summary counts the logins per gateway. The devices must be enrolled, by
the caller or with --enroll-socket (on any gateway of a fleet). A device that logs in again with a new key is
refused unless the gateway has device.rekey: allow, so use a fresh gateway or
a fresh --prefix for every run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.Gateway == "" {
				return errors.New("--gateway: required (HOST:PORT of the gateway's gRPC listener)")
			}
			if certFile != "" {
				if c.Pin != "" {
					return errors.New("--pin and --cert: give one")
				}
				pin, err := pinOf(certFile)
				if err != nil {
					return err
				}
				c.Pin = pin
			}
			if c.Pin == "" {
				return errors.New("--pin: required (SHA-256 of the gateway's certificate), or --cert FILE")
			}
			if err := c.validate(); err != nil {
				return err
			}
			ctx := cmd.Context()
			if enrollSocket != "" {
				n, err := enroll(ctx, enrollSocket, c)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "enrolled %d new devices of %d\n", n, c.Devices)
			}
			before, _, gwCPU, err := usage(pids)
			if err != nil {
				return err
			}
			cpu := selfCPU()
			samples, wall, err := storm(ctx, c)
			if err != nil {
				return err
			}
			s := summarize("bootstorm", c.Gateway, c.Concurrency, samples, wall)
			s.Label = label
			s.BenchCPUSeconds = round3(selfCPU() - cpu)
			if len(pids) > 0 {
				rss, peak, after, err := usage(pids)
				if err != nil {
					return err
				}
				s.GatewayRSSBeforeKiB, s.GatewayRSSKiB, s.GatewayPeakRSSKiB = before, rss, peak
				s.GatewayCPUSeconds = round3(after - gwCPU)
			}
			return printJSON(cmd.OutOrStdout(), s)
		},
	}
	stormFlags(cmd, &c)
	f := cmd.Flags()
	f.StringVar(&c.Gateway, "gateway", "", "HOST:PORT of the gateway's device gRPC listener, or several comma-separated (a fleet)")
	f.StringVar(&c.Pin, "pin", "", "SHA-256 of the gateway's TLS certificate (64 hex digits)")
	f.StringVar(&certFile, "cert", "", "the gateway's certificate (PEM, e.g. DATA_DIR/tls.crt); its SHA-256 is the pin")
	f.StringVar(&enrollSocket, "enroll-socket", "", "enroll the devices first through the AdminService on this unix socket")
	f.StringVar(&label, "label", "", "name of this run in the summary and in compare's header (default: the mode)")
	f.IntSliceVar(&pids, "pid", nil, "gateway process ids (comma-separated), to report their memory and CPU (from /proc), summed")
	return cmd
}

func baselineCommand() *cobra.Command {
	var c stormConfig
	cmd := &cobra.Command{
		Use:   "baseline",
		Short: "The reference: the same client loop against a bare in-process TLS gRPC server",
		Long: `Start a gRPC server on a free loopback port with the gateway's TLS setup (an
ECDSA P-256 self-signed certificate from tlsutil.EnsureSelfSigned, TLS 1.3)
whose Login returns an empty response at once, and run the bootstorm client
loop against it. The server shares this process (and its CPUs) with the
clients, as the gateway shares the machine with them in bootstorm.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := c.validate(); err != nil {
				return err
			}
			dir, err := os.MkdirTemp("", "dasset-bench-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			addr, pin, stop, err := startBaseline(dir)
			if err != nil {
				return err
			}
			defer stop()
			c.Gateway, c.Pin = addr, pin
			cpu := selfCPU()
			samples, wall, err := storm(cmd.Context(), c)
			if err != nil {
				return err
			}
			s := summarize("baseline", addr, c.Concurrency, samples, wall)
			s.BenchCPUSeconds = round3(selfCPU() - cpu)
			return printJSON(cmd.OutOrStdout(), s)
		},
	}
	stormFlags(cmd, &c)
	return cmd
}

func compareCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "compare REFERENCE.json MEASURED.json",
		Short: "Print two summaries side by side with their ratio",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var s [2]Summary
			for i, name := range args {
				data, err := os.ReadFile(name)
				if err != nil {
					return err
				}
				if err := json.Unmarshal(data, &s[i]); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
			return compare(cmd.OutOrStdout(), s[0], s[1])
		},
	}
}

func freePortsCommand() *cobra.Command {
	var tcp, udp int
	cmd := &cobra.Command{
		Use:    "free-ports --tcp N --udp M",
		Short:  "Print free loopback ports, TCP first (for scripts/bench.sh)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := freePorts("tcp", tcp)
			if err != nil {
				return err
			}
			u, err := freePorts("udp", udp)
			if err != nil {
				return err
			}
			out := make([]string, 0, len(t)+len(u))
			for _, p := range append(t, u...) {
				out = append(out, fmt.Sprint(p))
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), strings.Join(out, " "))
			return err
		},
	}
	cmd.Flags().IntVar(&tcp, "tcp", 0, "number of TCP ports")
	cmd.Flags().IntVar(&udp, "udp", 0, "number of UDP ports")
	return cmd
}

// pinOf returns the SHA-256 pin of the first certificate in a PEM file.
func pinOf(certFile string) (string, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return "", fmt.Errorf("--cert: %w", err)
	}
	der, err := firstCertDER(data)
	if err != nil {
		return "", fmt.Errorf("--cert %s: %w", certFile, err)
	}
	return tlsutil.Fingerprint(der), nil
}

// usage sums the resident and peak memory (KiB) and the CPU seconds of the
// processes pids (zeros for none).
func usage(pids []int) (rss, peak int64, cpu float64, err error) {
	for _, pid := range pids {
		r, p, err := memory(pid)
		if err != nil {
			return 0, 0, 0, err
		}
		c, err := processCPU(pid)
		if err != nil {
			return 0, 0, 0, err
		}
		rss, peak, cpu = rss+r, peak+p, cpu+c
	}
	return rss, peak, cpu, nil
}

func round3(v float64) float64 { return math.Round(v*1e3) / 1e3 }

func printJSON(w io.Writer, s Summary) error {
	s.Time = time.Now().UTC().Format(time.RFC3339)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
