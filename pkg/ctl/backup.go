package ctl

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// DefaultDataDir is the gateway's data_dir by default.
const DefaultDataDir = "/var/lib/dasset-gateway"

// backupCommand copies the gateway database locally (run it on the gateway
// host, as the user that owns the data directory), like keys backup: it
// works whether the gateway runs or not, and never touches the keystore.
func (a *app) backupCommand() *cobra.Command {
	var dataDir, out string
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Write a consistent copy of the gateway database (never with keys)",
		Long: `Write a consistent copy of the gateway's SQLite database (data_dir/gateway.db) to
--out, while the gateway runs or not. The write-ahead log is checkpointed first, then
SQLite's online VACUUM INTO copies one snapshot holding only live rows: nothing deleted or
erased is in the copy. The file is created 0600 and must not exist.

The copy holds no key (the keystore has its own directory and its own, passphrase-protected
backup: dassetctl keys backup). Keep the two backups apart. An erased device or account in
an older database copy does not come back when it is restored: the gateway replays the
erasure ledger kept with the keys on every start.`,
		Example: `  dassetctl backup --out /backup/gateway-$(date +%F).db
  dassetctl backup --data-dir /srv/dasset --out gateway.db.bak`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out is required")
			}
			db := filepath.Join(dataDir, store.DBFile)
			if _, err := os.Stat(db); errors.Is(err, fs.ErrNotExist) {
				if _, ierr := os.Stat(filepath.Join(dataDir, "instance_id")); ierr == nil {
					// A gateway ran here without a SQLite file: its registry
					// is in PostgreSQL (store.driver postgres).
					return fmt.Errorf("no SQLite database in %s: this gateway keeps its registry in PostgreSQL (store.driver postgres); back that up with pg_dump", dataDir)
				}
			}
			info, err := store.BackupSQLite(cmd.Context(), db, out)
			if err != nil {
				return err
			}
			return a.printPlain(cmd, map[string]any{
				"path": info.Path, "bytes": info.Bytes, "schema_version": info.SchemaVersion, "keystore_id": info.KeystoreID,
			}, func(w io.Writer) {
				fmt.Fprintf(w, "database backed up to %s (%d bytes, schema %d, written with keystore %s; keys not included)\n",
					info.Path, info.Bytes, info.SchemaVersion, info.KeystoreID)
			})
		}),
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", DefaultDataDir, "the gateway's data_dir (holding gateway.db)")
	cmd.Flags().StringVar(&out, "out", "", "backup file to write (0600; must not exist)")
	return cmd
}
