package audit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newLog(t *testing.T) (*Log, string, string) {
	dir := t.TempDir()
	p, h := filepath.Join(dir, "audit.log"), filepath.Join(dir, "audit.head")
	l, err := Open(p, h)
	if err != nil {
		t.Fatal(err)
	}
	return l, p, h
}

func add(t *testing.T, l *Log, at time.Time, action string) Entry {
	t.Helper()
	e, err := l.Append(Entry{Time: at, Operator: "alice", Role: "privacy", Action: action, Target: "ab12", Reason: "ticket 7", Result: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestChainVerifiesAndDetectsTampering(t *testing.T) {
	l, p, h := newLog(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 5; i++ {
		add(t, l, t0.Add(time.Duration(i)*time.Hour), "export")
	}
	if n, err := l.Verify(); err != nil || n != 5 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	orig, _ := os.ReadFile(p)

	// Altered entry.
	if err := os.WriteFile(p, []byte(strings.Replace(string(orig), "ticket 7", "ticket 8", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Verify(); !errors.Is(err, ErrBroken) {
		t.Fatalf("altered entry: %v", err)
	}
	// Truncated log (last line dropped): the stored head catches it.
	lines := strings.SplitAfter(string(orig), "\n")
	if err := os.WriteFile(p, []byte(strings.Join(lines[:4], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Verify(); !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "stored head") {
		t.Fatalf("truncated log: %v", err)
	}
	// Restored: verifies again, and reopening works.
	if err := os.WriteFile(p, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, h); err != nil {
		t.Fatal(err)
	}
	// An older copy of both log and head would verify; an older log alone
	// against the newer head does not (covered above).
}

func TestPruneKeepsAnchor(t *testing.T) {
	l, p, h := newLog(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 6; i++ {
		add(t, l, t0.Add(time.Duration(i)*24*time.Hour), "erase")
	}
	n, err := l.Prune(t0.Add(3 * 24 * time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("Prune = %d, %v; want 3", n, err)
	}
	if n, err := l.Verify(); err != nil || n != 4 {
		t.Fatalf("after prune Verify = %d, %v; want 4 lines (anchor + 3)", n, err)
	}
	add(t, l, t0.Add(7*24*time.Hour), "export")
	l2, err := Open(p, h)
	if err != nil {
		t.Fatalf("reopen after prune + append: %v", err)
	}
	if n, err := l2.Verify(); err != nil || n != 5 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	// Prune everything: only the anchor remains and it still verifies.
	if _, err := l2.Prune(t0.Add(30 * 24 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, err := l2.Verify(); err != nil || n != 1 {
		t.Fatalf("all pruned: Verify = %d, %v", n, err)
	}
	// Reopen with only the anchor, append, and the chain still holds.
	l3, err := Open(p, h)
	if err != nil {
		t.Fatal(err)
	}
	add(t, l3, t0.Add(40*24*time.Hour), "export")
	if n, err := l3.Verify(); err != nil || n != 2 {
		t.Fatalf("anchor + new entry: Verify = %d, %v", n, err)
	}
	// Dropping the anchor line breaks the chain.
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), `"anchor":true`) {
		t.Fatalf("no anchor line: %s", b)
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Verify(); !errors.Is(err, ErrBroken) {
		t.Fatalf("emptied log: %v", err)
	}
}
