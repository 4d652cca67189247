package api

import (
	"path/filepath"
	"testing"

	"github.com/planetxlabs/dasset-gateway/pkg/audit"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// TestAuditEntriesNameEveryTargetInBoundedLines: a reveal of a whole fleet
// names every device, in entries the audit log can read back.
func TestAuditEntriesNameEveryTargetInBoundedLines(t *testing.T) {
	targets := make([]privacy.BlindIndex, 2*maxAuditTargets+1)
	for i := range targets {
		targets[i][0], targets[i][1] = byte(i), byte(i>>8)
	}
	base := audit.Entry{Operator: "priya", Role: "privacy", Action: "reveal_devices", Reason: "ticket 1", Result: "attempt"}
	entries := auditEntries(base, targets)
	if len(entries) != 3 || len(entries[0].Targets) != maxAuditTargets || len(entries[2].Targets) != 1 {
		t.Fatalf("%d entries", len(entries))
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if e.Target != "" || e.Action != "reveal_devices" || e.Reason != "ticket 1" {
			t.Fatalf("entry %+v", e)
		}
		for _, x := range e.Targets {
			seen[x] = true
		}
	}
	for _, x := range targets {
		if !seen[x.String()] {
			t.Fatalf("target %s not named", x)
		}
	}
	if one := auditEntries(base, targets[:1]); len(one) != 1 || one[0].Target != targets[0].String() || one[0].Targets != nil {
		t.Fatalf("one target: %+v", one)
	}
	if none := auditEntries(base, nil); len(none) != 1 || none[0].Target != "" || none[0].Targets != nil {
		t.Fatalf("no target: %+v", none)
	}

	// The entries go into a real audit log, which reads them back.
	dir := t.TempDir()
	l, err := audit.Open(filepath.Join(dir, "audit.log"), filepath.Join(dir, "audit.head"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := l.Verify(); err != nil || n != len(entries) {
		t.Fatalf("Verify: %d, %v", n, err)
	}
	if _, err := audit.Open(filepath.Join(dir, "audit.log"), filepath.Join(dir, "audit.head")); err != nil {
		t.Fatalf("reopen: %v", err)
	}
}
