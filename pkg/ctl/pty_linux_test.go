package ctl

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// openPTY opens a pseudo-terminal pair: the test types into master, the CLI
// reads slave as its terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	// Drain what the terminal echoes so that it never blocks.
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := m.Read(buf); err != nil {
				return
			}
		}
	}()
	return m, s
}

// runOnTTY runs the CLI with a terminal as standard input, typing input.
func runOnTTY(t *testing.T, input string, args ...string) result {
	t.Helper()
	master, slave := openPTY(t)
	if _, err := master.WriteString(input); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := Run(ctx, args, Env{Stdin: slave, Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Now: func() time.Time { return testNow }})
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

func TestAccountsCreatePromptsTwice(t *testing.T) {
	f := &fakeAdmin{}
	sock := serveUnix(t, f)

	r := runOnTTY(t, "hunter2 hunter2\nhunter2 hunter2\n", "--socket", sock, "accounts", "create", "carol")
	if r.code != ExitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "Password: ") || !strings.Contains(r.stderr, "Repeat password: ") || strings.Contains(r.stderr, "hunter2") {
		t.Fatalf("prompts %q", r.stderr)
	}
	reqs := received[*gatewayv1.CreateAccountRequest](f)
	if len(reqs) != 1 || reqs[0].Password != "hunter2 hunter2" || reqs[0].Name != "carol" {
		t.Fatalf("sent %v", reqs)
	}

	r = runOnTTY(t, "one\ntwo\n", "--socket", sock, "accounts", "create", "dave")
	if r.code != ExitError || !strings.Contains(r.stderr, "Error: password: the two entries differ") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := len(received[*gatewayv1.CreateAccountRequest](f)); n != 1 {
		t.Fatalf("%d CreateAccount requests, want 1", n)
	}
}

func TestSubjectEraseConfirmsOnTTY(t *testing.T) {
	f := &fakeAdmin{removed: map[string]int64{"devices": 1}}
	sock := serveUnix(t, f)

	r := runOnTTY(t, "no\n", "--socket", sock, "subject", "erase", "--serial", "DS-000123", "--reason", "r")
	if r.code != ExitError || !strings.Contains(r.stderr, "Erase everything stored about device ****23?") ||
		!strings.Contains(r.stderr, "Error: not confirmed: nothing was changed") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := f.total(); n != 0 {
		t.Fatalf("the fake received %d requests", n)
	}

	r = runOnTTY(t, "yes\n", "--socket", sock, "subject", "erase", "--serial", "DS-000123", "--reason", "r")
	if r.code != ExitOK || !strings.HasPrefix(r.stdout, "Erased device ****23.\n") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	reqs := received[*gatewayv1.EraseSubjectRequest](f)
	if len(reqs) != 1 || reqs[0].GetSerialNumber() != "DS-000123" {
		t.Fatalf("sent %v", reqs)
	}
}

// Keys commands ask for the passphrase on the terminal: twice for a new
// backup, once to restore one; without a terminal they name
// --passphrase-stdin (not the accounts' --password-stdin).
func TestKeysPassphrasePrompts(t *testing.T) {
	dir := t.TempDir()
	ks := filepath.Join(dir, "keystore")
	k, err := privacy.OpenKeystore(ks)
	if err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(dir, "ks.backup")
	r := runOnTTY(t, "correct horse\ncorrect horse\n", "keys", "backup", "--keystore", ks, "--out", backup)
	if r.code != ExitOK {
		t.Fatalf("backup: exit %d, stderr %q", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "Passphrase: ") || !strings.Contains(r.stderr, "Repeat passphrase: ") || strings.Contains(r.stderr, "horse") {
		t.Fatalf("backup prompts %q", r.stderr)
	}
	restored := filepath.Join(dir, "restored")
	r = runOnTTY(t, "correct horse\n", "keys", "restore", "--keystore", restored, "--in", backup)
	if r.code != ExitOK {
		t.Fatalf("restore: exit %d, stderr %q", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "Passphrase: ") || strings.Contains(r.stderr, "Repeat") {
		t.Fatalf("restore prompts %q, want one", r.stderr)
	}
	if id, ok, err := privacy.KeystoreID(restored); err != nil || !ok || id != k.ID() {
		t.Fatalf("restored keystore id %q (ok %v, err %v), want %q", id, ok, err, k.ID())
	}
	var out, errb bytes.Buffer
	code := Run(context.Background(), []string{"keys", "restore", "--keystore", filepath.Join(dir, "again"), "--in", backup},
		Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	if code == ExitOK || !strings.Contains(errb.String(), "--passphrase-stdin") {
		t.Fatalf("restore without a terminal: exit %d, stderr %q; want the --passphrase-stdin hint", code, errb.String())
	}
}
