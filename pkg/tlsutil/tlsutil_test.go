package tlsutil

import (
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil/tlsutiltest"

	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEnsureSelfSignedCreatesThenReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cert, key, fp, err := EnsureSelfSigned(dir, []string{"gw.example.test", "192.0.2.7", "[2001:db8::1]"}, now)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode = %v, want 0600", st.Mode().Perm())
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := Fingerprint(leaf.Raw); got != fp {
		t.Fatalf("fingerprint %s, leaf hashes to %s", fp, got)
	}
	if len(fp) != 64 || strings.ToLower(fp) != fp {
		t.Fatalf("fingerprint %q is not 64 lowercase hex digits", fp)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("key type %T, want ECDSA", leaf.PublicKey)
	}
	if !leaf.NotAfter.Equal(now.Add(2 * 365 * 24 * time.Hour)) {
		t.Fatalf("NotAfter = %v", leaf.NotAfter)
	}
	for _, h := range []string{"localhost", "gw.example.test", "127.0.0.1", "::1", "192.0.2.7", "2001:db8::1"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("certificate not valid for %s: %v", h, err)
		}
	}
	if hn, err := os.Hostname(); err == nil && hn != "" {
		if err := leaf.VerifyHostname(hn); err != nil {
			t.Errorf("certificate not valid for the host name %s: %v", hn, err)
		}
	}

	cert2, key2, fp2, err := EnsureSelfSigned(dir, nil, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if cert2 != cert || key2 != key || fp2 != fp {
		t.Fatalf("second call made a new certificate: %s %s %s", cert2, key2, fp2)
	}
}

func TestEnsureSelfSignedRefusesHalfPair(t *testing.T) {
	dir := t.TempDir()
	if _, _, _, err := EnsureSelfSigned(dir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, CertFileName)); err != nil {
		t.Fatal(err)
	}
	_, _, _, err := EnsureSelfSigned(dir, nil, time.Now())
	if err == nil || !strings.Contains(err.Error(), CertFileName) {
		t.Fatalf("want an error naming the missing %s, got %v", CertFileName, err)
	}
}

func TestEnsureSelfSignedRejectsBadHosts(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"gw.example.test:8443", "hosts[0] \"gw.example.test:8443\": not an IP address, and ':' is not allowed"},
		{"two words", "' ' is not allowed"},
		{"a..b", "empty or over-long label"},
		{"", "empty"},
	} {
		dir := t.TempDir()
		_, _, _, err := EnsureSelfSigned(dir, []string{tc.host}, time.Now())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("host %q: error %v, want %q", tc.host, err, tc.want)
		}
		if _, err := os.Stat(filepath.Join(dir, KeyFileName)); err == nil {
			t.Errorf("host %q: a key was written although the request was refused", tc.host)
		}
	}
}

func TestParsePin(t *testing.T) {
	const hexPin = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	want := [32]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
		0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	colons := ""
	for i := 0; i < len(hexPin); i += 2 {
		if i > 0 {
			colons += ":"
		}
		colons += hexPin[i : i+2]
	}
	for _, in := range []string{hexPin, strings.ToUpper(hexPin), "sha256:" + hexPin, "SHA256:" + colons, colons, " " + hexPin + "\n"} {
		got, err := ParsePin(in)
		if err != nil {
			t.Errorf("ParsePin(%q): %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("ParsePin(%q) = %x", in, got)
		}
	}
	for _, tc := range []struct{ in, wantErr string }{
		{"", "empty"},
		{"sha256:", "empty"},
		{hexPin[:62], "62 hex digits; want 64"},
		{hexPin + "00", "66 hex digits; want 64"},
		{hexPin[:10] + "g" + hexPin[11:], `invalid character 'g' at position 10`},
		{"sha256:" + hexPin[:3] + "-" + hexPin[4:], `invalid character '-' at position 10`},
	} {
		_, err := ParsePin(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ParsePin(%q) error = %v, want it to contain %q", tc.in, err, tc.wantErr)
		}
	}
}

// serve runs a TLS echo-once server on loopback with cfg and returns its address.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	return serveOn(t, "127.0.0.1:0", cfg)
}

// serveOn is serve on the address at.
func serveOn(t *testing.T, at string, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", at, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				_, _ = c.Write([]byte("ok"))
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip dials addr, completes the handshake and reads the server's "ok".
func roundTrip(addr string, cfg *tls.Config) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ok" {
		return errors.New("unexpected reply " + string(buf))
	}
	if c.ConnectionState().Version != tls.VersionTLS13 {
		return errors.New("not TLS 1.3")
	}
	return nil
}

// selfSignedServer makes a self-signed certificate (for hosts besides the
// defaults) in a fresh directory and a server config for it.
func selfSignedServer(t *testing.T, hosts ...string) (certFile, fingerprint string, srv *tls.Config) {
	t.Helper()
	cert, key, fp, err := EnsureSelfSigned(t.TempDir(), hosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srv, err = ServerConfig(cert, key, "")
	if err != nil {
		t.Fatal(err)
	}
	return cert, fp, srv
}

func TestClientConfigPin(t *testing.T) {
	cert, fp, srv := selfSignedServer(t)
	addr := serve(t, srv)

	// The pin replaces host name checks: a name the certificate lacks still works.
	good, err := ClientConfig("", "sha256:"+strings.ToUpper(fp), "not-in-the-cert.invalid")
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, good); err != nil {
		t.Fatalf("good pin: %v", err)
	}

	wrongPin := []byte(fp)
	if wrongPin[0] == '0' {
		wrongPin[0] = '1'
	} else {
		wrongPin[0] = '0'
	}
	bad, err := ClientConfig("", string(wrongPin), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	err = roundTrip(addr, bad)
	if err == nil || !strings.Contains(err.Error(), "does not match the pin") {
		t.Fatalf("wrong pin: want a pin mismatch error, got %v", err)
	}

	if _, err := ClientConfig("", "xyz", "localhost"); err == nil {
		t.Fatal("ClientConfig accepted a malformed pin")
	}
	if _, err := ClientConfig(cert, fp, "localhost"); err == nil {
		t.Fatal("ClientConfig accepted both a CA file and a pin")
	}
}

func TestClientConfigCAFile(t *testing.T) {
	cert, _, srv := selfSignedServer(t)
	addr := serve(t, srv)

	// The self-signed certificate is its own CA.
	withCA, err := ClientConfig(cert, "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, withCA); err != nil {
		t.Fatalf("CA file: %v", err)
	}
	// Host name is checked with a CA.
	wrongName, err := ClientConfig(cert, "", "other.invalid")
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, wrongName); err == nil {
		t.Fatal("CA file: a name the certificate lacks was accepted")
	}
	// A different CA does not verify it.
	otherCert, _, _, err := EnsureSelfSigned(t.TempDir(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	other, err := ClientConfig(otherCert, "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, other); err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
	// System roots do not know a self-signed certificate.
	sys, err := ClientConfig("", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, sys); err == nil {
		t.Fatal("system roots accepted a self-signed certificate")
	}
	if _, err := ClientConfig(filepath.Join(t.TempDir(), "missing.pem"), "", "localhost"); err == nil {
		t.Fatal("ClientConfig accepted a missing CA file")
	}
}

// clientPKI makes a CA and a client certificate signed by it.
func clientPKI(t *testing.T, _ string) (caFile string, clientCert tls.Certificate) {
	t.Helper()
	ca := tlsutiltest.NewCA(t)
	return ca.File, ca.Issue(t, "operator", x509.ExtKeyUsageClientAuth).Cert
}

func TestServerConfigMutualTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key, fp, err := EnsureSelfSigned(dir, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile, clientCert := clientPKI(t, dir)
	srv, err := ServerConfig(cert, key, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if srv.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("ClientAuth = %v", srv.ClientAuth)
	}
	addr := serve(t, srv)

	with, err := ClientConfig("", fp, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	with.Certificates = []tls.Certificate{clientCert}
	if err := roundTrip(addr, with); err != nil {
		t.Fatalf("with client certificate: %v", err)
	}

	without, err := ClientConfig("", fp, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(addr, without); err == nil {
		t.Fatal("server accepted a client without a certificate")
	}

	// A client certificate from another CA is refused too.
	_, strangerCert := clientPKI(t, t.TempDir())
	stranger, err := ClientConfig("", fp, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	stranger.Certificates = []tls.Certificate{strangerCert}
	if err := roundTrip(addr, stranger); err == nil {
		t.Fatal("server accepted a client certificate from another CA")
	}

	if _, err := ServerConfig(cert, key, filepath.Join(dir, "nope.pem")); err == nil {
		t.Fatal("ServerConfig accepted a missing client CA file")
	}
}

// The self-made certificate names the host's own addresses: a client given
// it as its CA can dial the gateway at a non-loopback address.
func TestSelfSignedNamesHostAddresses(t *testing.T) {
	// Any given list of local addresses ends up in the certificate.
	_, _, der, err := selfSigned(nil, []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("2001:db8::9")}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"192.0.2.9", "2001:db8::9", "localhost", "127.0.0.1"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("certificate not valid for %s: %v", h, err)
		}
	}

	// This host's: the certificate EnsureSelfSigned makes works through a
	// real TLS handshake on each of them.
	local, err := HostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if len(local) == 0 {
		t.Skip("this host has no non-loopback address")
	}
	cert, _, srv := selfSignedServer(t)
	for _, a := range local {
		if a.IsLoopback() || a.IsLinkLocalUnicast() {
			t.Fatalf("HostAddrs returned %s", a)
		}
		addr := serveOn(t, netip.AddrPortFrom(a, 0).String(), srv)
		cli, err := ClientConfig(cert, "", a.String())
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(addr, cli); err != nil {
			t.Errorf("dialling %s with the self-made certificate as CA: %v", addr, err)
		}
	}
}

// A name mismatch says which name was dialled and which names the
// certificate has.
func TestNameMismatchNamesBoth(t *testing.T) {
	cert, _, srv := selfSignedServer(t, "gw.example.test")
	addr := serve(t, srv)
	for _, dialled := range []string{"other.invalid", "198.51.100.7"} {
		cli, err := ClientConfig(cert, "", dialled)
		if err != nil {
			t.Fatal(err)
		}
		err = roundTrip(addr, cli)
		var nm *NameMismatchError
		if !errors.As(err, &nm) {
			t.Fatalf("dialling as %s: %v, want a NameMismatchError", dialled, err)
		}
		if nm.Dialled != dialled {
			t.Fatalf("error names %q as dialled, want %q", nm.Dialled, dialled)
		}
		for _, want := range []string{"localhost", "gw.example.test", "127.0.0.1", "::1"} {
			if !slices.Contains(nm.Names, want) || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q / names %v lack %s", err, nm.Names, want)
			}
		}
		if !strings.Contains(err.Error(), "not valid for "+dialled+", the name dialled") {
			t.Fatalf("error %q does not name the dialled %s", err, dialled)
		}
	}
	// A chain that does not verify is not reported as a name mismatch.
	other, _, _, err := EnsureSelfSigned(t.TempDir(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ClientConfig(other, "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	err = roundTrip(addr, cli)
	var nm *NameMismatchError
	var unknown x509.UnknownAuthorityError
	if err == nil || errors.As(err, &nm) || !errors.As(err, &unknown) {
		t.Fatalf("another CA: %v, want an unknown-authority error", err)
	}
}
