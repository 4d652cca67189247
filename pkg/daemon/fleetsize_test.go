package daemon_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/ctl"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// TestFleetSizeAdmin: with more devices than one page holds (12,001 rows
// written straight into the store with the daemon's keystore: 3 pages of
// dassetctl's 5,000), dassetctl devices list streams every device page by
// page, and status counts them without listing them. (A page can never reach
// gRPC's 4 MiB limit: TestMaxPageFitsMessageLimit in pkg/api.)
func TestFleetSizeAdmin(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	const n = 12_000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ks, err := privacy.OpenKeystore(cfg.KeystorePath())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenSQLite(ctx, filepath.Join(cfg.DataDir, "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetMeta(ctx, "keystore_id", ks.ID()); err != nil {
		t.Fatal(err)
	}
	batch := make([]store.Enrollment, 0, 4_000)
	for i := range n {
		sn, err := privacy.ParseSerialNumber(fmt.Sprintf("DS-FLEET-%07d", i))
		if err != nil {
			t.Fatal(err)
		}
		idx := ks.BlindIndex(sn)
		var ver privacy.Verifier
		_, _ = rand.Read(ver[:])
		batch = append(batch, store.Enrollment{Index: idx, SealedSerial: ks.Seal([]byte(sn.Reveal()), idx[:]), Verifier: ver})
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := st.EnrollDevices(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg)
	g.enroll(t, [2]string{"DS-FLEET-LAST", "HW-FLEET-LAST"})

	run := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := ctl.Run(ctx, append([]string{"--socket", cfg.Admin.Socket}, args...), ctl.Env{Stdout: &out, Stderr: &errb}); code != 0 {
			t.Fatalf("dassetctl %v: exit %d, stderr %q", args, code, errb.String())
		}
		return out.String()
	}
	var s ctl.Summary
	if err := json.Unmarshal([]byte(run("status", "-o", "json")), &s); err != nil || s.DevicesEnrolled != n+1 {
		t.Fatalf("status: %+v, %v; want %d devices enrolled", s, err, n+1)
	}
	out := run("devices", "list")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != n+2 || !strings.HasPrefix(lines[0], "SERIAL") || strings.Count(out, "SERIAL") != 1 {
		t.Fatalf("devices list: %d lines; want a header and %d devices", len(lines), n+1)
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "****ST") {
		t.Fatalf("last row %q, want the device enrolled last", last)
	}
}
