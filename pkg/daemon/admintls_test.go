package daemon_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil/tlsutiltest"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// startMTLSAdmin starts a gateway whose admin listener is on TCP with
// mutual TLS, certificates from a throw-away CA; olivia is an operator,
// priya an operator with the privacy role.
func startMTLSAdmin(t *testing.T) (*testGateway, *tlsutiltest.CA) {
	t.Helper()
	ca := tlsutiltest.NewCA(t)
	srv := ca.Issue(t, "gateway-admin", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	cfg := testConfig(t, t.TempDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Listen = l.Addr().String()
	l.Close()
	cfg.Admin.CertFile, cfg.Admin.KeyFile, cfg.Admin.ClientCAFile = srv.CertFile, srv.KeyFile, ca.File
	cfg.Admin.Operators = []config.Operator{
		{UID: 1000, Name: "olivia", Roles: []config.Role{config.RoleOperator}},
		{UID: 1001, Name: "priya", Roles: []config.Role{config.RoleOperator, config.RolePrivacy}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return startGateway(t, cfg), ca
}

// dialMTLSAdmin connects to g's admin listener with a client certificate
// for cn from ca (none when cn is empty).
func dialMTLSAdmin(t *testing.T, g *testGateway, ca *tlsutiltest.CA, cn string) *grpc.ClientConn {
	t.Helper()
	var certs []tls.Certificate
	if cn != "" {
		certs = []tls.Certificate{ca.Issue(t, cn, x509.ExtKeyUsageClientAuth).Cert}
	}
	tc := &tls.Config{RootCAs: ca.Pool, Certificates: certs, MinVersion: tls.VersionTLS13}
	conn, err := grpc.NewClient(g.cfg.Admin.Listen, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestAdminOverMutualTLS: the TCP admin listener identifies operators by
// their client certificate's common name; roles come from admin.operators.
func TestAdminOverMutualTLS(t *testing.T) {
	g, ca := startMTLSAdmin(t)
	g.enroll(t, [2]string{"DS-MTLS-0001", "HW-MTLS-1"})

	dial := func(cn string) gatewayv1.AdminServiceClient {
		return gatewayv1.NewAdminServiceClient(dialMTLSAdmin(t, g, ca, cn))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reveal := &gatewayv1.ListDevicesRequest{Reveal: true, Reason: "ticket 9"}

	// An operator without the privacy role lists masked, cannot reveal.
	olivia := dial("olivia")
	list, err := olivia.ListDevices(ctx, &gatewayv1.ListDevicesRequest{})
	if err != nil || len(list.GetDevices()) != 1 || list.GetDevices()[0].GetSerialNumber() != "****01" {
		t.Fatalf("olivia list: %v, %v", list, err)
	}
	if _, err := olivia.ListDevices(ctx, reveal); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("olivia reveal: %v, want PermissionDenied", err)
	}
	// The privacy role reveals.
	list, err = dial("priya").ListDevices(ctx, reveal)
	if err != nil || list.GetDevices()[0].GetSerialNumber() != "DS-MTLS-0001" {
		t.Fatalf("priya reveal: %v, %v", list, err)
	}
	// A certificate from the CA for someone who is not an operator.
	if _, err := dial("mallory").ListDevices(ctx, &gatewayv1.ListDevicesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("mallory: %v, want PermissionDenied", err)
	}
	// No client certificate: the TLS handshake itself is refused.
	if _, err := dial("").ListDevices(ctx, &gatewayv1.ListDevicesRequest{}); err == nil || status.Code(err) == codes.OK {
		t.Fatal("admin call without a client certificate succeeded")
	}
}
