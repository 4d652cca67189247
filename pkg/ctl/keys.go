package ctl

import (
	"bytes"
	"encoding/base64"
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
connection-log retention, and a restore drops those that passed it since.

Fleets (several gateways on one PostgreSQL registry) share the keys that blind, seal and wrap
pseudonym day keys, and the keystore id the database records; each gateway keeps a WireGuard
key of its own. "keys backup --fleet" on a member writes only the shared keys (with the
destruction horizon and the erasure ledger), never the member's WireGuard key, audit log or
day-key retention; "keys restore" of that file into the new gateway's empty keystore_dir,
before its first start, makes the new gateway's own WireGuard key and prints its public key.

A fleet keeps its pseudonym day keys in the database, each wrapped under the day-key KEK
(daykeys.kek) that only the keystores and the fleet keys file hold, so that every gateway
pseudonymises a day alike and a key destroyed by one gateway (at the connection-log retention)
is gone for all of them within 30 seconds. The trade-off: a database backup holds the wrapped
keys of the days retained when it was taken, and that backup plus the KEK (any fleet keystore,
keys backup or fleet keys file) re-links the backup's connection-log rows to its devices and
accounts even after those days were destroyed. The destruction horizon, kept in every keystore,
protects the live fleet: destroyed days are never used again, and a database restored from an
older backup has their keys deleted at the next start. Keep database backups no longer than the
connection-log retention and apart from keystores and fleet keys files, or retire them early by
rotating the KEK: "keys rotate-kek" on one member, "keys backup --fleet" there, "keys update"
with that file on every other member, restart every gateway (each rewraps the database's day
keys under the new KEK), then "keys retire-kek" on every member and destroy the older keys
backups and fleet keys files; database backups from before the rotation then open with nothing.`,
		Example: `  dassetctl keys backup --keystore /var/lib/dasset-gateway-keys --out keystore.backup
  dassetctl keys restore --keystore /var/lib/dasset-gateway-keys --in keystore.backup

  # joining a fleet: on a member, then on the new gateway before its first start
  dassetctl keys backup --fleet --keystore /var/lib/dasset-gateway-keys --out fleet.keys
  dassetctl keys restore --in fleet.keys --keystore /var/lib/dasset-gateway-keys`,
	}
	var dir, out, in string
	var stdinPass, fleet bool
	// passphrase reads the passphrase: from standard input with
	// --passphrase-stdin, else on the terminal, twice when it makes a new
	// file (backup), once when it opens one (restore, update).
	passphrase := func(cmd *cobra.Command) (string, error) {
		if stdinPass {
			return readPasswordStdin(cmd)
		}
		return readSecret(cmd, "passphrase", "--passphrase-stdin", cmd.Name() == "backup")
	}
	// openIn opens --in (what it holds names it in errors) and asks for
	// its passphrase.
	openIn := func(cmd *cobra.Command, what string) (*os.File, string, error) {
		if in == "" {
			return nil, "", usagef("--in is required")
		}
		f, err := os.Open(in)
		if err != nil {
			return nil, "", fmt.Errorf("read %s: %w", what, err)
		}
		pw, err := passphrase(cmd)
		if err != nil {
			f.Close()
			return nil, "", err
		}
		return f, pw, nil
	}
	backup := &cobra.Command{
		Use:   "backup",
		Short: "Write the keystore (or with --fleet the keys a fleet shares), encrypted under a passphrase (argon2id + XChaCha20-Poly1305)",
		Example: `  dassetctl keys backup --keystore /var/lib/dasset-gateway-keys --out keystore.backup
  dassetctl keys backup --fleet --keystore /var/lib/dasset-gateway-keys --out fleet.keys`,
		Args: exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out is required")
			}
			// Opening a directory without a keystore would make one: a
			// mistyped --keystore must not back up fresh, useless keys.
			if _, ok, err := privacy.KeystoreID(dir); err != nil {
				return err
			} else if !ok {
				return usagef("--keystore %s holds no keystore (no keystore.id): nothing to back up; give the gateway's keystore_dir", dir)
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
			write, what := ks.Backup, "keystore %s backed up to %s\n"
			if fleet {
				write, what = ks.BackupFleet, "fleet keys of keystore %s written to %s (no WireGuard key: the joining gateway makes its own at restore)\n"
			}
			if err := write(&buf, []byte(pw)); err != nil {
				return err
			}
			if err := os.WriteFile(out, buf.Bytes(), 0o600); err != nil {
				return fmt.Errorf("write backup: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), what, ks.ID(), out)
			return nil
		}),
	}
	restore := &cobra.Command{
		Use:     "restore",
		Short:   "Restore a keystore backup or a fleet keys file into an empty keystore directory",
		Example: `  dassetctl keys restore --keystore /var/lib/dasset-gateway-keys --in keystore.backup`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			f, pw, err := openIn(cmd, "backup")
			if err != nil {
				return err
			}
			defer f.Close()
			if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o700); err != nil {
				return err
			}
			info, err := privacy.RestoreKeystore(f, []byte(pw), dir)
			if err != nil {
				return err
			}
			if info.Fleet {
				fmt.Fprintf(cmd.OutOrStdout(), "fleet keys restored into %s; this gateway's own WireGuard public key: %s; "+
					"erasure ledger: %d devices, %d accounts\n",
					dir, base64.StdEncoding.EncodeToString(info.WireGuardPublicKey[:]), info.ErasedDevices, info.ErasedAccounts)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "keystore restored into %s: %d day keys (%d dropped as past their retention); "+
				"erasure ledger: %d devices, %d accounts, erased again at the gateway's next start\n",
				dir, info.DayKeys, info.ExpiredDayKeys, info.ErasedDevices, info.ErasedAccounts)
			return nil
		}),
	}
	update := &cobra.Command{
		Use:   "update",
		Short: "Take the day-key KEKs of a fleet keys file into this member's existing keystore (a KEK rotation)",
		Long: `Gives an existing member's keystore the day-key KEKs (current and previous) of a fleet keys file
of the same fleet, written by "keys backup --fleet" on the member that ran "keys rotate-kek", and
its destruction horizon when later. The keystore keeps its own WireGuard key, audit log and
ledger. Restart the gateway afterwards.`,
		Example: `  dassetctl keys update --in fleet.keys --keystore /var/lib/dasset-gateway-keys`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			f, pw, err := openIn(cmd, "fleet keys file")
			if err != nil {
				return err
			}
			defer f.Close()
			if err := privacy.UpdateFleetKeys(f, []byte(pw), dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "day-key KEKs of %s taken into %s; restart the gateway\n", in, dir)
			return nil
		}),
	}
	rotate := &cobra.Command{
		Use:   "rotate-kek",
		Short: "Make a new day-key KEK, keeping the current one as the previous until retire-kek",
		Long: `Starts a rotation of the fleet's day-key KEK (the key that wraps the pseudonym day keys kept in
the database). Then: "keys backup --fleet" here, "keys update" with that file on every other
member, restart every gateway (each rewraps the database's day keys under the new KEK), and
"keys retire-kek" on every member. Destroy older keys backups and fleet keys files too: they
hold the old KEK, which opens the day keys in database backups made before the rotation.`,
		Example: `  dassetctl keys rotate-kek --keystore /var/lib/dasset-gateway-keys`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if err := privacy.RotateDayKEK(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new day-key KEK in %s (the previous one kept until retire-kek); "+
				"next: keys backup --fleet here, keys update on every other member, restart every gateway\n", dir)
			return nil
		}),
	}
	retire := &cobra.Command{
		Use:     "retire-kek",
		Short:   "Shred the previous day-key KEK, once every gateway restarted with the new one",
		Example: `  dassetctl keys retire-kek --keystore /var/lib/dasset-gateway-keys`,
		Args:    exactArgs(),
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			if err := privacy.RetireDayKEK(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "previous day-key KEK of %s shredded\n", dir)
			return nil
		}),
	}
	for _, c := range []*cobra.Command{backup, restore, update, rotate, retire} {
		c.Flags().StringVar(&dir, "keystore", "/var/lib/dasset-gateway-keys", "keystore directory (the gateway's keystore_dir)")
	}
	for _, c := range []*cobra.Command{backup, restore, update} {
		c.Flags().BoolVar(&stdinPass, "passphrase-stdin", false, "read the passphrase from standard input")
	}
	backup.Flags().StringVar(&out, "out", "", "backup file to write (0600)")
	backup.Flags().BoolVar(&fleet, "fleet", false, "write only the keys a fleet shares, for a new gateway to join (never this gateway's WireGuard key)")
	restore.Flags().StringVar(&in, "in", "", "backup file to read")
	update.Flags().StringVar(&in, "in", "", "fleet keys file to read")
	cmd.AddCommand(backup, restore, update, rotate, retire)
	return cmd
}
