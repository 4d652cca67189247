package argvscan

import (
	"os/exec"
	"slices"
	"testing"
)

// TestHolding: a process with a value in its argv is found; one without
// is not.
func TestHolding(t *testing.T) {
	const value = "ARGVSCAN-TEST-7f3a91"
	p := exec.Command("sh", "-c", "read -r line", "holder", value)
	in, err := p.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	pids, err := Holding(value)
	in.Close()
	_ = p.Wait()
	if err != nil || !slices.Equal(pids, []int{p.Process.Pid}) {
		t.Fatalf("Holding found %v (%v), want [%d]", pids, err, p.Process.Pid)
	}
	if pids, err := Holding(value); err != nil || len(pids) != 0 {
		t.Fatalf("after the process ended: %v (%v), want none", pids, err)
	}
	Check(t, value)
}
