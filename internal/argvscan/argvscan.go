// Package argvscan checks that no process's command line shows a secret
// (a serial number, a hardware id): it scans /proc/PID/cmdline, which ps
// shows every local user. Linux only.
package argvscan

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// Holding lists the processes whose command line holds any of the values.
func Holding(values ...string) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // gone meanwhile
		}
		for _, v := range values {
			if bytes.Contains(b, []byte(v)) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

// Check fails the test if any process's command line holds one of values.
// Positive control first: a planted process with the values in its argv
// must be found, and only it, or the scan cannot work.
func Check(t testing.TB, values ...string) {
	t.Helper()
	// It waits on a shell builtin (no child process) until killed.
	canary := exec.Command("sh", append([]string{"-c", "read -r line", "argv-canary"}, values...)...)
	canaryIn, err := canary.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer canaryIn.Close()
	if err := canary.Start(); err != nil {
		t.Fatal(err)
	}
	pids, err := Holding(values...)
	_ = canary.Process.Kill()
	_ = canary.Wait()
	if err != nil || len(pids) != 1 || pids[0] != canary.Process.Pid {
		t.Fatalf("scan of /proc/*/cmdline found %v (%v), want only the planted process %d: the scan cannot work", pids, err, canary.Process.Pid)
	}
	if pids, err := Holding(values...); err != nil || len(pids) != 0 {
		t.Fatalf("processes %v show a device identifier in their command line (%v)", pids, err)
	}
}
