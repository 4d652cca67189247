// Package migrations holds the store's versioned schema, one directory of
// goose SQL files per dialect (sqlite/, postgres/), embedded in the binary,
// and runs them.
//
// Never edit a released migration: add a new file with the next number, for
// every dialect, so that both stores keep the same schema version.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"
)

// Dialect names a schema directory.
type Dialect string

// Dialects.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// TableName is the table goose records applied versions in.
const TableName = "goose_db_version"

//go:embed sqlite/*.sql postgres/*.sql
var files embed.FS

// LockID is the PostgreSQL advisory lock that PostgresLocker holds while
// migrating ("dasset-gateway migrations", in ASCII, cut to 63 bits).
const LockID int64 = 0x6461737365746D69

// PostgresLocker is the session-level advisory lock (LockID) that several
// gateways starting at once on one database take in turn, so that exactly
// one of them runs each migration. A waiting gateway retries every second
// for up to five minutes.
func PostgresLocker() (lock.SessionLocker, error) {
	l, err := lock.NewPostgresSessionLocker(lock.WithLockID(LockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return l, nil
}

// ErrNewer is returned for a database written by a newer program: one with a
// schema version this program does not know.
var ErrNewer = errors.New("database schema is newer than this program")

// Result says what Up did.
type Result struct {
	From, To int64 // schema version before and after
	Applied  int   // migrations applied
}

func gooseDialect(d Dialect) (database.Dialect, error) {
	switch d {
	case SQLite:
		return database.DialectSQLite3, nil
	case Postgres:
		return database.DialectPostgres, nil
	}
	return "", fmt.Errorf("migrations: unknown dialect %q", d)
}

// FS is the migration directory of a dialect.
func FS(d Dialect) (fs.FS, error) {
	if _, err := gooseDialect(d); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(files, string(d))
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return sub, nil
}

func provider(d Dialect, db *sql.DB, locker lock.SessionLocker) (*goose.Provider, error) {
	gd, err := gooseDialect(d)
	if err != nil {
		return nil, err
	}
	fsys, err := FS(d)
	if err != nil {
		return nil, err
	}
	opts := []goose.ProviderOption{
		goose.WithDisableGlobalRegistry(true),
		goose.WithLogger(goose.NopLogger()),
		goose.WithTableName(TableName),
	}
	if locker != nil {
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(gd, db, fsys, opts...)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return p, nil
}

// Latest is the newest schema version of a dialect.
func Latest(d Dialect) (int64, error) {
	fsys, err := FS(d)
	if err != nil {
		return 0, err
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return 0, fmt.Errorf("migrations: %w", err)
	}
	var latest int64
	for _, n := range names {
		v, err := goose.NumericComponent(n)
		if err != nil {
			return 0, fmt.Errorf("migrations: %s: %w", n, err)
		}
		latest = max(latest, v)
	}
	return latest, nil
}

// Up applies every migration of the dialect that db has not seen yet, each
// in its own transaction, holding locker (if not nil) for the whole run so
// that several processes starting at once migrate once. A database with a
// version newer than this program knows is refused (ErrNewer) before
// anything is applied.
func Up(ctx context.Context, db *sql.DB, d Dialect, locker lock.SessionLocker) (Result, error) {
	p, err := provider(d, db, locker)
	if err != nil {
		return Result{}, err
	}
	latest, err := Latest(d)
	if err != nil {
		return Result{}, err
	}
	from, err := p.GetDBVersion(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("migrations: read version: %w", err)
	}
	if from > latest {
		return Result{From: from, To: from}, fmt.Errorf("migrations: %w: version %d, this program knows up to %d", ErrNewer, from, latest)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return Result{From: from}, fmt.Errorf("migrations: up from version %d: %w", from, err)
	}
	to, err := p.GetDBVersion(ctx)
	if err != nil {
		return Result{From: from}, fmt.Errorf("migrations: read version: %w", err)
	}
	if to > latest { // another process with newer migrations won the lock
		return Result{From: from, To: to}, fmt.Errorf("migrations: %w: version %d, this program knows up to %d", ErrNewer, to, latest)
	}
	return Result{From: from, To: to, Applied: len(res)}, nil
}

// Adopt records versions 1..version as applied in a database whose schema
// was written without goose (by the hand-rolled list that PRAGMA
// user_version counted), so that Up continues from there. It runs in tx,
// does nothing (false) when the version table exists already or version is
// 0, and reports whether it adopted the database.
func Adopt(ctx context.Context, tx *sql.Tx, d Dialect, version int64) (bool, error) {
	gd, err := gooseDialect(d)
	if err != nil {
		return false, err
	}
	st, err := database.NewStore(gd, TableName)
	if err != nil {
		return false, fmt.Errorf("migrations: adopt: %w", err)
	}
	if d != SQLite { // only SQLite databases were written before goose
		return false, fmt.Errorf("migrations: adopt: dialect %q has no schema before goose", d)
	}
	var exists bool
	if err := tx.QueryRowContext(ctx, `SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?`, TableName).Scan(&exists); err != nil {
		return false, fmt.Errorf("migrations: adopt: %w", err)
	}
	if exists || version <= 0 {
		return false, nil
	}
	if err := st.CreateVersionTable(ctx, tx); err != nil {
		return false, fmt.Errorf("migrations: adopt: %w", err)
	}
	for v := int64(0); v <= version; v++ {
		if err := st.Insert(ctx, tx, database.InsertRequest{Version: v}); err != nil {
			return false, fmt.Errorf("migrations: adopt version %d: %w", v, err)
		}
	}
	return true, nil
}
