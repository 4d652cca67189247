// Package ctl is the command tree of dassetctl, the operators' CLI over the
// gateway's AdminService. cmd/dassetctl only calls Run.
//
// Every command follows one shape: validate its flags and arguments (and ask
// the operator anything it needs to) first, then call newClient, which owns
// dialing and the timeout, send one request and print the answer as a table
// or as JSON.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultSocket is where the gateway's admin unix socket lives by default.
const DefaultSocket = "/run/dasset-gateway/admin.sock"

// EnvSocket names the environment variable that overrides DefaultSocket.
const EnvSocket = "DASSET_ADMIN_SOCKET"

// Exit codes returned by Run.
const (
	ExitOK    = 0 // the command did what it was asked
	ExitError = 1 // the gateway (or the connection to it) said no
	ExitUsage = 2 // the command line was wrong; nothing was sent
)

// Env is everything the command tree takes from its process.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment (os.Getenv when nil).
	Getenv func(string) string
	// Now is the clock used for ages like "12s ago" (time.Now when nil).
	Now func() time.Time
	// Version is this build's version (set with -ldflags); when empty, the
	// module version from the build info is used.
	Version string
}

// usageError is a mistake in the command line: it exits with ExitUsage.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return &usageError{err: fmt.Errorf(format, a...)} }

// runError is an error returned by a command's RunE (as opposed to one that
// cobra found in the command line before running anything).
type runError struct{ err error }

func (e *runError) Error() string { return e.err.Error() }
func (e *runError) Unwrap() error { return e.err }

// app holds the global flags and the process environment of one Run.
type app struct {
	env Env

	socket  string
	server  string
	cert    string
	key     string
	ca      string
	timeout time.Duration
	output  string

	// dial remembers why the last connection attempt failed, so that a bare
	// "Unavailable" can be told as what it was (no socket, no permission).
	dial *dialRecorder
}

// Run executes the dassetctl command line args (without the program name)
// and returns the process exit code. Errors are written to env.Stderr as one
// line "Error: ...".
func Run(ctx context.Context, args []string, env Env) int {
	if env.Stdin == nil {
		env.Stdin = os.Stdin
	}
	if env.Stdout == nil {
		env.Stdout = os.Stdout
	}
	if env.Stderr == nil {
		env.Stderr = os.Stderr
	}
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	a := &app{env: env, dial: &dialRecorder{}}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)

	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	msg, code := a.describe(err)
	fmt.Fprintln(env.Stderr, "Error: "+msg)
	if code == ExitUsage && cmd != nil {
		fmt.Fprintf(env.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// describe turns an error into its one-line message and exit code.
func (a *app) describe(err error) (string, int) {
	var ue *usageError
	if errors.As(err, &ue) {
		return ue.Error(), ExitUsage
	}
	var re *runError
	if !errors.As(err, &re) {
		// cobra found it in the command line: unknown command or flag,
		// wrong number of arguments, flag groups.
		return err.Error(), ExitUsage
	}
	err = re.err
	if st, ok := status.FromError(err); ok {
		if friendly := a.dial.explain(st); friendly != "" {
			return friendly, ExitError
		}
		msg := fmt.Sprintf("%s: %s", st.Code(), st.Message())
		if st.Code() == codes.DeadlineExceeded {
			msg += fmt.Sprintf(" (no answer within --timeout %s)", a.timeout)
		}
		return msg, ExitError
	}
	return err.Error(), ExitError
}

// run wraps a command body so that its errors are known to come from
// running it.
func run(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := f(cmd, args); err != nil {
			return &runError{err: err}
		}
		return nil
	}
}

func (a *app) rootCommand() *cobra.Command {
	socket := a.env.Getenv(EnvSocket)
	if socket == "" {
		socket = DefaultSocket
	}
	root := &cobra.Command{
		Use:   "dassetctl",
		Short: "Operate a DASSET gateway",
		Long: `dassetctl drives a DASSET gateway through its AdminService.

It talks to the gateway's admin unix socket (--socket, default ` + DefaultSocket + `,
or $` + EnvSocket + `), or to its TCP admin listener with mutual TLS
(--server HOST:PORT with --cert, --key and --ca).`,
		Example: `  dassetctl status
  dassetctl devices list -o json
  dassetctl --server gw1.example.net:9443 --cert ops.crt --key ops.key --ca ca.crt peers`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.output {
			case outputTable, outputJSON:
			default:
				return usagef("--output must be %q or %q, not %q", outputTable, outputJSON, a.output)
			}
			if a.timeout <= 0 {
				return usagef("--timeout must be positive, not %s", a.timeout)
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })

	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", socket, "path of the gateway's admin unix socket (env "+EnvSocket+")")
	pf.StringVar(&a.server, "server", "", "HOST:PORT of the gateway's TCP admin listener (mutual TLS; needs --cert, --key, --ca)")
	pf.StringVar(&a.cert, "cert", "", "client certificate (PEM) for --server")
	pf.StringVar(&a.key, "key", "", "client private key (PEM) for --server")
	pf.StringVar(&a.ca, "ca", "", "CA bundle (PEM) that signed the gateway's certificate, for --server")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "how long to wait for the gateway")
	pf.StringVarP(&a.output, "output", "o", outputTable, "output format: table or json")

	root.AddCommand(
		a.enrollCommand(),
		a.devicesCommand(),
		a.accountsCommand(),
		a.sessionsCommand(),
		a.peersCommand(),
		a.fleetCommand(),
		a.subjectCommand(),
		a.policyCommand(),
		a.retentionCommand(),
		a.auditCommand(),
		a.keysCommand(),
		a.backupCommand(),
		a.statusCommand(),
		a.versionCommand(),
	)
	return root
}

// exactArgs is cobra.ExactArgs with a message naming what is missing.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return usagef("%s takes %d argument(s) (%v), got %d", cmd.CommandPath(), len(names), names, len(args))
		}
		return nil
	}
}
