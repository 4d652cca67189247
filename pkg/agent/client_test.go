package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// fakeClientService grants sessions with a configurable gateway peer.
type fakeClientService struct {
	gatewayv1.UnimplementedClientServiceServer
	allowedIPs []string
	noEndpoint bool        // the grant names no endpoint (the gRPC host stands in)
	keepalive  uint32      // the grant's persistent keepalive
	listFails  atomic.Bool // ListDevices answers Unauthenticated
	// peer, when set, is the gateway peer of OpenSession and GetSession
	// (the session's current gateway); nil: OpenSession's fixed peer and
	// GetSession names none.
	peer atomic.Pointer[gatewayv1.GatewayPeer]

	mu     sync.Mutex
	keys   [][]byte
	closed []string
}

func (f *fakeClientService) ListDevices(context.Context, *gatewayv1.ListBoundDevicesRequest) (*gatewayv1.ListBoundDevicesResponse, error) {
	if f.listFails.Load() {
		return nil, status.Error(codes.Unauthenticated, "unknown or expired access token")
	}
	return &gatewayv1.ListBoundDevicesResponse{Devices: []*gatewayv1.BoundDevice{{SerialNumber: testSerial, Online: true}}}, nil
}

func (f *fakeClientService) OpenSession(_ context.Context, req *gatewayv1.OpenSessionRequest) (*gatewayv1.OpenSessionResponse, error) {
	f.mu.Lock()
	f.keys = append(f.keys, req.GetClientPublicKey())
	n := len(f.keys)
	f.mu.Unlock()
	gwKey := make([]byte, 32)
	gwKey[0] = 9
	endpoint := "127.0.0.1:9"
	if f.noEndpoint {
		endpoint = ""
	}
	peer := &gatewayv1.GatewayPeer{PublicKey: gwKey, Endpoint: endpoint, AllowedIps: f.allowedIPs, PersistentKeepaliveSeconds: f.keepalive}
	if p := f.peer.Load(); p != nil {
		peer = p
	}
	return &gatewayv1.OpenSessionResponse{
		SessionId:       "s" + string(rune('0'+n)),
		ClientAddresses: []string{"100.95.0.1/32"},
		DeviceAddresses: []string{deviceAddr},
		Gateway:         peer,
		ExpiresAt:       timestamppb.New(time.Now().Add(time.Hour)),
		Mtu:             1420,
	}, nil
}

func (f *fakeClientService) GetSession(_ context.Context, req *gatewayv1.GetSessionRequest) (*gatewayv1.SessionInfo, error) {
	return &gatewayv1.SessionInfo{SessionId: req.GetSessionId(), Gateway: f.peer.Load()}, nil
}

func (f *fakeClientService) CloseSession(_ context.Context, req *gatewayv1.CloseSessionRequest) (*gatewayv1.CloseSessionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = append(f.closed, req.GetSessionId())
	return &gatewayv1.CloseSessionResponse{}, nil
}

func serveClientService(t *testing.T, f *fakeClientService) ClientConfig {
	t.Helper()
	cfg, _ := serveClientServiceStoppable(t, f)
	return cfg
}

// serveClientServiceStoppable is serveClientService that also returns the
// server, to stop it early.
func serveClientServiceStoppable(t *testing.T, f *fakeClientService) (ClientConfig, *grpc.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	gatewayv1.RegisterClientServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ClientConfig{
		Gateway: ln.Addr().String(), TLS: TLSOptions{Insecure: true}, Token: "tok", Netstack: true,
		Logger: slog.New(slog.DiscardHandler), PollInterval: 50 * time.Millisecond,
	}, srv
}

// A grant the client cannot use is closed on the gateway, not left open.
func TestOpenSessionUnusableGrantIsClosed(t *testing.T) {
	f := &fakeClientService{allowedIPs: []string{"not-a-prefix"}}
	cfg := serveClientService(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := OpenSession(ctx, cfg, testSerial)
	if err == nil || !strings.Contains(err.Error(), "gateway.allowed_ips[0]") {
		t.Fatalf("OpenSession with a bad grant: %v, want an error naming gateway.allowed_ips[0]", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.closed) != 1 || f.closed[0] != "s1" {
		t.Fatalf("sessions closed on the gateway: %v, want [s1]", f.closed)
	}
}

// Every session has a fresh valid key; the session ends when the gateway
// refuses the token, and Close after that still closes on the gateway.
func TestSessionFreshKeyAndEnd(t *testing.T) {
	f := &fakeClientService{allowedIPs: []string{virtualNetwork}}
	cfg := serveClientService(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s1, err := OpenSession(ctx, cfg, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := OpenSession(ctx, cfg, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	k1, k2 := f.keys[0], f.keys[1]
	f.mu.Unlock()
	if len(k1) != 32 || len(k2) != 32 || string(k1) == string(k2) {
		t.Fatalf("session keys %x and %x: want two different 32-byte keys", k1, k2)
	}
	if _, err := curve25519.X25519(make([]byte, 32), k1); err != nil {
		t.Fatalf("key 1 is not a usable Curve25519 point: %v", err)
	}
	if s1.Net() == nil || s1.ID() != "s1" || len(s1.ClientAddresses()) != 1 || s1.DeviceAddresses()[0].String() != deviceAddr {
		t.Fatalf("session 1: id %q client %v device %v", s1.ID(), s1.ClientAddresses(), s1.DeviceAddresses())
	}
	// Still standing after a few polls.
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := s1.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a standing session: %v", err)
	}
	wcancel()
	f.listFails.Store(true)
	wctx, wcancel = context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := s1.Wait(wctx); !errors.Is(err, ErrSessionEnded) || !strings.Contains(err.Error(), "access token") {
		t.Fatalf("Wait after the token was refused: %v", err)
	}
	if err := s1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.Join(f.closed, ",") != "s1,s2" {
		t.Fatalf("closed on the gateway: %v, want s1,s2 once each", f.closed)
	}
}

func TestClientConfigErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dir := t.TempDir()
	if _, err := ListDevices(ctx, ClientConfig{Gateway: "127.0.0.1:1", TLS: TLSOptions{Insecure: true}, StateDir: dir}); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("no token: %v, want ErrNotLoggedIn", err)
	}
	if _, err := LoadClientConfig(dir); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("empty state dir: %v, want ErrNotLoggedIn", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gateway.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadClientConfig(dir); err == nil || !strings.Contains(err.Error(), "gateway.json") {
		t.Fatalf("corrupt gateway.json: %v", err)
	}
	for _, tc := range []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{Token: "t"}, "gateway: empty"},
		{ClientConfig{Gateway: "nohost", Token: "t"}, "want host:port"},
		{ClientConfig{Gateway: "127.0.0.1:1", Token: "t", TLS: TLSOptions{Insecure: true, Pin: "x"}}, "at most one"},
		{ClientConfig{Gateway: "127.0.0.1:1", Token: "t", Interface: "a-very-long-interface-name"}, "longer than 15 bytes"},
	} {
		if _, err := OpenSession(ctx, tc.cfg, testSerial); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := OpenSession(ctx, ClientConfig{Gateway: "127.0.0.1:1", Token: "t", TLS: TLSOptions{Insecure: true}}, "bad serial!"); err == nil || !strings.Contains(err.Error(), "serial_number") {
		t.Errorf("bad serial: %v", err)
	}
	if _, _, err := ClientLogin(ctx, ClientConfig{Gateway: "127.0.0.1:1", Account: "a"}); err == nil || !strings.Contains(err.Error(), "password: empty") {
		t.Errorf("login without a password: %v", err)
	}
}

// A throttled client login says when to retry instead of "wrong password".
func TestClientErrorThrottledSaysWhenToRetry(t *testing.T) {
	st, err := status.New(codes.Unauthenticated, "wrong account or password, or too many attempts").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	msg := clientError("login", st.Err()).Error()
	if !strings.Contains(msg, "retry in 1m30s") || strings.Contains(msg, "wrong account or password (gateway said") {
		t.Fatalf("throttled login: %q", msg)
	}
	plain := clientError("login", status.Error(codes.Unauthenticated, "wrong account or password, or too many attempts")).Error()
	if !strings.Contains(plain, "login: wrong account or password") {
		t.Fatalf("plain refusal: %q", plain)
	}
}

// wgGatewayPeer is the gateway peer message for the fake gateway g's
// WireGuard device.
func wgGatewayPeer(g *fakeGateway) *gatewayv1.GatewayPeer {
	g.mu.Lock()
	defer g.mu.Unlock()
	return &gatewayv1.GatewayPeer{
		PublicKey: bytes.Clone(g.wgPub[:]), Endpoint: net.JoinHostPort("127.0.0.1", strconv.Itoa(g.wgPort)),
		AllowedIps: []string{virtualNetwork}, PersistentKeepaliveSeconds: 25,
	}
}

// setClientPeer adds (or, with remove, removes) a session's client key as a
// peer of the fake gateway g, as the gateway hosting the session does.
func setClientPeer(t *testing.T, g *fakeGateway, key []byte, addr string, remove bool) {
	t.Helper()
	conf := "public_key=" + hex.EncodeToString(key) + "\n"
	if remove {
		conf += "remove=true\n"
	} else {
		conf += "allowed_ip=" + addr + "\n"
	}
	g.mu.Lock()
	dev := g.wg
	g.mu.Unlock()
	if err := dev.IpcSet(conf); err != nil {
		t.Fatal(err)
	}
}

// A session follows its device to another gateway: when GetSession names
// another gateway peer, the session replaces its WireGuard peer (same key,
// same addresses) and its pings go through the new gateway, the old one
// having dropped the client. A peer it cannot use is refused and the
// working one kept.
func TestSessionFollowsGatewayPeer(t *testing.T) {
	const clientAddr = "100.95.0.1/32"
	gw1 := newFakeGatewayNet(t, nil, gatewayAddr, clientAddr, virtualNetwork)
	gw2 := newFakeGatewayNet(t, nil, gatewayAddr, clientAddr, virtualNetwork)
	f := &fakeClientService{}
	f.peer.Store(wgGatewayPeer(gw1))
	cfg := serveClientService(t, f)
	var logs lockedBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	var (
		hookMu sync.Mutex
		hooked []WGQuick
	)
	cfg.OnGatewayPeer = func(w WGQuick) {
		hookMu.Lock()
		defer hookMu.Unlock()
		hooked = append(hooked, w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := OpenSession(ctx, cfg, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	f.mu.Lock()
	clientKey := f.keys[0]
	f.mu.Unlock()
	setClientPeer(t, gw1, clientKey, clientAddr, false)
	src, dst := s.ClientAddresses()[0].Addr(), netip.MustParseAddr(gatewayAddr)
	pingThrough := func(what string) {
		t.Helper()
		seq := 0
		poll.Must(t, 15*time.Second, "a ping "+what, func() error {
			seq++
			return pingVia(s.Net(), src, dst, seq)
		})
	}
	pingThrough("through the first gateway")
	if gw1.lastHandshake([32]byte(clientKey)).IsZero() {
		t.Fatal("a ping went through, but the first gateway saw no handshake from the client")
	}

	// The device moves: the second gateway hosts the session now, the first
	// drops the client; GetSession names the second.
	setClientPeer(t, gw2, clientKey, clientAddr, false)
	setClientPeer(t, gw1, clientKey, clientAddr, true)
	f.peer.Store(wgGatewayPeer(gw2))
	pingThrough("through the second gateway")
	if gw2.lastHandshake([32]byte(clientKey)).IsZero() {
		t.Fatal("a ping went through, but the second gateway saw no handshake from the client")
	}
	key, endpoint, changes := s.GatewayPeer()
	if key != gw2.wgPub || endpoint != wgGatewayPeer(gw2).GetEndpoint() || changes != 1 {
		t.Fatalf("gateway peer %x at %s after %d changes, want %x at %s after 1", key, endpoint, changes, gw2.wgPub, wgGatewayPeer(gw2).GetEndpoint())
	}
	if w := s.WGQuick(); w.PeerPublicKey != gw2.wgPub || w.Endpoint != endpoint || w.Addresses[0].String() != clientAddr {
		t.Fatalf("wg-quick configuration after the move: peer %x at %s, addresses %v", w.PeerPublicKey, w.Endpoint, w.Addresses)
	}
	hookMu.Lock()
	if len(hooked) != 1 || hooked[0].PeerPublicKey != gw2.wgPub || hooked[0].PrivateKey != s.WGQuick().PrivateKey {
		t.Fatalf("OnGatewayPeer calls: %d (%+v), want one with the second gateway's key and the session's own private key", len(hooked), hooked)
	}
	hookMu.Unlock()

	// An unusable peer (a short key) is refused: the session keeps the
	// second gateway and its pings keep going through it.
	bad := wgGatewayPeer(gw2)
	bad.PublicKey = bad.PublicKey[:31]
	f.peer.Store(bad)
	poll.Must(t, 10*time.Second, "the unusable peer refused in the log", func() error {
		if !strings.Contains(logs.String(), "unusable gateway peer") || !strings.Contains(logs.String(), "gateway.public_key: 31 bytes") {
			return errors.New("not logged yet")
		}
		return nil
	})
	pingThrough("through the second gateway after an unusable peer")
	if _, _, changes := s.GatewayPeer(); changes != 1 {
		t.Fatalf("%d peer changes after an unusable peer, want still 1", changes)
	}
	if n := strings.Count(logs.String(), "unusable gateway peer"); n != 1 {
		t.Fatalf("the unusable peer was logged %d times, want once", n)
	}
	// A usable peer after it is followed again: back to the first gateway.
	setClientPeer(t, gw1, clientKey, clientAddr, false)
	setClientPeer(t, gw2, clientKey, clientAddr, true)
	f.peer.Store(wgGatewayPeer(gw1))
	pingThrough("through the first gateway again")
	if key, _, changes := s.GatewayPeer(); key != gw1.wgPub || changes != 2 {
		t.Fatalf("gateway peer %x after %d changes, want the first gateway's %x after 2", key, changes, gw1.wgPub)
	}
	select {
	case <-s.ended:
		t.Fatalf("the session ended: %v", s.endErr)
	default:
	}
}

// A client given several gateways of a fleet calls the next when one does
// not answer, and an open session whose gateway stops answering asks the
// next one, learns its peer there and follows it: its pings go through the
// new gateway.
func TestSessionFailsOverToAnotherGateway(t *testing.T) {
	const clientAddr = "100.95.0.1/32"
	wg1 := newFakeGatewayNet(t, nil, gatewayAddr, clientAddr, virtualNetwork)
	wg2 := newFakeGatewayNet(t, nil, gatewayAddr, clientAddr, virtualNetwork)
	fa, fb := &fakeClientService{}, &fakeClientService{}
	fa.peer.Store(wgGatewayPeer(wg1))
	fb.peer.Store(wgGatewayPeer(wg2))
	cfgA, srvA := serveClientServiceStoppable(t, fa)
	cfgB := serveClientService(t, fb)
	var logs lockedBuffer
	cfg := cfgA
	cfg.Gateway = cfgA.Gateway + "," + cfgB.Gateway
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := OpenSession(ctx, cfg, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	fa.mu.Lock()
	if len(fa.keys) != 1 {
		t.Fatalf("gateway A got %d OpenSession calls, want the first", len(fa.keys))
	}
	clientKey := fa.keys[0]
	fa.mu.Unlock()
	setClientPeer(t, wg1, clientKey, clientAddr, false)
	src, dst := s.ClientAddresses()[0].Addr(), netip.MustParseAddr(gatewayAddr)
	seq := 0
	poll.Must(t, 15*time.Second, "a ping through the first gateway", func() error {
		seq++
		return pingVia(s.Net(), src, dst, seq)
	})

	// Gateway A stops (gRPC and WireGuard alike, as a killed gateway); B
	// hosts the session now.
	srvA.Stop()
	setClientPeer(t, wg1, clientKey, clientAddr, true)
	setClientPeer(t, wg2, clientKey, clientAddr, false)
	poll.Must(t, 15*time.Second, "a ping through the second gateway", func() error {
		seq++
		return pingVia(s.Net(), src, dst, seq)
	})
	if key, _, n := s.GatewayPeer(); key != wg2.wgPub || n != 1 {
		t.Fatalf("gateway peer %x after %d changes, want the second gateway's %x after 1", key, n, wg2.wgPub)
	}
	if !strings.Contains(logs.String(), "asking the next one") {
		t.Fatal("the session did not log its move to the next gateway")
	}
	// One-shot calls skip the stopped gateway too.
	if devs, err := ListDevices(ctx, cfg); err != nil || len(devs) != 1 {
		t.Fatalf("ListDevices with the first gateway down: %v, %v", devs, err)
	}
	// With only the stopped gateway, the call fails as unavailable.
	if _, err := ListDevices(ctx, cfgA); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("ListDevices on a stopped gateway: %v, want ErrUnavailable", err)
	}
}

// Polls wait the interval ±25%, at random.
func TestPollWaitJitter(t *testing.T) {
	const interval = 2 * time.Second
	lo, hi := interval, time.Duration(0)
	for range 2000 {
		d := pollWait(interval)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < interval*3/4 || hi > interval*5/4 || hi-lo < interval/4 {
		t.Fatalf("poll waits from %v to %v; want spread over [%v, %v]", lo, hi, interval*3/4, interval*5/4)
	}
}

// The watcher's stale-handshake trigger: counted from the later of the last
// handshake and the last peer change, off without a keepalive or a tunnel.
func TestSessionStaleIn(t *testing.T) {
	lc := loginConfig{
		addrs: []netip.Prefix{netip.MustParsePrefix("100.95.0.1/32")}, mtu: 1420,
		peer: peerConfig{publicKey: [32]byte{9}, endpoint: netip.MustParseAddrPort("127.0.0.1:9"), allowedIPs: []netip.Prefix{netip.MustParsePrefix(virtualNetwork)}, keepalive: 25},
	}
	var priv [32]byte
	priv[0] = 1
	clamp(&priv)
	tun, err := newTunnel(lc, priv, true, "", slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.close()
	now := time.Now()
	s := &Session{tun: tun, peerSince: now.Add(-10 * time.Second)}
	if d, ok := s.staleIn(now); !ok || d != handshakeStaleFollow-10*time.Second {
		t.Fatalf("peer set 10s ago, no handshake: stale in %v (%v), want %v", d, ok, handshakeStaleFollow-10*time.Second)
	}
	s.peerSince = now.Add(-handshakeStaleFollow - time.Second)
	if d, ok := s.staleIn(now); !ok || d > 0 {
		t.Fatalf("peer set long ago, no handshake: stale in %v (%v), want now", d, ok)
	}
	tun.peer.keepalive = 0
	if _, ok := s.staleIn(now); ok {
		t.Fatal("without a keepalive the handshakes say nothing, but staleIn counted")
	}
	if _, ok := (&Session{}).staleIn(now); ok {
		t.Fatal("a session without a tunnel counted a stale handshake")
	}
}
