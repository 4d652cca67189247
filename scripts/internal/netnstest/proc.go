package netnstest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
)

// Proc is a background process whose standard output and standard error
// go to one log file.
type Proc struct {
	// Name is the log file's base name without ".log".
	Name string
	// Log is the path of the log file.
	Log string

	cmd  *exec.Cmd
	done chan struct{}
	ctx  context.Context // canceled when done is closed
	err  error           // valid after done is closed
}

// Start runs argv inside namespace ns with its output in logPath (relative
// to h.Dir unless absolute). The process is stopped when the test ends, and
// its log is shown if the test fails.
func (h *Harness) Start(ns, logPath string, argv ...string) *Proc {
	h.T.Helper()
	if !filepath.IsAbs(logPath) {
		logPath = filepath.Join(h.Dir, logPath)
	}
	p := start(h.T, logPath, append([]string{"ip", "netns", "exec", ns}, argv...))
	h.addLog(logPath)
	h.T.Cleanup(func() { _, _ = p.Stop(5 * time.Second) })
	return p
}

// StopGrace is how long the cleanup of StartProc waits for a process to end
// on SIGTERM before it kills it.
const StopGrace = 15 * time.Second

// StartProc runs argv (argv[0] is the program) in the test's own network
// namespace, with no root needed, its output in logPath. When the test ends
// the process is stopped (SIGTERM, then a kill after StopGrace) and, if the
// test failed, the last 40 lines of its log are shown.
func StartProc(t testing.TB, logPath string, argv ...string) *Proc {
	t.Helper()
	p := start(t, logPath, argv)
	t.Cleanup(func() {
		_, _ = p.Stop(StopGrace)
		if t.Failed() {
			t.Logf("--- end of %s log (%s):\n%s", p.Name, p.Log, Tail(p.LogText(), 40))
		}
	})
	return p
}

// start runs argv with its output in logPath and reaps it in the background.
func start(t testing.TB, logPath string, argv []string) *Proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", logPath, err)
	}
	f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proc{Name: strings.TrimSuffix(filepath.Base(logPath), ".log"), Log: logPath, cmd: cmd, done: make(chan struct{}), ctx: ctx}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		cancel()
	}()
	return p
}

// Pid is the process id (of "ip netns exec" for a Harness.Start process,
// which execs the program in place).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended (nil for exit 0); valid once Exited.
func (p *Proc) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Wait waits up to d for the process to end; ok is false on timeout, else
// err is how it ended.
func (p *Proc) Wait(d time.Duration) (ok bool, err error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true, p.err
	case <-t.C:
		return false, nil
	}
}

// Context is done once the process has ended: a poll for something the
// process should bring about stops at once when it dies.
func (p *Proc) Context() context.Context { return p.ctx }

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM, waits up to grace, then kills. It returns whether the
// process ended on SIGTERM alone, and how it ended.
func (p *Proc) Stop(grace time.Duration) (graceful bool, err error) {
	if p.Exited() {
		return true, p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if ok, err := p.Wait(grace); ok {
		return true, err
	}
	_ = p.cmd.Process.Kill()
	_, err = p.Wait(5 * time.Second)
	return false, err
}

// LogText is the process's output so far.
func (p *Proc) LogText() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// LastLine is the last non-empty line of the process's output.
func (p *Proc) LastLine() string { return LastLine(p.LogText()) }

// LastLine is the last non-empty line of text.
func LastLine(text string) string {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	return lines[len(lines)-1]
}

// ExpectFailure waits up to within for p to end and fails the test unless
// it ended with a non-zero exit (a refused agent); it returns how it ended.
func (h *Harness) ExpectFailure(p *Proc, within time.Duration) error {
	h.T.Helper()
	ok, err := p.Wait(within)
	if !ok {
		h.T.Fatalf("%s: still running after %v; want a refusal and exit", p.Name, within)
	}
	if err == nil {
		h.T.Fatalf("%s: exited 0; want non-zero", p.Name)
	}
	return err
}

// Field is the value after "Label:" on a line of a command's output (the
// first such line, spaces trimmed), or "".
func Field(out, label string) string {
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), label+":"); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// WaitHTTP polls url every 100ms, up to within, until it answers 200 OK
// (a gateway's /readyz); it gives up at once when p has ended.
func WaitHTTP(p *Proc, url string, within time.Duration) error {
	client := &http.Client{Timeout: 5 * time.Second}
	return poll.Until(p.Context(), within, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v: %s", p.Name, p.Err(), p.LastLine())
		}
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	})
}

// WaitOutput polls p's output every 50ms, up to within, until ready holds
// for it, and returns that output. The test fails if p ends first (at once)
// or the bound passes; what names what ready waits for.
func (h *Harness) WaitOutput(p *Proc, within time.Duration, what string, ready func(out string) bool) string {
	h.T.Helper()
	var out string
	err := poll.Until(p.Context(), within, 50*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("exited: %v: %s", p.Err(), p.LastLine())
		}
		if out = p.LogText(); !ready(out) {
			return fmt.Errorf("has not printed %s yet", what)
		}
		return nil
	})
	if err != nil {
		h.T.Fatalf("%s: %v", p.Name, err)
	}
	return out
}

// FreeTCP is a loopback TCP address ("127.0.0.1:port") that was free a
// moment ago, for a process started next to listen on.
func FreeTCP(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FreeUDPPort is a UDP port that was free on all addresses a moment ago (a
// WireGuard listen port).
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
