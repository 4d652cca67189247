package privacy

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// ErrWrongPassphrase is returned by RestoreKeystore when the backup does not
// open with the passphrase (or was altered).
var ErrWrongPassphrase = errors.New("wrong passphrase or damaged backup")

const (
	backupFormat  = "dasset-keystore-backup"
	backupVersion = 1
	// Argon2id parameters for new backups: a backup is made and restored
	// rarely, so it can afford more than a login.
	backupTime    = 3
	backupMemory  = 64 * 1024 // KiB
	backupThreads = 2
	maxBackupSize = 64 << 20 // the audit log rides along
)

// backupFile is the versioned envelope; every field but Ciphertext is bound
// to it as associated data.
type backupFile struct {
	Format  string    `json:"format"`
	Version int       `json:"version"`
	KDF     backupKDF `json:"kdf"`
	Created string    `json:"created"`
	// DayKeys makes the backup expire itself: it holds no day key before
	// Horizon, and a restore drops every day key whose day lies more than
	// Retention before the day of the restore (what the pruner would have
	// destroyed meanwhile), so a backup never brings back a key past its
	// retention. Absent in backups of a keystore that never had a
	// retention recorded.
	DayKeys    *backupDayKeys `json:"day_keys,omitempty"`
	Ciphertext []byte         `json:"ciphertext"` // nonce ‖ XChaCha20-Poly1305(files)
}

type backupDayKeys struct {
	Retention string `json:"retention"` // Go duration, e.g. "720h0m0s"
	Horizon   string `json:"horizon"`   // first UTC day whose key the backup holds
}

type backupKDF struct {
	Name      string `json:"name"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Salt      []byte `json:"salt"`
}

type backupPayload struct {
	Files map[string][]byte `json:"files"` // path relative to the keystore → contents
}

func (b *backupFile) aad() []byte {
	out := fmt.Appendf(nil, "%s/v%d argon2id t=%d m=%d p=%d salt=%x created=%s",
		b.Format, b.Version, b.KDF.Time, b.KDF.MemoryKiB, b.KDF.Threads, b.KDF.Salt, b.Created)
	if b.DayKeys != nil {
		out = fmt.Appendf(out, " day_keys retention=%s horizon=%s", b.DayKeys.Retention, b.DayKeys.Horizon)
	}
	return out
}

// Backup writes every key file of the keystore to w, encrypted under a key
// derived from passphrase with argon2id (XChaCha20-Poly1305). Keep the
// backup apart from database backups: together they undo the blinding.
//
// The backup expires itself (see backupFile.DayKeys): day keys already past
// the recorded retention (SetDayKeyRetention) are left out, and a restore
// drops those that passed it since.
func (k *Keystore) Backup(w io.Writer, passphrase []byte) error {
	return k.backupAt(w, passphrase, time.Now())
}

func (k *Keystore) backupAt(w io.Writer, passphrase []byte, now time.Time) error {
	if len(passphrase) == 0 {
		return &FieldError{Field: "passphrase", Reason: "must not be empty"}
	}
	k.mu.RLock()
	retention, err := k.dayKeyRetentionLocked()
	var dayKeys *backupDayKeys
	horizon := k.horizon
	if err == nil && retention > 0 {
		horizon = max(horizon, dayCut(now, retention))
		dayKeys = &backupDayKeys{Retention: retention.String(), Horizon: horizon}
	}
	var files map[string][]byte
	if err == nil {
		files, err = k.readAllFiles(horizon)
	}
	k.mu.RUnlock()
	if err != nil {
		return err
	}
	return writeBackup(w, backupFormat, passphrase, files, dayKeys, now)
}

// writeBackup encrypts files under a key derived from passphrase and writes
// the envelope; it clears files.
func writeBackup(w io.Writer, format string, passphrase []byte, files map[string][]byte, dayKeys *backupDayKeys, now time.Time) error {
	plain, err := json.Marshal(backupPayload{Files: files})
	for _, b := range files {
		clear(b)
	}
	if err != nil {
		return fmt.Errorf("privacy: backup: %w", err)
	}
	defer clear(plain)

	bf := backupFile{
		Format:  format,
		Version: backupVersion,
		KDF:     backupKDF{Name: "argon2id", Time: backupTime, MemoryKiB: backupMemory, Threads: backupThreads, Salt: make([]byte, 16)},
		Created: now.UTC().Format(time.RFC3339),
		DayKeys: dayKeys,
	}
	if _, err := rand.Read(bf.KDF.Salt); err != nil {
		return fmt.Errorf("privacy: backup: %w", err)
	}
	key := argon2.IDKey(passphrase, bf.KDF.Salt, bf.KDF.Time, bf.KDF.MemoryKiB, bf.KDF.Threads, chacha20poly1305.KeySize)
	defer clear(key)
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return fmt.Errorf("privacy: backup: %w", err)
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("privacy: backup: %w", err)
	}
	bf.Ciphertext = aead.Seal(nonce, nonce, plain, bf.aad())
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(bf); err != nil {
		return fmt.Errorf("privacy: backup: write: %w", err)
	}
	return nil
}

// Files kept in the keystore directory beside the keys, and carried by its
// backup: the erasure ledger (LedgerFile), the admin audit log and its head
// hash. With them, restoring the keystore backup beside any older database
// copy brings back no erased subject and a log that verifies.
const (
	AuditLogFile  = "audit.log"
	AuditHeadFile = "audit.head"
)

// readAllFiles reads every file of the keystore but the day keys before
// horizon, and records horizon as the horizon (caller holds mu).
func (k *Keystore) readAllFiles(horizon string) (map[string][]byte, error) {
	files := make(map[string][]byte)
	for _, name := range []string{indexKeyFile, sealKeyFile, dayKEKFile, dayKEKPrevFile, wireguardKeyFile, idFile, horizonFile, LedgerFile, retentionFile} {
		b, err := readPrivateFile(filepath.Join(k.dir, name))
		if errors.Is(err, fs.ErrNotExist) && (name == dayKEKPrevFile || name == horizonFile || name == LedgerFile || name == retentionFile) {
			continue
		}
		if err != nil {
			return nil, err
		}
		files[name] = b
	}
	logb, head, err := auditSnapshot(k.dir)
	if err != nil {
		return nil, err
	}
	if head != nil {
		files[AuditHeadFile], files[AuditLogFile] = head, logb
	}
	if horizon != "" {
		files[horizonFile] = []byte(horizon + "\n")
	}
	// The key files on disk: with shared day keys (ShareDayKeys) the keys
	// in use live in the database, not here.
	days, err := k.listDays()
	if err != nil {
		return nil, err
	}
	for _, d := range days {
		if d < horizon {
			continue
		}
		name := daysDir + "/" + d + ".key"
		b, err := readKey(filepath.Join(k.dir, filepath.FromSlash(name)))
		if err != nil {
			return nil, err
		}
		files[name] = b
	}
	return files, nil
}

// auditSnapshot reads the audit head, then the log, cut after the head's
// entry: the gateway may append while the backup runs (log line first, head
// second), and a log ahead of its head would not verify. No head: nil, nil.
func auditSnapshot(dir string) (logb, head []byte, err error) {
	head, err = readPrivateFile(filepath.Join(dir, AuditHeadFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var seq uint64
	var hash string
	if _, err := fmt.Sscanf(string(head), "%d %s", &seq, &hash); err != nil {
		return nil, nil, fmt.Errorf("privacy: backup: %s is unreadable", filepath.Join(dir, AuditHeadFile))
	}
	raw, err := readPrivateFile(filepath.Join(dir, AuditLogFile))
	if errors.Is(err, fs.ErrNotExist) {
		return []byte{}, head, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var keep int
	for rest := raw; len(rest) > 0; {
		line, after, _ := strings.Cut(string(rest), "\n")
		var e struct {
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Seq > seq {
			break
		}
		keep += len(line) + 1
		rest = []byte(after)
	}
	return raw[:min(keep, len(raw))], head, nil
}

// RestoreKeystore restores a backup made by Backup into dir, which must not
// exist or be empty. Nothing is written unless the whole backup opens and
// checks: the files go to a temporary directory beside dir, renamed into
// place at the end.
func RestoreKeystore(r io.Reader, passphrase []byte, dir string) (RestoreInfo, error) {
	return restoreAt(r, passphrase, dir, time.Now())
}

// RestoreInfo says what a restore brought back.
type RestoreInfo struct {
	DayKeys        int    // day keys restored
	ExpiredDayKeys int    // day keys in the backup dropped as past their retention
	Horizon        string // first day whose key may exist ("" = none destroyed)
	ErasedDevices  int    // on the restored erasure ledger
	ErasedAccounts int
	// Fleet: the file was a fleet keys file (BackupFleet), and the
	// restore made this gateway a WireGuard key of its own.
	Fleet              bool
	WireGuardPublicKey [32]byte // the restored keystore's
}

// openBackup reads and decrypts a keystore backup or fleet keys file; check
// runs on the envelope before the (costly) key derivation. The caller
// clears the files.
func openBackup(r io.Reader, passphrase []byte, check func(*backupFile) error) (backupFile, map[string][]byte, error) {
	var bf backupFile
	raw, err := io.ReadAll(io.LimitReader(r, maxBackupSize+1))
	if err != nil {
		return bf, nil, fmt.Errorf("privacy: restore: read: %w", err)
	}
	if len(raw) > maxBackupSize {
		return bf, nil, fmt.Errorf("privacy: restore: backup is larger than %d bytes", maxBackupSize)
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&bf); err != nil {
		return bf, nil, fmt.Errorf("privacy: restore: not a keystore backup: %w", err)
	}
	switch {
	case bf.Format != backupFormat && bf.Format != fleetFormat:
		return bf, nil, fmt.Errorf("privacy: restore: format %q is neither %q nor %q", bf.Format, backupFormat, fleetFormat)
	case bf.Format == fleetFormat && bf.DayKeys != nil:
		return bf, nil, fmt.Errorf("privacy: restore: a fleet keys file has no day_keys header")
	case bf.Version != backupVersion:
		return bf, nil, fmt.Errorf("privacy: restore: backup version %d is not supported (want %d)", bf.Version, backupVersion)
	case bf.KDF.Name != "argon2id":
		return bf, nil, fmt.Errorf("privacy: restore: kdf.name %q is not supported", bf.KDF.Name)
	case bf.KDF.Time < 1 || bf.KDF.Time > 16:
		return bf, nil, fmt.Errorf("privacy: restore: kdf.time %d is out of range 1..16", bf.KDF.Time)
	case bf.KDF.MemoryKiB < 8*1024 || bf.KDF.MemoryKiB > 1<<20:
		return bf, nil, fmt.Errorf("privacy: restore: kdf.memory_kib %d is out of range 8192..1048576", bf.KDF.MemoryKiB)
	case bf.KDF.Threads < 1 || bf.KDF.Threads > 16:
		return bf, nil, fmt.Errorf("privacy: restore: kdf.threads %d is out of range 1..16", bf.KDF.Threads)
	case len(bf.KDF.Salt) < 16:
		return bf, nil, fmt.Errorf("privacy: restore: kdf.salt is %d bytes, want at least 16", len(bf.KDF.Salt))
	}
	if err := check(&bf); err != nil {
		return bf, nil, err
	}

	key := argon2.IDKey(passphrase, bf.KDF.Salt, bf.KDF.Time, bf.KDF.MemoryKiB, bf.KDF.Threads, chacha20poly1305.KeySize)
	defer clear(key)
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return bf, nil, fmt.Errorf("privacy: restore: %w", err)
	}
	if len(bf.Ciphertext) < aead.NonceSize()+aead.Overhead() {
		return bf, nil, fmt.Errorf("privacy: restore: ciphertext is too short")
	}
	ns := aead.NonceSize()
	plain, err := aead.Open(nil, bf.Ciphertext[:ns], bf.Ciphertext[ns:], bf.aad())
	if err != nil {
		return bf, nil, fmt.Errorf("privacy: restore: %w", ErrWrongPassphrase)
	}
	defer clear(plain)
	var p backupPayload
	if err := json.Unmarshal(plain, &p); err != nil {
		return bf, nil, fmt.Errorf("privacy: restore: payload: %w", err)
	}
	return bf, p.Files, nil
}

func restoreAt(r io.Reader, passphrase []byte, dir string, now time.Time) (RestoreInfo, error) {
	var info RestoreInfo
	bf, files, err := openBackup(r, passphrase, func(*backupFile) error { return checkRestoreTarget(dir) })
	if err != nil {
		return info, err
	}
	p := backupPayload{Files: files}
	defer func() {
		for _, b := range p.Files {
			clear(b)
		}
	}()
	if bf.Format == fleetFormat {
		err = checkFleetPayload(p.Files)
		if err == nil {
			// The joining gateway's own WireGuard key, made here, once:
			// the fleet file never holds one.
			var wg []byte
			wg, err = newKey(true)
			p.Files[wireguardKeyFile] = wg
		}
		info.Fleet = true
	}
	if err == nil {
		err = checkPayload(p.Files)
	}
	if err != nil {
		return info, err
	}
	info.WireGuardPublicKey, err = publicKey(p.Files[wireguardKeyFile])
	if err != nil {
		return info, err
	}
	if err := expireDayKeys(&bf, p.Files, now, &info); err != nil {
		return info, err
	}
	if b, ok := p.Files[LedgerFile]; ok {
		info.ErasedDevices, info.ErasedAccounts, _ = ParseLedger(b)
	}

	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return info, fmt.Errorf("privacy: restore: %w", err)
	}
	stage, err := os.MkdirTemp(parent, ".keystore-restore-*") // 0700
	if err != nil {
		return info, fmt.Errorf("privacy: restore: %w", err)
	}
	defer os.RemoveAll(stage) // gone after the rename
	if err := os.Mkdir(filepath.Join(stage, daysDir), 0o700); err != nil {
		return info, fmt.Errorf("privacy: restore: %w", err)
	}
	for name, b := range p.Files {
		d, base := filepath.Split(filepath.Join(stage, filepath.FromSlash(name)))
		if err := writeAtomic(filepath.Clean(d), base, b, true); err != nil {
			return info, fmt.Errorf("privacy: restore: %w", err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return info, fmt.Errorf("privacy: restore: %w", err)
	}
	if err := os.Rename(stage, dir); err != nil {
		return info, fmt.Errorf("privacy: restore: %w", err)
	}
	return info, syncDir(parent)
}

// expireDayKeys drops the day keys of a backup that are past their
// retention at now (or before the backup's horizon) and moves the horizon
// file to the cut, so the restored keystore never makes those days again.
func expireDayKeys(bf *backupFile, files map[string][]byte, now time.Time, info *RestoreInfo) error {
	cut := strings.TrimSpace(string(files[horizonFile]))
	if bf.DayKeys != nil {
		retention, err := time.ParseDuration(bf.DayKeys.Retention)
		if err != nil || retention <= 0 {
			return fmt.Errorf("privacy: restore: day_keys.retention %q is not a positive duration", bf.DayKeys.Retention)
		}
		if _, err := time.Parse(dayLayout, bf.DayKeys.Horizon); err != nil {
			return fmt.Errorf("privacy: restore: day_keys.horizon %q is not a day", bf.DayKeys.Horizon)
		}
		cut = max(cut, bf.DayKeys.Horizon, dayCut(now, retention))
	}
	for name, b := range files {
		d, ok := strings.CutPrefix(name, daysDir+"/")
		if !ok {
			continue
		}
		d = strings.TrimSuffix(d, ".key")
		if cut != "" && d < cut {
			clear(b)
			delete(files, name)
			info.ExpiredDayKeys++
			continue
		}
		info.DayKeys++
	}
	if cut != "" {
		files[horizonFile] = []byte(cut + "\n")
	}
	info.Horizon = cut
	return nil
}

func checkRestoreTarget(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("privacy: restore: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("privacy: restore: refusing to restore over the non-empty directory %s (move it away first)", dir)
	}
	return nil
}

func checkPayload(files map[string][]byte) error {
	for _, name := range []string{indexKeyFile, sealKeyFile, wireguardKeyFile, idFile} {
		if _, ok := files[name]; !ok {
			return fmt.Errorf("privacy: restore: backup lacks %s", name)
		}
	}
	if _, ok := files[AuditLogFile]; ok != (files[AuditHeadFile] != nil) {
		return fmt.Errorf("privacy: restore: backup holds one of %s and %s without the other", AuditLogFile, AuditHeadFile)
	}
	for name, b := range files {
		switch name {
		case indexKeyFile, sealKeyFile, dayKEKFile, dayKEKPrevFile, wireguardKeyFile:
		case idFile, horizonFile, AuditLogFile, AuditHeadFile, retentionFile:
			continue
		case LedgerFile:
			if _, _, err := ParseLedger(b); err != nil {
				return fmt.Errorf("privacy: restore: %w", err)
			}
			continue
		default:
			d, ok := strings.CutPrefix(name, daysDir+"/")
			if ok {
				d, ok = strings.CutSuffix(d, ".key")
			}
			if ok {
				_, err := time.Parse(dayLayout, d)
				ok = err == nil
			}
			if !ok {
				return fmt.Errorf("privacy: restore: backup holds an unexpected file %q", name)
			}
		}
		if len(b) != keyLen {
			return fmt.Errorf("privacy: restore: %s holds %d bytes, want %d", name, len(b), keyLen)
		}
	}
	return nil
}
