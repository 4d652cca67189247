// Package hostile runs the real dasset-gateway binary as a child process and
// attacks it as an unauthenticated stranger would, measuring the process
// from /proc. It needs no root (netstack mode); `make e2e` runs it with
// DASSET_BIN set, elsewhere it builds the binary.
package hostile

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

const (
	wrongLogins = 600
	concurrency = 300
	rssLimit    = 512 << 20
	// The stranger's source: another /24 than the real client's 127.0.0.1.
	strangerSrc = "127.0.2.1"
	account     = "dana"
	password    = "dana-password-1"
)

// Each wrong ClientService.Login used to run a 19 MiB argon2id check with
// nothing bounding how many ran at once: 600 of them, 300 at once, took
// the gateway to ~10 GB RSS. Now the checks run in a fixed pool behind the
// per-source and per-(account, source) throttles: the process's peak RSS
// stays under 512 MiB, and the real user logs in during the flood.
func TestClientLoginFloodBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the gateway binary and floods it")
	}
	bin := filepath.Join(netnstest.FindBinaries(context.Background(), t), "dasset-gateway")
	dir := t.TempDir()
	grpcAddr, metricsAddr := netnstest.FreeTCP(t), netnstest.FreeTCP(t)
	sock := filepath.Join(dir, "admin.sock")
	cfg := filepath.Join(dir, "gateway.yaml")
	yaml := fmt.Sprintf(`# written by scripts/hostile
data_dir: %s
log:
  level: warn
tunnel:
  mode: netstack
  interface: hst%d
  listen_port: %d
  uapi: false
grpc:
  listen: %s
admin:
  socket: %s
  operators:
    - uid: %d
      name: hostile-test
      roles: [operator]
metrics:
  listen: %s
`, filepath.Join(dir, "data"), os.Getpid()%100000, netnstest.FreeUDPPort(t), grpcAddr, sock, os.Getuid(), metricsAddr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := netnstest.StartProc(t, filepath.Join(dir, "gateway.log"), bin, "serve", "--config", cfg)
	waitReady(t, gw, metricsAddr)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	adminConn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close()
	if _, err := gatewayv1.NewAdminServiceClient(adminConn).CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: account, Password: password}); err != nil {
		t.Fatalf("create account: %v", err)
	}
	tls := agent.TLSOptions{CAFile: filepath.Join(dir, "data", "tls.crt")}
	before := rss(t, gw.Pid(), "VmRSS")

	// The flood: 300 workers, each on its own TLS connection from the
	// stranger's source, 600 wrong passwords in all.
	var (
		next, answered, hinted, busy atomic.Int64
		wg                           sync.WaitGroup
		half                         = make(chan struct{})
		halfOnce                     sync.Once
	)
	for range concurrency {
		conn := dialFrom(t, grpcAddr, tls, strangerSrc)
		c := gatewayv1.NewClientServiceClient(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= wrongLogins {
				_, err := c.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: "not-the-password"})
				switch status.Code(err) {
				case codes.Unauthenticated:
				case codes.ResourceExhausted:
					busy.Add(1)
				default:
					t.Errorf("wrong login: %v", err)
				}
				if hint(err) > 0 {
					hinted.Add(1)
				}
				if answered.Add(1) == concurrency {
					halfOnce.Do(func() { close(half) })
				}
			}
		}()
	}
	// The real user, from their own source, once the flood is under way:
	// an app retries when told to (a throttled or busy answer carries a
	// hint), within 30 s.
	<-half
	user := gatewayv1.NewClientServiceClient(dialFrom(t, grpcAddr, tls, "127.0.0.1"))
	var token string
	userStart, userBegan := answered.Load(), time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := user.Login(ctx, &gatewayv1.ClientLoginRequest{Account: account, Password: password})
		if err == nil {
			token = resp.GetAccessToken()
			break
		}
		h := hint(err)
		if h == 0 || time.Now().After(deadline) {
			t.Fatalf("the real user during the flood: %v", err)
		}
		time.Sleep(h)
	}
	if token == "" {
		t.Fatal("the real user's login succeeded with an empty access token")
	}
	userTook := time.Since(userBegan)
	wg.Wait()

	peak := rss(t, gw.Pid(), "VmHWM")
	after := rss(t, gw.Pid(), "VmRSS")
	t.Logf("%d wrong logins at %d concurrency: %d answered with a retry hint (%d busy); the user's login began after %d of them and took %v; RSS before %d MiB, peak %d MiB, after %d MiB",
		answered.Load(), concurrency, hinted.Load(), busy.Load(), userStart, userTook.Round(time.Millisecond), before>>20, peak>>20, after>>20)
	if answered.Load() != wrongLogins {
		t.Fatalf("%d of %d wrong logins answered", answered.Load(), wrongLogins)
	}
	if userStart >= wrongLogins {
		t.Fatal("the user's login began after the flood, not during it")
	}
	if hinted.Load() == 0 {
		t.Fatal("no wrong login was throttled: the defence did not engage")
	}
	if peak >= rssLimit {
		t.Fatalf("gateway peak RSS %d MiB, want < %d MiB", peak>>20, rssLimit>>20)
	}
	if n := metric(t, metricsAddr, `dasset_gateway_throttled_total{call="client_login"`); n == 0 {
		t.Fatal("dasset_gateway_throttled_total{call=client_login} did not rise")
	}
}

func hint(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

func dialFrom(t *testing.T, addr string, tls agent.TLSOptions, src string) *grpc.ClientConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	conn, err := agent.Dial(addr, tls, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", a)
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// rss reads a size field (VmRSS, VmHWM) of /proc/PID/status, in bytes.
func rss(t *testing.T, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", field, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// metric sums the samples of /metrics lines starting with prefix.
func metric(t *testing.T, addr, prefix string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func waitReady(t *testing.T, p *netnstest.Proc, metricsAddr string) {
	t.Helper()
	if err := netnstest.WaitHTTP(p, "http://"+metricsAddr+"/readyz", 60*time.Second); err != nil {
		t.Fatalf("gateway not ready: %v", err)
	}
}
