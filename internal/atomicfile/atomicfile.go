// Package atomicfile writes files so that a crash or a power loss leaves
// either the old file or the new one, never a part of one: the data goes to
// a temporary file in the same directory, which is synced and renamed over
// the target (github.com/google/renameio/v2), and then the directory is
// synced so that the rename itself is on disk (renameio leaves that out).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/renameio/v2"
)

// Write replaces path with data, with mode perm whatever the umask and the
// mode of the file it replaces (renameio.WriteFile would keep that one).
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := renameio.NewPendingFile(path, renameio.WithStaticPermissions(perm), renameio.WithTempDir(dir))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() { _ = f.Cleanup() }() // closes and removes the temporary file after a failure; its error is moot then
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.CloseAtomicallyReplace(); err != nil { // syncs, then renames
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// Create writes data to path with mode perm unless path exists already, in
// which case the existing file wins and created is false. Like Write, it
// never leaves a partly written path.
func Create(path string, data []byte, perm os.FileMode) (created bool, err error) {
	dir := filepath.Dir(path)
	f, err := renameio.NewPendingFile(path, renameio.WithStaticPermissions(perm), renameio.WithTempDir(dir))
	if err != nil {
		return false, fmt.Errorf("create %s: %w", path, err)
	}
	defer func() { _ = f.Cleanup() }() // closes and removes the temporary file
	if _, err := f.Write(data); err != nil {
		return false, fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return false, fmt.Errorf("create %s: %w", path, err)
	}
	// A hard link, unlike a rename, fails when path exists.
	switch err := os.Link(f.Name(), path); {
	case errors.Is(err, fs.ErrExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("create %s: %w", path, err)
	}
	return true, SyncDir(dir)
}

// IsTemp reports whether name (a base name) is one of the temporary files
// Write and Create make: "." + the target's name + a random number. A crash
// can leave one behind; a caller that knows its directory holds no other
// such names can remove them.
func IsTemp(name string) bool {
	if !strings.HasPrefix(name, ".") {
		return false
	}
	digits := len(name) - len(strings.TrimRight(name, "0123456789"))
	return digits > 0 && len(name)-digits > 1
}

// SyncDir syncs a directory, so that the names created, renamed or removed
// in it survive a power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
