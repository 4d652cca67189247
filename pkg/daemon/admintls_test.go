package daemon_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/config"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

type pki struct {
	dir  string
	pool *x509.CertPool
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ops CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), pool: x509.NewCertPool(), ca: ca, key: key}
	p.pool.AddCert(ca)
	p.write(t, "ca.crt", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue makes a certificate and key signed by the CA; returns file paths.
func (p *pki) issue(t *testing.T, serial int64, cn string, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, cn+".crt", "CERTIFICATE", der), p.write(t, cn+".key", "EC PRIVATE KEY", kder)
}

// TestAdminOverMutualTLS: the TCP admin listener identifies operators by
// their client certificate's common name; roles come from admin.operators.
func TestAdminOverMutualTLS(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey := p.issue(t, 2, "gateway-admin", x509.ExtKeyUsageServerAuth)
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Listen = l.Addr().String()
	l.Close()
	cfg.Admin.CertFile, cfg.Admin.KeyFile, cfg.Admin.ClientCAFile = srvCert, srvKey, filepath.Join(p.dir, "ca.crt")
	cfg.Admin.Operators = []config.Operator{
		{UID: 1000, Name: "olivia", Roles: []config.Role{config.RoleOperator}},
		{UID: 1001, Name: "priya", Roles: []config.Role{config.RoleOperator, config.RolePrivacy}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg)
	g.enroll(t, [2]string{"DS-MTLS-0001", "HW-MTLS-1"})

	dial := func(cn string) gatewayv1.AdminServiceClient {
		var certs []tls.Certificate
		if cn != "" {
			c, k := p.issue(t, time.Now().UnixNano(), cn, x509.ExtKeyUsageClientAuth)
			pair, err := tls.LoadX509KeyPair(c, k)
			if err != nil {
				t.Fatal(err)
			}
			certs = []tls.Certificate{pair}
		}
		tc := &tls.Config{RootCAs: p.pool, Certificates: certs, MinVersion: tls.VersionTLS13}
		conn, err := grpc.NewClient(cfg.Admin.Listen, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return gatewayv1.NewAdminServiceClient(conn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reveal := &gatewayv1.ListDevicesRequest{Reveal: true, Reason: "ticket 9"}

	// An operator without the privacy role lists masked, cannot reveal.
	olivia := dial("olivia")
	list, err := olivia.ListDevices(ctx, &gatewayv1.ListDevicesRequest{})
	if err != nil || len(list.GetDevices()) != 1 || list.GetDevices()[0].GetSerialNumber() != "****0001" {
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
