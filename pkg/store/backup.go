package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
)

// BackupInfo describes a database backup written by BackupSQLite.
type BackupInfo struct {
	Path          string
	Bytes         int64
	SchemaVersion int
	KeystoreID    string // the keystore the data was written with (never a key)
}

// BackupSQLite writes a consistent copy of the gateway database at dbPath to
// out (mode 0600; out must not exist), while a gateway may be running on it.
//
// It first checkpoints the write-ahead log (TRUNCATE), then runs
// VACUUM INTO: SQLite's online copy that reads one snapshot in a single read
// transaction (the writer is not blocked, WAL) and writes only live rows
// into fresh pages. It is used rather than the page-by-page backup API
// because that API copies every page as it is, free pages included, and
// restarts whenever another process writes; VACUUM INTO leaves nothing that
// was deleted in the copy, whatever secure_delete did. The copy holds no
// key: the keystore lives in its own directory and has its own backup
// (dassetctl keys backup).
func BackupSQLite(ctx context.Context, dbPath, out string) (BackupInfo, error) {
	if _, err := os.Stat(dbPath); err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	if _, err := os.Lstat(out); err == nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %s exists; choose a new file", out)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	q := url.Values{"_pragma": {fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds())}}
	db, err := sql.Open("sqlite", dbPath+"?"+q.Encode())
	if err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	info := BackupInfo{Path: out}
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&info.SchemaVersion); err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %s: %w", dbPath, err)
	}
	if info.SchemaVersion == 0 {
		return BackupInfo{}, fmt.Errorf("store: backup: %s is not a gateway database (schema version 0)", dbPath)
	}
	if err := db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'keystore_id'`).Scan(&info.KeystoreID); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return BackupInfo{}, fmt.Errorf("store: backup: %s is not a gateway database: %w", dbPath, err)
	}
	var busy, frames, done int
	if err := db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &frames, &done); err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: checkpoint: %w", err)
	}
	if busy != 0 {
		return BackupInfo{}, fmt.Errorf("store: backup: checkpoint blocked by readers (%d of %d frames copied); try again", done, frames)
	}

	// An empty 0600 file beside out, filled by VACUUM INTO (which accepts
	// an empty file), synced and renamed into place: a backup is there
	// whole or not at all, and never readable by others.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".tmp-"+filepath.Base(out)+"-*")
	if err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	tmpPath := tmp.Name()
	defer os.Remove(tmpPath) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", tmpPath); err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: VACUUM INTO: %w", err)
	}
	f, err := os.OpenFile(tmpPath, os.O_RDWR, 0)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	st, err := f.Stat()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	info.Bytes = st.Size()
	if err := os.Link(tmpPath, out); err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(out)); err != nil {
		return BackupInfo{}, fmt.Errorf("store: backup: %s written, but its name may not survive a power loss: %w", out, err)
	}
	return info, nil
}
