package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"google.golang.org/protobuf/proto"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// newClient owns dialing and the timeout: it returns a context bounded by
// --timeout, an AdminService client over the connection chosen by the
// global flags, the connection (to Close) and the context's cancel. Commands
// call it only after their own input is validated.
func (a *app) newClient(cmd *cobra.Command) (context.Context, gatewayv1.AdminServiceClient, *grpc.ClientConn, context.CancelFunc, error) {
	client, conn, err := a.dialAdmin(cmd)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	return ctx, client, conn, cancel, nil
}

func (a *app) dialOptions(cmd *cobra.Command) (string, []grpc.DialOption, error) {
	if a.server == "" {
		for _, f := range []string{"cert", "key", "ca"} {
			if cmd.Flags().Changed(f) {
				return "", nil, usagef("--%s is only for --server", f)
			}
		}
		path, err := filepath.Abs(a.socket)
		if err != nil {
			return "", nil, fmt.Errorf("socket path %q: %w", a.socket, err)
		}
		a.dial.network, a.dial.address, a.dial.where = "unix", path, "the gateway's admin socket at "+path
		// The socket's file permissions and the server's peer-credential
		// check protect it; there is nothing to encrypt on one host.
		return "unix://" + path, []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(a.dial.dialContext),
		}, nil
	}
	if cmd.Flags().Changed("socket") {
		return "", nil, usagef("--socket and --server are exclusive")
	}
	if a.cert == "" || a.key == "" || a.ca == "" {
		return "", nil, usagef("--server needs --cert, --key and --ca (mutual TLS)")
	}
	host, _, err := net.SplitHostPort(a.server)
	if err != nil {
		return "", nil, usagef("--server %q: want HOST:PORT: %v", a.server, err)
	}
	tc, err := clientTLS(a.cert, a.key, a.ca, host)
	if err != nil {
		return "", nil, err
	}
	a.dial.network, a.dial.address, a.dial.where = "tcp", a.server, "the gateway's admin listener at "+a.server
	return "passthrough:///" + a.server, []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithContextDialer(a.dial.dialContext),
	}, nil
}

// clientTLS builds the mutual-TLS configuration for the TCP admin listener.
func clientTLS(certFile, keyFile, caFile, serverName string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load --cert/--key: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read --ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca %s: no PEM certificate in it", caFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// dialRecorder dials the one admin endpoint and remembers the last dial
// error, which gRPC itself only reports as text inside an Unavailable status.
type dialRecorder struct {
	network, address, where string

	mu   sync.Mutex
	last error
}

func (d *dialRecorder) dialContext(ctx context.Context, _ string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, d.network, d.address)
	d.mu.Lock()
	d.last = err
	d.mu.Unlock()
	return c, err
}

// explain gives the operator's one-line message for an Unavailable status
// caused by a failed dial, or "" when st is something else.
func (d *dialRecorder) explain(st *status.Status) string {
	if st.Code() != codes.Unavailable {
		return ""
	}
	d.mu.Lock()
	err := d.last
	d.mu.Unlock()
	if err == nil {
		return ""
	}
	return explainDial(d.network, d.where, err)
}

func explainDial(network, where string, err error) string {
	switch {
	case network == "unix" && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)):
		return fmt.Sprintf("cannot reach %s: is dasset-gateway running? (use --socket)", where)
	case errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return fmt.Sprintf("permission denied on %s: run as root or as a member of the socket's group", where)
	case network == "unix":
		return fmt.Sprintf("cannot reach %s: %v", where, err)
	default:
		return fmt.Sprintf("cannot reach %s: %v (use --server)", where, err)
	}
}

// call is the shape every single-RPC command shares: dial (newClient owns the
// timeout), make the call, print the answer as a table or JSON.
func call[R proto.Message](a *app, cmd *cobra.Command, rpc func(context.Context, gatewayv1.AdminServiceClient) (R, error), table func(w io.Writer, resp R)) error {
	ctx, client, conn, cancel, err := a.newClient(cmd)
	if err != nil {
		return err
	}
	defer cancel()
	defer conn.Close()
	resp, err := rpc(ctx, client)
	if err != nil {
		return err
	}
	return a.print(cmd, resp, func(w io.Writer) { table(w, resp) })
}
