package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

type exportDoc struct {
	Kind   string `json:"kind"`
	Device *struct {
		SerialNumber string `json:"serial_number"`
	} `json:"device"`
	Sessions      []json.RawMessage `json:"sessions"`
	ConnectionLog []struct {
		Event     string `json:"event"`
		Outcome   string `json:"outcome"`
		Pseudonym string `json:"pseudonym"`
	} `json:"connection_log"`
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		if os.IsNotExist(err) {
			return
		}
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSubjectExportEraseAndLedger: export holds everything about one
// subject and nothing about another; erasure receipts match the rows counted
// before; a restored older database plus the ledger keeps the erased device
// out; every such call is in a verifying audit log.
func TestSubjectExportEraseAndLedger(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g := startGateway(t, cfg)
	const snA, hwA, snB, hwB = "DS-SUBJ-A001", "HW-A001", "DS-SUBJ-B002", "HW-B002"
	g.enroll(t, [2]string{snA, hwA}, [2]string{snB, hwB})

	a1, done1 := startAgent(t, g, snA, hwA, filepath.Join(dir, "a"))
	waitReady(t, a1, done1)
	a2, done2 := startAgent(t, g, snB, hwB, filepath.Join(dir, "b"))
	waitReady(t, a2, done2)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dev := gatewayv1.NewDeviceServiceClient(conn)
	// One failed login for A (an auth-failure row and a denied log row).
	if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: snA, HardwareId: "HW-WRONG", PublicKey: make32(9)}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong HWID: %v", err)
	}

	// The connection log is written in batches: wait until A's rows show.
	var docA exportDoc
	// Every export is audited: ask five times a second, not more.
	err = poll.Until(ctx, 10*time.Second, 200*time.Millisecond, func() error {
		resp, err := g.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: snA}, Reason: "ticket 1"})
		if err != nil {
			t.Fatalf("export A: %v", err)
		}
		if strings.Contains(resp.GetJson(), snB) {
			t.Fatalf("export of A mentions B's serial number:\n%s", resp.GetJson())
		}
		docA = exportDoc{}
		if err := json.Unmarshal([]byte(resp.GetJson()), &docA); err != nil {
			t.Fatalf("export A is not JSON: %v\n%s", err, resp.GetJson())
		}
		if docA.Kind != "device" || docA.Device == nil || docA.Device.SerialNumber != snA {
			t.Fatalf("export A: %+v", docA)
		}
		var ok, denied int
		for _, r := range docA.ConnectionLog {
			switch r.Outcome {
			case "ok":
				ok++
			case "denied":
				denied++
			}
		}
		if ok < 1 || denied < 1 {
			return fmt.Errorf("connection log has %d ok, %d denied rows; want ≥1 each", ok, denied)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("export of A: %v", err)
	}
	respB, err := g.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: snB}, Reason: "ticket 2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range docA.ConnectionLog {
		if strings.Contains(respB.GetJson(), r.Pseudonym) {
			t.Fatalf("export of B holds A's pseudonym %s", r.Pseudonym)
		}
	}
	if strings.Contains(respB.GetJson(), snA) {
		t.Fatal("export of B mentions A's serial number")
	}
	// Export needs a reason.
	if _, err := g.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: snA}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("export without reason: %v", err)
	}

	// Keep a copy of the database as it is now (an "older backup").
	g.stop()
	dbPath := filepath.Join(cfg.DataDir, "gateway.db")
	backup := filepath.Join(dir, "backup")
	if err := os.MkdirAll(backup, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, suf := range []string{"", "-wal", "-shm"} {
		copyFile(t, dbPath+suf, filepath.Join(backup, "gateway.db"+suf))
	}
	g = startGateway(t, cfg)

	erase, err := g.admin.EraseSubject(ctx, &gatewayv1.EraseSubjectRequest{Subject: &gatewayv1.EraseSubjectRequest_SerialNumber{SerialNumber: snA}, Reason: "user asked"})
	if err != nil {
		t.Fatalf("erase A: %v", err)
	}
	rm := erase.GetRemoved()
	// The wrong-HWID login above was counted in memory only: no failure row.
	if rm["devices"] != 1 || rm["auth_failures"] != 0 || rm["connection_log"] != int64(len(docA.ConnectionLog)) || rm["sessions"] != int64(len(docA.Sessions)) {
		t.Fatalf("erase receipt %v; want devices 1, auth_failures 0, connection_log %d, sessions %d", rm, len(docA.ConnectionLog), len(docA.Sessions))
	}
	if _, err := g.admin.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: snA}, Reason: "check"}); status.Code(err) != codes.NotFound {
		t.Fatalf("export after erase: %v, want NotFound", err)
	}

	// Restore the older database: the ledger erases A again at start.
	g.stop()
	for _, suf := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(dbPath + suf)
		copyFile(t, filepath.Join(backup, "gateway.db"+suf), dbPath+suf)
	}
	g = startGateway(t, cfg)
	if !strings.Contains(g.log.String(), "erased again") {
		t.Fatalf("gateway did not report re-erasing the restored device; log:\n%s", g.log.String())
	}
	conn2, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	dev2 := gatewayv1.NewDeviceServiceClient(conn2)
	if _, err := dev2.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: snA, HardwareId: hwA, PublicKey: make32(11)}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("erased device login after restore: %v, want Unauthenticated", err)
	}
	// Re-enrolment must be explicit.
	_, err = g.admin.EnrollDevices(ctx, &gatewayv1.EnrollDevicesRequest{Devices: []*gatewayv1.DeviceEnrollment{{SerialNumber: snA, HardwareId: hwA}}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("re-enroll without after_erasure: %v, want FailedPrecondition", err)
	}
	if _, err := g.admin.EnrollDevices(ctx, &gatewayv1.EnrollDevicesRequest{AfterErasure: true, Devices: []*gatewayv1.DeviceEnrollment{{SerialNumber: snA, HardwareId: hwA}}}); err != nil {
		t.Fatalf("re-enroll with after_erasure: %v", err)
	}

	// The audit log holds the exports and the erasure and verifies.
	v, err := g.admin.VerifyAudit(ctx, &gatewayv1.VerifyAuditRequest{})
	if err != nil || !v.GetOk() || v.GetEntries() < 5 {
		t.Fatalf("VerifyAudit = %v, %v", v, err)
	}
	auditBytes, err := os.ReadFile(filepath.Join(cfg.KeystorePath(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"action":"export_subject"`, `"action":"erase_subject"`, `"reason":"user asked"`, `"operator":"root"`} {
		if !strings.Contains(string(auditBytes), want) {
			t.Fatalf("audit log lacks %s:\n%s", want, auditBytes)
		}
	}
	if strings.Contains(string(auditBytes), snA) {
		t.Fatal("audit log holds a raw serial number")
	}
}
