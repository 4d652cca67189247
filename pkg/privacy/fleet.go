package privacy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/crypto/curve25519"
)

// fleetFormat is the envelope format of a fleet keys file (BackupFleet).
const fleetFormat = "dasset-fleet-keys"

// fleetFiles are what a fleet keys file carries: the keys every gateway of
// a fleet shares (blind indexes and verifiers, sealed values, the wrapping
// of the day keys kept in the database), the keystore id the database
// records, and the destruction horizon and erasure ledger, which only ever
// grow and which a joining gateway must not start behind. Required files
// first; the rest are copied when present.
var (
	fleetRequired = []string{indexKeyFile, sealKeyFile, dayKEKFile, idFile}
	fleetOptional = []string{dayKEKPrevFile, horizonFile, LedgerFile}
)

// BackupFleet writes the keys a new gateway needs to join this gateway's
// fleet, encrypted under passphrase like Backup. It leaves out everything
// that belongs to this gateway alone: its WireGuard private key (the
// joining gateway makes its own at restore), its admin audit log and head
// (each gateway chains its own), the day-key retention it records from its
// config at start, and the day key files of days/ (a fleet keeps its day
// keys in the database, wrapped under the KEK this file carries).
func (k *Keystore) BackupFleet(w io.Writer, passphrase []byte) error {
	return k.backupFleetAt(w, passphrase, time.Now())
}

func (k *Keystore) backupFleetAt(w io.Writer, passphrase []byte, now time.Time) error {
	if len(passphrase) == 0 {
		return &FieldError{Field: "passphrase", Reason: "must not be empty"}
	}
	files := make(map[string][]byte)
	k.mu.RLock()
	err := func() error {
		for _, name := range append(append([]string(nil), fleetRequired...), fleetOptional...) {
			b, err := readPrivateFile(filepath.Join(k.dir, name))
			if errors.Is(err, fs.ErrNotExist) && slices.Contains(fleetOptional, name) {
				continue
			}
			if err != nil {
				return err
			}
			files[name] = b
		}
		if k.horizon != "" {
			files[horizonFile] = []byte(k.horizon + "\n")
		}
		return nil
	}()
	k.mu.RUnlock()
	if err != nil {
		for _, b := range files {
			clear(b)
		}
		return err
	}
	return writeBackup(w, fleetFormat, passphrase, files, nil, now)
}

// checkFleetPayload refuses a fleet keys file that lacks a shared key or
// holds anything that belongs to one gateway.
func checkFleetPayload(files map[string][]byte) error {
	for _, name := range fleetRequired {
		if _, ok := files[name]; !ok {
			return fmt.Errorf("privacy: restore: fleet keys file lacks %s", name)
		}
	}
	for name := range files {
		if slices.Contains(fleetRequired, name) || slices.Contains(fleetOptional, name) {
			continue
		}
		return fmt.Errorf("privacy: restore: fleet keys file holds %q, which is not a shared fleet key", name)
	}
	return nil
}

// publicKey is the Curve25519 public key of a WireGuard private key file's
// contents.
func publicKey(priv []byte) ([32]byte, error) {
	var pub [32]byte
	if len(priv) != keyLen {
		return pub, fmt.Errorf("privacy: %s holds %d bytes, want %d", wireguardKeyFile, len(priv), keyLen)
	}
	var k [32]byte
	copy(k[:], priv)
	clamp(&k)
	out, err := curve25519.X25519(k[:], curve25519.Basepoint)
	clear(k[:])
	if err != nil {
		return pub, fmt.Errorf("privacy: %s: %w", wireguardKeyFile, err)
	}
	copy(pub[:], out)
	return pub, nil
}
