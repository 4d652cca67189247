package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// ping sends one ICMP echo from the agent's netstack to the gateway's
// address through the WireGuard tunnel and waits for the reply.
func ping(a *Agent, seq int) error {
	n := a.Net()
	if n == nil {
		return errors.New("no netstack")
	}
	addrs := a.Addresses()
	if len(addrs) == 0 {
		return errors.New("no address")
	}
	return pingVia(n, addrs[0].Addr(), netip.MustParseAddr(gatewayAddr), seq)
}

// pingVia sends one ICMP echo from src on the netstack n to dst and waits
// up to 2 s for the reply.
func pingVia(n *netstack.Net, src, dst netip.Addr, seq int) error {
	c, err := n.DialPingAddr(src, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	req := icmp.Echo{ID: 1, Seq: seq, Data: []byte("dasset agent test")}
	b, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &req}).Marshal(nil)
	if err != nil {
		return err
	}
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write(b); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	nr, err := c.Read(buf)
	if err != nil {
		return err
	}
	m, err := icmp.ParseMessage(1, buf[:nr])
	if err != nil {
		return err
	}
	rep, ok := m.Body.(*icmp.Echo)
	if !ok || rep.Seq != seq || !bytes.Equal(rep.Data, req.Data) {
		return errors.New("unexpected ICMP reply")
	}
	return nil
}

// pingEventually pings up to 10 times (the first may race the handshake).
func pingEventually(t *testing.T, a *Agent) {
	t.Helper()
	var err error
	for i := 0; i < 10; i++ {
		if err = ping(a, i+1); err == nil {
			return
		}
	}
	t.Fatalf("no ping reply through the tunnel: %v", err)
}

func TestKeyPersistedAcrossRunsAndTunnelWorks(t *testing.T) {
	g := newFakeGateway(t, nil)
	state := filepath.Join(t.TempDir(), "state")

	logs := &lockedBuffer{}
	cfg1 := testConfig(t, g, state)
	cfg1.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r1 := start(t, cfg1)
	r1.waitReady(t)
	key1 := r1.a.PublicKey()

	// The private key is 0600 in a 0700 directory, base64 of a clamped key
	// whose public half is what Login was sent.
	st, err := os.Stat(filepath.Join(state, "private.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("private.key mode %v, want 0600", st.Mode().Perm())
	}
	dst, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v, want 0700", dst.Mode().Perm())
	}
	raw, err := os.ReadFile(filepath.Join(state, "private.key"))
	if err != nil {
		t.Fatal(err)
	}
	priv, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(priv) != 32 {
		t.Fatalf("private.key is not base64 of 32 bytes: %v", err)
	}
	if priv[0]&7 != 0 || priv[31]&128 != 0 || priv[31]&64 == 0 {
		t.Fatal("private key is not clamped")
	}
	var p [32]byte
	copy(p[:], priv)
	if pub, _ := publicKey(p); pub != key1 {
		t.Fatal("PublicKey does not derive from private.key")
	}

	if got := r1.a.Addresses(); len(got) != 1 || got[0] != netip.MustParsePrefix(deviceAddr) {
		t.Fatalf("Addresses() = %v", got)
	}
	tok, err := os.ReadFile(filepath.Join(state, "token"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(tok)) != "token-1" {
		t.Fatalf("token file holds %q", tok)
	}
	if st, _ := os.Stat(filepath.Join(state, "token")); st.Mode().Perm() != 0o600 {
		t.Fatalf("token mode %v, want 0600", st.Mode().Perm())
	}

	pingEventually(t, r1.a)
	if g.lastHandshake(key1).IsZero() {
		t.Fatal("the gateway saw no handshake although a ping went through")
	}

	if err := r1.stop(t); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if r1.a.Net() != nil || r1.a.Addresses() != nil {
		t.Fatal("tunnel still up after Run returned")
	}
	// Even the debug log holds neither the serial number nor the hardware id.
	out := logs.String()
	for _, want := range []string{"logged in", "tunnel up", "sync stream connected", "tunnel down"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	for _, leak := range []string{testSerial, testHWID, "127.0.0.1"} {
		if strings.Contains(out, leak) {
			t.Errorf("log leaks %q", leak)
		}
	}

	r2 := start(t, testConfig(t, g, state))
	r2.waitReady(t)
	if r2.a.PublicKey() != key1 {
		t.Fatal("second run made a new key")
	}
	g.mu.Lock()
	logins := append([]*gatewayv1.DeviceLoginRequest(nil), g.logins...)
	g.mu.Unlock()
	if len(logins) != 2 {
		t.Fatalf("%d logins, want 2", len(logins))
	}
	for i, l := range logins {
		if !bytes.Equal(l.GetPublicKey(), key1[:]) {
			t.Fatalf("login %d sent another key", i+1)
		}
		if l.GetAgentVersion() != "test" || l.GetSerialNumber() != testSerial || l.GetHardwareId() != testHWID {
			t.Fatalf("login %d: %v", i+1, l)
		}
	}
	pingEventually(t, r2.a)
}

// lockedBuffer is a bytes.Buffer for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestSyncReconnectsAfterStreamDrops(t *testing.T) {
	g := newFakeGateway(t, nil)
	const drops = 4
	marker := make(chan struct{})
	var lastEnded atomic.Bool
	g.syncFn = func(n int, stream gatewayv1.DeviceService_SyncServer) error {
		if err := stream.Send(keepalive("instance-1")); err != nil {
			return err
		}
		if n <= drops {
			if n%2 == 0 {
				return nil // clean end of stream
			}
			return status.Error(codes.Unavailable, "gateway going away")
		}
		select {
		case <-marker:
			// The last stream still delivers: a second keepalive on it.
			if err := stream.Send(keepalive("instance-1")); err != nil {
				return err
			}
		case <-stream.Context().Done():
			lastEnded.Store(true)
			return nil
		}
		<-stream.Context().Done()
		lastEnded.Store(true)
		return nil
	}
	var keepalives atomic.Int32
	cfg := testConfig(t, g, t.TempDir())
	cfg.OnEvent = func(ev *gatewayv1.SyncEvent) {
		if ev.GetKeepalive() != nil {
			keepalives.Add(1)
		}
	}
	r := start(t, cfg)
	r.waitReady(t)
	waitFor(t, 10*time.Second, "the agent to reconnect after every drop", func() bool { return g.syncCount() >= drops+1 })
	// The last stream stays open: a keepalive sent on it after all the
	// drops reaches the agent, with no further reconnect and no re-login.
	close(marker)
	waitFor(t, 10*time.Second, "the keepalive sent on the last stream", func() bool { return keepalives.Load() >= drops+2 })
	if lastEnded.Load() {
		t.Fatal("the agent left the last stream")
	}
	if n := g.syncCount(); n != drops+1 {
		t.Fatalf("%d Sync calls, want %d", n, drops+1)
	}
	if n := g.loginCount(); n != 1 {
		t.Fatalf("%d logins, want 1 (a dropped stream needs no new login)", n)
	}
	if n := keepalives.Load(); n != drops+2 {
		t.Fatalf("OnEvent saw %d keepalives, want %d", n, drops+2)
	}
	g.mu.Lock()
	for i, tok := range g.syncTokens {
		if tok != "token-1" {
			t.Errorf("Sync %d sent token %q", i+1, tok)
		}
	}
	g.mu.Unlock()
	pingEventually(t, r.a)
}

// A restarted gateway has lost its WireGuard session keys. The agent must
// start a new handshake as soon as it notices (stream reconnect, or a new
// gateway_instance in a keepalive), instead of waiting for WireGuard's own
// timers (15 s or more with a 25 s persistent keepalive).
func TestForcedHandshakeAfterGatewayRestart(t *testing.T) {
	for _, how := range []string{"stream reconnect", "new gateway instance"} {
		t.Run(how, func(t *testing.T) {
			g := newFakeGateway(t, nil)
			drop := make(chan struct{})
			newInstance := make(chan struct{})
			g.syncFn = func(n int, stream gatewayv1.DeviceService_SyncServer) error {
				if err := stream.Send(keepalive("instance-1")); err != nil {
					return err
				}
				if n == 1 {
					select {
					case <-drop:
						return status.Error(codes.Unavailable, "restarting")
					case <-newInstance:
						if err := stream.Send(keepalive("instance-2")); err != nil {
							return err
						}
					case <-stream.Context().Done():
						return nil
					}
				}
				<-stream.Context().Done()
				return nil
			}
			var clock testClock
			cfg := testConfig(t, g, t.TempDir())
			cfg.Now = clock.Now
			events := countEvents(&cfg)
			r := start(t, cfg)
			r.waitReady(t)
			pingEventually(t, r.a)
			waitFor(t, 5*time.Second, "the first Sync event", func() bool { return events.Load() >= 1 })
			key := r.a.PublicKey()
			if g.lastHandshake(key).IsZero() {
				t.Fatal("no first handshake")
			}
			// The minimum gap between forced handshakes passes.
			clock.Advance(minHandshakeGap)

			g.restartWireGuard()
			if !g.lastHandshake(key).IsZero() {
				t.Fatal("restarted gateway still has a handshake")
			}
			if how == "stream reconnect" {
				close(drop)
			} else {
				close(newInstance)
			}
			waitFor(t, 8*time.Second, "a handshake with the restarted gateway", func() bool {
				return !g.lastHandshake(key).IsZero()
			})
			pingEventually(t, r.a)
		})
	}
}

// The whole gateway restarts: its gRPC server goes away for a moment and
// comes back on the same address with a new instance id, and its WireGuard
// device has lost every session key. The agent reconnects on its own, keeps
// its token, and handshakes with the new WireGuard device at once.
func TestGatewayProcessRestart(t *testing.T) {
	g := newFakeGateway(t, nil)
	var clock testClock
	cfg := testConfig(t, g, t.TempDir())
	logs := newLogCounter(cfg.Logger)
	cfg.Now, cfg.Logger = clock.Now, slog.New(logs)
	events := countEvents(&cfg)
	r := start(t, cfg)
	r.waitReady(t)
	pingEventually(t, r.a)
	waitFor(t, 5*time.Second, "the first Sync event", func() bool { return events.Load() >= 1 })
	clock.Advance(minHandshakeGap)
	key := r.a.PublicKey()

	g.mu.Lock()
	g.instance = "instance-2"
	g.mu.Unlock()
	g.restartWireGuard()
	// Down until the agent has seen its stream end and failed to reconnect.
	const ended = "sync stream ended; reconnecting"
	g.restartGRPC(func() {
		waitFor(t, 10*time.Second, "a failed reconnect while the gateway is down", func() bool { return logs.count(ended) >= 2 })
	})

	waitFor(t, 10*time.Second, "a Sync with the restarted gateway", func() bool { return g.syncCount() >= 2 })
	waitFor(t, 8*time.Second, "a handshake with the restarted gateway", func() bool { return !g.lastHandshake(key).IsZero() })
	pingEventually(t, r.a)
	if n := g.loginCount(); n != 1 {
		t.Fatalf("%d logins, want 1 (the token survived the restart)", n)
	}
}

func TestSyncUnauthenticatedLogsInAgain(t *testing.T) {
	g := newFakeGateway(t, nil)
	drop := make(chan struct{})
	g.syncFn = func(n int, stream gatewayv1.DeviceService_SyncServer) error {
		if err := stream.Send(keepalive("instance-1")); err != nil {
			return err
		}
		if n == 1 {
			select {
			case <-drop:
				return status.Error(codes.Unavailable, "restarting")
			case <-stream.Context().Done():
				return nil
			}
		}
		<-stream.Context().Done()
		return nil
	}
	r := start(t, testConfig(t, g, t.TempDir()))
	r.waitReady(t)
	waitFor(t, 5*time.Second, "the first Sync", func() bool { return g.syncCount() >= 1 })

	// The gateway was wiped: it forgets every token and drops the stream.
	// The agent reconnects with the old token, is refused, and logs in again.
	g.forgetTokens()
	close(drop)

	waitFor(t, 10*time.Second, "a Sync with a new token", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.syncTokens) >= 3 && g.syncTokens[len(g.syncTokens)-1] == "token-2"
	})
	g.mu.Lock()
	syncTokens := append([]string(nil), g.syncTokens...)
	logins := append([]*gatewayv1.DeviceLoginRequest(nil), g.logins...)
	g.mu.Unlock()
	if want := []string{"token-1", "token-1", "token-2"}; strings.Join(syncTokens, ",") != strings.Join(want, ",") {
		t.Fatalf("Sync tokens %v, want %v", syncTokens, want)
	}
	if len(logins) != 2 {
		t.Fatalf("%d logins, want 2", len(logins))
	}
	if !bytes.Equal(logins[1].GetPublicKey(), logins[0].GetPublicKey()) {
		t.Error("re-login sent another key")
	}
	tok, err := os.ReadFile(filepath.Join(r.a.cfg.StateDir, "token"))
	if err != nil || strings.TrimSpace(string(tok)) != "token-2" {
		t.Fatalf("token file after re-login: %q, %v", tok, err)
	}
	pingEventually(t, r.a)
}

func TestRevokedStopsRun(t *testing.T) {
	g := newFakeGateway(t, nil)
	revoke := make(chan struct{})
	g.syncFn = func(n int, stream gatewayv1.DeviceService_SyncServer) error {
		if err := stream.Send(keepalive("instance-1")); err != nil {
			return err
		}
		select {
		case <-revoke:
		case <-stream.Context().Done():
			return nil
		}
		if err := stream.Send(&gatewayv1.SyncEvent{Event: &gatewayv1.SyncEvent_Revoked{Revoked: &gatewayv1.Revoked{Reason: "operator"}}}); err != nil {
			return err
		}
		<-stream.Context().Done()
		return nil
	}
	var revokedSeen atomic.Bool
	cfg := testConfig(t, g, t.TempDir())
	cfg.OnEvent = func(ev *gatewayv1.SyncEvent) {
		if ev.GetRevoked() != nil {
			revokedSeen.Store(true)
		}
	}
	r := start(t, cfg)
	r.waitReady(t)
	pingEventually(t, r.a)
	close(revoke)
	select {
	case err := <-r.done:
		r.done <- err
		if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "device revoked by the gateway") {
			t.Fatalf("Run = %v, want ErrRevoked", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Revoked")
	}
	if !revokedSeen.Load() {
		t.Error("OnEvent did not see Revoked")
	}
	if r.a.Net() != nil {
		t.Error("tunnel still up after revocation")
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "token")); !os.IsNotExist(err) {
		t.Errorf("token file still there after revocation: %v", err)
	}
	if n := g.loginCount(); n != 1 {
		t.Errorf("%d logins, want 1 (revocation is final)", n)
	}
}

func TestFatalLoginErrorsAreNotRetried(t *testing.T) {
	for _, tc := range []struct {
		code codes.Code
		want string
	}{
		{codes.Unauthenticated, "login refused: device not enrolled or wrong hardware id"},
		{codes.PermissionDenied, "another WireGuard key; an operator resets a pinned key with dassetctl devices reset-key"},
		{codes.InvalidArgument, "login refused: invalid login request"},
		{codes.FailedPrecondition, "login refused: key reset pending"},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			g := newFakeGateway(t, nil)
			g.loginErrs = []error{status.Error(tc.code, "key reset pending")}
			a, err := New(testConfig(t, g, t.TempDir()))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = a.Run(ctx)
			if ctx.Err() != nil {
				t.Fatal("Run kept retrying a refused login")
			}
			if !errors.Is(err, ErrLoginRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if n := g.loginCount(); n != 1 {
				t.Fatalf("%d logins, want 1", n)
			}
			select {
			case <-a.Ready():
				t.Fatal("Ready closed after a refused login")
			default:
			}
		})
	}
}

func TestTransientLoginErrorsAreRetried(t *testing.T) {
	g := newFakeGateway(t, nil)
	g.loginErrs = []error{
		status.Error(codes.Unavailable, "starting"),
		status.Error(codes.DeadlineExceeded, "slow"),
		status.Error(codes.Unavailable, "starting"),
	}
	r := start(t, testConfig(t, g, t.TempDir()))
	r.waitReady(t)
	if n := g.loginCount(); n != 4 {
		t.Fatalf("%d logins, want 4 (3 failures + 1 success)", n)
	}
	pingEventually(t, r.a)
}

func TestGatewayDownThenUp(t *testing.T) {
	// The gateway is down when the device boots: Login fails with
	// Unavailable and is retried until the gateway is back.
	g := newFakeGateway(t, nil)
	g.mu.Lock()
	g.srv.Stop()
	addr := g.addr
	g.mu.Unlock()
	cfg := testConfig(t, g, t.TempDir())
	logs := newLogCounter(cfg.Logger)
	cfg.Logger = slog.New(logs)
	r := start(t, cfg)
	// Two failed logins are the evidence that the agent tried while down.
	waitFor(t, 10*time.Second, "two failed logins", func() bool { return logs.count("login failed; retrying") >= 2 })
	select {
	case <-r.a.Ready():
		t.Fatal("Ready while the gateway is down")
	default:
	}
	g.serveGRPC(addr)
	r.waitReady(t)
	if n := g.loginCount(); n != 1 {
		t.Fatalf("%d logins reached the gateway, want 1", n)
	}
	pingEventually(t, r.a)
}

func TestPinnedTLSAndBindCode(t *testing.T) {
	dir := t.TempDir()
	cert, key, fp, err := tlsutil.EnsureSelfSigned(dir, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := tlsutil.ServerConfig(cert, key, "")
	if err != nil {
		t.Fatal(err)
	}
	g := newFakeGateway(t, credentials.NewTLS(srvTLS))
	state := t.TempDir()
	cfg := testConfig(t, g, state)
	cfg.Insecure = false
	cfg.Pin = "sha256:" + fp

	// No token before the first login.
	if _, _, _, err := BindCode(context.Background(), cfg); !errors.Is(err, ErrNoToken) {
		t.Fatalf("BindCode before login = %v, want ErrNoToken", err)
	}

	r := start(t, cfg)
	r.waitReady(t)
	pingEventually(t, r.a)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code, uri, exp, err := BindCode(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if code != "ABCD-1234" || uri != "dasset://bind?code=ABCD-1234" || !exp.Equal(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("BindCode = %q %q %v", code, uri, exp)
	}

	// A wiped gateway no longer knows the token.
	g.forgetTokens()
	if _, _, _, err := BindCode(ctx, cfg); err == nil || !strings.Contains(err.Error(), "does not accept the device token") {
		t.Fatalf("BindCode with an unknown token = %v", err)
	}
}

func TestWrongPinNeverLogsIn(t *testing.T) {
	dir := t.TempDir()
	cert, key, _, err := tlsutil.EnsureSelfSigned(dir, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := tlsutil.ServerConfig(cert, key, "")
	if err != nil {
		t.Fatal(err)
	}
	g := newFakeGateway(t, credentials.NewTLS(srvTLS))
	cfg := testConfig(t, g, t.TempDir())
	cfg.Insecure = false
	cfg.Pin = strings.Repeat("ab", 32)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
	if n := g.loginCount(); n != 0 {
		t.Fatalf("the gateway saw %d logins through a connection whose pin did not match", n)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	base := Config{Gateway: "127.0.0.1:8443", Serial: testSerial, HardwareID: testHWID, Netstack: true}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no gateway", func(c *Config) { c.Gateway = "" }, "gateway: empty"},
		{"gateway without port", func(c *Config) { c.Gateway = "gw.example" }, "want host:port"},
		{"bad serial", func(c *Config) { c.Serial = "SN 1" }, "serial_number"},
		{"no hwid", func(c *Config) { c.HardwareID = "" }, "hardware_id"},
		{"pin and CA", func(c *Config) { c.Pin = strings.Repeat("00", 32); c.CAFile = "/ca.pem" }, "at most one"},
		{"pin and insecure", func(c *Config) { c.Pin = strings.Repeat("00", 32); c.Insecure = true }, "at most one"},
		{"bad pin", func(c *Config) { c.Pin = "abc" }, "pin: 3 hex digits"},
		{"long interface", func(c *Config) { c.Netstack = false; c.Interface = "a-very-long-ifname" }, "longer than 15"},
		{"backoff", func(c *Config) { c.MinBackoff = time.Second; c.MaxBackoff = time.Millisecond }, "max backoff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.StateDir = t.TempDir()
			tc.mod(&c)
			_, err := New(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestCorruptKeyIsNotReplaced(t *testing.T) {
	state := t.TempDir()
	path := filepath.Join(state, "private.key")
	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{Gateway: "127.0.0.1:8443", Serial: testSerial, HardwareID: testHWID, Netstack: true, StateDir: state})
	if err == nil || !strings.Contains(err.Error(), "private.key") {
		t.Fatalf("New with a corrupt key = %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "not a key" {
		t.Fatal("corrupt key file was overwritten")
	}
}

func TestBackoffBounds(t *testing.T) {
	b := newBackoff(250*time.Millisecond, 10*time.Second)
	prevMax := time.Duration(0)
	for i := 0; i < 20; i++ {
		cur := b.cur
		d := b.next()
		if d < cur/2 || d >= cur || d > 10*time.Second {
			t.Fatalf("step %d: delay %v outside [%v, %v)", i, d, cur/2, cur)
		}
		if cur < prevMax {
			t.Fatalf("step %d: backoff shrank", i)
		}
		prevMax = cur
	}
	if b.cur != 10*time.Second {
		t.Fatalf("backoff did not reach its maximum: %v", b.cur)
	}
	b.reset()
	if b.cur != 250*time.Millisecond {
		t.Fatal("reset did not return to the minimum")
	}
}

// Forced handshakes are at least minHandshakeGap apart on the agent's
// clock: one asked for sooner leaves the peer alone.
func TestForcedHandshakesAreSpaced(t *testing.T) {
	g := newFakeGateway(t, nil)
	var clock testClock
	cfg := testConfig(t, g, t.TempDir())
	cfg.Now = clock.Now
	events := countEvents(&cfg)
	r := start(t, cfg)
	r.waitReady(t)
	waitFor(t, 5*time.Second, "the first Sync event", func() bool { return events.Load() >= 1 })
	peerSince := func() time.Time {
		r.a.mu.Lock()
		defer r.a.mu.Unlock()
		return r.a.tun.peerSince
	}
	first := peerSince()
	clock.Advance(minHandshakeGap - time.Millisecond)
	r.a.forceHandshake("too soon")
	if got := peerSince(); !got.Equal(first) {
		t.Fatalf("a forced handshake %v after the last one re-created the peer", got.Sub(first))
	}
	clock.Advance(time.Millisecond)
	r.a.forceHandshake("due")
	if got := peerSince(); !got.After(first) {
		t.Fatal("a forced handshake minHandshakeGap after the last one left the peer alone")
	}
	pingEventually(t, r.a)
}

// A throttled login comes back as Unauthenticated (the gateway answers an
// unknown device, a wrong hardware id and "too many attempts" alike) with a
// google.rpc.RetryInfo hint: the agent waits at least the hint, far longer
// than its own backoff here, and tries again instead of giving up.
func TestThrottledLoginHonoursRetryHint(t *testing.T) {
	g := newFakeGateway(t, nil)
	const hint = 700 * time.Millisecond
	st, err := status.New(codes.Unauthenticated, "device not enrolled, wrong hardware id, or too many attempts").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(hint)})
	if err != nil {
		t.Fatal(err)
	}
	g.loginErrs = []error{st.Err()}
	began := time.Now()
	r := start(t, testConfig(t, g, t.TempDir())) // backoff 20ms..200ms
	r.waitReady(t)
	if waited := time.Since(began); waited < hint {
		t.Fatalf("logged in after %v, before the %v hint", waited, hint)
	}
	if n := g.loginCount(); n != 2 {
		t.Fatalf("%d logins, want 2 (throttled + success)", n)
	}
}
