// Package store is the gateway's registry: the Store interface, the records it
// holds, and (in sqlite.go) the embedded SQLite implementation. Any backend must
// pass the conformance suite in pkg/store/storetest.
//
// Records hold personal data only in the forms the privacy policy allows for
// the registry: blind indexes, sealed values, verifiers, pseudonyms,
// truncated prefixes. Nothing here ever takes a raw SN, HWID or IP address.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// Errors every backend returns (wrapped, match with errors.Is).
var (
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("conflict")   // e.g. enrolling an SN again with another HWID
	ErrKeyInUse  = errors.New("key in use") // a WireGuard key already owned by another peer
	ErrKeyPinned = errors.New("key pinned") // device has another key pinned and ReplaceKey was false
	ErrExhausted = errors.New("exhausted")  // no free address offset in the pool
	ErrErased    = errors.New("erased")     // enrolment of an SN on the erasure ledger without AfterErasure
	ErrRevoked   = errors.New("revoked")
	ErrLimit     = errors.New("limit reached") // e.g. the account already has its maximum of open sessions
)

// Key is a WireGuard public key.
type Key [32]byte

// KeyOwner says what kind of peer owns a WireGuard key.
type KeyOwner string

// Key owners.
const (
	OwnerGateway KeyOwner = "gateway"
	OwnerDevice  KeyOwner = "device"
	OwnerClient  KeyOwner = "client"
)

// Device is an enrolled device.
type Device struct {
	ID           int64
	Index        privacy.BlindIndex
	SealedSerial []byte // AEAD(K_seal, SN), AAD = Index
	Verifier     privacy.Verifier
	Key          Key // pinned WireGuard key; valid when KeyPinned
	KeyPinned    bool
	Offset       uint32 // address offset in the device pool; 0 = none yet
	LastLoginDay string // UTC "2006-01-02"; "" = never
	Revoked      bool
	EnrolledAt   time.Time
	// Home is the instance id of the gateway the device last logged in to
	// (Admit, SetHome): the gateway that keeps it as a WireGuard peer. ""
	// = none yet.
	Home string
}

// Enrollment is one device to add to the allow-list.
type Enrollment struct {
	Index        privacy.BlindIndex
	SealedSerial []byte
	Verifier     privacy.Verifier
}

// EnrollResult counts an enrolment batch.
type EnrollResult struct {
	Enrolled  int // new devices
	Unchanged int // already enrolled with the same verifier
}

// Admission is what one successful device login writes, all or nothing (a
// backend may commit several admissions in one transaction, each failing
// or succeeding on its own).
type Admission struct {
	DeviceID int64
	Key      Key
	// ReplaceKey allows replacing a different pinned key (rekey: allow, or
	// after reset). When false and another key is pinned: ErrKeyPinned.
	ReplaceKey bool
	// Offsets [First, Last] of the device pool, for a device without one yet.
	First, Last uint32
	Day         string // UTC day of this login
	// TokenHash is SHA-256 of the new device token; it replaces the device's
	// previous tokens.
	TokenHash    [32]byte
	TokenExpires time.Time
	// Gateway is the admitting gateway's instance id: it becomes the
	// device's Home, in the admission's transaction. Required, validated
	// like a gateway's instance id (1 to 64 bytes).
	Gateway string
}

// Account is a client account.
type Account struct {
	ID           int64
	NameIndex    privacy.BlindIndex // HMAC(K_index, "account" ‖ name)
	SealedName   []byte
	PasswordHash string // argon2id, PHC string form
	CreatedAt    time.Time
}

// Session is a remote-control session of a client to a device.
type Session struct {
	ID           string
	AccountID    int64
	DeviceID     int64
	ClientKey    Key
	ClientOffset uint32 // offset in the client pool
	OpenedAt     time.Time
	ExpiresAt    time.Time
	ClosedAt     time.Time // zero while open
	// MaxPerAccount, when positive, is the most open sessions the account
	// may hold including this one. OpenSession checks it in the same
	// transaction as the insert, so concurrent calls (from several gateways
	// on one database too) never exceed it (ErrLimit). It is not stored.
	MaxPerAccount int
}

// ConnLogEntry is one row of the minimal connection log.
type ConnLogEntry struct {
	Time         time.Time // truncated to the minute
	Event        string    // login, logout, session_open, session_close, ...
	Outcome      string    // from the one outcome list (pkg/gateway)
	Pseudonym    privacy.Pseudonym
	SourcePrefix string // truncated source IP prefix ("198.51.100.0/24"), or ""
}

// Gateway is one gateway of the fleet (the only one on a single SQLite
// gateway), as it last reported itself.
type Gateway struct {
	InstanceID  string // stable across restarts
	PublicKey   Key    // its WireGuard key
	Endpoint    string // host:port devices dial for WireGuard; "" = the address their gRPC connection reached
	StartedAt   time.Time
	HeartbeatAt time.Time
}

// Table names, used by Prune and in erasure receipts.
const (
	TableDevices      = "devices"
	TableDeviceTokens = "device_tokens"
	TableAccounts     = "accounts"
	TableAccessTokens = "access_tokens"
	TableBindings     = "bindings"
	TableBindingCodes = "binding_codes"
	TableSessions     = "sessions"
	TableConnLog      = "connection_log"
	TableAuthFailures = "auth_failures"
	TableAudit        = "audit_log"
)

// Erasure kinds.
const (
	ErasedDevice  = "device"
	ErasedAccount = "account"
)

// Erasure is one erased subject as the database keeps it: no blind index in
// the clear, only a keyed tombstone (its identity) and the index sealed
// under the keystore (see privacy.Keystore.Tombstone).
type Erasure struct {
	Tombstone   [32]byte
	Kind        string // ErasedDevice or ErasedAccount
	SealedIndex []byte
	ErasedAt    time.Time
}

// CheckErasures validates the Erasures of a RecordErasures call, as every
// backend does before writing any.
func CheckErasures(es []Erasure) error {
	for i, e := range es {
		if err := checkErasure(e); err != nil {
			return fmt.Errorf("erasure %d: %w", i, err)
		}
	}
	return nil
}

func checkErasure(e Erasure) error {
	switch {
	case e.Tombstone == [32]byte{}:
		return invalid("tombstone", "must not be zero")
	case e.Kind != ErasedDevice && e.Kind != ErasedAccount:
		return invalid("kind", fmt.Sprintf("must be %q or %q, got %q", ErasedDevice, ErasedAccount, e.Kind))
	case len(e.SealedIndex) == 0:
		return invalid("sealed_index", "must not be empty")
	}
	return checkTime("erased_at", e.ErasedAt)
}

// ReceiptWAL is the receipt entry (value 1) saying that the store's log was
// checkpointed after the deletion (Checkpoint), so no deleted row is left
// in a write-ahead log file.
const ReceiptWAL = "wal_checkpointed"

// Store is the registry. Every method is safe for concurrent use; writes
// go through one writer, reads do not wait for it.
type Store interface {
	// Devices.
	EnrollDevices(ctx context.Context, batch []Enrollment) (EnrollResult, error) // all or nothing
	DeviceByIndex(ctx context.Context, idx privacy.BlindIndex) (Device, error)
	DeviceByID(ctx context.Context, id int64) (Device, error)
	DeviceByKey(ctx context.Context, key Key) (Device, error)
	ListDevices(ctx context.Context) ([]Device, error)
	// DevicesAfter is one page of devices: at most limit (> 0) with an id
	// above afterID, by id.
	DevicesAfter(ctx context.Context, afterID int64, limit int) ([]Device, error)
	// CountDevices counts the enrolled devices and, of them, the revoked.
	CountDevices(ctx context.Context) (total, revoked int, err error)
	// AdmittedDevices are the devices with a pinned key and an address that
	// are not revoked: the peers to re-add on start.
	AdmittedDevices(ctx context.Context) ([]Device, error)
	Admit(ctx context.Context, a Admission) (Device, error)
	RevokeDevice(ctx context.Context, id int64) error   // sets Revoked, unpins key, closes its open sessions, deletes tokens
	ResetDeviceKey(ctx context.Context, id int64) error // unpins key
	DeviceByToken(ctx context.Context, hash [32]byte, now time.Time) (Device, error)
	DeleteDeviceTokens(ctx context.Context, deviceID int64) error

	// Reserved keys (the gateway's own key).
	ReserveKey(ctx context.Context, key Key, owner KeyOwner) error // idempotent for the same owner

	// Auth failures for lockout, by blind index (of unknown SNs too).
	RecordAuthFailure(ctx context.Context, idx privacy.BlindIndex, at time.Time) error
	CountAuthFailures(ctx context.Context, idx privacy.BlindIndex, since time.Time) (int, error)
	ClearAuthFailures(ctx context.Context, idx privacy.BlindIndex) error

	// Accounts and tokens.
	CreateAccount(ctx context.Context, a Account) (Account, error) // ErrConflict if the name exists
	AccountByName(ctx context.Context, nameIndex privacy.BlindIndex) (Account, error)
	AccountByID(ctx context.Context, id int64) (Account, error)
	SetPasswordHash(ctx context.Context, accountID int64, hash string) error
	DeleteAccount(ctx context.Context, id int64) (map[string]int64, error) // receipt: rows per table
	CreateAccessToken(ctx context.Context, hash [32]byte, accountID int64, expires time.Time) error
	AccountByToken(ctx context.Context, hash [32]byte, now time.Time) (Account, error)
	DeleteAccessTokens(ctx context.Context, accountID int64) error

	// Bindings.
	CreateBindingCode(ctx context.Context, hash [32]byte, deviceID int64, expires time.Time) error
	// RedeemBindingCode deletes the code and binds its device to the account,
	// in one transaction; ErrNotFound for unknown, used or expired codes.
	RedeemBindingCode(ctx context.Context, hash [32]byte, accountID int64, now time.Time) (Device, error)
	IsBound(ctx context.Context, accountID, deviceID int64) (bool, error)
	BoundDevices(ctx context.Context, accountID int64) ([]Device, error)
	// TakeBindingNotices returns, per device bound to the account, when
	// another account bound it since the last call, and clears them (a
	// redeemed code marks the other owners' bindings in its transaction).
	TakeBindingNotices(ctx context.Context, accountID int64) (map[int64]time.Time, error)
	Unbind(ctx context.Context, accountID, deviceID int64) (map[string]int64, error)

	// Sessions. The client key is reserved in the same transaction (ErrKeyInUse);
	// the client offset is allocated from [first, last] (ErrExhausted); the
	// account's open sessions are counted against s.MaxPerAccount in that
	// transaction too (ErrLimit), and so is the binding of the device to
	// the account (ErrNotFound without one) and the device's standing
	// (ErrRevoked).
	OpenSession(ctx context.Context, s Session, first, last uint32) (Session, error)
	CloseSession(ctx context.Context, id string, at time.Time) (Session, error) // releases key and offset
	SessionByID(ctx context.Context, id string) (Session, error)
	OpenSessions(ctx context.Context) ([]Session, error)

	// Connection log.
	AppendConnLog(ctx context.Context, entries []ConnLogEntry) error
	ConnLogByPseudonyms(ctx context.Context, ps []privacy.Pseudonym) ([]ConnLogEntry, error)

	// Retention. Prune deletes at most limit rows of table older than before
	// in one transaction and returns how many it deleted; a backend that
	// partitions a table by time may instead drop whole partitions lying
	// before before, and then reports their rows (which may exceed limit).
	// OldestRecord is the time of the oldest prunable row (zero when empty).
	Prune(ctx context.Context, table string, before time.Time, limit int) (int, error)
	OldestRecord(ctx context.Context, table string) (time.Time, error)

	// Subject rights. EraseDevice/EraseAccount delete everything about the
	// subject (with the connection-log rows under its pseudonyms) in one
	// transaction and return the rows removed per table.
	SessionsOf(ctx context.Context, deviceID, accountID int64) ([]Session, error)
	BindingCount(ctx context.Context, deviceID int64) (int, error)
	EraseDevice(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error)
	EraseAccount(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error)

	// Checkpoint leaves no copy of deleted rows in a log file beside the
	// database: SQLite copies its write-ahead log into the database and
	// truncates it (wal_checkpoint(TRUNCATE); with secure_delete on, the
	// deleted cells are already zeroed in the database pages). Every
	// erasure, account deletion, unbind and prune run ends with it. A backend
	// without such a file (PostgreSQL: its WAL is the server's, recycled by
	// the server and never part of a logical backup) makes it a no-op.
	Checkpoint(ctx context.Context) error

	// UpgradeVerifiers rewrites every stored HWID verifier v as upgrade(v),
	// in one transaction, when the database still holds version-1 verifiers
	// (meta "verifier_version" is "1"), and records version 2. It returns
	// how many rows it rewrote (0 when there was nothing to upgrade).
	UpgradeVerifiers(ctx context.Context, upgrade func(privacy.Verifier) privacy.Verifier) (int, error)

	// Erasures: the erasure ledger's copy shared by the gateways of a fleet
	// (each also keeps its own, with its keys). RecordErasures inserts the
	// rows whose tombstone is new (existing ones stay as they are);
	// Erasures lists them all, by tombstone.
	RecordErasures(ctx context.Context, es []Erasure) error
	Erasures(ctx context.Context) ([]Erasure, error)

	// Gateways. Heartbeat records g (insert or replace by InstanceID);
	// Gateways lists every gateway by instance id.
	Heartbeat(ctx context.Context, g Gateway) error
	Gateways(ctx context.Context) ([]Gateway, error)

	// Homes (fleet.go). SetHome moves an admitted device's home to gateway
	// (a re-login elsewhere that has nothing else to write); a no-op when
	// it is home there already. ErrNotFound for an unknown device,
	// ErrRevoked for a revoked one.
	SetHome(ctx context.Context, deviceID int64, gateway string) error
	// HomePeers is the desired data-plane state of one gateway: every
	// admitted (key pinned, address offset set), unrevoked device whose
	// Home is gateway, by id, and every open session whose device's Home
	// is gateway, oldest first; read in one snapshot.
	HomePeers(ctx context.Context, gateway string) (HomePeers, error)
	// GatewayLoads counts, per gateway instance id, what HomePeers of that
	// gateway holds: its admitted devices and their open sessions.
	// Gateways with neither are absent.
	GatewayLoads(ctx context.Context) (map[string]GatewayLoad, error)

	// Changes delivers what changed in the registry, from every gateway on
	// the database (PostgreSQL: LISTEN/NOTIFY, sent inside the writing
	// transaction, so it arrives only after commit; SQLite: in-process,
	// after commit), from the moment it returns. The channel is closed when
	// ctx ends or the store is closed. A consumer that falls behind
	// (ChangeBuffer) or a listener that had to reconnect gets one
	// ChangeResync (then re-reads everything) instead of a blocked writer
	// or a silent gap. Writes that emit: Admit when it pins a key, takes an
	// address or moves the home, SetHome when it moves it, RevokeDevice,
	// ResetDeviceKey, EraseDevice (ChangeDevice); OpenSession, and each
	// session closed by CloseSession, Unbind, DeleteAccount, EraseDevice or
	// EraseAccount (ChangeSession). Nothing is emitted for a write that
	// fails or changes nothing.
	Changes(ctx context.Context) (<-chan Change, error)

	// Metadata of the store itself (e.g. the keystore id it was written with).
	Meta(ctx context.Context, key string) (string, error)
	SetMeta(ctx context.Context, key, value string) error
	// ClaimMeta sets key to value unless it is set already, in one
	// statement, and returns the value in force: of several gateways
	// starting at once on one database, one claims it and the others see
	// its value.
	ClaimMeta(ctx context.Context, key, value string) (string, error)
	Ping(ctx context.Context) error

	// The fleet's pseudonym day keys, wrapped (daykeys.go).
	DayKeys

	Close() error
}

// CheckSessionBinding reads the result of OpenSession's in-transaction
// query of the device's revoked flag through the account's binding (every
// backend): no row is ErrNotFound (the device is unknown or not bound to
// the account), a revoked device ErrRevoked.
func CheckSessionBinding(row interface{ Scan(...any) error }, sess Session) error {
	var revoked bool
	err := row.Scan(&revoked)
	switch {
	case errors.Is(err, sql.ErrNoRows): // pgx.ErrNoRows is one too
		return fmt.Errorf("binding of device %d to account %d: %w", sess.DeviceID, sess.AccountID, ErrNotFound)
	case err != nil:
		return err
	case revoked:
		return fmt.Errorf("device %d: %w", sess.DeviceID, ErrRevoked)
	}
	return nil
}
