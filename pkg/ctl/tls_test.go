package ctl

import (
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil/tlsutiltest"

	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	server                    tls.Certificate
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	ca := tlsutiltest.NewCA(t)
	srv := ca.Issue(t, "gateway", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	cli := ca.Issue(t, "operator", x509.ExtKeyUsageClientAuth)
	return testPKI{caFile: ca.File, certFile: cli.CertFile, keyFile: cli.KeyFile, pool: ca.Pool, server: srv.Cert}
}

func TestServerMutualTLS(t *testing.T) {
	pki := newTestPKI(t)
	f := &fakeAdmin{peers: samplePeers()}
	addr := serveTLS(t, f, &tls.Config{
		Certificates: []tls.Certificate{pki.server},
		ClientCAs:    pki.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})

	r := runCLI(t, "", nil, "--server", addr, "--cert", pki.certFile, "--key", pki.keyFile, "--ca", pki.caFile, "peers")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "PUBLIC KEY") || len(received[*gatewayv1.ListPeersRequest](f)) != 1 {
		t.Fatalf("stdout %q", r.stdout)
	}

	// A CA that did not sign the server's certificate: refused, one line.
	other := newTestPKI(t)
	r = runCLI(t, "", nil, "--server", addr, "--cert", other.certFile, "--key", other.keyFile, "--ca", other.caFile, "peers")
	if r.code != ExitError || !strings.HasPrefix(r.stderr, "Error: Unavailable: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	t.Logf("wrong CA: %s", r.stderr)
	if n := len(received[*gatewayv1.ListPeersRequest](f)); n != 1 {
		t.Fatalf("%d ListPeers requests reached the server, want 1", n)
	}
}
