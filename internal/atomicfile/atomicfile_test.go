package atomicfile

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/google/renameio/v2"
)

// entries lists dir, so a left-over temporary file shows.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteReplacesWithMode(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if err := Write(p, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "two" {
		t.Fatalf("after two writes: %q, %v", b, err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "state" {
		t.Fatalf("directory holds %v, want only state", got)
	}
	// The mode is the one asked for, whatever the umask.
	q := filepath.Join(dir, "public")
	if err := Write(q, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(q); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v under umask 077, %v; want 0644", st.Mode().Perm(), err)
	}
}

func TestWriteIntoMissingDirectoryFails(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing", "state")
	if err := Write(p, []byte("x"), 0o600); err == nil {
		t.Fatal("Write into a missing directory succeeded")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("stat after a failed write: %v", err)
	}
}

func TestCreateNeverClobbers(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	created, err := Create(p, []byte("first"), 0o600)
	if err != nil || !created {
		t.Fatalf("first Create: %v, %v", created, err)
	}
	created, err = Create(p, []byte("second"), 0o600)
	if err != nil || created {
		t.Fatalf("second Create: created=%v, %v; want false, nil", created, err)
	}
	if b, _ := os.ReadFile(p); string(b) != "first" {
		t.Fatalf("key holds %q after a second Create, want the first", b)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", st.Mode().Perm(), err)
	}
	if got := entries(t, dir); len(got) != 1 {
		t.Fatalf("directory holds %v, want only key", got)
	}
}

func TestSyncDir(t *testing.T) {
	if err := SyncDir(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("SyncDir of a missing directory succeeded")
	}
}

// IsTemp recognises the temporary files Write makes, as a crash would
// leave them.
func TestIsTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "seal.key")
	f, err := renameio.NewPendingFile(p, renameio.WithTempDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Cleanup()
	if name := filepath.Base(f.Name()); !IsTemp(name) {
		t.Fatalf("IsTemp(%q) = false for a pending file", name)
	}
	for _, name := range []string{"seal.key", "2026-01-02.key", ".", ".123", "ledger", ".hidden"} {
		if IsTemp(name) {
			t.Errorf("IsTemp(%q) = true", name)
		}
	}
}
