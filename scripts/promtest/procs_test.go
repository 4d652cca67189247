package promtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// tool finds an executable on PATH, skipping the test when it is missing.
func tool(t *testing.T, name, why string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found on PATH (%v); %s", name, err, why)
	}
	return p
}

// startProc starts bin with args, its output in logDir/NAME.log; the test's
// cleanup stops it and prints the end of its log when the test failed.
func startProc(t *testing.T, name, logDir, bin string, args ...string) *netnstest.Proc {
	t.Helper()
	return netnstest.StartProc(t, filepath.Join(logDir, name+".log"), append([]string{bin}, args...)...)
}

// run runs a command to completion within timeout, with stdin.
func run(timeout time.Duration, stdin string, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %s: %w", filepath.Base(bin), timeout, ctx.Err())
	}
	return out.String(), err
}

// waitFor calls check every 200ms until it returns nil or d has passed; it
// returns check's last error otherwise.
func waitFor(d time.Duration, check func() error) error {
	return poll.Until(context.Background(), d, 200*time.Millisecond, check)
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// httpGet returns the body of a 200 answer.
func httpGet(url string) ([]byte, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// exitError tells whether err is a non-zero exit of the child (and not,
// say, a failure to start it).
func exitError(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee)
}
