package privacy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"
)

// SharedDayKeys is where the gateways of a fleet keep their pseudonym day
// keys: the registry, holding each key wrapped under K_kek (the keystores'
// day-key key-encryption key), and the horizon before which every day key
// is destroyed. pkg/store's DayKeys implements it; see there for the
// contract.
type SharedDayKeys interface {
	EnsureDayKey(ctx context.Context, day string, wrapped []byte) (inForce []byte, horizon string, err error)
	DayKeys(ctx context.Context) (horizon string, keys map[string][]byte, err error)
	DestroyDayKeysBefore(ctx context.Context, day string) (deleted int, horizon string, err error)
	RewrapDayKey(ctx context.Context, day string, old, rewrapped []byte) (bool, error)
}

// ErrDayKeyUnwrap is returned (wrapped) for a day key in the database that
// does not open with this keystore's K_kek: the keystore is not the
// fleet's (or the row was altered).
var ErrDayKeyUnwrap = errors.New("day key in the database does not open with this keystore's day-key KEK")

// Bounds of the database calls made for day keys by methods that have no
// context of their own: a background refresh or a destruction
// (dayKeyTimeout), and recording a day's first key (dayKeyEnsureTimeout, on
// the login path); after a failure, the calls that would repeat it fail at
// once for dayKeyRetry.
const (
	dayKeyTimeout       = 10 * time.Second
	dayKeyEnsureTimeout = 3 * time.Second
	dayKeyRetry         = time.Second
)

// domainDayKey is the associated data of a wrapped day key, with its day:
// a key moved to another day's row does not open.
const domainDayKey = "dasset/daykey/v1\x00"

// ShareDayKeys makes db the home of the keystore's day keys from now on (a
// fleet on one PostgreSQL registry): a day's key is made by the first
// gateway that needs it and read by the others, each wrapped under K_kek,
// which only the keystores hold (the fleet keys file carries it).
// Destruction raises the database's horizon and deletes the keys before
// it; every gateway re-reads the database at least every refresh (and
// before every PseudonymsFor), so a key destroyed by one gateway is
// dropped by all of them without a restart.
//
// It synchronises at once: the horizon in force is the later of the
// keystore's and the database's, and database keys before it (an older
// database backup restored) are deleted, so destruction is never undone;
// a database key that does not open with K_kek is an error. The key files
// of days/ are offered to the database first (importDayFiles) and are not
// used afterwards; they are shredded at their retention as before.
func (k *Keystore) ShareDayKeys(ctx context.Context, db SharedDayKeys, refresh time.Duration) error {
	if refresh <= 0 {
		return &FieldError{Field: "refresh", Reason: "must be positive"}
	}
	k.syncMu.Lock()
	defer k.syncMu.Unlock()
	// Read first (a database whose keys do not open with K_kek is refused
	// before this keystore writes to it), offer the key files, read again.
	for _, step := range []func(context.Context, SharedDayKeys) error{k.syncLocked, k.importDayFiles, k.syncLocked} {
		if err := step(ctx, db); err != nil {
			return err
		}
	}
	k.mu.Lock()
	k.shared, k.refresh = db, refresh
	k.mu.Unlock()
	return nil
}

// importDayFiles offers the day keys of days/ (those a gateway made before
// its day keys were shared: an upgrade, or a single gateway moving to
// PostgreSQL) to db, so that the connection-log rows written under them
// stay linkable for exports and erasures. A day the database has a key for
// already keeps that one.
func (k *Keystore) importDayFiles(ctx context.Context, db SharedDayKeys) error {
	k.mu.RLock()
	days, err := k.listDays()
	k.mu.RUnlock()
	if err != nil {
		return err
	}
	for _, d := range days {
		b, err := readKey(k.dayPath(d))
		if err != nil {
			return err
		}
		w := k.wrapDayKey(d, b)
		clear(b)
		if _, _, err := db.EnsureDayKey(ctx, d, w); err != nil {
			return fmt.Errorf("privacy: shared day keys: offering the key of %s: %w", d, err)
		}
	}
	return nil
}

// SyncDayKeys re-reads the shared day keys now (see ShareDayKeys); without
// shared day keys it does nothing.
func (k *Keystore) SyncDayKeys(ctx context.Context) error {
	k.syncMu.Lock()
	defer k.syncMu.Unlock()
	db := k.sharedDB()
	if db == nil {
		return nil
	}
	return k.syncLocked(ctx, db)
}

func (k *Keystore) sharedDB() SharedDayKeys {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.shared
}

// syncLocked (caller holds syncMu) reads the database's day keys and makes
// the cache exactly them.
func (k *Keystore) syncLocked(ctx context.Context, db SharedDayKeys) error {
	local := k.Horizon()
	horizon, wrapped, err := db.DayKeys(ctx)
	if err != nil {
		return fmt.Errorf("privacy: shared day keys: %w", err)
	}
	stale := local > horizon
	for d := range wrapped {
		stale = stale || d < local
	}
	if stale {
		// The database is behind this keystore's horizon (a backup of it
		// restored, or a destruction that failed half-way): destroy there
		// what was destroyed here.
		if _, horizon, err = db.DestroyDayKeysBefore(ctx, local); err != nil {
			return fmt.Errorf("privacy: shared day keys: destroying the days before %s again: %w", local, err)
		}
		for d := range wrapped {
			if d < horizon {
				delete(wrapped, d)
			}
		}
	}
	keys := make(map[string]*[32]byte, len(wrapped))
	clearKeys := func() {
		for _, key := range keys {
			clear(key[:])
		}
	}
	for d, w := range wrapped {
		key, prev, err := k.unwrapDayKeyAny(d, w)
		if err != nil {
			clearKeys()
			return errors.Join(err, k.keepHorizon(db, horizon))
		}
		keys[d] = key
		if prev {
			// A rotation: the key wrapped under the previous K_kek is
			// wrapped under the new one (if no other gateway did so first).
			if _, err := db.RewrapDayKey(ctx, d, w, k.wrapDayKey(d, key[:])); err != nil {
				clearKeys()
				return fmt.Errorf("privacy: shared day keys: rewrapping the key of %s under the new KEK: %w", d, err)
			}
		}
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.raiseHorizonLocked(horizon); err != nil {
		return err
	}
	// A key in use stays the same object: Pseudonym reads a key after
	// letting go of mu, so a key is cleared only when its day leaves the
	// cache (destroyed, or gone from the database), never when it is
	// read again unchanged.
	for d, key := range keys {
		if old, ok := k.dayKeys[d]; ok && subtle.ConstantTimeCompare(old[:], key[:]) == 1 {
			clear(key[:])
			keys[d] = old
		}
	}
	for d, key := range k.dayKeys {
		if keys[d] != key {
			clear(key[:])
		}
		delete(k.dayKeys, d)
	}
	for d, key := range keys {
		if k.horizon == "" || d >= k.horizon {
			k.dayKeys[d] = key
		} else {
			clear(key[:])
		}
	}
	k.synced = time.Now()
	return nil
}

// keepHorizon records the horizon of db, this keystore's registry already,
// when its keys cannot be opened (a KEK rotation this keystore has not
// taken yet): the keys cached for days before it are dropped, so a day
// another gateway destroyed meanwhile is not pseudonymised here until a
// restart. A database it does not share its day keys with yet (the first
// read of ShareDayKeys, perhaps another fleet's) is not trusted with that.
func (k *Keystore) keepHorizon(db SharedDayKeys, horizon string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.shared != db {
		return nil
	}
	return k.raiseHorizonLocked(horizon)
}

// raiseHorizonLocked records day as the horizon when it is later (caller
// holds mu).
func (k *Keystore) raiseHorizonLocked(day string) error {
	if day <= k.horizon {
		return nil
	}
	if err := writeAtomic(k.dir, horizonFile, []byte(day+"\n"), false); err != nil {
		return err
	}
	k.horizon = day
	for d, key := range k.dayKeys {
		if d < day {
			clear(key[:])
			delete(k.dayKeys, d)
		}
	}
	return nil
}

// sharedDayKey returns day's key from the database, recording a new one
// when the day has none (the first gateway to need it wins). It runs on the
// login path (the connection log pseudonymises as it records), once per day
// and gateway: one call at a time, each bounded by dayKeyEnsureTimeout, and
// for dayKeyRetry after a failure the others fail at once instead of
// waiting for the database again.
func (k *Keystore) sharedDayKey(db SharedDayKeys, day string) (*[32]byte, error) {
	k.ensureMu.Lock()
	defer k.ensureMu.Unlock()
	k.mu.RLock()
	key, ok := k.dayKeys[day]
	destroyed := k.horizon != "" && day < k.horizon
	failed, failedAt := k.ensureErr, k.ensureFailed
	k.mu.RUnlock()
	switch {
	case destroyed:
		return nil, fmt.Errorf("privacy: day %s: %w", day, ErrKeyDestroyed)
	case ok:
		return key, nil
	case failed != nil && time.Since(failedAt) < dayKeyRetry:
		return nil, failed
	}

	fresh, err := newKey(false)
	if err != nil {
		return nil, fmt.Errorf("privacy: day key: %w", err)
	}
	w := k.wrapDayKey(day, fresh)
	clear(fresh)
	ctx, cancel := context.WithTimeout(context.Background(), dayKeyEnsureTimeout)
	defer cancel()
	inForce, horizon, err := db.EnsureDayKey(ctx, day, w)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.ensureErr, k.ensureFailed = fmt.Errorf("privacy: shared day key of %s: %w", day, err), time.Now()
		return nil, k.ensureErr
	}
	k.ensureErr = nil
	if err := k.raiseHorizonLocked(horizon); err != nil {
		return nil, err
	}
	if inForce == nil || (k.horizon != "" && day < k.horizon) {
		return nil, fmt.Errorf("privacy: day %s: %w", day, ErrKeyDestroyed)
	}
	key, err = k.unwrapDayKey(day, inForce)
	if err != nil {
		return nil, err
	}
	k.dayKeys[day] = key
	return key, nil
}

// refreshInBackground re-reads the shared day keys in a goroutine of its
// own (one at a time, bounded by dayKeyTimeout): the day keys in use stay
// in use meanwhile, so no login waits for it. After a failure the next
// attempt comes dayKeyRetry later at the earliest.
func (k *Keystore) refreshInBackground() {
	if !k.refreshing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer k.refreshing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), dayKeyTimeout)
		defer cancel()
		if err := k.SyncDayKeys(ctx); err != nil {
			k.mu.Lock()
			k.synced = time.Now().Add(dayKeyRetry - k.refresh)
			k.mu.Unlock()
		}
	}()
}

func (k *Keystore) wrapDayKey(day string, key []byte) []byte {
	ns := k.kek.NonceSize()
	out := make([]byte, ns, ns+len(key)+k.kek.Overhead())
	if _, err := rand.Read(out); err != nil {
		panic("privacy: crypto/rand failed: " + err.Error())
	}
	return k.kek.Seal(out, out[:ns], key, []byte(domainDayKey+day))
}

func (k *Keystore) unwrapDayKey(day string, wrapped []byte) (*[32]byte, error) {
	key, _, err := k.unwrapDayKeyAny(day, wrapped)
	return key, err
}

// unwrapDayKeyAny opens a wrapped day key with K_kek or, during a rotation,
// the previous K_kek (then prev is true: the key is to be rewrapped).
func (k *Keystore) unwrapDayKeyAny(day string, wrapped []byte) (key *[32]byte, prev bool, err error) {
	ns := k.kek.NonceSize()
	if len(wrapped) != ns+keyLen+k.kek.Overhead() {
		return nil, false, fmt.Errorf("privacy: day %s: %w (%d bytes)", day, ErrDayKeyUnwrap, len(wrapped))
	}
	aad := []byte(domainDayKey + day)
	b, err := k.kek.Open(nil, wrapped[:ns], wrapped[ns:], aad)
	if err != nil && k.kekPrev != nil {
		b, err = k.kekPrev.Open(nil, wrapped[:ns], wrapped[ns:], aad)
		prev = err == nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("privacy: day %s: %w: is keystore_dir this fleet's keystore (restored from or updated with its current fleet keys file)?", day, ErrDayKeyUnwrap)
	}
	key = new([32]byte)
	copy(key[:], b)
	clear(b)
	return key, prev, nil
}

// destroySharedBefore destroys the database's day keys before cut.
func (k *Keystore) destroySharedBefore(db SharedDayKeys, cut string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dayKeyTimeout)
	defer cancel()
	n, horizon, err := db.DestroyDayKeysBefore(ctx, cut)
	if err != nil {
		return 0, fmt.Errorf("privacy: destroying the shared day keys before %s: %w", cut, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return n, k.raiseHorizonLocked(horizon)
}
