package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	"github.com/planetxlabs/dasset-gateway/pkg/store/migrations"
)

// legacyDB writes a database the way programs before goose did: the first
// version migrations of the old hand-rolled list (testdata fixtures) and
// PRAGMA user_version = version.
func legacyDB(t *testing.T, path string, version int) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	for v := 1; v <= version; v++ {
		b, err := os.ReadFile(filepath.Join("testdata", fmt.Sprintf("legacy-user-version-%d.sql", v)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(b)); err != nil {
			t.Fatalf("legacy migration %d: %v", v, err)
		}
	}
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d; PRAGMA journal_mode = WAL", version)); err != nil {
		t.Fatal(err)
	}
	return db
}

// schemaOf is every table, index and trigger definition of the store's own
// schema (goose's version table left out).
func schemaOf(t *testing.T, path string) []string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT type, name, coalesce(sql, '') FROM sqlite_master
		WHERE name NOT LIKE 'sqlite_%' AND name <> ? ORDER BY type, name`, migrations.TableName)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var typ, name, def string
		if err := rows.Scan(&typ, &name, &def); err != nil {
			t.Fatal(err)
		}
		out = append(out, typ+" "+name+": "+strings.Join(strings.Fields(def), " "))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func appliedVersions(t *testing.T, path string) []int64 {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT version_id FROM ` + migrations.TableName + ` WHERE is_applied ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// TestMigrateLegacyDatabase: a database written by the program before goose
// (at each of its schema versions) opens, migrates to the newest schema
// without losing a row, and ends with exactly the schema a new database
// gets.
func TestMigrateLegacyDatabase(t *testing.T) {
	ctx := context.Background()
	latest := int64(store.SchemaVersion())
	if latest < 2 {
		t.Fatalf("SchemaVersion %d", latest)
	}
	fresh := openTemp(t)
	freshPath := fresh.Path()
	if err := fresh.Close(); err != nil {
		t.Fatal(err)
	}
	wantSchema := schemaOf(t, freshPath)
	if !slices.ContainsFunc(wantSchema, func(s string) bool { return strings.HasPrefix(s, "table devices:") }) {
		t.Fatalf("fresh schema has no devices table: %q", wantSchema)
	}

	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("user_version=%d", version), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "registry.db")
			db := legacyDB(t, path, version)
			var (
				idx, verifier, key, nameIdx, token = rnd32(), rnd32(), rnd32(), rnd32(), rnd32()
				clientKey                          = rnd32()
				pseud                              = privacy.Pseudonym{1, 2, 3}
				enrolled                           = time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
				logTime                            = time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC)
				exp                                = time.Now().Add(time.Hour)
			)
			stmts := []struct {
				q    string
				args []any
			}{
				{`INSERT INTO devices (id, blind_index, sealed_serial, verifier, pinned_key, address_offset, last_login_day, enrolled_at)
					VALUES (7, ?, x'0102', ?, ?, 42, '2030-01-02', ?)`, []any{idx[:], verifier[:], key[:], enrolled.UnixNano()}},
				{`INSERT INTO wg_keys (key, owner_kind, owner_id) VALUES (?, 'device', '7')`, []any{key[:]}},
				{`INSERT INTO device_tokens (hash, device_id, expires_at) VALUES (?, 7, ?)`, []any{token[:], exp.UnixNano()}},
				{`INSERT INTO accounts (id, name_index, sealed_name, password_hash, created_at) VALUES (3, ?, x'03', 'phc', ?)`, []any{nameIdx[:], enrolled.UnixNano()}},
				{`INSERT INTO bindings (account_id, device_id) VALUES (3, 7)`, nil},
				{`INSERT INTO sessions (id, account_id, device_id, client_key, client_offset, opened_at, expires_at) VALUES ('s1', 3, 7, ?, 5, ?, ?)`,
					[]any{clientKey[:], enrolled.UnixNano(), exp.UnixNano()}},
				{`INSERT INTO connection_log (time, event, outcome, pseudonym, source_prefix) VALUES (?, 'login', 'ok', ?, '198.51.100.0/24')`,
					[]any{logTime.UnixNano(), pseud[:]}},
			}
			if version >= 2 {
				stmts = append(stmts, struct {
					q    string
					args []any
				}{`INSERT INTO meta (key, value) VALUES ('keystore_id', 'ks-1')`, nil})
			}
			for _, st := range stmts {
				if _, err := db.Exec(st.q, st.args...); err != nil {
					t.Fatalf("%s: %v", st.q, err)
				}
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}

			s, err := store.OpenSQLite(ctx, path)
			if err != nil {
				t.Fatalf("open legacy database: %v", err)
			}
			d, err := s.DeviceByKey(ctx, key)
			if err != nil || d.ID != 7 || d.Index != idx || d.Offset != 42 || d.LastLoginDay != "2030-01-02" || !d.EnrolledAt.Equal(enrolled) {
				t.Fatalf("device after migration: %+v, %v", d, err)
			}
			if d2, err := s.DeviceByToken(ctx, token, time.Now()); err != nil || d2.ID != 7 {
				t.Fatalf("token after migration: %+v, %v", d2, err)
			}
			if a, err := s.AccountByName(ctx, nameIdx); err != nil || a.ID != 3 || a.PasswordHash != "phc" {
				t.Fatalf("account after migration: %+v, %v", a, err)
			}
			if ok, err := s.IsBound(ctx, 3, 7); err != nil || !ok {
				t.Fatalf("binding after migration: %v, %v", ok, err)
			}
			if sess, err := s.SessionByID(ctx, "s1"); err != nil || sess.ClientKey != clientKey || sess.ClientOffset != 5 {
				t.Fatalf("session after migration: %+v, %v", sess, err)
			}
			if log, err := s.ConnLogByPseudonyms(ctx, []privacy.Pseudonym{pseud}); err != nil || len(log) != 1 || log[0].SourcePrefix != "198.51.100.0/24" || !log[0].Time.Equal(logTime) {
				t.Fatalf("connection log after migration: %+v, %v", log, err)
			}
			// The key index survived too: the same key cannot go to another owner.
			if err := s.ReserveKey(ctx, key, store.OwnerGateway); !errors.Is(err, store.ErrKeyInUse) {
				t.Fatalf("ReserveKey of the device's key after migration: %v, want ErrKeyInUse", err)
			}
			if version >= 2 {
				if v, err := s.Meta(ctx, "keystore_id"); err != nil || v != "ks-1" {
					t.Fatalf("meta after migration: %q, %v", v, err)
				}
			} else if err := s.SetMeta(ctx, "keystore_id", "ks-2"); err != nil { // migration 2 ran
				t.Fatalf("SetMeta after migrating from version 1: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			want := make([]int64, latest+1)
			for i := range want {
				want[i] = int64(i)
			}
			if got := appliedVersions(t, path); !slices.Equal(got, want) {
				t.Fatalf("goose versions %v, want %v", got, want)
			}
			if v, db := userVersion(t, path); int64(v) != latest {
				db.Close()
				t.Fatalf("user_version %d after migration, want %d", v, latest)
			} else {
				db.Close()
			}
			if got := schemaOf(t, path); !slices.Equal(got, wantSchema) {
				t.Fatalf("schema after migration differs from a new database's:\n got %q\nwant %q", got, wantSchema)
			}

			// Opening again changes nothing.
			s, err = store.OpenSQLite(ctx, path)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if got := appliedVersions(t, path); !slices.Equal(got, want) {
				t.Fatalf("goose versions after reopen %v, want %v", got, want)
			}
		})
	}
}

// TestMigrateRefusesNewer: a database whose goose version table records a
// migration this program does not know is refused before anything is
// written.
func TestMigrateRefusesNewer(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	path := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	latest := store.SchemaVersion()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO `+migrations.TableName+` (version_id, is_applied) VALUES (?, 1)`, latest+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before := appliedVersions(t, path)
	if s, err := store.OpenSQLite(ctx, path); !errors.Is(err, migrations.ErrNewer) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("open a database at version %d: %v, want ErrNewer", latest+1, err)
	}
	if got := appliedVersions(t, path); !slices.Equal(got, before) {
		t.Fatalf("versions changed by a refused open: %v -> %v", before, got)
	}
}
