package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// fakeClientService grants sessions with a configurable gateway peer.
type fakeClientService struct {
	gatewayv1.UnimplementedClientServiceServer
	allowedIPs []string
	noEndpoint bool        // the grant names no endpoint (the gRPC host stands in)
	keepalive  uint32      // the grant's persistent keepalive
	listFails  atomic.Bool // ListDevices answers Unauthenticated

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
	return &gatewayv1.OpenSessionResponse{
		SessionId:       "s" + string(rune('0'+n)),
		ClientAddresses: []string{"100.95.0.1/32"},
		DeviceAddresses: []string{deviceAddr},
		Gateway:         &gatewayv1.GatewayPeer{PublicKey: gwKey, Endpoint: endpoint, AllowedIps: f.allowedIPs, PersistentKeepaliveSeconds: f.keepalive},
		ExpiresAt:       timestamppb.New(time.Now().Add(time.Hour)),
		Mtu:             1420,
	}, nil
}

func (f *fakeClientService) CloseSession(_ context.Context, req *gatewayv1.CloseSessionRequest) (*gatewayv1.CloseSessionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = append(f.closed, req.GetSessionId())
	return &gatewayv1.CloseSessionResponse{}, nil
}

func serveClientService(t *testing.T, f *fakeClientService) ClientConfig {
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
	}
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
