package daemon_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/daemon"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// snapshot is every file under dirs with its size and modification time.
func snapshot(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			st, err := e.Info()
			if err != nil {
				return err
			}
			out[p] = fmt.Sprint(st.ModTime(), st.Mode(), st.Size())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestRefusesWrongDatabase: with a keystore that was used before, a 0-byte
// database, a database without the gateway's schema and a database written
// with another keystore each stop the daemon at start with a message naming
// both the database file and the keystore; no file is created or changed.
func TestRefusesWrongDatabase(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g := startGateway(t, cfg)
	g.enroll(t, [2]string{"DS-EMPTY-0001", "HW-E-1"})
	g.stop()
	db := filepath.Join(cfg.DataDir, "gateway.db")
	ks := cfg.KeystorePath()
	orig, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}

	// A database of another keystore: made by a gateway with its own keys.
	other := testConfig(t, t.TempDir())
	og := startGateway(t, other)
	og.stop()
	foreign, err := os.ReadFile(filepath.Join(other.DataDir, "gateway.db"))
	if err != nil {
		t.Fatal(err)
	}

	for name, content := range map[string][]byte{
		"empty":          {},
		"schema-less":    nil, // an SQLite file with an unrelated table
		"other keystore": foreign,
	} {
		t.Run(name, func(t *testing.T) {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				_ = os.Remove(db + suffix)
			}
			if content == nil {
				if err := os.WriteFile(db, sqliteWithTable(t), 0o600); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(db, content, 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, cfg.DataDir, ks)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := daemon.New(ctx, cfg, daemon.Options{Logger: slog.New(slog.DiscardHandler)})
			if err == nil {
				t.Fatal("the daemon started")
			}
			if !errors.Is(err, daemon.ErrNotTheRegistry) || !strings.Contains(err.Error(), db) || !strings.Contains(err.Error(), ks) {
				t.Fatalf("error %q, want ErrNotTheRegistry naming %s and %s", err, db, ks)
			}
			if after := snapshot(t, cfg.DataDir, ks); len(after) != len(before) {
				t.Fatalf("files changed: before %v, after %v", before, after)
			} else {
				for p, v := range before {
					if after[p] != v {
						t.Fatalf("%s changed", p)
					}
				}
			}
		})
	}
	// The right database starts again, its device still there (positive
	// control).
	for _, suffix := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(db + suffix)
	}
	if err := os.WriteFile(db, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	g2 := startGateway(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := g2.admin.GetSummary(ctx, &gatewayv1.GetSummaryRequest{}); err != nil || s.GetDevicesEnrolled() != 1 {
		t.Fatalf("restored database: %v, %v; want its 1 device", s, err)
	}
	g2.stop()
}

// sqliteWithTable is an SQLite database file with one unrelated table.
func sqliteWithTable(t *testing.T) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "other.db")
	db, err := sql.Open("sqlite", p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE notes (x TEXT)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
