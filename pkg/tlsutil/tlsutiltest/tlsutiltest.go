// Package tlsutiltest makes a throw-away certificate authority for tests:
// a CA and certificates it signs, written as PEM files.
package tlsutiltest

import (
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
	"sync/atomic"
	"testing"
	"time"
)

// CA is a test certificate authority. File is its certificate (PEM) and
// Pool holds it.
type CA struct {
	Dir  string
	File string
	Pool *x509.CertPool

	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial atomic.Int64
}

// Issued is a certificate signed by the CA, with its key, as files and as a
// tls.Certificate.
type Issued struct {
	CertFile, KeyFile string
	Cert              tls.Certificate
}

// NewCA makes a CA valid for an hour around now, in a temporary directory.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	c := &CA{Dir: tb.TempDir(), Pool: x509.NewCertPool(), cert: cert, key: key}
	c.serial.Store(1)
	c.Pool.AddCert(cert)
	c.File = c.write(tb, "ca.pem", "CERTIFICATE", der)
	return c
}

func (c *CA) write(tb testing.TB, name, typ string, der []byte) string {
	tb.Helper()
	path := filepath.Join(c.Dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// Issue signs a certificate for cn with the given extended key usage (and
// IP SANs), writing cn.pem and cn.key.
func (c *CA) Issue(tb testing.TB, cn string, usage x509.ExtKeyUsage, ips ...net.IP) Issued {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(c.serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return Issued{
		CertFile: c.write(tb, cn+".pem", "CERTIFICATE", der),
		KeyFile:  c.write(tb, cn+".key", "EC PRIVATE KEY", kder),
		Cert:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
	}
}
