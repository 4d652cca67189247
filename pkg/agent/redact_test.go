package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil/tlsutiltest"
)

func TestScrubberKeepsTheGatewaysAddresses(t *testing.T) {
	sc := newAddrScrubber("192.0.2.7:8443")
	sc.addCert(&x509.Certificate{IPAddresses: []net.IP{net.ParseIP("198.51.100.7"), net.ParseIP("2001:db8::7")}})
	in := "dial 192.0.2.7:8443 from 203.0.113.9:4000; valid for 198.51.100.7, [2001:db8::7]:8443, ::1, 127.0.0.1, not 2001:db8::99 fe80::1"
	out := sc.text(in)
	for _, kept := range []string{"192.0.2.7:8443", "198.51.100.7", "[2001:db8::7]:8443", "::1", "127.0.0.1"} {
		if !strings.Contains(out, kept) {
			t.Errorf("the gateway's %s was scrubbed: %s", kept, out)
		}
	}
	for _, leak := range []string{"203.0.113.9", "2001:db8::99", "fe80::1"} {
		if strings.Contains(out, leak) {
			t.Errorf("%s was not scrubbed: %s", leak, out)
		}
	}
	if n := strings.Count(out, "[addr]"); n != 3 {
		t.Errorf("%d addresses scrubbed, want 3: %s", n, out)
	}
	// The nil scrubber keeps loopback only.
	if out := scrubAddrs(in); strings.Contains(out, "192.0.2.7") || !strings.Contains(out, "127.0.0.1") {
		t.Errorf("scrubAddrs: %s", out)
	}
	// A wrapped error is scrubbed and still matches its sentinel.
	err := sc.err(errors.Join(ErrUnavailable, errors.New("from 203.0.113.9")))
	if !errors.Is(err, ErrUnavailable) || strings.Contains(err.Error(), "203.0.113.9") {
		t.Errorf("sc.err: %v", err)
	}
}

// An agent given --ca whose gateway certificate lacks the address it
// dialled logs, and a client call returns, an error that names the
// address dialled and the certificate's names, unredacted.
func TestTLSNameMismatchIsReadable(t *testing.T) {
	local, err := tlsutil.HostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if len(local) == 0 {
		t.Skip("this host has no non-loopback address to dial the gateway at")
	}
	host := local[0]
	ca := tlsutiltest.NewCA(t)
	certAddr := netip.MustParseAddr("198.51.100.7")
	gw := ca.Issue(t, "gateway", x509.ExtKeyUsageServerAuth, certAddr.AsSlice(), net.IPv6loopback)
	srvTLS, err := tlsutil.ServerConfig(gw.CertFile, gw.KeyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(host, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(srvTLS)))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	addr := ln.Addr().String()

	want := []string{"not valid for " + host.String() + ", the name dialled", certAddr.String(), "::1"}
	check := func(what, text string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Fatalf("%s lacks %q: %s", what, w, text)
			}
		}
		if strings.Contains(text, "[addr]") {
			t.Fatalf("%s redacts the gateway's own address: %s", what, text)
		}
	}

	var logs lockedBuffer
	r := start(t, Config{
		Gateway: addr, Serial: testSerial, HardwareID: testHWID, StateDir: t.TempDir(),
		CAFile: ca.File, Netstack: true, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	waitFor(t, 10*time.Second, "a failed login in the log", func() bool { return strings.Contains(logs.String(), "login failed; retrying") })
	r.cancel()
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "login failed; retrying") {
			check("the agent's log line", line)
			t.Logf("agent log: %s", line)
			break
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err = ClientLogin(ctx, ClientConfig{Gateway: addr, TLS: TLSOptions{CAFile: ca.File}, Account: "a", Password: "p"})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("client login: %v, want ErrUnavailable", err)
	}
	check("the client's error", err.Error())
	t.Logf("client error: %v", err)
}
