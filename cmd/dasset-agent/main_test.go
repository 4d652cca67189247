package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/internal/argvscan"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// The one device fakeDevices admits; unusual enough to be searched for in
// every process's command line.
const (
	okSerial = "DS-ARGV-CANARY-5e1"
	okHWID   = "HW-ARGV-CANARY-93b"
)

// fakeDevices is a DeviceService that admits only okSerial with okHWID.
type fakeDevices struct {
	gatewayv1.UnimplementedDeviceServiceServer
	logins atomic.Int32
}

func (f *fakeDevices) Login(_ context.Context, req *gatewayv1.DeviceLoginRequest) (*gatewayv1.DeviceLoginResponse, error) {
	f.logins.Add(1)
	if req.GetSerialNumber() != okSerial || req.GetHardwareId() != okHWID {
		return nil, status.Error(codes.Unauthenticated, "unknown device")
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &gatewayv1.DeviceLoginResponse{
		Addresses: []string{"100.80.0.9/32"},
		Gateway: &gatewayv1.GatewayPeer{
			PublicKey:  key,
			Endpoint:   "127.0.0.1:9", // nothing answers; the tunnel still comes up
			AllowedIps: []string{"100.80.0.0/12"},
		},
		Mtu:         1420,
		DeviceToken: "tok",
	}, nil
}

func (f *fakeDevices) Sync(_ *gatewayv1.SyncRequest, stream gatewayv1.DeviceService_SyncServer) error {
	if err := stream.Send(&gatewayv1.SyncEvent{Event: &gatewayv1.SyncEvent_Keepalive{Keepalive: &gatewayv1.Keepalive{GatewayInstance: "i1"}}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (f *fakeDevices) CreateBindingCode(context.Context, *gatewayv1.CreateBindingCodeRequest) (*gatewayv1.CreateBindingCodeResponse, error) {
	return &gatewayv1.CreateBindingCodeResponse{Code: "QRST-6789", Uri: "dasset://bind?code=QRST-6789", ExpiresAt: timestamppb.New(time.Now().Add(5 * time.Minute))}, nil
}

func serveFake(t *testing.T) (*fakeDevices, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDevices{}
	srv := grpc.NewServer()
	gatewayv1.RegisterDeviceServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return f, ln.Addr().String()
}

func run(args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	cmd := newRootCmd(&out, &errb)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = cmd.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func TestUpRefusedIsOneClearLine(t *testing.T) {
	f, addr := serveFake(t)
	_, _, err := run("up", "--gateway", addr, "--serial", "SN-UNKNOWN", "--hwid", "HW1", "--insecure", "--netstack", "--state-dir", t.TempDir())
	if err == nil {
		t.Fatal("up succeeded for an unknown device")
	}
	msg := oneLine(err)
	if !strings.Contains(msg, "login refused: device not enrolled or wrong hardware id") || strings.Contains(msg, "\n") {
		t.Fatalf("error line %q", msg)
	}
	if n := f.logins.Load(); n != 1 {
		t.Fatalf("%d logins, want 1", n)
	}
}

func TestBindCodePrintsCodeAndQR(t *testing.T) {
	_, addr := serveFake(t)
	state := t.TempDir()
	if _, _, err := run("bind-code", "--gateway", addr, "--insecure", "--state-dir", state); err == nil || !strings.Contains(err.Error(), "dasset-agent up") {
		t.Fatalf("bind-code without a token: %v", err)
	}
	if err := os.WriteFile(filepath.Join(state, "token"), []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := run("bind-code", "--gateway", addr, "--insecure", "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Binding code: QRST-6789") || !strings.Contains(out, "dasset://bind?code=QRST-6789") {
		t.Fatalf("output:\n%s", out)
	}
	if !strings.ContainsAny(out, "█▀▄") {
		t.Fatalf("no QR code in the output:\n%s", out)
	}
}

func TestFlagConflicts(t *testing.T) {
	_, _, err := run("up", "--gateway", "127.0.0.1:1", "--serial", "S", "--hwid", "H", "--pin", strings.Repeat("0", 64), "--insecure")
	if err == nil || !strings.Contains(err.Error(), "none of the others can be") {
		t.Fatalf("--pin with --insecure: %v", err)
	}
	_, _, err = run("up", "--gateway", "127.0.0.1:1", "--serial", "S", "--hwid", "H", "--insecure", "--log-format", "xml")
	if err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Fatalf("bad --log-format: %v", err)
	}
	out, _, err := run("version")
	if err != nil || !strings.HasPrefix(out, "dasset-agent ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

// The built binary comes up in netstack mode, logs as JSON, and exits 0 on SIGTERM.
func TestBinaryUpAndSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "dasset-agent")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	f, addr := serveFake(t)
	state := t.TempDir()
	serialFile, hwidFile := filepath.Join(t.TempDir(), "serial"), filepath.Join(t.TempDir(), "hwid")
	if err := os.WriteFile(serialFile, []byte(okSerial+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hwidFile, []byte(okHWID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd := exec.Command(bin, "up", "--gateway", addr, "--serial-file", serialFile, "--hwid-file", hwidFile, "--insecure", "--netstack",
		"--state-dir", state, "--log-format", "json")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // a test that failed half-way
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitOutput(t, &stderr, `"msg":"sync stream connected"`, done)

	// No process's command line shows the serial number or hardware id
	// while the agent runs: positive control first, a process with both in
	// its argv, which the scan must find (and only it).
	argvscan.Check(t, okSerial, okHWID)
	if ps, err := exec.Command("ps", "-eww", "-o", "args").Output(); err == nil && (strings.Contains(string(ps), okSerial) || strings.Contains(string(ps), okHWID)) {
		t.Fatalf("ps shows the serial number or hardware id:\n%s", ps)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, done, "the agent after SIGTERM"); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
	}
	logs := stderr.String()
	for _, want := range []string{`"msg":"tunnel up"`, `"msg":"tunnel down"`, `"msg":"stopped"`,
		`"msg":"device identity","sources":"serial number from ` + serialFile + `, hardware id from ` + hwidFile + `"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "command line") {
		t.Errorf("agent warned about identifiers on its command line, which has none:\n%s", logs)
	}
	for _, leak := range []string{okSerial, okHWID} {
		if strings.Contains(logs, leak) {
			t.Errorf("log leaks %q:\n%s", leak, logs)
		}
	}
	if n := f.logins.Load(); n != 1 {
		t.Errorf("%d logins, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(state, "private.key")); err != nil {
		t.Error(err)
	}
}

// --serial and --hwid still work (labs), with a warning naming the risk.
func TestUpWarnsAboutIdentifiersOnCommandLine(t *testing.T) {
	_, addr := serveFake(t)
	_, stderr, err := run("up", "--gateway", addr, "--serial", "SN-UNKNOWN", "--hwid", "HW1", "--insecure", "--netstack", "--state-dir", t.TempDir())
	if err == nil {
		t.Fatal("an unknown device came up")
	}
	for _, want := range []string{"--serial puts a device identifier on the command line", "--hwid puts a device identifier on the command line", "sources=\"serial number from command line (--serial), hardware id from command line (--hwid)\""} {
		if !strings.Contains(stderr, want) {
			t.Errorf("log lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "SN-UNKNOWN") || strings.Contains(stderr, "HW1") {
		t.Errorf("log shows the values:\n%s", stderr)
	}
	_, _, err = run("up", "--gateway", addr, "--serial", "S", "--serial-file", "/dev/null", "--insecure")
	if err == nil || !strings.Contains(err.Error(), "serial") {
		t.Fatalf("--serial with --serial-file: %v", err)
	}
}

// TestSeveralGateways: --gateway takes several gateways, comma-separated or
// repeated; an unreachable one is passed over for the next, and a bad entry
// is named.
func TestSeveralGateways(t *testing.T) {
	f, addr := serveFake(t)
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "token"), []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// 127.0.0.1:1 refuses connections: bind-code asks the next gateway.
	out, _, err := run("bind-code", "--gateway", "127.0.0.1:1", "--gateway", addr, "--insecure", "--state-dir", state, "--no-qr")
	if err != nil || !strings.Contains(out, "Binding code: QRST-6789") {
		t.Fatalf("bind-code with a dead and a live gateway: %v\n%s", err, out)
	}
	// up fails over from the dead gateway (whichever it drew first) to the
	// live one, whose refusal is the final answer.
	_, _, err = run("up", "--gateway", "127.0.0.1:1,"+addr, "--serial", "SN-UNKNOWN", "--hwid", "HW1", "--insecure", "--netstack", "--state-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "login refused") {
		t.Fatalf("up with a dead and a live gateway: %v, want the live one's refusal", err)
	}
	if n := f.logins.Load(); n != 1 {
		t.Fatalf("%d logins on the live gateway, want 1", n)
	}
	_, _, err = run("up", "--gateway", addr+",gateway.example", "--serial", "S", "--hwid", "H", "--insecure", "--netstack", "--state-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), `"gateway.example": want host:port`) {
		t.Fatalf("up with a gateway without a port: %v", err)
	}
}
