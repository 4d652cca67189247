package canary

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binary, re-executed inside a network namespace with one of these
// set, does one small network job there and exits (see TestMain).
const (
	// httpGetEnv: fetch the URL, print the body (exit 0 only on 200).
	httpGetEnv = "DASSET_CANARY_HTTPGET"
	// garbageEnv: connect to HOST:PORT over TCP, send a few bytes that are
	// neither TLS nor HTTP/2, and close (a probe of the gateway's error path).
	garbageEnv = "DASSET_CANARY_GARBAGE"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(httpGetEnv); url != "" {
		os.Exit(httpGet(url))
	}
	if spec := os.Getenv(probeEnv); spec != "" {
		os.Exit(runProbe(spec))
	}
	if addr := os.Getenv(garbageEnv); addr != "" {
		os.Exit(sendGarbage(addr))
	}
	os.Exit(m.Run())
}

func httpGet(url string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, resp.Status)
		return 1
	}
	return 0
}

func sendGarbage(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n\x16\x03\x01\x00\x05hello")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, _ = io.Copy(io.Discard, c) // until the gateway closes or the deadline
	return 0
}

// cmdTimeout bounds every short command (ip, ping, dassetctl).
const cmdTimeout = 30 * time.Second

// harness is what one run owns: binaries, a temp dir, unique names, and the
// process logs to show on failure.
type harness struct {
	t      *testing.T
	bin    string
	dir    string
	suffix string

	mu   sync.Mutex
	logs []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privacy canary needs root: it creates network namespaces and TUN devices (run as root, e.g. in CI)")
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("privacy canary needs %s in PATH: %v", tool, err)
		}
	}
	h := &harness{t: t, dir: t.TempDir(), suffix: fmt.Sprint(os.Getpid() % 100000)}
	h.bin = binaries(t)
	t.Cleanup(h.dumpLogsOnFailure)
	return h
}

// binaries returns $DASSET_BIN, or builds the three commands into a temp dir.
func binaries(t *testing.T) string {
	t.Helper()
	names := []string{"dasset-gateway", "dasset-agent", "dassetctl"}
	if dir := os.Getenv("DASSET_BIN"); dir != "" {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				t.Fatalf("DASSET_BIN=%s: %v (run `make build`)", dir, err)
			}
		}
		return dir
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, n := range names {
		args = append(args, "./cmd/"+n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

func (h *harness) path(name string) string { return filepath.Join(h.bin, name) }

func (h *harness) dumpLogsOnFailure() {
	if !h.t.Failed() {
		return
	}
	h.mu.Lock()
	logs := append([]string(nil), h.logs...)
	h.mu.Unlock()
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			h.t.Logf("log %s: %v", p, err)
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		h.t.Logf("---- tail of %s ----\n%s", filepath.Base(p), strings.Join(lines, "\n"))
	}
}

// runIn runs a short command with stdin and returns stdout and stderr.
func runIn(stdin string, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.String(), errb.String(), err
}

func run(name string, args ...string) (string, error) {
	out, _, err := runIn("", name, args...)
	return out, err
}

func (h *harness) mustRun(name string, args ...string) string {
	h.t.Helper()
	out, err := run(name, args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

func nsRun(ns string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// selfIn re-executes the test binary inside ns with env set, bounded.
func selfIn(ns string, env string) ([]byte, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), env)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w: %s", env, ns, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// poll calls fn every interval until it succeeds or within has passed.
func poll(within, interval time.Duration, fn func() error) error {
	deadline := time.Now().Add(within)
	maxTries := int(within/interval) + 2
	var err error
	for i := 0; i < maxTries; i++ {
		if err = fn(); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(interval)
	}
	return fmt.Errorf("not within %v: %w", within, err)
}

// proc is a background process whose stdout and stderr go to one file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// start runs argv inside ns with its output in logPath; it is stopped when
// the test ends.
func (h *harness) start(ns, logPath string, argv ...string) *proc {
	h.t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		h.t.Fatalf("start %s: %v", logPath, err)
	}
	f.Close()
	h.mu.Lock()
	h.logs = append(h.logs, logPath)
	h.mu.Unlock()
	p := &proc{name: strings.TrimSuffix(filepath.Base(logPath), ".log"), cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	h.t.Cleanup(func() { p.stop(5 * time.Second) })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) wait(d time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// stop sends SIGTERM, waits up to grace, then kills; graceful says whether
// SIGTERM was enough.
func (p *proc) stop(grace time.Duration) (graceful bool, err error) {
	if p.exited() {
		return true, p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if ok, err := p.wait(grace); ok {
		return true, err
	}
	_ = p.cmd.Process.Kill()
	_, err = p.wait(5 * time.Second)
	return false, err
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func (p *proc) lastLine() string {
	lines := strings.Split(strings.TrimSpace(p.logText()), "\n")
	return lines[len(lines)-1]
}

// certFingerprint is the SHA-256 of the DER certificate in a PEM file.
func certFingerprint(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return "", errors.New(path + ": no PEM certificate")
	}
	sum := sha256.Sum256(blk.Bytes)
	return hex.EncodeToString(sum[:]), nil
}
