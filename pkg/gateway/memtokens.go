package gateway

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// memTokens are device tokens kept in memory only: those of re-logins that
// changed nothing in the registry (same pinned key, address already
// allocated, last login already today), so such a login writes nothing, and
// an admitted device keeps working while the database cannot be written
// (full or read-only disk). One token per device: a new one replaces the
// last, so the table is bounded by the number of admitted devices. They are
// lost at restart, when the agent logs in again (Unauthenticated on Sync).
// Each holds the key pinned when it was issued: a key reset or a new key
// pinned on another gateway of a fleet (which cannot drop this gateway's
// tokens) ends it.
type memTokens struct {
	mu       sync.Mutex
	byHash   map[[32]byte]memToken
	byDevice map[int64][32]byte
}

type memToken struct {
	deviceID int64
	key      store.Key // the device's pinned key at issue
	expires  time.Time
}

func newMemTokens() *memTokens {
	return &memTokens{byHash: map[[32]byte]memToken{}, byDevice: map[int64][32]byte{}}
}

func (m *memTokens) put(deviceID int64, key store.Key, hash [32]byte, expires time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.byDevice[deviceID]; ok {
		delete(m.byHash, old)
	}
	m.byDevice[deviceID] = hash
	m.byHash[hash] = memToken{deviceID: deviceID, key: key, expires: expires}
}

// lookup returns the device of a live token and the key it was issued for.
func (m *memTokens) lookup(hash [32]byte, now time.Time) (int64, store.Key, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.byHash[hash]
	if !ok {
		return 0, store.Key{}, false
	}
	if !now.Before(t.expires) {
		delete(m.byHash, hash)
		delete(m.byDevice, t.deviceID)
		return 0, store.Key{}, false
	}
	return t.deviceID, t.key, true
}

// drop forgets the device's token (logout, revocation, key reset, erasure).
func (m *memTokens) drop(deviceID int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h, ok := m.byDevice[deviceID]; ok {
		delete(m.byHash, h)
		delete(m.byDevice, deviceID)
	}
}

// isStorageFault tells a store error that says nothing about the device
// (the registry could not be written: full or read-only disk, I/O error)
// from the store's answers about it.
func isStorageFault(err error) bool {
	for _, known := range []error{store.ErrKeyInUse, store.ErrKeyPinned, store.ErrExhausted, store.ErrRevoked,
		store.ErrNotFound, store.ErrConflict, store.ErrErased, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, known) {
			return false
		}
	}
	return true
}
