// Package clitools checks that tools operators already have work against a
// running gateway: grpcurl (server reflection, TLS with the gateway's own
// certificate as CA), grpc-health-probe (TLS) and dassetctl. It runs the real
// daemon binary in netstack mode on loopback, so it needs no root.
package clitools

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// tool finds a Go-installed tool: the repo's .bin (scripts/install-deps.sh
// puts them there), then PATH.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p := filepath.Join(netnstest.RepoRoot(t), ".bin", name); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Skipf("%s is not installed (make deps installs it)", name)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func TestOperatorToolsAgainstRunningGateway(t *testing.T) {
	grpcurl := tool(t, "grpcurl")
	probe := tool(t, "grpc-health-probe")
	bin := netnstest.FindBinaries(context.Background(), t)
	dir := t.TempDir()
	grpcPort, metricsPort, wgPort := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "udp")
	sock := filepath.Join(dir, "admin.sock")
	cfg := fmt.Sprintf(`data_dir: %s/data
tunnel:
  mode: netstack
  interface: dtools0
  listen_port: %d
  uapi: false
grpc:
  listen: 127.0.0.1:%d
admin:
  socket: %s
metrics:
  listen: 127.0.0.1:%d
log:
  format: text
`, dir, wgPort, grpcPort, sock, metricsPort)
	cfgPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := netnstest.StartProc(t, filepath.Join(dir, "gateway.log"), filepath.Join(bin, "dasset-gateway"), "serve", "--config", cfgPath)
	if err := netnstest.WaitHTTP(gw, fmt.Sprintf("http://127.0.0.1:%d/readyz", metricsPort), 30*time.Second); err != nil {
		t.Fatalf("gateway not ready: %v", err)
	}
	ca := filepath.Join(dir, "data", "tls.crt")
	addr := fmt.Sprintf("127.0.0.1:%d", grpcPort)

	// grpcurl lists the services through reflection, over TLS with the
	// gateway's own certificate as the CA.
	out, err := run(t, grpcurl, "-cacert", ca, addr, "list")
	if err != nil {
		t.Fatalf("grpcurl list: %v\n%s", err, out)
	}
	for _, svc := range []string{"dasset.gateway.v1.DeviceService", "dasset.gateway.v1.ClientService", "grpc.health.v1.Health"} {
		if !strings.Contains(out, svc) {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, out)
		}
	}
	if strings.Contains(out, "AdminService") {
		t.Errorf("the device/client listener serves AdminService:\n%s", out)
	}
	out, err = run(t, grpcurl, "-cacert", ca, addr, "describe", "dasset.gateway.v1.DeviceService.Login")
	if err != nil || !strings.Contains(out, "DeviceLoginRequest") {
		t.Errorf("grpcurl describe: %v\n%s", err, out)
	}
	// A bad request through grpcurl gets a precise InvalidArgument.
	out, err = run(t, grpcurl, "-cacert", ca, "-d", `{"serial_number":"","hardware_id":"x","public_key":""}`, addr, "dasset.gateway.v1.DeviceService/Login")
	if err == nil || !strings.Contains(out, "InvalidArgument") || !strings.Contains(out, "serial_number") {
		t.Errorf("grpcurl Login with an empty serial: %v\n%s", err, out)
	}
	// Without the CA, TLS verification fails: the check above can fail.
	if out, err := run(t, grpcurl, addr, "list"); err == nil {
		t.Errorf("grpcurl without -cacert succeeded against a self-signed certificate:\n%s", out)
	}

	// grpc-health-probe over TLS.
	out, err = run(t, probe, "-addr", addr, "-tls", "-tls-ca-cert", ca, "-connect-timeout", "5s", "-rpc-timeout", "5s")
	if err != nil || !strings.Contains(out, "SERVING") {
		t.Fatalf("grpc-health-probe -tls: %v\n%s", err, out)
	}
	if out, err := run(t, probe, "-addr", addr, "-connect-timeout", "3s", "-rpc-timeout", "3s"); err == nil {
		t.Errorf("grpc-health-probe in plaintext against the TLS listener succeeded:\n%s", out)
	}

	// The admin socket: reflection lists AdminService; dassetctl works.
	out, err = run(t, grpcurl, "-plaintext", "-unix", sock, "list")
	if err != nil || !strings.Contains(out, "dasset.gateway.v1.AdminService") {
		t.Errorf("grpcurl on the admin socket: %v\n%s", err, out)
	}
	out, err = run(t, filepath.Join(bin, "dassetctl"), "--socket", sock, "status")
	if err != nil {
		t.Errorf("dassetctl status: %v\n%s", err, out)
	}
	out, err = run(t, filepath.Join(bin, "dassetctl"), "--socket", sock, "policy", "show")
	if err != nil || !strings.Contains(out, "serial_number") {
		t.Errorf("dassetctl policy show: %v\n%s", err, out)
	}
}

// TestNoTUNPrivilegeIsOneClearLine: without the privilege to make a TUN the
// daemon says so in one line (and how to run unprivileged), never a stack
// trace; the same user then runs the whole gateway with tunnel.mode:
// netstack. As root the daemon is run as nobody; otherwise as the test user.
func TestNoTUNPrivilegeIsOneClearLine(t *testing.T) {
	bin := netnstest.FindBinaries(context.Background(), t)
	dir, err := os.MkdirTemp("", "dasset-nopriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("data_dir: %s/data\ntunnel:\n  interface: dnopriv0\n  uapi: false\ngrpc:\n  listen: 127.0.0.1:0\nadmin:\n  socket: %s/admin.sock\nmetrics:\n  listen: 127.0.0.1:0\n", dir, dir)
	cfgPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	gw := filepath.Join(bin, "dasset-gateway")
	args := []string{gw, "serve", "--config", cfgPath}
	if os.Geteuid() == 0 {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("setpriv (util-linux) is needed to drop root")
		}
		// The binary must be reachable by nobody.
		copyTo := filepath.Join(dir, "dasset-gateway")
		b, err := os.ReadFile(gw)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(copyTo, b, 0o755); err != nil {
			t.Fatal(err)
		}
		args = append([]string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", copyTo}, args[1:]...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err == nil {
		t.Fatal("the gateway started without the privilege to make a TUN")
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	last := lines[len(lines)-1]
	if strings.Contains(stderr.String(), "goroutine ") || strings.Contains(stderr.String(), "panic") {
		t.Fatalf("stack trace instead of one line:\n%s", stderr.String())
	}
	if !strings.Contains(last, "CAP_NET_ADMIN") || !strings.Contains(last, "tunnel.mode: netstack") {
		t.Fatalf("last line %q does not say what is missing and how to run unprivileged; stderr:\n%s", last, stderr.String())
	}
	for _, l := range lines[:len(lines)-1] {
		if strings.Contains(strings.ToLower(l), "error") {
			t.Errorf("more than one error line: %q", l)
		}
	}

	// The same user runs the whole gateway with tunnel.mode: netstack.
	metricsPort := freePort(t, "tcp")
	ns := strings.Replace(cfg, "tunnel:\n", "tunnel:\n  mode: netstack\n  listen_port: "+fmt.Sprint(freePort(t, "udp"))+"\n", 1)
	ns = strings.Replace(ns, "metrics:\n  listen: 127.0.0.1:0", fmt.Sprintf("metrics:\n  listen: 127.0.0.1:%d", metricsPort), 1)
	if err := os.WriteFile(cfgPath, []byte(ns), 0o644); err != nil {
		t.Fatal(err)
	}
	gwNS := netnstest.StartProc(t, filepath.Join(dir, "gateway-netstack.log"), args...)
	if err := netnstest.WaitHTTP(gwNS, fmt.Sprintf("http://127.0.0.1:%d/readyz", metricsPort), 20*time.Second); err != nil {
		t.Fatalf("unprivileged gateway in netstack mode not ready: %v", err)
	}
}
