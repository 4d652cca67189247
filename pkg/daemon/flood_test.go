package daemon_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// The hostile-caller scenario of the security review, against the real
// daemon over real sockets.
const (
	floodSerials  = 100  // sequential serials, all enrolled
	floodRequests = 2000 // wrong-HWID logins from the stranger, at least
	floodConc     = 50   // the stranger's concurrency
	floodAgents   = 8    // of the devices, full netstack agents whose tunnels must carry pings
	loginRounds   = 3    // rounds of every device logging in at once, idle and under flood
)

func floodSerial(i int) string { return fmt.Sprintf("SN-FLOOD-%03d", i) }
func floodHWID(i int) string   { return fmt.Sprintf("HW-FLOOD-%03d", i) }

// floodFixture is a gateway with floodSerials enrolled devices, each with a
// pinned key: the first floodAgents through real agents (stopped again, so
// they log in afresh later), the rest through one login each.
type floodFixture struct {
	g         *testGateway
	keys      [][]byte // raw devices' keys (nil for agent devices)
	agentDirs []string
}

func newFloodFixture(t testing.TB, g *testGateway) *floodFixture {
	f := &floodFixture{g: g, keys: make([][]byte, floodSerials)}
	req := &gatewayv1.EnrollDevicesRequest{}
	for i := range floodSerials {
		req.Devices = append(req.Devices, &gatewayv1.DeviceEnrollment{SerialNumber: floodSerial(i), HardwareId: floodHWID(i)})
	}
	ectx, ecancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ecancel()
	if _, err := g.admin.EnrollDevices(ectx, req); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	for i := range floodAgents {
		dir := t.TempDir()
		f.agentDirs = append(f.agentDirs, dir)
		a, stop := runAgent(t, g, i, dir)
		select {
		case <-a.Ready():
		case <-time.After(20 * time.Second):
			t.Fatalf("agent %d not ready", i)
		}
		stop()
	}
	dev := gatewayv1.NewDeviceServiceClient(connFrom(t, g.d.GRPCAddr().String(), g.d.Fingerprint(), "127.0.0.1"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := floodAgents; i < floodSerials; i++ {
		f.keys[i] = newKey(t)
		if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: floodSerial(i), HardwareId: floodHWID(i), PublicKey: f.keys[i]}); err != nil {
			t.Fatalf("first login of device %d: %v", i, err)
		}
	}
	return f
}

// runAgent starts device i's agent in dir; stop ends it and waits.
func runAgent(t testing.TB, g *testGateway, i int, dir string) (*agent.Agent, func()) {
	a, err := agent.New(agent.Config{
		Gateway: g.d.GRPCAddr().String(), Serial: floodSerial(i), HardwareID: floodHWID(i),
		StateDir: dir, Pin: g.d.Fingerprint(), Netstack: true,
		Logger:     slog.New(slog.DiscardHandler),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
		})
	}
	t.Cleanup(stop)
	return a, stop
}

// legitRound logs every raw device in at once with its pinned key and
// returns the latencies; any refusal fails.
func (f *floodFixture) legitRound(t testing.TB, dev gatewayv1.DeviceServiceClient) []time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var (
		mu   sync.Mutex
		lat  []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	for i := floodAgents; i < floodSerials; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: floodSerial(i), HardwareId: floodHWID(i), PublicKey: f.keys[i]})
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, d)
			if err != nil {
				errs = append(errs, fmt.Errorf("device %d: %w", i, err))
			}
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		t.Errorf("legit login refused: %v", err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return lat
}

// flood sends wrong-HWID logins over the sequential serials from the
// stranger's source until at least floodRequests are answered and stop is
// closed (bounded by three minutes: a loaded 2-core machine answered only
// ~1,000 in one). It returns how many were answered and how many of those
// carried a retry hint (throttled).
func flood(t testing.TB, g *testGateway, stop <-chan struct{}, started chan<- struct{}) (sent, throttled int64) {
	dev := gatewayv1.NewDeviceServiceClient(connFrom(t, g.d.GRPCAddr().String(), g.d.Fingerprint(), strangerSrc))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var n, hinted atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	for w := range floodConc {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for ctx.Err() == nil {
				k := n.Add(1)
				if k > floodRequests {
					select {
					case <-stop:
						return
					default:
					}
				}
				i := int(k) % floodSerials
				_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: floodSerial(i), HardwareId: "HW-GUESS-" + fmt.Sprint(k), PublicKey: make32(byte(w + 1))})
				if ctx.Err() != nil {
					return
				}
				if c := status.Code(err); c != codes.Unauthenticated && c != codes.ResourceExhausted {
					t.Errorf("flood login %d: %v", k, err)
					return
				}
				if retryHint(err) > 0 {
					hinted.Add(1)
				}
				if k == floodConc {
					once.Do(func() { close(started) })
				}
			}
		}(w)
	}
	wg.Wait()
	return n.Load(), hinted.Load()
}

func p99of(l []time.Duration) time.Duration {
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l[(len(l)*99)/100]
}

// TestHostileFlood: from one source, 2,000+ wrong-HWID logins over 100
// sequential serials; from another, every device of those serials logs in
// at once during the flood (three rounds) and is admitted, and real agents
// of 8 of them log in afresh during the flood and ping the gateway through
// their tunnels. Login p99 idle and under flood are logged here and
// compared in BenchmarkLoginP99DuringFlood (timing belongs to benchmarks).
func TestHostileFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the gateway with 2,000 logins")
	}
	g := startQuietGateway(t, hostileConfig(t, t.TempDir()))
	f := newFloodFixture(t, g)
	dev := gatewayv1.NewDeviceServiceClient(connFrom(t, g.d.GRPCAddr().String(), g.d.Fingerprint(), "127.0.0.1"))
	var idle []time.Duration
	for range loginRounds {
		idle = append(idle, f.legitRound(t, dev)...)
	}

	stop, started := make(chan struct{}), make(chan struct{})
	type result struct{ sent, throttled int64 }
	res := make(chan result, 1)
	go func() { s, th := flood(t, g, stop, started); res <- result{s, th} }()
	<-started
	var agents []*agent.Agent
	for i := range floodAgents {
		a, _ := runAgent(t, g, i, f.agentDirs[i])
		agents = append(agents, a)
	}
	var busy []time.Duration
	for range loginRounds {
		busy = append(busy, f.legitRound(t, dev)...)
	}
	gw4 := netip.MustParseAddr("100.80.0.1")
	for i, a := range agents {
		select {
		case <-a.Ready():
		case <-time.After(30 * time.Second):
			t.Fatalf("agent %d not admitted during the flood", i)
		}
		if err := pingUntil(a.Net(), a.Addresses(), gw4, 10*time.Second); err != nil {
			t.Fatalf("agent %d: ping through its tunnel during the flood: %v", i, err)
		}
	}
	close(stop)
	r := <-res
	if r.sent < floodRequests {
		t.Fatalf("the stranger sent %d logins, want ≥ %d", r.sent, floodRequests)
	}
	if r.throttled == 0 {
		t.Fatal("no flood login was throttled")
	}
	t.Logf("flood: %d wrong-HWID logins from %s, %d throttled; legit login p99 idle %v, under flood %v (%d logins each)",
		r.sent, strangerSrc, r.throttled, p99of(idle), p99of(busy), len(idle))
}

// startQuietGateway is startGateway without the per-line test log (the
// flood would write thousands of lines).
func startQuietGateway(t testing.TB, cfg config.Config) *testGateway {
	t.Helper()
	d, stop := quietDaemon(t, cfg)
	t.Cleanup(stop)
	admin, closeAdmin := adminClient(t, cfg.Admin.Socket)
	t.Cleanup(closeAdmin)
	return &testGateway{d: d, cfg: cfg, admin: admin}
}

// BenchmarkLoginP99DuringFlood: the p99 of 92 devices logging in at once
// with their pinned keys, idle and while a stranger floods wrong-HWID logins
// over their serials from another source (the target: flood ≤ 2× idle).
// Each iteration is one idle round and one flooded round.
func BenchmarkLoginP99DuringFlood(b *testing.B) {
	g := startQuietGateway(b, hostileConfig(b, b.TempDir()))
	f := newFloodFixture(b, g)
	dev := gatewayv1.NewDeviceServiceClient(connFrom(b, g.d.GRPCAddr().String(), g.d.Fingerprint(), "127.0.0.1"))
	var idle, busy []time.Duration
	for b.Loop() {
		idle = append(idle, f.legitRound(b, dev)...)
		stop, started := make(chan struct{}), make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); flood(b, g, stop, started) }()
		<-started
		busy = append(busy, f.legitRound(b, dev)...)
		close(stop)
		<-done
	}
	pi, pb := p99of(idle), p99of(busy)
	b.ReportMetric(float64(pi)/1e6, "p99_idle_ms")
	b.ReportMetric(float64(pb)/1e6, "p99_flood_ms")
	b.ReportMetric(float64(pb)/float64(pi), "flood/idle")
}
