// Package netnstest is the shared harness of the root-only end-to-end tests
// under scripts/ (scripts/e2e, scripts/canary): network namespaces joined by
// veth pairs, the real dasset-gateway, dasset-agent and dassetctl binaries
// run in them as background processes with their output in log files,
// bounded waits, and the test binary re-executed inside a namespace for one
// small network job (an HTTP GET of the gateway's loopback-only metrics
// listener). The last lines of every process log are shown when a test
// fails.
//
// Everything here is bounded: each short command by CmdTimeout, each wait
// by its own limit in count and time. The test packages keep their own
// TestMain; it calls HTTPGet when HTTPGetEnv is set (see Harness.SelfIn).
package netnstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
)

// CmdTimeout bounds every short command (ip, wg, ping, dassetctl, a
// re-executed test binary).
const CmdTimeout = 30 * time.Second

// Binaries are the commands a harness needs, built from ./cmd/NAME.
var Binaries = []string{"dasset-gateway", "dasset-agent", "dassetctl"}

// BinEnv names a directory holding prebuilt Binaries (`make build`); without
// it the harness builds them into a temporary directory.
const BinEnv = "DASSET_BIN"

// Options say what a test needs and how it reports.
type Options struct {
	// Who names the test in skip messages, e.g. "privacy canary"; empty for
	// none.
	Who string
	// Tools must be in PATH, or the test is skipped ("ip" is always needed).
	Tools []string
	// TailLines is how many last lines of each process log a failed test
	// shows (default 40).
	TailLines int
}

// Harness is what one test run owns: the binaries, a temporary directory,
// a per-run suffix for namespace and interface names, and the process logs
// to show on failure.
type Harness struct {
	// T is the test the harness belongs to; its failures end that test.
	T *testing.T
	// Bin is the directory of the Binaries.
	Bin string
	// Dir is the run's temporary directory (relative log paths are in it).
	Dir string
	// Suffix is unique to this test process: namespace and interface names
	// carry it so that parallel test binaries do not collide.
	Suffix string

	ctx       context.Context
	tailLines int

	mu   sync.Mutex
	logs []string
}

// New skips the test unless it runs as root with the tools in PATH, then
// finds or builds the binaries. The harness context stays live until every
// other cleanup of the test has run.
func New(t *testing.T, opt Options) *Harness {
	t.Helper()
	who := "needs"
	if opt.Who != "" {
		who = opt.Who + " needs"
	}
	if os.Geteuid() != 0 {
		t.Skipf("%s root: it creates network namespaces and TUN devices (run as root, e.g. in CI)", who)
	}
	for _, tool := range append([]string{"ip"}, opt.Tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s %s in PATH: %v", who, tool, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // registered first, so it runs after every other cleanup
	h := &Harness{T: t, Dir: t.TempDir(), Suffix: fmt.Sprint(os.Getpid() % 100000),
		ctx: ctx, tailLines: opt.TailLines}
	if h.tailLines <= 0 {
		h.tailLines = 40
	}
	h.Bin = FindBinaries(ctx, t)
	t.Cleanup(h.dumpLogsOnFailure)
	return h
}

// Context is the harness's context: live until the test's last cleanup.
func (h *Harness) Context() context.Context { return h.ctx }

// Path is the path of one of the Binaries.
func (h *Harness) Path(name string) string { return filepath.Join(h.Bin, name) }

// FindBinaries returns $DASSET_BIN, or builds the Binaries into a temp dir.
func FindBinaries(ctx context.Context, t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(BinEnv); dir != "" {
		for _, n := range Binaries {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				t.Fatalf("%s=%s: %v (run `make build`)", BinEnv, dir, err)
			}
		}
		return dir
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, n := range Binaries {
		args = append(args, "./cmd/"+n)
	}
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// RepoRoot is the module root above the test's working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// ModuleRoot is the nearest directory at or above dir holding a go.mod.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; {
		if st, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !st.IsDir() {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod at or above %s", dir)
		}
		d = parent
	}
}

func (h *Harness) addLog(path string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.logs = append(h.logs, path)
}

// dumpLogsOnFailure shows the last lines of every process log.
func (h *Harness) dumpLogsOnFailure() {
	if !h.T.Failed() {
		return
	}
	h.mu.Lock()
	logs := append([]string(nil), h.logs...)
	h.mu.Unlock()
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			h.T.Logf("log %s: %v", p, err)
			continue
		}
		h.T.Logf("---- tail of %s ----\n%s", filepath.Base(p), Tail(string(b), h.tailLines))
	}
}

// Tail is the last n lines of text, without its trailing newlines.
func Tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if n >= 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Poll calls fn every interval until it succeeds, within has passed or ctx
// is done, and then returns the last error. It calls fn at most
// within/interval+2 times.
func Poll(ctx context.Context, within, interval time.Duration, fn func() error) error {
	return poll.Until(ctx, within, interval, fn)
}

func (h *Harness) Poll(within, interval time.Duration, fn func() error) error {
	return Poll(h.ctx, within, interval, fn)
}
