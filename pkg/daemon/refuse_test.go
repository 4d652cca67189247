package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
)

// TestRefusesConfigBeyondPolicy: a retention longer than the privacy policy
// allows stops the daemon with an error naming the key.
func TestRefusesConfigBeyondPolicy(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Retention.ConnectionLog = 90 * 24 * time.Hour
	_, err := daemon.New(context.Background(), cfg, daemon.Options{})
	if err == nil || !strings.Contains(err.Error(), "retention.connection_log: 2160h exceeds the policy maximum 720h") {
		t.Fatalf("New with a 90-day connection log: %v", err)
	}
}

// TestRefusesDatabaseWithoutItsKeys: a database written with one keystore
// is refused with another, naming the fix; nothing is served.
func TestRefusesDatabaseWithoutItsKeys(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g := startGateway(t, cfg)
	g.enroll(t, [2]string{"DS-KEYS-01", "HW-KEYS-01"})
	g.stop()

	cfg.KeystoreDir = filepath.Join(dir, "another-keystore")
	_, err := daemon.New(context.Background(), cfg, daemon.Options{})
	if err == nil || !strings.Contains(err.Error(), "its keys are missing") || !strings.Contains(err.Error(), "keys restore") {
		t.Fatalf("New with the wrong keystore: %v", err)
	}
}

// TestRefusesKeystoreInsideDataDir: a keystore left inside the data
// directory (the old default) stops the daemon with the command that moves
// it out; once moved, the same database starts with it.
func TestRefusesKeystoreInsideDataDir(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	legacy := cfg.LegacyKeystorePath()
	inside := cfg
	inside.KeystoreDir = filepath.Join(dir, "elsewhere")
	g := startGateway(t, inside)
	g.enroll(t, [2]string{"DS-LEGACY-01", "HW-LEGACY-01"})
	g.stop()
	if err := os.Rename(inside.KeystoreDir, legacy); err != nil {
		t.Fatal(err)
	}

	_, err := daemon.New(context.Background(), cfg, daemon.Options{})
	if err == nil || !strings.Contains(err.Error(), "mv "+legacy+" "+cfg.KeystorePath()) {
		t.Fatalf("New with the keystore inside data_dir: %v", err)
	}
	if _, err := os.Stat(cfg.KeystorePath()); !os.IsNotExist(err) {
		t.Fatalf("a new keystore was made beside the refused one: %v", err)
	}
	if err := os.Rename(legacy, cfg.KeystorePath()); err != nil {
		t.Fatal(err)
	}
	startGateway(t, cfg).stop()
}
