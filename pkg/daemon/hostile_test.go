package daemon_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// Sources are judged by /24: 127.0.0.1 (the agents' default source) and
// 127.0.2.x are different sources, 127.0.0.2 and 127.0.0.3 are one.
const strangerSrc = "127.0.2.1"

// connFrom is a gRPC connection to the gateway from a chosen loopback
// source address (a real socket bound to it).
func connFrom(t testing.TB, addr, fingerprint, src string) *grpc.ClientConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	conn, err := agent.Dial(addr, agent.TLSOptions{Pin: fingerprint},
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// hostileConfig is the test config with the shipped throttle defaults.
func hostileConfig(t testing.TB, dir string) config.Config {
	cfg := testConfig(t, dir)
	cfg.Throttle = config.Default().Throttle
	return cfg
}

// counter reads one series of a counter from /metrics (0 when absent).
func counter(t testing.TB, addr, name string, labels map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, m := range fams[name].GetMetric() {
		match := true
		for _, lp := range m.GetLabel() {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				match = false
			}
		}
		if match {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func retryHint(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// A stranger's wrong hardware ids slow only the stranger: the answers to an
// unknown serial, a wrong hardware id and a throttled attempt have one code
// and message (the throttled one adds a retry hint), and the real device,
// from its own source, logs in again at once, its tunnel carrying pings.
func TestStrangerCannotLockDeviceOut(t *testing.T) {
	dir := t.TempDir()
	cfg := hostileConfig(t, dir)
	g := startGateway(t, cfg)
	const sn, hw = "SN-VICTIM-01", "HW-VICTIM-01"
	g.enroll(t, [2]string{sn, hw})
	a, done := startAgent(t, g, sn, hw, t.TempDir())
	waitReady(t, a, done)

	dev := gatewayv1.NewDeviceServiceClient(connFrom(t, g.d.GRPCAddr().String(), g.d.Fingerprint(), strangerSrc))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	login := func(serial, hwid string) error {
		_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: serial, HardwareId: hwid, PublicKey: make32(5)})
		return err
	}
	unknown := status.Convert(login("SN-NOBODY-99", hw))
	wrong := status.Convert(login(sn, "HW-WRONG"))
	var throttled *status.Status
	for i := 0; i < 50 && throttled == nil; i++ {
		err := login(sn, "HW-WRONG")
		if retryHint(err) > 0 {
			throttled = status.Convert(err)
		}
	}
	if throttled == nil {
		t.Fatal("50 wrong hardware ids from one source were never throttled")
	}
	for _, s := range []*status.Status{unknown, wrong, throttled} {
		if s.Code() != codes.Unauthenticated || s.Message() != unknown.Message() {
			t.Fatalf("answers differ: unknown=%v wrong=%v throttled=%v", unknown, wrong, throttled)
		}
	}
	if retryHint(wrong.Err()) != 0 || retryHint(unknown.Err()) != 0 {
		t.Fatal("an unthrottled failure carries a retry hint")
	}
	if n := counter(t, g.d.HTTPAddr().String(), "dasset_gateway_throttled_total", map[string]string{"call": "device_login", "reason": "pair"}); n < 1 {
		t.Fatalf("throttled_total{device_login,pair} = %v", n)
	}

	// The real device from its own source: a fresh login (same pinned key,
	// what a reboot does) is admitted, and its tunnel works.
	mine := deviceClient(t, g)
	pub := a.PublicKey()
	if _, err := mine.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: sn, HardwareId: hw, PublicKey: pub[:]}); err != nil {
		t.Fatalf("the real device after the stranger's flood: %v", err)
	}
	if err := pingUntil(a.Net(), a.Addresses(), netip.MustParseAddr("100.80.0.1"), 10*time.Second); err != nil {
		t.Fatalf("ping through the tunnel: %v", err)
	}
}

// One live Sync stream per device: each new stream on the device's token
// ends the one before it with Aborted, so a token cannot hold thousands of
// streams open; the newest keeps working.
func TestOneSyncStreamPerDevice(t *testing.T) {
	g := startGateway(t, testConfig(t, t.TempDir()))
	const sn, hw = "SN-STREAMS-01", "HW-STREAMS-01"
	g.enroll(t, [2]string{sn, hw})
	dev := deviceClient(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: sn, HardwareId: hw, PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	sctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+resp.GetDeviceToken())
	open := func() gatewayv1.DeviceService_SyncClient {
		st, err := dev.Sync(sctx, &gatewayv1.SyncRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil { // the first keepalive: the stream is live
			t.Fatalf("new stream: %v", err)
		}
		return st
	}
	const n = 20
	streams := make([]gatewayv1.DeviceService_SyncClient, n)
	for i := range streams {
		streams[i] = open()
	}
	for i, st := range streams[:n-1] {
		_, err := st.Recv()
		if status.Code(err) != codes.Aborted || !strings.Contains(status.Convert(err).Message(), "replaced") {
			t.Fatalf("stream %d after %d newer ones: %v, want Aborted (replaced)", i, n-1-i, err)
		}
	}
	// The newest still carries events: a binding code's creation is not an
	// event, but a logout is (Revoked), and it reaches the live stream.
	bctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+resp.GetDeviceToken())
	if _, err := dev.Logout(bctx, &gatewayv1.LogoutRequest{}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := streams[n-1].Recv()
		if err != nil {
			t.Fatalf("newest stream ended before the logout event: %v", err)
		}
		if ev.GetRevoked() != nil {
			break
		}
	}
}

// Client accounts: a stranger's wrong passwords slow the stranger's own
// (account, source prefix), never the user from theirs (60 wrong then the
// right one no longer gives OK from the guessing source); ChangePassword
// revokes every old token and hands out a fresh one; binding-code guesses
// and code creation are throttled.
func TestClientAccountsAndBindingThrottles(t *testing.T) {
	g := startGateway(t, hostileConfig(t, t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const account, password = "carol", "carol-password-1"
	if _, err := g.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: account, Password: password}); err != nil {
		t.Fatal(err)
	}
	strangerConn := connFrom(t, g.d.GRPCAddr().String(), g.d.Fingerprint(), strangerSrc)
	stranger := gatewayv1.NewClientServiceClient(strangerConn)
	mineConn := connFrom(t, g.d.GRPCAddr().String(), g.d.Fingerprint(), "127.0.0.1")
	mine := gatewayv1.NewClientServiceClient(mineConn)

	var throttledAt int
	for i := range 60 {
		_, err := stranger.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: "wrong-password"})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("wrong password %d: %v", i, err)
		}
		if retryHint(err) > 0 {
			throttledAt = i
			break
		}
	}
	if throttledAt == 0 {
		t.Fatal("60 wrong passwords from one source were never throttled")
	}
	_, err := stranger.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: password})
	if status.Code(err) != codes.Unauthenticated || retryHint(err) == 0 {
		t.Fatalf("right password from the guessing source during its wait: %v (want a throttled refusal)", err)
	}
	login, err := mine.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: password})
	if err != nil {
		t.Fatalf("the user from their own source: %v", err)
	}
	auth := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	old := login.GetAccessToken()
	second, err := mine.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: password})
	if err != nil {
		t.Fatal(err)
	}

	// ChangePassword: a wrong old password changes nothing.
	if _, err := mine.ChangePassword(auth(old), &gatewayv1.ChangePasswordRequest{OldPassword: "nope-nope", NewPassword: "carol-password-2"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong old password: %v", err)
	}
	if _, err := mine.ChangePassword(auth(old), &gatewayv1.ChangePasswordRequest{OldPassword: password, NewPassword: "short"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("short new password: %v", err)
	}
	ch, err := mine.ChangePassword(auth(old), &gatewayv1.ChangePasswordRequest{OldPassword: password, NewPassword: "carol-password-2"})
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"the caller's old token": old, "another token": second.GetAccessToken()} {
		if _, err := mine.ListDevices(auth(tok), &gatewayv1.ListBoundDevicesRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s after ChangePassword: %v, want Unauthenticated", name, err)
		}
	}
	if _, err := mine.ListDevices(auth(ch.GetAccessToken()), &gatewayv1.ListBoundDevicesRequest{}); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	if _, err := mine.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: password}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("old password after the change: %v", err)
	}
	if _, err := mine.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: "carol-password-2"}); err != nil {
		t.Fatalf("new password: %v", err)
	}

	// Binding-code guessing: slowed after a few tries, with a hint.
	var bindThrottled bool
	for i := 0; i < 40 && !bindThrottled; i++ {
		_, err := mine.BindDevice(auth(ch.GetAccessToken()), &gatewayv1.BindDeviceRequest{Code: "ABCDEFGHJK"})
		switch {
		case status.Code(err) == codes.ResourceExhausted && retryHint(err) > 0:
			bindThrottled = true
		case status.Code(err) != codes.NotFound:
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	if !bindThrottled {
		t.Fatal("40 wrong binding codes were never throttled")
	}

	// Code creation: a device gets a few codes back to back, then waits.
	g.enroll(t, [2]string{"SN-CODES-01", "HW-CODES-01"})
	dev := deviceClient(t, g)
	resp, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "SN-CODES-01", HardwareId: "HW-CODES-01", PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	var made int
	for ; made < 20; made++ {
		_, err := dev.CreateBindingCode(auth(resp.GetDeviceToken()), &gatewayv1.CreateBindingCodeRequest{})
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted || retryHint(err) == 0 {
				t.Fatalf("code %d: %v", made, err)
			}
			break
		}
	}
	if made == 0 || made == 20 {
		t.Fatalf("%d codes made back to back, want a few then a throttled refusal", made)
	}
	for _, call := range []string{"client_login", "bind_device", "binding_code"} {
		if n := counter(t, g.d.HTTPAddr().String(), "dasset_gateway_throttled_total", map[string]string{"call": call}); n < 1 {
			t.Fatalf("throttled_total{call=%q} = %v", call, n)
		}
	}
}

// When another account binds a device, its existing owners are told on
// their next ListDevices (once); the new owner is not.
func TestOwnersToldOfAnotherBinding(t *testing.T) {
	g := startGateway(t, testConfig(t, t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const sn, hw = "SN-SHARED-01", "HW-SHARED-01"
	g.enroll(t, [2]string{sn, hw})
	dev := deviceClient(t, g)
	resp, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: sn, HardwareId: hw, PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	auth := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	cl := gatewayv1.NewClientServiceClient(connFrom(t, g.d.GRPCAddr().String(), g.d.Fingerprint(), "127.0.0.1"))
	tokens := map[string]string{}
	for _, name := range []string{"erin", "frank"} {
		if _, err := g.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: name, Password: name + "-password-1"}); err != nil {
			t.Fatal(err)
		}
		l, err := cl.Login(ctx, &gatewayv1.ClientLoginRequest{Account: name, Password: name + "-password-1"})
		if err != nil {
			t.Fatal(err)
		}
		tokens[name] = l.GetAccessToken()
	}
	bind := func(name string) {
		code, err := dev.CreateBindingCode(auth(resp.GetDeviceToken()), &gatewayv1.CreateBindingCodeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.BindDevice(auth(tokens[name]), &gatewayv1.BindDeviceRequest{Code: code.GetCode()}); err != nil {
			t.Fatalf("%s binds: %v", name, err)
		}
	}
	notice := func(name string) bool {
		l, err := cl.ListDevices(auth(tokens[name]), &gatewayv1.ListBoundDevicesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.GetDevices()) != 1 {
			t.Fatalf("%s sees %d devices", name, len(l.GetDevices()))
		}
		return l.GetDevices()[0].GetBoundByAnotherAccountAt() != nil
	}
	bind("erin")
	if notice("erin") {
		t.Fatal("a notice before anyone else bound the device")
	}
	before := time.Now()
	bind("frank")
	if notice("frank") {
		t.Fatal("the new owner was told of its own binding")
	}
	l, err := cl.ListDevices(auth(tokens["erin"]), &gatewayv1.ListBoundDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	at := l.GetDevices()[0].GetBoundByAnotherAccountAt()
	if at == nil || at.AsTime().Before(before.Add(-time.Second)) {
		t.Fatalf("erin's ListDevices after frank bound: notice %v, want one at about %v", at, before)
	}
	if notice("erin") {
		t.Fatal("the notice was told twice")
	}
}
