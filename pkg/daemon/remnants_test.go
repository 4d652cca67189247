package daemon_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// testClock is a settable clock for the daemon.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// walEmpty fails unless gateway.db-wal is absent or empty.
func walEmpty(t *testing.T, dataDir, after string) {
	t.Helper()
	st, err := os.Stat(filepath.Join(dataDir, "gateway.db-wal"))
	if err == nil && st.Size() != 0 {
		t.Fatalf("gateway.db-wal is %d bytes after %s, want empty", st.Size(), after)
	}
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// needle is a value that must leave every file of the data and key
// directories, in each of its encodings.
type needle struct {
	what string
	raw  []byte
}

func encodings(n needle) [][]byte {
	return [][]byte{n.raw, []byte(hex.EncodeToString(n.raw)), []byte(base64.StdEncoding.EncodeToString(n.raw))}
}

// scanGone fails if any encoding of any needle is in any file under dirs.
func scanGone(t *testing.T, after string, dirs []string, ns ...needle) {
	t.Helper()
	for _, n := range ns {
		for i, enc := range encodings(n) {
			if hits := filesContaining(t, enc, dirs...); len(hits) > 0 {
				t.Errorf("after %s, %s (encoding %d) is still in %v", after, n.what, i, hits)
			}
		}
	}
}

// scanFound is the positive control: each needle's raw form is on disk.
func scanFound(t *testing.T, dirs []string, ns ...needle) {
	t.Helper()
	for _, n := range ns {
		if len(filesContaining(t, n.raw, dirs...)) == 0 {
			t.Fatalf("positive control: %s is in no file before the erasure, so the scan cannot work", n.what)
		}
	}
}

// readRow reads one row's columns straight from the database file, read
// only (the scan's needles that are random: sealed values, password hash).
func readRow(t *testing.T, dataDir, q string, args ...any) []any {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "gateway.db")+"?mode=ro&_pragma=query_only(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var a, b []byte
	if err := db.QueryRow(q, args...).Scan(&a, &b); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return []any{a, b}
}

// TestNoRemnants: after a device erasure, an account deletion and a prune
// run, gateway.db-wal is empty and no file of the data or key directories
// holds the subject's blind index, sealed value, verifier or password hash,
// or its connection-log pseudonyms (in raw, hex or base64 form; the blind
// index in raw form: its hex form names the erasure on the ledger and in
// the audit log, by design); the scan first finds each of them, before.
func TestNoRemnants(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.KeystoreDir = filepath.Join(dir, "keys")
	dirs := []string{cfg.DataDir, cfg.KeystoreDir}
	clock := &testClock{now: time.Now().UTC()}
	buf := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := daemon.New(ctx, cfg, daemon.Options{Now: clock.Now, Logger: privacy.NewLogger(io.MultiWriter(buf, testWriter{t}), slog.LevelInfo, "json")})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	g := &testGateway{d: d, cfg: cfg, log: buf, cancel: stop, done: make(chan error, 1)}
	go func() { g.done <- d.Run(runCtx) }()
	admin, closeAdmin := adminClient(t, cfg.Admin.Socket)
	defer closeAdmin()
	g.admin = admin
	defer g.stop()

	const snA, hwA, snB, hwB, snX = "DS-REMNANT-A1", "HW-REMNANT-A1", "DS-REMNANT-B2", "HW-REMNANT-B2", "DS-REMNANT-X9"
	const gone, kept, pw = "remnant-gone", "remnant-kept", "remnant password 1"
	g.enroll(t, [2]string{snA, hwA}, [2]string{snB, hwB})
	for _, a := range []string{gone, kept} {
		if _, err := admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: a, Password: pw}); err != nil {
			t.Fatal(err)
		}
	}
	dev := deviceClient(t, g)
	for _, l := range []struct{ sn, hw string }{{snA, hwA}, {snB, hwB}, {snA, "HW-WRONG-01"}, {snX, "HW-UNKNOWN"}} {
		_, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: l.sn, HardwareId: l.hw, PublicKey: newKey(t)})
		if (l.hw == hwA || l.hw == hwB) != (err == nil) {
			t.Fatalf("login %s/%s: %v", l.sn, l.hw, err)
		}
	}
	for _, a := range []string{gone, kept} {
		c := agent.ClientConfig{Gateway: d.GRPCAddr().String(), TLS: agent.TLSOptions{Pin: d.Fingerprint()}, Account: a, Password: pw, StateDir: filepath.Join(dir, a)}
		if _, _, err := agent.ClientLogin(ctx, c); err != nil {
			t.Fatal(err)
		}
	}

	ks, err := privacy.OpenKeystore(cfg.KeystoreDir) // after the logins made today's day key
	if err != nil {
		t.Fatal(err)
	}
	parse := func(s string) privacy.SerialNumber {
		sn, err := privacy.ParseSerialNumber(s)
		if err != nil {
			t.Fatal(err)
		}
		return sn
	}
	hw, err := privacy.ParseHardwareID(hwA)
	if err != nil {
		t.Fatal(err)
	}
	pseudonyms := func(what string, idx privacy.BlindIndex) []needle {
		var out []needle
		all, err := ks.PseudonymsFor(context.Background(), idx)
		if err != nil {
			t.Fatal(err)
		}
		for day, p := range all {
			out = append(out, needle{what + " pseudonym of " + day, p[:]})
		}
		return out
	}
	idxA, idxX, idxGone := ks.BlindIndex(parse(snA)), ks.BlindIndex(parse(snX)), ks.AccountIndex(gone)
	verA := ks.Verifier(parse(snA), hw)
	devRow := readRow(t, cfg.DataDir, `SELECT sealed_serial, verifier FROM devices WHERE blind_index = ?`, idxA[:])
	acctRow := readRow(t, cfg.DataDir, `SELECT sealed_name, CAST(password_hash AS BLOB) FROM accounts WHERE name_index = ?`, idxGone[:])
	if !bytes.Equal(devRow[1].([]byte), verA[:]) {
		t.Fatal("the stored verifier is not the one the keystore computes")
	}
	device := append([]needle{{"device blind index", idxA[:]}, {"sealed serial", devRow[0].([]byte)}, {"HWID verifier", verA[:]}}, pseudonyms("device", idxA)...)
	account := append([]needle{{"account name index", idxGone[:]}, {"sealed account name", acctRow[0].([]byte)}, {"password hash", acctRow[1].([]byte)}}, pseudonyms("account", idxGone)...)
	// (Failed logins are counted in memory, not in the database: what a
	// stranger's attempts leave on disk are connection-log rows.)
	unknown := pseudonyms("unknown serial", idxX)
	if len(unknown) == 0 {
		t.Fatal("no day key: the unknown serial's pseudonyms cannot be scanned for")
	}

	// Positive control; the connection log is written in batches, so wait
	// (bounded) until the pseudonyms are on disk, the kept subjects' too
	// (no batch may land after a checkpoint this test looks at).
	others := append(pseudonyms("kept device", ks.BlindIndex(parse(snB))), pseudonyms("kept account", ks.AccountIndex(kept))...)
	poll.Must(t, 10*time.Second, "connection-log rows on disk", func() error {
		for _, n := range append(append(append(append([]needle{}, device...), account...), unknown...), others...) {
			if len(filesContaining(t, n.raw, dirs...)) == 0 {
				return fmt.Errorf("%s not on disk yet", n.what)
			}
		}
		return nil
	})
	scanFound(t, dirs, device...)

	// 1. Erasure of a device.
	er, err := admin.EraseSubject(ctx, &gatewayv1.EraseSubjectRequest{Subject: &gatewayv1.EraseSubjectRequest_SerialNumber{SerialNumber: snA}, Reason: "remnant test"})
	if err != nil {
		t.Fatal(err)
	}
	if rm := er.GetRemoved(); rm["devices"] != 1 || rm["connection_log"] < 2 || rm["wal_checkpointed"] != 1 {
		t.Fatalf("device erasure receipt %v", rm)
	}
	walEmpty(t, cfg.DataDir, "the device erasure")
	scanGone(t, "the device erasure", dirs, device[1:]...)
	// The blind index: no raw copy anywhere (the database's form); its hex
	// form is on the erasure ledger and in the audit log, by design.
	if hits := filesContaining(t, idxA[:], dirs...); len(hits) > 0 {
		t.Errorf("the erased device's blind index is still in %v", hits)
	}
	if hits := filesContaining(t, []byte(idxA.String()), dirs...); len(hits) == 0 {
		t.Error("the erased device is not on the erasure ledger")
	}

	// 2. Deletion of an account (cancellation is erasure).
	scanFound(t, dirs, account...)
	del, err := admin.DeleteAccount(ctx, &gatewayv1.DeleteAccountRequest{Name: gone})
	if err != nil {
		t.Fatal(err)
	}
	if rm := del.GetRemoved(); rm["accounts"] != 1 || rm["connection_log"] < 1 || rm["access_tokens"] != 1 || rm["wal_checkpointed"] != 1 {
		t.Fatalf("account deletion receipt %v", rm)
	}
	walEmpty(t, cfg.DataDir, "the account deletion")
	scanGone(t, "the account deletion", dirs, account[1:]...)
	if hits := filesContaining(t, idxGone[:], dirs...); len(hits) > 0 {
		t.Errorf("the deleted account's name index is still in %v", hits)
	}

	// 3. A prune run, past every retention: the unknown serial's failure
	// rows and connection-log rows go, and with them its day keys.
	scanFound(t, dirs, unknown...)
	clock.Add(cfg.Retention.ConnectionLog + 48*time.Hour)
	if _, err := admin.RunRetention(ctx, &gatewayv1.RunRetentionRequest{}); err != nil {
		t.Fatal(err)
	}
	walEmpty(t, cfg.DataDir, "the prune run")
	scanGone(t, "the prune run", dirs, unknown...)
	if hits := filesContaining(t, idxX[:], dirs...); len(hits) > 0 {
		t.Errorf("the unknown serial's blind index is in %v", hits)
	}

	// The kept subjects are untouched.
	if _, err := admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: snB}, Reason: "check"}); err != nil {
		t.Fatalf("kept device: %v", err)
	}
	if _, err := admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_Account{Account: kept}, Reason: "check"}); err != nil {
		t.Fatalf("kept account: %v", err)
	}
}

// TestUserRights: a client exports its own data (account, bound device,
// connection-log rows, nothing of another account) and cancels its own
// account with its password; a wrong password deletes nothing; afterwards
// the token and the password no longer work, and the audit log says so.
func TestUserRights(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g := startGateway(t, cfg)
	const sn, hw, name, other, pw = "DS-RIGHTS-01", "HW-RIGHTS-01", "rights-user", "rights-other", "rights password 1"
	g.enroll(t, [2]string{sn, hw})
	a, done := startAgent(t, g, sn, hw, filepath.Join(dir, "dev"))
	waitReady(t, a, done)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, n := range []string{name, other} {
		if _, err := g.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: n, Password: pw}); err != nil {
			t.Fatal(err)
		}
	}
	c := agent.ClientConfig{Gateway: g.d.GRPCAddr().String(), TLS: agent.TLSOptions{Pin: g.d.Fingerprint()}, Account: name, Password: pw, StateDir: filepath.Join(dir, "client")}
	tok, _, err := agent.ClientLogin(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	c.Token = tok
	if _, _, err := agent.ClientLogin(ctx, agent.ClientConfig{Gateway: c.Gateway, TLS: c.TLS, Account: other, Password: pw, StateDir: filepath.Join(dir, "other")}); err != nil {
		t.Fatal(err)
	}
	code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: c.Gateway, StateDir: filepath.Join(dir, "dev"), Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Bind(ctx, c, code); err != nil {
		t.Fatal(err)
	}
	conn, err := agent.Dial(c.Gateway, c.TLS)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := gatewayv1.NewClientServiceClient(conn)
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)

	var doc struct {
		Kind    string `json:"kind"`
		Account struct {
			Name string `json:"name"`
		} `json:"account"`
		Devices []struct {
			SerialNumber string `json:"serial_number"`
		} `json:"devices"`
		ConnectionLog []struct {
			Event string `json:"event"`
		} `json:"connection_log"`
	}
	var raw string
	poll.Must(t, 10*time.Second, "the login in the user's own export", func() error {
		resp, err := client.ExportMyData(authed, &gatewayv1.ExportMyDataRequest{})
		if err != nil {
			t.Fatalf("ExportMyData: %v", err)
		}
		raw = resp.GetJson()
		if err := json.Unmarshal([]byte(raw), &doc); err != nil {
			t.Fatalf("export is not JSON: %v\n%s", err, raw)
		}
		if len(doc.ConnectionLog) == 0 {
			return fmt.Errorf("no connection-log rows yet")
		}
		return nil
	})
	if doc.Kind != "account" || doc.Account.Name != name || len(doc.Devices) != 1 || doc.Devices[0].SerialNumber != sn || doc.ConnectionLog[0].Event != "client_login" {
		t.Fatalf("export:\n%s", raw)
	}
	if strings.Contains(raw, other) {
		t.Fatal("the export mentions another account")
	}
	if _, err := client.ExportMyData(ctx, &gatewayv1.ExportMyDataRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ExportMyData without a token: %v, want Unauthenticated", err)
	}

	// Every pending connection-log batch lands before the checkpoint this
	// test looks at: the other account's and the device's rows are on disk.
	poll.Must(t, 10*time.Second, "the other subjects' connection-log rows", func() error {
		for _, req := range []*gatewayv1.ExportSubjectRequest{
			{Subject: &gatewayv1.ExportSubjectRequest_Account{Account: other}, Reason: "check"},
			{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: sn}, Reason: "check"},
		} {
			resp, err := g.admin.ExportSubject(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(resp.GetJson(), `"event"`) {
				return fmt.Errorf("no connection-log row yet")
			}
		}
		return nil
	})
	if _, err := client.DeleteAccount(authed, &gatewayv1.DeleteMyAccountRequest{Password: "not the password"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("DeleteAccount with a wrong password: %v, want PermissionDenied", err)
	}
	if _, err := client.ExportMyData(authed, &gatewayv1.ExportMyDataRequest{}); err != nil {
		t.Fatalf("a wrong password deleted something: %v", err)
	}
	resp, err := client.DeleteAccount(authed, &gatewayv1.DeleteMyAccountRequest{Password: pw})
	if err != nil {
		t.Fatal(err)
	}
	if rm := resp.GetRemoved(); rm["accounts"] != 1 || rm["bindings"] != 1 || rm["connection_log"] < 1 || rm["access_tokens"] != 1 || rm["wal_checkpointed"] != 1 {
		t.Fatalf("cancellation receipt %v", rm)
	}
	walEmpty(t, cfg.DataDir, "the user's cancellation")
	if _, err := client.ExportMyData(authed, &gatewayv1.ExportMyDataRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("the token after cancellation: %v, want Unauthenticated", err)
	}
	if _, _, err := agent.ClientLogin(ctx, agent.ClientConfig{Gateway: c.Gateway, TLS: c.TLS, Account: name, Password: pw, StateDir: filepath.Join(dir, "again")}); err == nil {
		t.Fatal("login after cancellation succeeded")
	}
	if _, err := g.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_Account{Account: other}, Reason: "check"}); err != nil {
		t.Fatalf("the other account: %v", err)
	}
	auditLog, err := os.ReadFile(filepath.Join(cfg.KeystorePath(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(auditLog), `"action":"cancel_account"`) || !strings.Contains(string(auditLog), `"result":"PermissionDenied"`) {
		t.Fatalf("the audit log lacks the cancellation and the refused attempt:\n%s", auditLog)
	}
	if v, err := g.admin.VerifyAudit(ctx, &gatewayv1.VerifyAuditRequest{}); err != nil || !v.GetOk() {
		t.Fatalf("VerifyAudit = %v, %v", v, err)
	}
}

// TestErasureLedgerSharedThroughDatabase: two gateways on one database,
// each with its own copy of the keystore. An erasure on gateway A reaches
// gateway B's own ledger through the database; then, with an older copy of
// the database restored, B alone (A's keystore gone) erases the device
// again and writes the erasure back into the database. The database's copy
// holds no blind index in the clear.
func TestErasureLedgerSharedThroughDatabase(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	keysA, keysB := filepath.Join(dir, "keys-a"), filepath.Join(dir, "keys-b")
	cfgA, cfgB := cfg, cfg
	cfgA.KeystoreDir, cfgB.KeystoreDir = keysA, keysB
	const sn, hw, kept, hwKept = "DS-FLEETLEDGER-1", "HW-FLEETLEDGER-1", "DS-FLEETLEDGER-2", "HW-FLEETLEDGER-2"

	a := startGateway(t, cfgA)
	a.enroll(t, [2]string{sn, hw}, [2]string{kept, hwKept})
	a.stop()
	copyDir(t, keysA, keysB) // B joins with the same keys, before the erasure
	dbPath := filepath.Join(cfg.DataDir, "gateway.db")
	old := filepath.Join(dir, "old.db")
	copyFile(t, dbPath, old) // stopped and checkpointed: the file is whole

	a = startGateway(t, cfgA)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := a.admin.EraseSubject(ctx, &gatewayv1.EraseSubjectRequest{Subject: &gatewayv1.EraseSubjectRequest_SerialNumber{SerialNumber: sn}, Reason: "fleet test"}); err != nil {
		t.Fatal(err)
	}
	a.stop()
	if err := os.RemoveAll(keysA); err != nil { // A is gone for good
		t.Fatal(err)
	}
	ks, err := privacy.OpenKeystore(keysB)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := privacy.ParseSerialNumber(sn)
	if err != nil {
		t.Fatal(err)
	}
	idx := ks.BlindIndex(parsed)
	if hits := filesContaining(t, []byte(idx.String()), keysB); len(hits) != 0 {
		t.Fatalf("B's ledger knows the erasure before B ran: %v", hits)
	}

	b := startGateway(t, cfgB) // learns the erasure from the database
	if !strings.Contains(b.log.String(), `"learnt":1,`) {
		t.Fatalf("B did not count the one erasure it learnt from the database:\n%s", b.log.String())
	}
	poll.Must(t, 10*time.Second, "the erasure on B's own ledger", func() error {
		if len(filesContaining(t, []byte("device "+idx.String()), keysB)) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	b.stop()
	if hits := filesContaining(t, idx[:], cfg.DataDir); len(hits) != 0 {
		t.Fatalf("the database holds the erased device's blind index: %v", hits)
	}

	// The older database, from before the erasure, under gateway B alone.
	for _, suf := range []string{"-wal", "-shm"} {
		_ = os.Remove(dbPath + suf)
	}
	copyFile(t, old, dbPath)
	b = startGateway(t, cfgB)
	if !strings.Contains(b.log.String(), "erased again") || !strings.Contains(b.log.String(), `"written_back":1`) {
		t.Fatalf("B did not erase the restored device again and write the erasure back:\n%s", b.log.String())
	}
	if _, err := b.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: sn}, Reason: "check"}); status.Code(err) != codes.NotFound {
		t.Fatalf("erased device after the restore: %v, want NotFound", err)
	}
	if _, err := b.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: kept}, Reason: "check"}); err != nil {
		t.Fatalf("kept device after the restore: %v", err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if e.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		copyFile(t, p, filepath.Join(to, rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
