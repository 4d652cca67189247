package privacy

import (
	"context"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
)

// Files in a keystore directory.
const (
	indexKeyFile     = "index.key"        // K_index: blind indexes and verifiers
	sealKeyFile      = "seal.key"         // K_seal: sealed values
	wireguardKeyFile = "wireguard.key"    // the gateway's WireGuard private key
	dayKEKFile       = "daykeys.kek"      // K_kek: wraps day keys kept in a shared database
	dayKEKPrevFile   = "daykeys.kek.prev" // the K_kek a rotation replaced, until retired
	idFile           = "keystore.id"      // random id, recorded by the database
	horizonFile      = "horizon"          // UTC day before which day keys are destroyed
	daysDir          = "days"             // daily pseudonym keys, days/YYYY-MM-DD.key
	tmpPrefix        = ".tmp-"
	dayLayout        = "2006-01-02"
	keyLen           = 32
)

// Domain separation for the HMACs under K_index.
const (
	domainSerial  = "dasset/sn/v1\x00"
	domainAccount = "dasset/account/v1\x00"
	domainHWID    = "dasset/hwid/v1\x00"
	domainDummy   = "dasset/dummy-verifier/v1\x00"
)

// ErrKeyDestroyed is returned for a day whose pseudonym key has been
// destroyed (or lies before the destruction horizon).
var ErrKeyDestroyed = errors.New("pseudonym key destroyed")

// ErrOpen is returned (wrapped) by Open for a sealed value that is damaged,
// was sealed under another key, or is opened with the wrong AAD.
var ErrOpen = errors.New("cannot open sealed value")

// Keystore holds the gateway's secret keys, kept in a directory outside the
// database (0700, files 0600) so database backups never contain them.
// It is safe for concurrent use.
type Keystore struct {
	dir      string
	id       string
	index    []byte
	seal     cipher.AEAD
	kek      cipher.AEAD // wraps day keys shared through the database
	kekPrev  cipher.AEAD // nil, or the K_kek being rotated out (unwraps only)
	wgPriv   [32]byte
	dummyVer Verifier
	verSalt  []byte // the verifier KDF's salt, derived from index once

	mu      sync.RWMutex
	horizon string               // "" or UTC day; days before it are destroyed
	dayKeys map[string]*[32]byte // cache of loaded day keys
	// Shared day keys (ShareDayKeys): nil while day keys are files.
	shared  SharedDayKeys
	refresh time.Duration // re-read the shared day keys at least this often
	synced  time.Time     // when they were last read
	syncMu  sync.Mutex    // one sync at a time; taken before mu, never inside it
	// One first-of-the-day key recorded at a time (taken before mu), and
	// the last failure to record one.
	ensureMu     sync.Mutex
	ensureErr    error
	ensureFailed time.Time
	refreshing   atomic.Bool // a background refresh runs
}

// KeystoreID returns the id of the keystore in dir without creating or
// changing anything; ok is false when there is none yet.
func KeystoreID(dir string) (id string, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, idFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("privacy: keystore: %w", err)
	}
	return strings.TrimSpace(string(b)), true, nil
}

// OpenKeystore opens the keystore in dir, creating the directory (0700) and
// the keys on first start. It refuses key files that group or others can
// read, and a keystore that is missing a key it once had.
func OpenKeystore(dir string) (*Keystore, error) {
	if err := ensurePrivateDir(dir); err != nil {
		return nil, err
	}
	if err := ensurePrivateDir(filepath.Join(dir, daysDir)); err != nil {
		return nil, err
	}
	if err := removeTemps(dir); err != nil {
		return nil, err
	}
	if err := removeTemps(filepath.Join(dir, daysDir)); err != nil {
		return nil, err
	}

	idPath := filepath.Join(dir, idFile)
	_, err := os.Lstat(idPath)
	fresh := errors.Is(err, fs.ErrNotExist)
	if err != nil && !fresh {
		return nil, fmt.Errorf("privacy: keystore: %w", err)
	}
	if fresh {
		// First start (or a first start that was cut short before the id
		// was written, so nothing can have used these keys yet): make what
		// is missing, the id last.
		for _, name := range []string{indexKeyFile, sealKeyFile, dayKEKFile, wireguardKeyFile} {
			if err := createIfAbsent(dir, name, func() ([]byte, error) { return newKey(name == wireguardKeyFile) }); err != nil {
				return nil, err
			}
		}
		if err := createIfAbsent(dir, idFile, func() ([]byte, error) {
			b := make([]byte, 16)
			if _, err := rand.Read(b); err != nil {
				return nil, err
			}
			return []byte(hex.EncodeToString(b) + "\n"), nil
		}); err != nil {
			return nil, err
		}
	}

	// The day-key KEK came later than the other keys: a keystore made
	// before it gets one now (nothing can have been wrapped under a key it
	// never had; one that lost it cannot open the database's day keys, and
	// ShareDayKeys says so).
	if err := createIfAbsent(dir, dayKEKFile, func() ([]byte, error) { return newKey(false) }); err != nil {
		return nil, err
	}

	k := &Keystore{dir: dir, dayKeys: make(map[string]*[32]byte)}
	idb, err := readPrivateFile(idPath)
	if err != nil {
		return nil, err
	}
	k.id = strings.TrimSpace(string(idb))
	if _, err := hex.DecodeString(k.id); err != nil || len(k.id) != 32 {
		return nil, fmt.Errorf("privacy: keystore: %s is malformed (want 32 hex digits)", idPath)
	}
	if k.index, err = readKey(filepath.Join(dir, indexKeyFile)); err != nil {
		return nil, err
	}
	sealKey, err := readKey(filepath.Join(dir, sealKeyFile))
	if err != nil {
		return nil, err
	}
	if k.seal, err = chacha20poly1305.NewX(sealKey); err != nil {
		return nil, fmt.Errorf("privacy: keystore: seal key: %w", err)
	}
	kek, err := readKey(filepath.Join(dir, dayKEKFile))
	if err != nil {
		return nil, err
	}
	if k.kek, err = chacha20poly1305.NewX(kek); err != nil {
		return nil, fmt.Errorf("privacy: keystore: day-key KEK: %w", err)
	}
	clear(kek)
	if prev, err := readKey(filepath.Join(dir, dayKEKPrevFile)); err == nil {
		k.kekPrev, _ = chacha20poly1305.NewX(prev) // 32 bytes: cannot fail
		clear(prev)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	wg, err := readKey(filepath.Join(dir, wireguardKeyFile))
	if err != nil {
		return nil, err
	}
	copy(k.wgPriv[:], wg)
	clamp(&k.wgPriv)

	if h, err := readPrivateFile(filepath.Join(dir, horizonFile)); err == nil {
		k.horizon = strings.TrimSpace(string(h))
		if _, perr := time.Parse(dayLayout, k.horizon); perr != nil {
			return nil, fmt.Errorf("privacy: keystore: %s is malformed: %q is not a day", filepath.Join(dir, horizonFile), k.horizon)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	// Load every retained day key now (a few dozen at most), so a key file
	// with a bad mode is found at start and not at the first login of the
	// day, and pseudonyms never wait for the disk.
	days, err := k.listDays()
	if err != nil {
		return nil, err
	}
	for _, d := range days {
		b, err := readKey(k.dayPath(d))
		if err != nil {
			return nil, err
		}
		key := new([32]byte)
		copy(key[:], b)
		clear(b)
		k.dayKeys[d] = key
	}

	m := hmac.New(sha256.New, k.index)
	m.Write([]byte(domainDummy))
	copy(k.dummyVer[:], m.Sum(nil))
	k.verSalt = k.verifierSalt()
	return k, nil
}

// ID is the keystore's random id. The database records it, so that a
// database opened with another keystore is detected.
func (k *Keystore) ID() string { return k.id }

// Dir is the keystore's directory.
func (k *Keystore) Dir() string { return k.dir }

// GatewayPrivateKey is the gateway's WireGuard private key (Curve25519,
// clamped).
func (k *Keystore) GatewayPrivateKey() [32]byte { return k.wgPriv }

// GatewayPublicKey is the public key of GatewayPrivateKey.
func (k *Keystore) GatewayPublicKey() [32]byte {
	var pub [32]byte
	out, err := curve25519.X25519(k.wgPriv[:], curve25519.Basepoint)
	if err != nil {
		// Only for a low-order input point; the base point is not one.
		panic("privacy: X25519 with the base point failed: " + err.Error())
	}
	copy(pub[:], out)
	return pub
}

// BlindIndex is HMAC-SHA256(K_index, "dasset/sn/v1\x00" ‖ sn): how the
// registry finds a device without holding its serial number.
func (k *Keystore) BlindIndex(sn SerialNumber) BlindIndex {
	m := hmac.New(sha256.New, k.index)
	m.Write([]byte(domainSerial))
	m.Write([]byte(sn.v))
	var b BlindIndex
	m.Sum(b[:0])
	return b
}

// AccountIndex is HMAC-SHA256(K_index, "dasset/account/v1\x00" ‖ name): how
// the registry finds an account without holding its name.
func (k *Keystore) AccountIndex(name string) BlindIndex {
	m := hmac.New(sha256.New, k.index)
	m.Write([]byte(domainAccount))
	m.Write([]byte(name))
	var b BlindIndex
	m.Sum(b[:0])
	return b
}

// DummyVerifier is a fixed verifier that no serial number and hardware id
// produce (it is under its own domain): compare the verifier computed for an
// unknown serial number against it, so an unknown SN takes the same path and
// work as a wrong HWID.
func (k *Keystore) DummyVerifier() Verifier { return k.dummyVer }

// Seal encrypts plaintext under K_seal with XChaCha20-Poly1305, binding aad;
// the random 24-byte nonce is prefixed to the result.
func (k *Keystore) Seal(plaintext, aad []byte) []byte {
	ns := k.seal.NonceSize()
	out := make([]byte, ns, ns+len(plaintext)+k.seal.Overhead())
	if _, err := rand.Read(out); err != nil {
		panic("privacy: crypto/rand failed: " + err.Error()) // never returns an error since Go 1.24
	}
	return k.seal.Seal(out, out[:ns], plaintext, aad)
}

// Open decrypts what Seal produced with the same aad. A damaged value, another
// key or another aad gives an error matching ErrOpen.
func (k *Keystore) Open(sealed, aad []byte) ([]byte, error) {
	ns := k.seal.NonceSize()
	if len(sealed) < ns+k.seal.Overhead() {
		return nil, fmt.Errorf("privacy: %w: %d bytes is too short", ErrOpen, len(sealed))
	}
	pt, err := k.seal.Open(nil, sealed[:ns], sealed[ns:], aad)
	if err != nil {
		return nil, fmt.Errorf("privacy: %w: authentication failed", ErrOpen)
	}
	return pt, nil
}

// Pseudonym is HMAC-SHA256(K_day, idx) cut to 128 bits, K_day being the key
// of the UTC day of day. The day's key is made when absent, unless the day
// lies before the destruction horizon: then ErrKeyDestroyed.
func (k *Keystore) Pseudonym(day time.Time, idx BlindIndex) (Pseudonym, error) {
	key, err := k.dayKey(day.UTC().Format(dayLayout))
	if err != nil {
		return Pseudonym{}, err
	}
	return pseudonym(key, idx), nil
}

func pseudonym(key *[32]byte, idx BlindIndex) Pseudonym {
	m := hmac.New(sha256.New, key[:])
	m.Write(idx[:])
	var sum [32]byte
	m.Sum(sum[:0])
	var p Pseudonym
	copy(p[:], sum[:16])
	return p
}

// PseudonymsFor gives idx's pseudonym for every retained day, keyed by UTC
// day ("2006-01-02"): what a subject export searches the connection log for.
// With shared day keys it re-reads them first, so that it holds the days
// other gateways made and none that another destroyed.
func (k *Keystore) PseudonymsFor(ctx context.Context, idx BlindIndex) (map[string]Pseudonym, error) {
	if err := k.SyncDayKeys(ctx); err != nil {
		return nil, err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make(map[string]Pseudonym, len(k.dayKeys))
	for d, key := range k.dayKeys {
		out[d] = pseudonym(key, idx)
	}
	return out, nil
}

// Days lists the UTC days ("2006-01-02") whose pseudonym keys are retained,
// oldest first.
func (k *Keystore) Days() []string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	days := make([]string, 0, len(k.dayKeys))
	for d := range k.dayKeys {
		days = append(days, d)
	}
	slices.Sort(days)
	return days
}

// Horizon is the UTC day before which every pseudonym key is destroyed, or
// "" when none has been destroyed.
func (k *Keystore) Horizon() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.horizon
}

// listDays reads days/ (caller holds mu).
func (k *Keystore) listDays() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(k.dir, daysDir))
	if err != nil {
		return nil, fmt.Errorf("privacy: keystore: %w", err)
	}
	var days []string
	for _, e := range ents {
		d, ok := strings.CutSuffix(e.Name(), ".key")
		if !ok {
			continue
		}
		if _, err := time.Parse(dayLayout, d); err != nil {
			continue
		}
		if k.horizon != "" && d < k.horizon {
			continue
		}
		days = append(days, d)
	}
	slices.Sort(days)
	return days, nil
}

func (k *Keystore) dayPath(day string) string {
	return filepath.Join(k.dir, daysDir, day+".key")
}

// dayKey returns the key of day, making it when absent.
func (k *Keystore) dayKey(day string) (*[32]byte, error) {
	k.mu.RLock()
	key, ok := k.dayKeys[day]
	destroyed := k.horizon != "" && day < k.horizon
	shared := k.shared
	stale := shared != nil && time.Since(k.synced) >= k.refresh
	k.mu.RUnlock()
	if stale {
		k.refreshInBackground()
	}
	if destroyed {
		return nil, fmt.Errorf("privacy: day %s: %w", day, ErrKeyDestroyed)
	}
	if ok {
		return key, nil
	}
	if shared != nil {
		return k.sharedDayKey(shared, day)
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	if k.horizon != "" && day < k.horizon {
		return nil, fmt.Errorf("privacy: day %s: %w", day, ErrKeyDestroyed)
	}
	if key, ok := k.dayKeys[day]; ok {
		return key, nil
	}
	if err := createIfAbsent(filepath.Join(k.dir, daysDir), day+".key", func() ([]byte, error) { return newKey(false) }); err != nil {
		return nil, err
	}
	b, err := readKey(k.dayPath(day))
	if err != nil {
		return nil, err
	}
	key = new([32]byte)
	copy(key[:], b)
	clear(b)
	k.dayKeys[day] = key
	return key, nil
}

// DestroyKeysBefore destroys the pseudonym keys of the UTC days before day:
// it first records the new horizon (so a destroyed day is never made again),
// then overwrites each key file with zeros, syncs it and removes it; with
// shared day keys (ShareDayKeys) it then raises the database's horizon and
// deletes the database's keys before it, for every gateway of the fleet. It
// returns how many keys it destroyed. Pseudonyms of those days become
// unlinkable to their subjects, in backups of the database too (for shared
// day keys, see ShareDayKeys for what an old database backup still holds).
func (k *Keystore) DestroyKeysBefore(day time.Time) (int, error) {
	cut := day.UTC().Format(dayLayout)
	n, err := k.destroyFilesBefore(cut)
	if db := k.sharedDB(); db != nil {
		m, serr := k.destroySharedBefore(db, cut)
		n += m
		err = errors.Join(err, serr)
	}
	return n, err
}

// destroyFilesBefore records cut as the horizon and shreds the key files of
// the days before it.
func (k *Keystore) destroyFilesBefore(cut string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.raiseHorizonLocked(cut); err != nil {
		return 0, err
	}
	ents, err := os.ReadDir(filepath.Join(k.dir, daysDir))
	if err != nil {
		return 0, fmt.Errorf("privacy: keystore: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		d, ok := strings.CutSuffix(e.Name(), ".key")
		if !ok || d >= cut {
			continue
		}
		if key, ok := k.dayKeys[d]; ok {
			clear(key[:])
			delete(k.dayKeys, d)
		}
		if err := shred(filepath.Join(k.dir, daysDir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if err := syncDir(filepath.Join(k.dir, daysDir)); err != nil {
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

// shred overwrites a file with zeros, syncs it, and removes it.
func shred(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("privacy: destroy key: %w", err)
	}
	st, err := f.Stat()
	if err == nil {
		_, err = f.WriteAt(make([]byte, st.Size()), 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("privacy: destroy key %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("privacy: destroy key: %w", err)
	}
	return nil
}

func newKey(curve bool) ([]byte, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	if curve {
		clamp(&k)
	}
	return k[:], nil
}

// clamp makes k a Curve25519 private key as WireGuard expects.
func clamp(k *[32]byte) {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

func ensurePrivateDir(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("privacy: keystore: %w", err)
		}
		// MkdirAll is subject to the umask, which can only remove bits.
		return nil
	}
	if err != nil {
		return fmt.Errorf("privacy: keystore: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("privacy: keystore: %s is not a directory", dir)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("privacy: keystore: directory %s is accessible by group or others (mode %04o); fix with: chmod 700 %s",
			dir, st.Mode().Perm(), dir)
	}
	return nil
}

// readPrivateFile reads a regular file that only its owner may read.
func readPrivateFile(path string) ([]byte, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("privacy: keystore: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("privacy: keystore: %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("privacy: keystore: %s is readable by group or others (mode %04o); fix with: chmod 600 %s",
			path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("privacy: keystore: %w", err)
	}
	return b, nil
}

func readKey(path string) ([]byte, error) {
	b, err := readPrivateFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) != keyLen {
		return nil, fmt.Errorf("privacy: keystore: %s holds %d bytes, want %d", path, len(b), keyLen)
	}
	return b, nil
}

// createIfAbsent writes name in dir atomically unless it exists already.
func createIfAbsent(dir, name string, gen func() ([]byte, error)) error {
	if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("privacy: keystore: %w", err)
	}
	b, err := gen()
	if err != nil {
		return fmt.Errorf("privacy: keystore: make %s: %w", name, err)
	}
	defer clear(b)
	return writeAtomic(dir, name, b, true)
}

// writeAtomic writes data to dir/name (0600) so that a crash leaves the old
// file or the new one, with the directory synced; with noClobber an
// existing file wins.
func writeAtomic(dir, name string, data []byte, noClobber bool) error {
	path := filepath.Join(dir, name)
	var err error
	if noClobber {
		_, err = atomicfile.Create(path, data, 0o600)
	} else {
		err = atomicfile.Write(path, data, 0o600)
	}
	if err != nil {
		return fmt.Errorf("privacy: keystore: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("privacy: keystore: %w", err)
	}
	return nil
}

// removeTemps removes temporary files a crash left behind.
func removeTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("privacy: keystore: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) || atomicfile.IsTemp(e.Name()) {
			if err := shred(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
