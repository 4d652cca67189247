package ctl

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestSimpleCommands checks, for each remaining command, the request it
// sends and what it prints.
func TestSimpleCommands(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		request proto.Message
		stdout  string
	}{
		{[]string{"devices", "revoke", "DS-000123"}, &gatewayv1.RevokeDeviceRequest{SerialNumber: "DS-000123"},
			"Revoked device ****23.\n"},
		{[]string{"devices", "reset-key", "DS-000123"}, &gatewayv1.ResetDeviceKeyRequest{SerialNumber: "DS-000123"},
			"Reset the pinned key of device ****23; its next login pins a new one.\n"},
		{[]string{"sessions", "close", "s-42"}, &gatewayv1.AdminCloseSessionRequest{SessionId: "s-42"},
			"Closed session s-42.\n"},
		{[]string{"accounts", "delete", "alice"}, &gatewayv1.DeleteAccountRequest{Name: "alice"},
			"Deleted account alice.\nTABLE     ROWS REMOVED\nbindings  2\ndevices   1\ntotal     3\n"},
		{[]string{"policy", "show"}, &gatewayv1.GetPolicyRequest{},
			"fields:\n  serial_number: {}\n"},
		{[]string{"retention", "run"}, &gatewayv1.RunRetentionRequest{},
			// Tables are sorted by name.
			"Retention ran at 2025-03-14T12:00:00Z.\nTABLE    ROWS PRUNED\naudit    0\nconnlog  1000\ntotal    1000\n2 pseudonym key(s) destroyed.\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			f := &fakeAdmin{
				removed: map[string]int64{"devices": 1, "bindings": 2},
				policy:  "fields:\n  serial_number: {}",
				pruned:  &gatewayv1.RunRetentionResponse{Pruned: map[string]int64{"connlog": 1000, "audit": 0}, KeysDestroyed: 2, RanAt: timestamppb.New(testNow)},
			}
			sock := serveUnix(t, f)
			r := runCLI(t, "", nil, append([]string{"--socket", sock}, tc.args...)...)
			if r.code != ExitOK {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			f.mu.Lock()
			reqs := f.requests
			f.mu.Unlock()
			if len(reqs) != 1 || !proto.Equal(reqs[0], tc.request) {
				t.Fatalf("sent %v, want %v", reqs, tc.request)
			}
			if r.stdout != tc.stdout {
				t.Fatalf("stdout %q, want %q", r.stdout, tc.stdout)
			}
		})
	}
}

func TestSessionsList(t *testing.T) {
	f := &fakeAdmin{sessions: &gatewayv1.ListSessionsResponse{Sessions: []*gatewayv1.SessionInfo{{
		SessionId: "s-1", SerialNumber: "****23", Account: "alice",
		ClientAddresses: []string{"100.90.0.2"}, DeviceAddresses: []string{"100.80.0.2"},
		OpenedAt: timestamppb.New(testNow.Add(-5 * time.Minute)), ExpiresAt: timestamppb.New(testNow.Add(55 * time.Minute)),
	}}}}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "sessions", "list")
	want := [][]string{
		{"ID", "DEVICE", "ACCOUNT", "CLIENT", "ADDRESSES", "DEVICE", "ADDRESSES", "OPENED", "EXPIRES"},
		{"s-1", "****23", "alice", "100.90.0.2", "100.80.0.2", "5m", "ago", "in", "55m"},
	}
	if r.code != ExitOK || fmt.Sprint(tableRows(r.stdout)) != fmt.Sprint(want) {
		t.Fatalf("exit %d, stdout\n%s\nstderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, "", nil, "--socket", sock, "sessions", "list", "-o", "json")
	var got gatewayv1.ListSessionsResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil || !proto.Equal(&got, f.sessions) {
		t.Fatalf("json %q: %v", r.stdout, err)
	}
}

func TestTimeout(t *testing.T) {
	f := &fakeAdmin{block: true}
	sock := serveUnix(t, f)
	r := runCLI(t, "", nil, "--socket", sock, "--timeout", "200ms", "policy", "show")
	if r.code != ExitError || !strings.HasPrefix(r.stderr, "Error: DeadlineExceeded: ") ||
		!strings.HasSuffix(r.stderr, "(no answer within --timeout 200ms)\n") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestKeysBackupRestoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ks := filepath.Join(dir, "keystore")
	k, err := privacy.OpenKeystore(ks)
	if err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(dir, "ks.backup")
	var out, errb bytes.Buffer
	env := Env{Stdin: strings.NewReader("correct horse battery\n"), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
	if code := Run(context.Background(), []string{"keys", "backup", "--keystore", ks, "--out", backup, "--passphrase-stdin"}, env); code != 0 {
		t.Fatalf("backup exit %d: %s", code, errb.String())
	}
	restored := filepath.Join(dir, "restored")
	env.Stdin = strings.NewReader("wrong passphrase\n")
	if code := Run(context.Background(), []string{"keys", "restore", "--keystore", restored, "--in", backup, "--passphrase-stdin"}, env); code == 0 {
		t.Fatal("restore with a wrong passphrase succeeded")
	}
	env.Stdin = strings.NewReader("correct horse battery\n")
	if code := Run(context.Background(), []string{"keys", "restore", "--keystore", restored, "--in", backup, "--passphrase-stdin"}, env); code != 0 {
		t.Fatalf("restore exit %d: %s", code, errb.String())
	}
	k2, err := privacy.OpenKeystore(restored)
	if err != nil {
		t.Fatal(err)
	}
	if k2.ID() != k.ID() || k2.GatewayPrivateKey() != k.GatewayPrivateKey() {
		t.Fatal("restored keystore differs from the original")
	}
}

// A mistyped --keystore is refused, naming it, and nothing is made there
// (opening it would have made a fresh keystore and backed that up).
func TestKeysBackupRefusesMissingKeystore(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-keystore")
	for _, args := range [][]string{
		{"keys", "backup", "--keystore", missing, "--out", filepath.Join(dir, "a.backup"), "--passphrase-stdin"},
		{"keys", "backup", "--fleet", "--keystore", missing, "--out", filepath.Join(dir, "b.backup"), "--passphrase-stdin"},
	} {
		var out, errb bytes.Buffer
		env := Env{Stdin: strings.NewReader("correct horse battery\n"), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
		if code := Run(context.Background(), args, env); code == 0 || !strings.Contains(errb.String(), missing) || !strings.Contains(errb.String(), "no keystore") {
			t.Fatalf("%v: exit %d, stderr %q; want a refusal naming %s", args[1:3], code, errb.String(), missing)
		}
		if _, err := os.Stat(missing); !os.IsNotExist(err) {
			t.Fatalf("%v made %s (stat: %v)", args[1:3], missing, err)
		}
		if _, err := os.Stat(args[len(args)-2]); !os.IsNotExist(err) {
			t.Fatalf("%v wrote a backup file (stat: %v)", args[1:3], err)
		}
	}
}

// TestKeysFleetBackupRestore: "keys backup --fleet" writes a file that
// "keys restore" turns into a keystore with the member's id and shared
// keys and a WireGuard key of its own, whose public key it prints.
func TestKeysFleetBackupRestore(t *testing.T) {
	dir := t.TempDir()
	ks := filepath.Join(dir, "member")
	k, err := privacy.OpenKeystore(ks)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "fleet.keys")
	var out, errb bytes.Buffer
	env := Env{Stdin: strings.NewReader("fleet horse battery\n"), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
	if code := Run(context.Background(), []string{"keys", "backup", "--fleet", "--keystore", ks, "--out", file, "--passphrase-stdin"}, env); code != 0 {
		t.Fatalf("backup --fleet exit %d: %s", code, errb.String())
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("fleet keys file: %v %v", st, err)
	}
	joined := filepath.Join(dir, "joined")
	out.Reset()
	env.Stdin = strings.NewReader("fleet horse battery\n")
	if code := Run(context.Background(), []string{"keys", "restore", "--in", file, "--keystore", joined, "--passphrase-stdin"}, env); code != 0 {
		t.Fatalf("restore exit %d: %s", code, errb.String())
	}
	k2, err := privacy.OpenKeystore(joined)
	if err != nil {
		t.Fatal(err)
	}
	pub := k2.GatewayPublicKey()
	if k2.ID() != k.ID() || k2.GatewayPublicKey() == k.GatewayPublicKey() {
		t.Fatalf("joined keystore: id %s (member %s), same WireGuard key: %v", k2.ID(), k.ID(), pub == k.GatewayPublicKey())
	}
	if !strings.Contains(out.String(), "fleet keys restored") || !strings.Contains(out.String(), base64.StdEncoding.EncodeToString(pub[:])) {
		t.Fatalf("restore output %q does not name the new WireGuard public key", out.String())
	}
}

// TestKeysKEKRotation: rotate-kek on a member, backup --fleet there, update
// on another member and retire-kek on both leave both keystores with one,
// the same, new day-key KEK.
func TestKeysKEKRotation(t *testing.T) {
	dir := t.TempDir()
	member, joined := filepath.Join(dir, "member"), filepath.Join(dir, "joined")
	if _, err := privacy.OpenKeystore(member); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	run := func(stdin string, args ...string) int {
		env := Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
		return Run(context.Background(), args, env)
	}
	file := filepath.Join(dir, "fleet.keys")
	if code := run("pass phrase one\n", "keys", "backup", "--fleet", "--keystore", member, "--out", file, "--passphrase-stdin"); code != 0 {
		t.Fatalf("backup --fleet: exit %d: %s", code, errb.String())
	}
	if code := run("pass phrase one\n", "keys", "restore", "--in", file, "--keystore", joined, "--passphrase-stdin"); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, errb.String())
	}
	kek := func(ks, name string) []byte {
		b, _ := os.ReadFile(filepath.Join(ks, name))
		return b
	}
	old := kek(member, "daykeys.kek")
	if code := run("", "keys", "rotate-kek", "--keystore", member); code != 0 {
		t.Fatalf("rotate-kek: exit %d: %s", code, errb.String())
	}
	rotated := filepath.Join(dir, "rotated.keys")
	if code := run("pass phrase two\n", "keys", "backup", "--fleet", "--keystore", member, "--out", rotated, "--passphrase-stdin"); code != 0 {
		t.Fatalf("backup --fleet after the rotation: exit %d: %s", code, errb.String())
	}
	if code := run("pass phrase two\n", "keys", "update", "--in", rotated, "--keystore", joined, "--passphrase-stdin"); code != 0 {
		t.Fatalf("update: exit %d: %s", code, errb.String())
	}
	if !bytes.Equal(kek(joined, "daykeys.kek.prev"), old) || !bytes.Equal(kek(joined, "daykeys.kek"), kek(member, "daykeys.kek")) || bytes.Equal(kek(member, "daykeys.kek"), old) {
		t.Fatal("after rotate-kek and update the members do not hold the same new KEK and the old one as previous")
	}
	for _, ks := range []string{member, joined} {
		if code := run("", "keys", "retire-kek", "--keystore", ks); code != 0 {
			t.Fatalf("retire-kek: exit %d: %s", code, errb.String())
		}
		if _, err := os.Stat(filepath.Join(ks, "daykeys.kek.prev")); !os.IsNotExist(err) {
			t.Fatalf("retire-kek left the previous KEK in %s (%v)", ks, err)
		}
	}
	errb.Reset()
	if code := run("", "keys", "retire-kek", "--keystore", member); code == 0 || !strings.Contains(errb.String(), "no previous day-key KEK") {
		t.Fatalf("retire-kek with nothing to retire: exit %d: %s", code, errb.String())
	}
}

func TestBackupWritesTheDatabaseWithoutKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data, ks := filepath.Join(dir, "data"), filepath.Join(dir, "keys")
	k, err := privacy.OpenKeystore(ks)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenSQLite(ctx, filepath.Join(data, "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.SetMeta(ctx, "keystore_id", k.ID()); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "gateway.db.bak")
	var stdout, stderr bytes.Buffer
	env := Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }}
	if code := Run(ctx, []string{"backup", "--data-dir", data, "--out", out}, env); code != 0 {
		t.Fatalf("backup exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "keys not included") || !strings.Contains(stdout.String(), k.ID()) {
		t.Fatalf("backup output %q", stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"index.key", "seal.key", "wireguard.key"} {
		key, err := os.ReadFile(filepath.Join(ks, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, key) {
			t.Fatalf("the database backup holds %s", name)
		}
	}
	if code := Run(ctx, []string{"backup", "--data-dir", data}, env); code != ExitUsage {
		t.Fatalf("backup without --out: exit %d, want %d", code, ExitUsage)
	}
	if code := Run(ctx, []string{"backup", "--data-dir", data, "--out", out}, env); code != ExitError {
		t.Fatalf("backup over an existing file: exit %d, want %d", code, ExitError)
	}
}
