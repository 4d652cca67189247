package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// SQLiteFile is what a database file holds, as InspectSQLite read it.
type SQLiteFile struct {
	Exists     bool
	Size       int64
	Schema     bool   // it has the gateway's meta table
	KeystoreID string // the keystore it was written with ("" when not recorded)
}

// InspectSQLite reads a database file without changing it (read-only, no
// migration, no journal mode change), so that a daemon can refuse a file
// that is not its registry before touching anything. A file that is not an
// SQLite database is an error.
func InspectSQLite(ctx context.Context, path string) (SQLiteFile, error) {
	var f SQLiteFile
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("store: inspect %s: %w", path, err)
	}
	f.Exists, f.Size = true, st.Size()
	if f.Size == 0 {
		return f, nil
	}
	// Without a WAL file the database file is all there is: read it as
	// immutable, which creates no -wal or -shm file either.
	mode := "mode=ro&immutable=1"
	if _, err := os.Stat(path + "-wal"); err == nil {
		mode = "mode=ro"
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+mode+"&_pragma=query_only(1)")
	if err != nil {
		return f, fmt.Errorf("store: inspect %s: %w", path, err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'`).Scan(&n); err != nil {
		return f, fmt.Errorf("store: inspect %s: not a readable SQLite database: %w", path, err)
	}
	if f.Schema = n == 1; !f.Schema {
		return f, nil
	}
	err = db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'keystore_id'`).Scan(&f.KeystoreID)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return f, fmt.Errorf("store: inspect %s: %w", path, err)
	}
	f.KeystoreID = strings.TrimSpace(f.KeystoreID)
	return f, nil
}
