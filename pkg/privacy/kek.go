package privacy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Rotating the day-key KEK of a fleet (K_kek), so that the wrapped day keys
// in older database backups open with nothing once the old K_kek is gone:
//
//  1. RotateDayKEK on one member's keystore: the current K_kek becomes the
//     previous one (daykeys.kek.prev), a new one is made;
//  2. that member's fleet keys file (BackupFleet, which carries both) goes
//     to every other member, whose keystore takes both with UpdateFleetKeys;
//  3. every gateway restarts: at start and at every re-read it opens keys
//     wrapped under the previous K_kek and rewraps them under the new one in
//     the database (RewrapDayKey: whichever gateway comes first);
//  4. once every gateway has restarted, RetireDayKEK on every member shreds
//     the previous K_kek. Copies of it elsewhere (older keys backups and
//     fleet keys files) must be destroyed too.

// ErrRotationUnderWay is returned by RotateDayKEK while a previous K_kek is
// still held.
var ErrRotationUnderWay = errors.New("a day-key KEK rotation is under way")

// RotateDayKEK makes a new K_kek in the keystore in dir and keeps the
// current one as the previous K_kek until RetireDayKEK. A gateway running
// on dir goes on with the keys it loaded until it restarts.
func RotateDayKEK(dir string) error {
	if _, err := OpenKeystore(dir); err != nil {
		return err
	}
	if _, err := os.Lstat(filepath.Join(dir, dayKEKPrevFile)); err == nil {
		return fmt.Errorf("privacy: %w (%s exists): retire it first (dassetctl keys retire-kek) once every gateway of the fleet restarted with the new KEK",
			ErrRotationUnderWay, filepath.Join(dir, dayKEKPrevFile))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("privacy: keystore: %w", err)
	}
	cur, err := readKey(filepath.Join(dir, dayKEKFile))
	if err != nil {
		return err
	}
	defer clear(cur)
	// The previous KEK first: a crash in between leaves both files holding
	// the current KEK, which unwraps as before.
	if err := writeAtomic(dir, dayKEKPrevFile, cur, true); err != nil {
		return err
	}
	next, err := newKey(false)
	if err != nil {
		return fmt.Errorf("privacy: keystore: make %s: %w", dayKEKFile, err)
	}
	defer clear(next)
	return writeAtomic(dir, dayKEKFile, next, false)
}

// RetireDayKEK shreds the previous K_kek of the keystore in dir. Day keys
// still wrapped under it (in the database, or in older backups of it) no
// longer open with this keystore.
func RetireDayKEK(dir string) error {
	if _, err := OpenKeystore(dir); err != nil {
		return err
	}
	path := filepath.Join(dir, dayKEKPrevFile)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("privacy: keystore %s holds no previous day-key KEK to retire", dir)
	}
	if err := shred(path); err != nil {
		return err
	}
	return syncDir(dir)
}

// UpdateFleetKeys gives the existing keystore in dir the day-key KEKs of a
// fleet keys file (BackupFleet) of the same fleet — the current one and,
// during a rotation, the previous one (a keystore whose file has none loses
// its own) — and the file's horizon when it is later. Everything else of
// the keystore stays: its WireGuard key, its audit log, its ledger.
func UpdateFleetKeys(r io.Reader, passphrase []byte, dir string) error {
	ks, err := OpenKeystore(dir)
	if err != nil {
		return err
	}
	_, files, err := openBackup(r, passphrase, func(bf *backupFile) error {
		if bf.Format != fleetFormat {
			return fmt.Errorf("privacy: update: format %q is not a fleet keys file (%q)", bf.Format, fleetFormat)
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer func() {
		for _, b := range files {
			clear(b)
		}
	}()
	if err := checkFleetPayload(files); err != nil {
		return err
	}
	for _, name := range []string{indexKeyFile, sealKeyFile, dayKEKFile, dayKEKPrevFile} {
		if b, ok := files[name]; ok && len(b) != keyLen {
			return fmt.Errorf("privacy: update: %s holds %d bytes, want %d", name, len(b), keyLen)
		}
	}
	if id := strings.TrimSpace(string(files[idFile])); id != ks.ID() {
		return fmt.Errorf("privacy: update: the fleet keys file is of keystore %s, %s is keystore %s", id, dir, ks.ID())
	}
	for _, name := range []string{indexKeyFile, sealKeyFile} {
		own, err := readKey(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		same := bytes.Equal(own, files[name])
		clear(own)
		if !same {
			return fmt.Errorf("privacy: update: %s of the fleet keys file differs from %s's: not this fleet's keystore", name, dir)
		}
	}
	if h := strings.TrimSpace(string(files[horizonFile])); h != "" {
		if _, err := time.Parse(dayLayout, h); err != nil {
			return fmt.Errorf("privacy: update: the fleet keys file's horizon %q is not a day", h)
		}
		ks.mu.Lock()
		err := ks.raiseHorizonLocked(h)
		ks.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if prev, ok := files[dayKEKPrevFile]; ok {
		if err := writeAtomic(dir, dayKEKPrevFile, prev, false); err != nil {
			return err
		}
	}
	if err := writeAtomic(dir, dayKEKFile, files[dayKEKFile], false); err != nil {
		return err
	}
	if _, ok := files[dayKEKPrevFile]; !ok {
		if err := shred(filepath.Join(dir, dayKEKPrevFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return syncDir(dir)
}
