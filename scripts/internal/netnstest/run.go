package netnstest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Run runs a short command (bounded by CmdTimeout) with input on its
// standard input and returns its combined output; the error names the
// command and carries the output.
func Run(ctx context.Context, input, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if input != "" {
		cmd.Stdin = strings.NewReader(input)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Output runs a short command (bounded by CmdTimeout) with input on its
// standard input and returns its standard output and standard error apart
// (for JSON, or output that is kept); the error carries standard error.
func Output(ctx context.Context, input, name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, CmdTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	if input != "" {
		cmd.Stdin = strings.NewReader(input)
	}
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), errb.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.String(), errb.String(), nil
}

// Run runs a short command and returns its combined output.
func (h *Harness) Run(name string, args ...string) (string, error) {
	return Run(h.ctx, "", name, args...)
}

// RunStdin runs a short command with input on its standard input and
// returns its combined output.
func (h *Harness) RunStdin(input, name string, args ...string) (string, error) {
	return Run(h.ctx, input, name, args...)
}

// Output runs a short command with input and returns stdout and stderr apart.
func (h *Harness) Output(input, name string, args ...string) (stdout, stderr string, err error) {
	return Output(h.ctx, input, name, args...)
}

// MustRun is Run that fails the test on error.
func (h *Harness) MustRun(name string, args ...string) string {
	h.T.Helper()
	out, err := h.Run(name, args...)
	if err != nil {
		h.T.Fatal(err)
	}
	return out
}

// NsRun runs a short command inside network namespace ns.
func (h *Harness) NsRun(ns string, args ...string) (string, error) {
	return h.Run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// PingWithin runs `ping ARGS` in ns until one run succeeds, and returns how
// long that took.
func (h *Harness) PingWithin(ns string, within time.Duration, args ...string) (time.Duration, error) {
	start := time.Now()
	err := h.Poll(within, 100*time.Millisecond, func() error {
		_, err := h.NsRun(ns, append([]string{"ping"}, args...)...)
		return err
	})
	return time.Since(start), err
}

// SelfIn re-executes the test binary inside ns with env=value set, and
// returns its standard output (bounded by CmdTimeout). The test package's
// TestMain must recognise env and do its job instead of running the tests.
func (h *Harness) SelfIn(ns, env, value string) ([]byte, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(h.ctx, CmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), env+"="+value)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s=%.200s in %s: %w: %s", env, value, ns, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// SelfArgv is the argv that runs the test binary with env=value set, for
// Start (a background job of the re-executed binary).
func (h *Harness) SelfArgv(env, value string) []string {
	h.T.Helper()
	self, err := os.Executable()
	if err != nil {
		h.T.Fatal(err)
	}
	return []string{"env", env + "=" + value, self}
}
