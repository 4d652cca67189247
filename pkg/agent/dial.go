package agent

import (
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
)

// TLSOptions says how to authenticate the gateway. At most one of CAFile,
// Pin and Insecure may be set; none means the system roots.
type TLSOptions struct {
	// CAFile is a PEM file of CA certificates the gateway's chain must verify against.
	CAFile string
	// Pin is the SHA-256 of the gateway's certificate (see tlsutil.ParsePin).
	Pin string
	// Insecure turns TLS off (plaintext gRPC); for tests and labs only.
	Insecure bool
}

// Validate reports conflicting options.
func (o TLSOptions) Validate() error {
	n := 0
	for _, set := range []bool{o.CAFile != "", o.Pin != "", o.Insecure} {
		if set {
			n++
		}
	}
	if n > 1 {
		return errors.New("tls: give at most one of a CA file, a pin, or insecure")
	}
	if o.Pin != "" {
		if _, err := tlsutil.ParsePin(o.Pin); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
	}
	return nil
}

// Dial returns a gRPC client connection to gateway ("host:port"), over TLS
// 1.3 as opts says, or plaintext with opts.Insecure. It does not block: the
// connection is made by the first call. Shared by the device agent and the
// client mode. extra options come last and so override the defaults.
func Dial(gateway string, opts TLSOptions, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	return dialWith(gateway, opts, nil, extra...)
}

// dialWith is Dial; with sc, the addresses of the gateway's certificate are
// kept by sc.
func dialWith(gateway string, opts TLSOptions, sc *addrScrubber, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	host, err := splitGateway(gateway)
	if err != nil {
		return nil, err
	}
	return dialAs(gateway, host, opts, sc, extra...)
}

// dialAs dials addr ("host:port") and checks the gateway's certificate
// against serverName, which may differ from addr's host: a candidate
// resolved from a DNS name is dialled by address and verified by name.
func dialAs(addr, serverName string, opts TLSOptions, sc *addrScrubber, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	var creds credentials.TransportCredentials
	if opts.Insecure {
		creds = insecure.NewCredentials()
	} else {
		cfg, err := tlsutil.ClientConfig(opts.CAFile, opts.Pin, serverName)
		if err != nil {
			return nil, err
		}
		if sc != nil {
			sc.watchCert(cfg)
		}
		creds = credentials.NewTLS(cfg)
	}
	dialOpts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// grpc-go's own reconnect backoff grows to 120s; a fleet must come
		// back within seconds of a gateway restart.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: DefaultMinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: DefaultMaxBackoff},
			MinConnectTimeout: 10 * time.Second,
		}),
	}, extra...)
	conn, err := grpc.NewClient(addr, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("gateway %q: %w", addr, err)
	}
	return conn, nil
}

// splitGateway checks that gateway is "host:port" and returns the host.
func splitGateway(gateway string) (string, error) {
	if gateway == "" {
		return "", errors.New("gateway: empty; want host:port, e.g. gateway.example.com:8443")
	}
	host, port, err := net.SplitHostPort(gateway)
	if err != nil {
		return "", fmt.Errorf("gateway %q: want host:port: %w", gateway, err)
	}
	if host == "" {
		return "", fmt.Errorf("gateway %q: host is empty", gateway)
	}
	if port == "" {
		return "", fmt.Errorf("gateway %q: port is empty", gateway)
	}
	return host, nil
}
