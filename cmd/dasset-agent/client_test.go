package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdp/qrterminal/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// fakeClients is a ClientService for account "alice" (password
// "alice-password") with one device "SN-DEV-1" and binding code "ABCD-EFGH-JK".
type fakeClients struct {
	gatewayv1.UnimplementedClientServiceServer
	mu       sync.Mutex
	bound    bool
	sessions map[string]bool // id → open
	closes   []string
	peer     *gatewayv1.GatewayPeer // GetSession's gateway peer (nil: none named)
}

const fakeToken = "access-tok-1"

func (f *fakeClients) auth(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) != 1 || v[0] != "Bearer "+fakeToken {
		return status.Error(codes.Unauthenticated, "unknown or expired access token")
	}
	return nil
}

func (f *fakeClients) Login(_ context.Context, req *gatewayv1.ClientLoginRequest) (*gatewayv1.ClientLoginResponse, error) {
	if req.GetAccount() != "alice" || req.GetPassword() != "alice-password" {
		return nil, status.Error(codes.Unauthenticated, "wrong account or password")
	}
	return &gatewayv1.ClientLoginResponse{AccessToken: fakeToken, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))}, nil
}

func (f *fakeClients) ListDevices(ctx context.Context, _ *gatewayv1.ListBoundDevicesRequest) (*gatewayv1.ListBoundDevicesResponse, error) {
	if err := f.auth(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &gatewayv1.ListBoundDevicesResponse{}
	if f.bound {
		resp.Devices = append(resp.Devices, &gatewayv1.BoundDevice{SerialNumber: "SN-DEV-1", Online: true, Addresses: []string{"100.80.0.2/32", "fdda:55e7::2/128"}})
	}
	return resp, nil
}

func (f *fakeClients) BindDevice(ctx context.Context, req *gatewayv1.BindDeviceRequest) (*gatewayv1.BindDeviceResponse, error) {
	if err := f.auth(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetCode() != "ABCD-EFGH-JK" || f.bound {
		return nil, status.Error(codes.NotFound, "code: unknown, used or expired binding code")
	}
	f.bound = true
	return &gatewayv1.BindDeviceResponse{SerialNumber: "SN-DEV-1"}, nil
}

func (f *fakeClients) UnbindDevice(ctx context.Context, req *gatewayv1.UnbindDeviceRequest) (*gatewayv1.UnbindDeviceResponse, error) {
	if err := f.auth(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetSerialNumber() != "SN-DEV-1" || !f.bound {
		return nil, status.Error(codes.NotFound, "serial_number: device not bound to this account")
	}
	f.bound = false
	for id := range f.sessions {
		f.sessions[id] = false
	}
	return &gatewayv1.UnbindDeviceResponse{Removed: map[string]int64{"bindings": 1, "sessions": 1}}, nil
}

func (f *fakeClients) OpenSession(ctx context.Context, req *gatewayv1.OpenSessionRequest) (*gatewayv1.OpenSessionResponse, error) {
	if err := f.auth(ctx); err != nil {
		return nil, err
	}
	if len(req.GetClientPublicKey()) != 32 {
		return nil, status.Error(codes.InvalidArgument, "client_public_key: must be 32 bytes")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetSerialNumber() != "SN-DEV-1" || !f.bound {
		return nil, status.Error(codes.PermissionDenied, "serial_number: device not bound to this account")
	}
	id := "sess-" + string(rune('a'+len(f.sessions)))
	f.sessions[id] = true
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &gatewayv1.OpenSessionResponse{
		SessionId:       id,
		ClientAddresses: []string{"100.95.0.1/32", "fdda:55e7:0:ff::1/128"},
		DeviceAddresses: []string{"100.80.0.2/32", "fdda:55e7::2/128"},
		Gateway:         &gatewayv1.GatewayPeer{PublicKey: key, Endpoint: "127.0.0.1:9", AllowedIps: []string{"100.80.0.0/12", "fdda:55e7::/48"}, PersistentKeepaliveSeconds: 25},
		ExpiresAt:       timestamppb.New(time.Now().Add(time.Hour)),
		Mtu:             1420,
	}, nil
}

func (f *fakeClients) GetSession(ctx context.Context, req *gatewayv1.GetSessionRequest) (*gatewayv1.SessionInfo, error) {
	if err := f.auth(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.sessions[req.GetSessionId()] {
		return nil, status.Error(codes.NotFound, "session_id: no open session with this id")
	}
	return &gatewayv1.SessionInfo{SessionId: req.GetSessionId(), Gateway: f.peer}, nil
}

func (f *fakeClients) CloseSession(ctx context.Context, req *gatewayv1.CloseSessionRequest) (*gatewayv1.CloseSessionResponse, error) {
	if err := f.auth(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.sessions[req.GetSessionId()] {
		return nil, status.Error(codes.NotFound, "session_id: no open session with this id")
	}
	f.sessions[req.GetSessionId()] = false
	f.closes = append(f.closes, req.GetSessionId())
	return &gatewayv1.CloseSessionResponse{}, nil
}

func serveFakeClients(t *testing.T) (*fakeClients, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeClients{sessions: map[string]bool{}}
	srv := grpc.NewServer()
	gatewayv1.RegisterClientServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return f, ln.Addr().String()
}

// runCtx runs the command with stdin and a context of its own.
func runCtx(ctx context.Context, stdin string, args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	cmd := newRootCmd(&out, &errb)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func runIn(stdin string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return runCtx(ctx, stdin, args...)
}

func TestClientCommands(t *testing.T) {
	f, addr := serveFakeClients(t)
	state := filepath.Join(t.TempDir(), "client")

	// Nothing works before login, and the error says what to do.
	for _, args := range [][]string{{"devices"}, {"bind", "--code", "X"}, {"unbind", "--serial", "SN-DEV-1"}, {"session", "close", "--id", "x"}, {"session", "open", "--serial", "SN-DEV-1", "--netstack"}} {
		_, _, err := runIn("", append(args, "--state-dir", state)...)
		if err == nil || !strings.Contains(err.Error(), "dasset-agent login") || strings.Contains(oneLine(err), "\n") {
			t.Fatalf("%v before login: %v", args, err)
		}
	}
	// Login: wrong password, no password, then right.
	if _, _, err := runIn("nope\n", "login", "--gateway", addr, "--insecure", "--account", "alice", "--password-stdin", "--state-dir", state); err == nil || !strings.Contains(err.Error(), "wrong account or password") {
		t.Fatalf("wrong password: %v", err)
	}
	if _, _, err := runIn("", "login", "--gateway", addr, "--insecure", "--account", "alice", "--state-dir", state); err == nil || !strings.Contains(err.Error(), "--password-stdin") {
		t.Fatalf("no terminal, no --password-stdin: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "access-token")); err == nil {
		t.Fatal("a failed login wrote a token")
	}
	out, _, err := runIn("alice-password\n", "login", "--gateway", addr, "--insecure", "--account", "alice", "--password-stdin", "--state-dir", state)
	if err != nil || !strings.Contains(out, "Logged in") {
		t.Fatalf("login: %q %v", out, err)
	}
	for _, name := range []string{"access-token", "gateway.json"} {
		st, err := os.Stat(filepath.Join(state, name))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v (mode %v), want 0600", name, err, st.Mode().Perm())
		}
	}
	if tok, _ := os.ReadFile(filepath.Join(state, "access-token")); strings.TrimSpace(string(tok)) != fakeToken {
		t.Fatalf("stored token %q", tok)
	}

	// The rest use the stored gateway and token.
	if out, _, err := runIn("", "devices", "--state-dir", state); err != nil || !strings.Contains(out, "No devices") {
		t.Fatalf("devices before bind: %q %v", out, err)
	}
	if out, _, err := runIn("", "bind", "--code", "ABCD-EFGH-JK", "--state-dir", state); err != nil || !strings.Contains(out, "Bound device SN-DEV-1.") {
		t.Fatalf("bind: %q %v", out, err)
	}
	if _, _, err := runIn("", "bind", "--code", "ABCD-EFGH-JK", "--state-dir", state); err == nil || oneLine(err) != "bind: not found: code: unknown, used or expired binding code" {
		t.Fatalf("reused code: %v", err)
	}
	out, _, err = runIn("", "devices", "--state-dir", state)
	if err != nil || !strings.Contains(out, "SERIAL") || !strings.Contains(out, "SN-DEV-1") || !strings.Contains(out, "100.80.0.2/32 fdda:55e7::2/128") {
		t.Fatalf("devices: %q %v", out, err)
	}

	// A session runs until its context ends (SIGINT in main), then closes itself.
	ctx, cancel := context.WithCancel(context.Background())
	var sout syncBuffer
	done := make(chan error, 1)
	go func() {
		cmd := newRootCmd(&sout, &syncBuffer{})
		cmd.SetArgs([]string{"session", "open", "--serial", "SN-DEV-1", "--netstack", "--poll", "100ms", "--state-dir", state})
		done <- cmd.ExecuteContext(ctx)
	}()
	waitOutput(t, &sout, "Expires:", done)
	for _, want := range []string{"Session:   sess-a", "Client:    100.95.0.1/32 fdda:55e7:0:ff::1/128", "Device:    100.80.0.2/32 fdda:55e7::2/128"} {
		if !strings.Contains(sout.String(), want) {
			t.Fatalf("session open output lacks %q:\n%s", want, sout.String())
		}
	}
	cancel()
	if err := waitDone(t, done, "session open after the interrupt"); err != nil {
		t.Fatalf("session open after interrupt: %v", err)
	}
	f.mu.Lock()
	closes := strings.Join(f.closes, ",")
	f.mu.Unlock()
	if closes != "sess-a" {
		t.Fatalf("sessions closed on the gateway: %q, want sess-a", closes)
	}

	// A session whose device is unbound elsewhere ends with the reason.
	var sout2 syncBuffer
	done2 := make(chan error, 1)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	go func() {
		cmd := newRootCmd(&sout2, &syncBuffer{})
		cmd.SetArgs([]string{"session", "open", "--serial", "SN-DEV-1", "--netstack", "--poll", "100ms", "--state-dir", state})
		done2 <- cmd.ExecuteContext(ctx2)
	}()
	waitOutput(t, &sout2, "Expires:", done2)
	if out, _, err := runIn("", "unbind", "--serial", "SN-DEV-1", "--state-dir", state); err != nil || out != "Unbound device SN-DEV-1. Removed: bindings=1 sessions=1.\n" {
		t.Fatalf("unbind: %q %v", out, err)
	}
	if err := waitDone(t, done2, "session open after the unbind"); err == nil || !strings.Contains(err.Error(), "session ended: the device is no longer bound to this account") {
		t.Fatalf("session open after unbind: %v", err)
	}

	if _, _, err := runIn("", "session", "open", "--serial", "SN-DEV-1", "--netstack", "--state-dir", state); err == nil || oneLine(err) != "open session: permission denied: serial_number: device not bound to this account" {
		t.Fatalf("open after unbind: %v", err)
	}
	if _, _, err := runIn("", "session", "close", "--id", "sess-a", "--state-dir", state); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("close a closed session: %v", err)
	}
	if _, _, err := runIn("", "unbind", "--serial", "bad serial!", "--state-dir", state); err == nil || !strings.Contains(err.Error(), "serial_number") {
		t.Fatalf("unbind with a malformed serial: %v", err)
	}
	// A token the gateway no longer accepts.
	if err := os.WriteFile(filepath.Join(state, "access-token"), []byte("stale\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runIn("", "devices", "--state-dir", state); err == nil || !strings.Contains(err.Error(), "dasset-agent login") {
		t.Fatalf("stale token: %v", err)
	}
}

// waitDone waits up to 10s for a command run in the background to end and
// returns how it ended; what names it for the failure.
func waitDone(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still running after 10s", what)
		return nil
	}
}

func waitOutput(t *testing.T, b *syncBuffer, want string, done <-chan error) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for !strings.Contains(b.String(), want) {
		select {
		case err := <-done:
			t.Fatalf("command ended before printing %q: %v\n%s", want, err, b.String())
		case <-deadline:
			t.Fatalf("no %q within 15s:\n%s", want, b.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// session open --wg-quick --qr brings up no tunnel: it writes the session's
// configuration (0600) and prints the same bytes as a QR code, keeps the
// session until interrupted, then closes it at the gateway.
func TestSessionOpenWGQuick(t *testing.T) {
	f, addr := serveFakeClients(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "client")
	if _, _, err := runIn("alice-password\n", "login", "--gateway", addr, "--insecure", "--account", "alice", "--password-stdin", "--state-dir", state); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runIn("", "bind", "--code", "ABCD-EFGH-JK", "--state-dir", state); err != nil {
		t.Fatal(err)
	}
	// Refused before any session is opened.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--wg-quick", filepath.Join(dir, "no-suffix")}, "--wg-quick: \"no-suffix\": the file name must be NAME.conf"},
		{[]string{"--wg-quick", filepath.Join(dir, "much-too-long-name.conf")}, "1 to 15"},
		{[]string{"--wg-quick", filepath.Join(dir, "x.conf"), "--netstack"}, "none of the others can be"},
		{[]string{"--qr", "--interface", "x0"}, "none of the others can be"},
	} {
		_, _, err := runIn("", append([]string{"session", "open", "--serial", "SN-DEV-1", "--state-dir", state}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	f.mu.Lock()
	opened := len(f.sessions)
	f.mu.Unlock()
	if opened != 0 {
		t.Fatalf("refused invocations opened %d sessions", opened)
	}
	// A directory that does not exist: the session is closed again.
	if _, _, err := runIn("", "session", "open", "--serial", "SN-DEV-1", "--state-dir", state, "--wg-quick", filepath.Join(dir, "missing", "x.conf")); err == nil || !strings.Contains(err.Error(), "--wg-quick: write") {
		t.Fatalf("unwritable file: %v", err)
	}
	f.mu.Lock()
	closes := strings.Join(f.closes, ",")
	f.mu.Unlock()
	if closes != "sess-a" {
		t.Fatalf("after the failed write the gateway closed %q, want sess-a", closes)
	}

	conf := filepath.Join(dir, "dasset1.conf")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sout syncBuffer
	done := make(chan error, 1)
	go func() {
		cmd := newRootCmd(&sout, &syncBuffer{})
		cmd.SetArgs([]string{"session", "open", "--serial", "SN-DEV-1", "--wg-quick", conf, "--qr", "--poll", "100ms", "--state-dir", state})
		done <- cmd.ExecuteContext(ctx)
	}()
	waitOutput(t, &sout, "Ctrl-C closes it", done)
	out := sout.String()
	if strings.Contains(out, "Interface:") || !strings.Contains(out, "Config:    "+conf) || !strings.Contains(out, "Session:   sess-b") {
		t.Fatalf("session open output:\n%s", out)
	}
	st, err := os.Stat(conf)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v; want mode 0600", conf, st, err)
	}
	data, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[Interface]\nPrivateKey = ", "Address = 100.95.0.1/32, fdda:55e7:0:ff::1/128\n", "MTU = 1420\n",
		"[Peer]\nPublicKey = ", "Endpoint = 127.0.0.1:9\n", "AllowedIPs = 100.80.0.2/32, fdda:55e7::2/128\n", "PersistentKeepalive = 25\n"} {
		if !strings.Contains(string(data), want) {
			t.Fatalf("%s lacks %q:\n%s", conf, want, data)
		}
	}
	// The QR code printed is the file's bytes.
	var qr bytes.Buffer
	qrterminal.GenerateHalfBlock(string(data), qrterminal.L, &qr)
	if qr.Len() < 100 || !strings.Contains(out, qr.String()) {
		t.Fatalf("output lacks the QR code of the file's contents:\n%s", out)
	}
	if strings.Contains(out, "PrivateKey") {
		t.Fatal("the private key was printed in clear")
	}

	// The device moves to another gateway: the file is rewritten with the
	// new peer (same private key and addresses) and a new QR code printed.
	newKey := bytes.Repeat([]byte{7}, 32)
	f.mu.Lock()
	f.peer = &gatewayv1.GatewayPeer{PublicKey: newKey, Endpoint: "127.0.0.1:10", AllowedIps: []string{"100.80.0.0/12", "fdda:55e7::/48"}, PersistentKeepaliveSeconds: 25}
	f.mu.Unlock()
	waitOutput(t, &sout, "Scan this QR code again", done)
	moved, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	privLine := func(b []byte) string {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "PrivateKey = ") {
				return l
			}
		}
		return ""
	}
	if !strings.Contains(string(moved), "PublicKey = "+base64.StdEncoding.EncodeToString(newKey)+"\n") || !strings.Contains(string(moved), "Endpoint = 127.0.0.1:10\n") ||
		privLine(moved) == "" || privLine(moved) != privLine(data) || !strings.Contains(string(moved), "Address = 100.95.0.1/32, fdda:55e7:0:ff::1/128\n") {
		t.Fatalf("%s after the move:\n%s\nbefore:\n%s", conf, moved, data)
	}
	out = sout.String()
	if !strings.Contains(out, "wg syncconf dasset1 <(wg-quick strip "+conf+")") {
		t.Fatalf("output after the move lacks how to apply it:\n%s", out)
	}
	// The QR code of the rewritten file follows the line asking to scan it
	// again: wait for the code itself, not for that line.
	qr.Reset()
	qrterminal.GenerateHalfBlock(string(moved), qrterminal.L, &qr)
	waitOutput(t, &sout, qr.String(), done)
	cancel()
	if err := waitDone(t, done, "session open after the interrupt"); err != nil {
		t.Fatalf("session open after interrupt: %v", err)
	}
	f.mu.Lock()
	closes = strings.Join(f.closes, ",")
	f.mu.Unlock()
	if closes != "sess-a,sess-b" {
		t.Fatalf("sessions closed on the gateway: %q, want sess-a,sess-b", closes)
	}
}
