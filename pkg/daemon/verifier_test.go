package daemon_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// filesContaining lists the files under the dirs whose bytes hold needle.
func filesContaining(t *testing.T, needle []byte, dirs ...string) []string {
	t.Helper()
	var hits []string
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(b, needle) {
				hits = append(hits, path)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return hits
}

// TestUpgradesHMACVerifiers: a database enrolled with the old HMAC-only
// HWID verifiers is upgraded at start without any HWID: the device logs in
// with its HWID, a wrong HWID is refused, and the old verifier is in no
// file of the data or key directories any more.
func TestUpgradesHMACVerifiers(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	const serial, hwid = "DS-OLDVER-01", "HW-OLDVER-01"

	// An old database: the version-1 verifier, HMAC-SHA256(K_index,
	// "dasset/hwid/v1\x00" ‖ len(sn) ‖ sn ‖ hwid), as the previous release
	// stored it.
	ks, err := privacy.OpenKeystore(cfg.KeystorePath())
	if err != nil {
		t.Fatal(err)
	}
	indexKey, err := os.ReadFile(filepath.Join(cfg.KeystorePath(), "index.key"))
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, indexKey)
	m.Write([]byte("dasset/hwid/v1\x00"))
	m.Write([]byte{0, byte(len(serial))})
	m.Write([]byte(serial + hwid))
	var old privacy.Verifier
	m.Sum(old[:0])

	sn, err := privacy.ParseSerialNumber(serial)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.OpenSQLite(ctx, filepath.Join(cfg.DataDir, "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}
	idx := ks.BlindIndex(sn)
	if _, err := st.EnrollDevices(ctx, []store.Enrollment{{Index: idx, SealedSerial: ks.Seal([]byte(serial), idx[:]), Verifier: old}}); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"keystore_id": ks.ID(), "verifier_version": "1"} {
		if err := st.SetMeta(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if len(filesContaining(t, old[:], cfg.DataDir, cfg.KeystorePath())) == 0 {
		t.Fatal("the old verifier is not in the database file before the upgrade: the scan cannot work")
	}

	g := startGateway(t, cfg)
	dev := deviceClient(t, g)
	if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: serial, HardwareId: "HW-OLDVER-02", PublicKey: newKey(t)}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("login with a wrong HWID after the upgrade: %v, want Unauthenticated", err)
	}
	if _, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: serial, HardwareId: hwid, PublicKey: newKey(t)}); err != nil {
		t.Fatalf("login with the right HWID after the upgrade: %v", err)
	}
	if !strings.Contains(g.log.String(), "HWID verifiers upgraded") {
		t.Fatal("the upgrade is not in the log")
	}
	if hits := filesContaining(t, old[:], cfg.DataDir, cfg.KeystorePath()); len(hits) > 0 {
		t.Fatalf("the old HMAC verifier is still on disk after the upgrade: %v", hits)
	}
}
