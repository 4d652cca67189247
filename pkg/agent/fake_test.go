package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

const (
	testSerial     = "SN-0001"
	testHWID       = "HWID-ABCDEF"
	gatewayAddr    = "100.80.0.1"
	deviceAddr     = "100.80.0.2/32"
	virtualNetwork = "100.80.0.0/12"
)

// fakeGateway is an in-process DeviceService on loopback with a real
// wireguard-go peer on netstack behind it.
type fakeGateway struct {
	gatewayv1.UnimplementedDeviceServiceServer
	t       *testing.T
	addr    string
	srv     *grpc.Server
	srvOpts []grpc.ServerOption

	// The virtual network the fake hands out.
	gwAddr, devAddr, vnet string

	wgPriv [32]byte
	wgPub  [32]byte

	mu         sync.Mutex
	wg         *device.Device
	wgNet      *netstack.Net
	wgPort     int
	peers      map[[32]byte]bool // device keys admitted, restored after a WireGuard restart
	logins     []*gatewayv1.DeviceLoginRequest
	loginErrs  []error // returned by the next Logins, in order, before any success
	tokens     map[string]bool
	syncTokens []string
	// syncFn serves the n-th Sync call (n from 1); nil means: send one
	// keepalive, then block until the stream's context ends.
	syncFn    func(n int, stream gatewayv1.DeviceService_SyncServer) error
	bindCalls int
	instance  string // gateway_instance of the default Sync
}

func newFakeGateway(t *testing.T, creds credentials.TransportCredentials) *fakeGateway {
	t.Helper()
	return newFakeGatewayNet(t, creds, gatewayAddr, deviceAddr, virtualNetwork)
}

func newFakeGatewayNet(t *testing.T, creds credentials.TransportCredentials, gwAddr, devAddr, vnet string) *fakeGateway {
	t.Helper()
	g := &fakeGateway{t: t, peers: map[[32]byte]bool{}, tokens: map[string]bool{}, gwAddr: gwAddr, devAddr: devAddr, vnet: vnet}
	if _, err := rand.Read(g.wgPriv[:]); err != nil {
		t.Fatal(err)
	}
	clamp(&g.wgPriv)
	pub, err := publicKey(g.wgPriv)
	if err != nil {
		t.Fatal(err)
	}
	g.wgPub = pub
	g.startWireGuard(0)
	t.Cleanup(func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		closeWireGuard(g.wg)
	})

	if creds != nil {
		g.srvOpts = append(g.srvOpts, grpc.Creds(creds))
	}
	g.serveGRPC("127.0.0.1:0")
	t.Cleanup(func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.srv.Stop()
	})
	return g
}

// serveGRPC starts the gRPC server on addr.
func (g *fakeGateway) serveGRPC(addr string) {
	g.t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		g.t.Fatal(err)
	}
	srv := grpc.NewServer(g.srvOpts...)
	gatewayv1.RegisterDeviceServiceServer(srv, g)
	go func() { _ = srv.Serve(ln) }()
	g.mu.Lock()
	g.srv, g.addr = srv, ln.Addr().String()
	g.mu.Unlock()
}

// restartGRPC stops the gRPC server (dropping every stream and connection),
// runs whileDown, and starts a new one on the same address.
func (g *fakeGateway) restartGRPC(whileDown func()) {
	g.mu.Lock()
	srv, addr := g.srv, g.addr
	g.mu.Unlock()
	srv.Stop()
	whileDown()
	g.serveGRPC(addr)
}

// startWireGuard (re)creates the gateway's WireGuard device on port (0 =
// any) with the same key and the admitted peers, as a restarted gateway
// would: its session keys are gone. Callers hold no lock.
func (g *fakeGateway) startWireGuard(port int) {
	g.t.Helper()
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr(g.gwAddr)}, nil, 1420)
	if err != nil {
		g.t.Fatal(err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), &device.Logger{Verbosef: device.DiscardLogf, Errorf: device.DiscardLogf})
	conf := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(g.wgPriv[:]), port)
	g.mu.Lock()
	for k := range g.peers {
		conf += fmt.Sprintf("public_key=%s\nallowed_ip=%s\n", hex.EncodeToString(k[:]), g.devAddr)
	}
	g.mu.Unlock()
	if err := dev.IpcSet(conf); err != nil {
		g.t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		g.t.Fatal(err)
	}
	got, err := dev.IpcGet()
	if err != nil {
		g.t.Fatal(err)
	}
	p := uapiField(got, "listen_port")
	lp, err := strconv.Atoi(p)
	if err != nil || lp == 0 {
		g.t.Fatalf("gateway listen_port %q", p)
	}
	g.mu.Lock()
	g.wg, g.wgNet, g.wgPort = dev, tnet, lp
	g.mu.Unlock()
}

// closeWireGuard takes dev down before closing it. Down returns once no
// receive routine is left, so no packet (a late echo reply) is being
// written into the netstack when Close closes its channel: wireguard-go's
// netstack TUN races WriteNotify with Close otherwise (the race detector
// saw it once in five runs; WireGuard/wireguard-go pull requests 85, 134).
func closeWireGuard(dev *device.Device) {
	_ = dev.Down()
	dev.Close()
}

// restartWireGuard closes the gateway's WireGuard device and starts a new one
// on the same port.
func (g *fakeGateway) restartWireGuard() {
	g.mu.Lock()
	old, port := g.wg, g.wgPort
	g.mu.Unlock()
	closeWireGuard(old)
	g.startWireGuard(port)
}

// lastHandshake returns the gateway's last handshake time with the device key.
func (g *fakeGateway) lastHandshake(key [32]byte) time.Time {
	g.mu.Lock()
	dev := g.wg
	g.mu.Unlock()
	got, err := dev.IpcGet()
	if err != nil {
		return time.Time{}
	}
	want := hex.EncodeToString(key[:])
	in := false
	var sec, nsec int64
	for _, line := range strings.Split(got, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch {
		case k == "public_key":
			in = v == want
		case in && k == "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case in && k == "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if sec == 0 && nsec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, nsec)
}

func uapiField(uapi, key string) string {
	for _, line := range strings.Split(uapi, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func (g *fakeGateway) Login(ctx context.Context, req *gatewayv1.DeviceLoginRequest) (*gatewayv1.DeviceLoginResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.logins = append(g.logins, req)
	if len(g.loginErrs) > 0 {
		err := g.loginErrs[0]
		g.loginErrs = g.loginErrs[1:]
		return nil, err
	}
	if req.GetSerialNumber() != testSerial || req.GetHardwareId() != testHWID || len(req.GetPublicKey()) != 32 {
		return nil, status.Error(codes.Unauthenticated, "device not admitted")
	}
	var key [32]byte
	copy(key[:], req.GetPublicKey())
	if !g.peers[key] {
		if err := g.wg.IpcSet(fmt.Sprintf("public_key=%s\nallowed_ip=%s\n", hex.EncodeToString(key[:]), g.devAddr)); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		g.peers[key] = true
	}
	token := fmt.Sprintf("token-%d", len(g.logins))
	g.tokens[token] = true
	return &gatewayv1.DeviceLoginResponse{
		Addresses: []string{g.devAddr},
		Gateway: &gatewayv1.GatewayPeer{
			PublicKey:                  g.wgPub[:],
			Endpoint:                   net.JoinHostPort("127.0.0.1", strconv.Itoa(g.wgPort)),
			AllowedIps:                 []string{g.vnet},
			PersistentKeepaliveSeconds: 25,
		},
		Mtu:         1420,
		DeviceToken: token,
		Outcome:     gatewayv1.LoginOutcome_LOGIN_OUTCOME_OK,
	}, nil
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return t
		}
	}
	return ""
}

func (g *fakeGateway) Sync(_ *gatewayv1.SyncRequest, stream gatewayv1.DeviceService_SyncServer) error {
	tok := bearer(stream.Context())
	g.mu.Lock()
	g.syncTokens = append(g.syncTokens, tok)
	n := len(g.syncTokens)
	known := g.tokens[tok]
	fn := g.syncFn
	g.mu.Unlock()
	if !known {
		return status.Error(codes.Unauthenticated, "unknown device token")
	}
	if fn != nil {
		return fn(n, stream)
	}
	g.mu.Lock()
	inst := g.instance
	g.mu.Unlock()
	if inst == "" {
		inst = "instance-1"
	}
	if err := stream.Send(keepalive(inst)); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (g *fakeGateway) CreateBindingCode(ctx context.Context, _ *gatewayv1.CreateBindingCodeRequest) (*gatewayv1.CreateBindingCodeResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.bindCalls++
	if !g.tokens[bearer(ctx)] {
		return nil, status.Error(codes.Unauthenticated, "unknown device token")
	}
	return &gatewayv1.CreateBindingCodeResponse{
		Code:      "ABCD-1234",
		Uri:       "dasset://bind?code=ABCD-1234",
		ExpiresAt: timestamppb.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)),
	}, nil
}

func (g *fakeGateway) forgetTokens() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tokens = map[string]bool{}
}

func (g *fakeGateway) loginCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.logins)
}

func (g *fakeGateway) syncCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.syncTokens)
}

func keepalive(instance string) *gatewayv1.SyncEvent {
	return &gatewayv1.SyncEvent{Event: &gatewayv1.SyncEvent_Keepalive{Keepalive: &gatewayv1.Keepalive{GatewayInstance: instance}}}
}

// testLogger writes to the test log only when -v is given.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testConfig(t *testing.T, g *fakeGateway, stateDir string) Config {
	return Config{
		Gateway:    g.addr,
		Serial:     testSerial,
		HardwareID: testHWID,
		StateDir:   stateDir,
		Insecure:   true,
		Netstack:   true,
		Logger:     testLogger(t),
		Version:    "test",
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	}
}

// running is an agent started in the background.
type running struct {
	a      *Agent
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config) *running {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return 10s after cancel")
		}
	})
	return r
}

func (r *running) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-r.a.Ready():
	case err := <-r.done:
		r.done <- err
		t.Fatalf("Run returned before the tunnel was up: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("tunnel not up within 15s")
	}
}

// stop cancels the agent and returns Run's result.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after cancel")
		return nil
	}
}

// waitFor polls cond every 20ms for at most limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Must(t, limit, "waiting for "+what, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// testClock is an agent's clock in tests: it stands still until the test
// moves it forward (instead of sleeping).
type testClock struct{ offset atomic.Int64 }

var testEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func (c *testClock) Now() time.Time          { return testEpoch.Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// countEvents makes cfg count the agent's Sync events. The first one proves
// that the handshake the agent forces when its stream connects has been
// decided, so a test's clock moves only after it.
func countEvents(cfg *Config) *atomic.Int32 {
	var n atomic.Int32
	prev := cfg.OnEvent
	cfg.OnEvent = func(ev *gatewayv1.SyncEvent) {
		if prev != nil {
			prev(ev)
		}
		n.Add(1)
	}
	return &n
}

// logCounter is a slog.Handler that counts records by message (and passes
// them on to next): what the agent logged is the evidence of what it tried.
type logCounter struct {
	next   slog.Handler
	mu     *sync.Mutex
	counts map[string]int
}

func newLogCounter(next *slog.Logger) *logCounter {
	return &logCounter{next: next.Handler(), mu: &sync.Mutex{}, counts: map[string]int{}}
}

func (l *logCounter) Enabled(ctx context.Context, lv slog.Level) bool { return true }

func (l *logCounter) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	l.counts[r.Message]++
	l.mu.Unlock()
	if l.next.Enabled(ctx, r.Level) {
		return l.next.Handle(ctx, r)
	}
	return nil
}

func (l *logCounter) WithAttrs(as []slog.Attr) slog.Handler {
	c := *l
	c.next = l.next.WithAttrs(as)
	return &c
}

func (l *logCounter) WithGroup(name string) slog.Handler {
	c := *l
	c.next = l.next.WithGroup(name)
	return &c
}

// count is how often msg was logged.
func (l *logCounter) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[msg]
}
