package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// httpGetEnv makes the test binary, re-executed inside a network namespace,
// fetch one URL, print the body and exit: the metrics listener is on the
// gateway namespace's loopback, which only a process in it can reach.
const httpGetEnv = "DASSET_E2E_HTTPGET"

func TestMain(m *testing.M) {
	if url := os.Getenv(httpGetEnv); url != "" {
		os.Exit(httpGet(url))
	}
	if addr := os.Getenv(tcpEchoEnv); addr != "" {
		os.Exit(tcpEcho(addr))
	}
	if addr := os.Getenv(tcpDialEnv); addr != "" {
		os.Exit(tcpDial(addr))
	}
	os.Exit(m.Run())
}

// httpGet prints the body of url; the exit code is 0 only for a 200.
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

// cmdTimeout bounds every short command (ip, wg, ping, dassetctl).
const cmdTimeout = 30 * time.Second

// harness holds what one run owns: binaries, a temp dir, unique names, the
// log files to show on failure.
type harness struct {
	t      *testing.T
	bin    string // directory of dasset-gateway, dasset-agent, dassetctl
	dir    string
	suffix string // per-run suffix of namespace and interface names

	mu   sync.Mutex
	logs []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and TUN devices")
	}
	for _, tool := range []string{"ip", "wg", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s in PATH: %v", tool, err)
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

func (h *harness) addLog(path string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.logs = append(h.logs, path)
}

// dumpLogsOnFailure shows the last lines of every process log.
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
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		h.t.Logf("---- tail of %s ----\n%s", filepath.Base(p), strings.Join(lines, "\n"))
	}
}

// run runs a short command and returns its combined output.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// mustRun is run that fails the test on error.
func (h *harness) mustRun(name string, args ...string) string {
	h.t.Helper()
	out, err := run(name, args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// nsRun runs a command inside network namespace ns.
func nsRun(ns string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// stdout runs a command and returns its standard output only (for JSON).
func stdout(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var errBuf bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &errBuf
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(errBuf.Bytes()))
	}
	return out, nil
}

// poll calls fn every interval until it succeeds or within has passed, and
// returns the last error then.
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

// proc is a background process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid after done is closed
}

// start runs argv inside namespace ns with its output in dir/logName; the
// process is killed when the test ends.
func (h *harness) start(ns, logName string, argv ...string) *proc {
	h.t.Helper()
	logPath := filepath.Join(h.dir, logName)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		h.t.Fatalf("start %s: %v", logName, err)
	}
	f.Close()
	h.addLog(logPath)
	p := &proc{name: strings.TrimSuffix(logName, ".log"), cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	h.t.Cleanup(func() { p.stop(5 * time.Second) })
	return p
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the process to end; ok is false on timeout, else
// err is how it ended.
func (p *proc) wait(d time.Duration) (ok bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// stop sends SIGTERM, waits up to grace, then kills. It returns whether the
// process ended on SIGTERM alone, and how it ended.
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

// logText is the process's output so far.
func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// lastLine is the last non-empty line of the process's output.
func (p *proc) lastLine() string {
	lines := strings.Split(strings.TrimSpace(p.logText()), "\n")
	return lines[len(lines)-1]
}

// certFingerprint is the SHA-256 of the DER certificate in a PEM file, as
// the gateway logs it and agents pin it.
func certFingerprint(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return "", fmt.Errorf("%s: no PEM certificate", path)
	}
	sum := sha256.Sum256(blk.Bytes)
	return hex.EncodeToString(sum[:]), nil
}

// counterValue sums a counter's samples whose labels include want.
func counterValue(exposition []byte, name string, want map[string]string) (float64, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(exposition))
	if err != nil {
		return 0, fmt.Errorf("parse metrics: %w", err)
	}
	fam, ok := fams[name]
	if !ok {
		return 0, fmt.Errorf("metric %s: not exposed", name)
	}
	var sum float64
	for _, m := range fam.GetMetric() {
		match := 0
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
				match++
			}
		}
		if match == len(want) && m.GetCounter() != nil {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum, nil
}
