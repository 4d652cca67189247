package ctl

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// keysCommand works on the keystore directory directly (run it on the
// gateway host, as the user that owns the keystore): the keystore is the one
// thing the data cannot be read without, and a restore must work while the
// daemon refuses to start for want of it.
func (a *app) keysCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Back up and restore the gateway's keystore (local, on the gateway host)",
		Long: `The keystore (keystore_dir, default /var/lib/dasset-gateway-keys, outside data_dir) holds
the keys that blind, seal and pseudonymise personal data and the gateway's WireGuard key, with
the erasure ledger and the admin audit log (and its head hash). Database backups never contain
it, and the database cannot be read without it. These commands work on the directory directly,
not through the gateway.

A backup carries the ledger and the audit log, so restoring it beside any older database copy
brings back no erased device or account (the gateway erases them again at its next start) and
an audit log that verifies. It expires itself: it holds no pseudonym day key already past the
connection-log retention, and a restore drops those that passed it since.`,
		Example: `  dassetctl keys backup --keystore /var/lib/dasset-gateway-keys --out keystore.backup
  dassetctl keys restore --keystore /var/lib/dasset-gateway-keys --in keystore.backup`,
	}
	var dir, out, in string
	var stdinPass bool
	passphrase := func(cmd *cobra.Command) (string, error) {
		if stdinPass {
			return readPasswordStdin(cmd)
		}
		return readNewPassword(cmd)
	}
	backup := &cobra.Command{
		Use:     "backup",
		Short:   "Write the keystore, encrypted under a passphrase (argon2id + XChaCha20-Poly1305)",
		Example: `  dassetctl keys backup --keystore /var/lib/dasset-gateway-keys --out keystore.backup`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out is required")
			}
			ks, err := privacy.OpenKeystore(dir)
			if err != nil {
				return err
			}
			pw, err := passphrase(cmd)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := ks.Backup(&buf, []byte(pw)); err != nil {
				return err
			}
			if err := os.WriteFile(out, buf.Bytes(), 0o600); err != nil {
				return fmt.Errorf("write backup: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "keystore %s backed up to %s\n", ks.ID(), out)
			return nil
		}),
	}
	restore := &cobra.Command{
		Use:     "restore",
		Short:   "Restore a keystore backup into an empty keystore directory",
		Example: `  dassetctl keys restore --keystore /var/lib/dasset-gateway-keys --in keystore.backup`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if in == "" {
				return usagef("--in is required")
			}
			f, err := os.Open(in)
			if err != nil {
				return fmt.Errorf("read backup: %w", err)
			}
			defer f.Close()
			pw, err := passphrase(cmd)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o700); err != nil {
				return err
			}
			info, err := privacy.RestoreKeystore(f, []byte(pw), dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "keystore restored into %s: %d day keys (%d dropped as past their retention); "+
				"erasure ledger: %d devices, %d accounts, erased again at the gateway's next start\n",
				dir, info.DayKeys, info.ExpiredDayKeys, info.ErasedDevices, info.ErasedAccounts)
			return nil
		}),
	}
	for _, c := range []*cobra.Command{backup, restore} {
		c.Flags().StringVar(&dir, "keystore", "/var/lib/dasset-gateway-keys", "keystore directory (the gateway's keystore_dir)")
		c.Flags().BoolVar(&stdinPass, "passphrase-stdin", false, "read the passphrase from standard input")
	}
	backup.Flags().StringVar(&out, "out", "", "backup file to write (0600)")
	restore.Flags().StringVar(&in, "in", "", "backup file to read")
	cmd.AddCommand(backup, restore)
	return cmd
}
