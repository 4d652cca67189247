package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/netip"
	"sort"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/identity"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
)

// SubjectStore is what subject rights (export, erasure) need of the store.
type SubjectStore interface {
	SessionsOf(ctx context.Context, deviceID, accountID int64) ([]store.Session, error)
	BindingCount(ctx context.Context, deviceID int64) (int, error)
	BoundDevices(ctx context.Context, accountID int64) ([]store.Device, error)
	AccountByName(ctx context.Context, nameIndex privacy.BlindIndex) (store.Account, error)
	ConnLogByPseudonyms(ctx context.Context, ps []privacy.Pseudonym) ([]store.ConnLogEntry, error)
	EraseDevice(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error)
	EraseAccount(ctx context.Context, id int64, pseudonyms []privacy.Pseudonym) (map[string]int64, error)
	Checkpoint(ctx context.Context) error
	RecordErasures(ctx context.Context, es []store.Erasure) error
	Erasures(ctx context.Context) ([]store.Erasure, error)
}

// checkpoint ends an erasure: the store's write-ahead log is folded into
// the database and truncated, so no copy of the deleted rows stays in a log
// file. The receipt says whether it was (store.ReceiptWAL = 1); when it
// failed (the rows are deleted all the same) the next prune run retries.
func (g *Gateway) checkpoint(ctx context.Context, st interface{ Checkpoint(context.Context) error }, receipt map[string]int64) {
	receipt[store.ReceiptWAL] = 0
	if err := st.Checkpoint(ctx); err != nil {
		g.log.Warn("checkpointing the store after an erasure failed; the next prune run retries", "err", err)
		return
	}
	receipt[store.ReceiptWAL] = 1
}

// PseudonymKeys lists a subject's pseudonym for every retained day, and
// names erasures in the database's copy of the ledger.
type PseudonymKeys interface {
	PseudonymsFor(ctx context.Context, idx privacy.BlindIndex) (map[string]privacy.Pseudonym, error)
	Tombstone(kind string, idx privacy.BlindIndex) [32]byte
}

// ErasureLedger remembers erased devices and accounts outside the
// database.
type ErasureLedger interface {
	Contains(privacy.BlindIndex) bool
	Remove(privacy.BlindIndex) error
	AddDevice(idx privacy.BlindIndex, at time.Time) error
	Devices() []privacy.ErasedAccount
	AddAccount(idx privacy.BlindIndex, at time.Time) error
	Accounts() []privacy.ErasedAccount
	// Merge adds erasures learnt elsewhere with one write, returning how
	// many were new.
	Merge(devices, accounts []privacy.ErasedAccount) (added int, err error)
}

// Subject names a data subject: a device by serial number, or an account.
type Subject struct {
	Serial  privacy.SerialNumber
	Account string
}

// SubjectIndex is the blind index a subject is audited under.
func (g *Gateway) SubjectIndex(s Subject) privacy.BlindIndex {
	if !s.Serial.IsZero() {
		return g.keys.BlindIndex(s.Serial)
	}
	if g.sess.keys != nil {
		return g.sess.keys.AccountIndex(s.Account)
	}
	return privacy.BlindIndex{}
}

func (g *Gateway) pseudonymList(ctx context.Context, idx privacy.BlindIndex) ([]privacy.Pseudonym, error) {
	m, err := g.subj.keys.PseudonymsFor(ctx, idx)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "reading the pseudonym day keys failed")
	}
	out := make([]privacy.Pseudonym, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	return out, nil
}

type exportSession struct {
	ID        string    `json:"id"`
	OpenedAt  time.Time `json:"opened_at"`
	ExpiresAt time.Time `json:"expires_at"`
	ClosedAt  time.Time `json:"closed_at,omitzero"`
	ClientKey string    `json:"client_public_key"`
}

type exportConnLog struct {
	Time         time.Time `json:"time"`
	Event        string    `json:"event"`
	Outcome      string    `json:"outcome"`
	Pseudonym    string    `json:"pseudonym"`
	SourcePrefix string    `json:"source_prefix,omitempty"`
}

type exportDevice struct {
	SerialNumber string    `json:"serial_number"`
	Addresses    []string  `json:"addresses"`
	PublicKey    string    `json:"public_key,omitempty"`
	LastLoginDay string    `json:"last_login_day,omitempty"`
	Revoked      bool      `json:"revoked"`
	EnrolledAt   time.Time `json:"enrolled_at"`
}

type export struct {
	Kind          string          `json:"kind"`
	ExportedAt    time.Time       `json:"exported_at"`
	Device        *exportDevice   `json:"device,omitempty"`
	BoundAccounts *int            `json:"bound_accounts,omitempty"`
	Account       *exportAccount  `json:"account,omitempty"`
	Devices       []exportDevice  `json:"devices,omitempty"`
	Sessions      []exportSession `json:"sessions"`
	ConnectionLog []exportConnLog `json:"connection_log"`
}

type exportAccount struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

func (g *Gateway) exportDevice(d store.Device) (exportDevice, error) {
	sn, err := g.openSerial(d)
	if err != nil {
		return exportDevice{}, err
	}
	e := exportDevice{SerialNumber: sn.Reveal(), LastLoginDay: d.LastLoginDay, Revoked: d.Revoked, EnrolledAt: d.EnrolledAt, Addresses: []string{}}
	if d.Offset != 0 {
		ps, _ := g.devicePrefixes(d.Offset)
		for _, p := range ps {
			e.Addresses = append(e.Addresses, p.String())
		}
	}
	if d.KeyPinned {
		e.PublicKey = base64.StdEncoding.EncodeToString(d.Key[:])
	}
	return e, nil
}

// Export returns every stored row about one subject, as JSON, and nothing
// about anyone else (a device's export says how many accounts it is bound
// to, not which).
func (g *Gateway) Export(ctx context.Context, s Subject) ([]byte, error) {
	if g.subj == nil {
		return nil, newErr(ErrUnavailable, nil, "subject rights are not configured")
	}
	if s.Serial.IsZero() {
		a, err := g.accountByName(ctx, s.Account)
		if err != nil {
			return nil, err
		}
		return g.ExportAccount(ctx, a)
	}
	d, err := g.deviceBySerial(ctx, s.Serial)
	if err != nil {
		return nil, err
	}
	ed, err := g.exportDevice(d)
	if err != nil {
		return nil, err
	}
	n, err := g.subj.st.BindingCount(ctx, d.ID)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "reading bindings failed")
	}
	out := export{Kind: "device", ExportedAt: g.cfg.Now().UTC(), Device: &ed, BoundAccounts: &n, Sessions: []exportSession{}, ConnectionLog: []exportConnLog{}}
	return g.exportRest(ctx, out, d.Index, d.ID, 0)
}

// ExportAccount returns every stored row about an account, as JSON: the
// account, its bound devices, its sessions and the connection-log rows
// under its pseudonyms (what ClientService.ExportMyData serves its owner).
func (g *Gateway) ExportAccount(ctx context.Context, a store.Account) ([]byte, error) {
	if g.subj == nil {
		return nil, newErr(ErrUnavailable, nil, "subject rights are not configured")
	}
	out := export{ExportedAt: g.cfg.Now().UTC(), Sessions: []exportSession{}, ConnectionLog: []exportConnLog{}}
	{
		name, err := g.keys.Open(a.SealedName, a.NameIndex[:])
		if err != nil {
			return nil, newErr(ErrUnavailable, err, "opening a sealed account name failed")
		}
		out.Kind, out.Account = "account", &exportAccount{Name: string(name), CreatedAt: a.CreatedAt}
		devs, err := g.subj.st.BoundDevices(ctx, a.ID)
		if err != nil {
			return nil, newErr(ErrUnavailable, err, "reading bound devices failed")
		}
		for _, d := range devs {
			ed, err := g.exportDevice(d)
			if err != nil {
				return nil, err
			}
			out.Devices = append(out.Devices, ed)
		}
	}
	return g.exportRest(ctx, out, a.NameIndex, 0, a.ID)
}

// exportRest adds the subject's sessions and connection-log rows to out and
// encodes it.
func (g *Gateway) exportRest(ctx context.Context, out export, idx privacy.BlindIndex, deviceID, accountID int64) ([]byte, error) {
	sess, err := g.subj.st.SessionsOf(ctx, deviceID, accountID)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "reading sessions failed")
	}
	for _, ss := range sess {
		out.Sessions = append(out.Sessions, exportSession{ID: ss.ID, OpenedAt: ss.OpenedAt, ExpiresAt: ss.ExpiresAt, ClosedAt: ss.ClosedAt,
			ClientKey: base64.StdEncoding.EncodeToString(ss.ClientKey[:])})
	}
	ps, err := g.pseudonymList(ctx, idx)
	if err != nil {
		return nil, err
	}
	rows, err := g.subj.st.ConnLogByPseudonyms(ctx, ps)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "reading the connection log failed")
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Time.Before(rows[j].Time) })
	for _, r := range rows {
		out.ConnectionLog = append(out.ConnectionLog, exportConnLog{Time: r.Time, Event: r.Event, Outcome: r.Outcome, Pseudonym: r.Pseudonym.String(), SourcePrefix: r.SourcePrefix})
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "encoding export failed")
	}
	return b, nil
}

func (g *Gateway) accountByName(ctx context.Context, name string) (store.Account, error) {
	if err := checkAccountName(name); err != nil {
		return store.Account{}, err
	}
	if g.sess.keys == nil {
		return store.Account{}, newErr(ErrUnavailable, nil, "accounts are not configured")
	}
	a, err := g.subj.st.AccountByName(ctx, g.sess.keys.AccountIndex(name))
	if errors.Is(err, store.ErrNotFound) {
		return store.Account{}, newErr(ErrNotFound, err, "account: no such account")
	}
	if err != nil {
		return store.Account{}, newErr(ErrUnavailable, err, "looking up account failed")
	}
	return a, nil
}

// Erase deletes everything about a subject and takes it off the network at
// once: open sessions close, peers go, tokens are revoked. An erased device
// goes on the erasure ledger so a restored older database cannot bring it
// back. Returns the receipt: rows removed per table.
func (g *Gateway) Erase(ctx context.Context, s Subject) (map[string]int64, error) {
	if g.subj == nil {
		return nil, newErr(ErrUnavailable, nil, "subject rights are not configured")
	}
	if !s.Serial.IsZero() {
		d, err := g.deviceBySerial(ctx, s.Serial)
		if err != nil {
			return nil, err
		}
		return g.eraseDevice(ctx, d)
	}
	a, err := g.accountByName(ctx, s.Account)
	if err != nil {
		return nil, err
	}
	return g.eraseAccount(ctx, a, "account erased")
}

// CancelAccount is a user's own cancellation of their account, confirmed
// with its password: the same erasure as an operator's (eraseAccount).
func (g *Gateway) CancelAccount(ctx context.Context, a store.Account, password []byte) (map[string]int64, error) {
	if g.subj == nil {
		return nil, newErr(ErrUnavailable, nil, "subject rights are not configured")
	}
	if g.pw != nil {
		// Throttled by (account, source) and run in the password pool.
		// Only the token's holder gets here, so the pair is (account, any source).
		if err := g.pw.VerifyPassword(ctx, a, password, netip.Addr{}); err != nil {
			var te *identity.ThrottledError
			switch {
			case errors.Is(err, identity.ErrUnauthenticated):
				return nil, newErr(ErrPermission, nil, "password: does not match the account's password; nothing was deleted")
			case errors.As(err, &te):
				return nil, &Error{Kind: ErrPermission, Msg: "password: does not match the account's password, or too many attempts; nothing was deleted", Cause: err, RetryAfter: te.RetryAfter}
			case errors.Is(err, identity.ErrBusy):
				return nil, busy(err, "password checks")
			}
			return nil, newErr(ErrUnavailable, err, "checking password failed")
		}
		return g.eraseAccount(ctx, a, "account cancelled by its user")
	}
	ok, err := identity.CheckPassword(a.PasswordHash, password)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "checking password failed")
	}
	if !ok {
		return nil, newErr(ErrPermission, nil, "password: does not match the account's password; nothing was deleted")
	}
	return g.eraseAccount(ctx, a, "account cancelled by its user")
}

// eraseAccount is the one way an account goes, whether erased by the
// privacy role, deleted by an operator or cancelled by its user: on the
// ledger first, its sessions closed and their peers removed, then every row
// (tokens, bindings, sessions, auth failures, the connection-log rows under
// its pseudonyms, the account) deleted in one transaction, then the WAL
// checkpointed.
func (g *Gateway) eraseAccount(ctx context.Context, a store.Account, why string) (map[string]int64, error) {
	now := g.cfg.Now()
	if err := g.subj.ledger.AddAccount(a.NameIndex, now); err != nil {
		return nil, newErr(ErrUnavailable, err, "recording the erasure failed")
	}
	g.shareErasure(ctx, store.ErasedAccount, a.NameIndex, now)
	if _, err := g.sess.closeWhere(ctx, why, 0, a.ID, func(ss store.Session) bool { return ss.AccountID == a.ID }); err != nil {
		return nil, err
	}
	ps, err := g.pseudonymList(ctx, a.NameIndex)
	if err != nil {
		return nil, err
	}
	receipt, err := g.subj.st.EraseAccount(ctx, a.ID, ps)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "erasing account failed")
	}
	g.checkpoint(ctx, g.subj.st, receipt)
	g.log.Info(why, "account_id", a.ID, "rows", receipt)
	return receipt, nil
}

func (g *Gateway) eraseDevice(ctx context.Context, d store.Device) (map[string]int64, error) {
	// Ledger first: if anything below fails, a restart finishes the job.
	now := g.cfg.Now()
	if err := g.subj.ledger.AddDevice(d.Index, now); err != nil {
		return nil, newErr(ErrUnavailable, err, "recording the erasure failed")
	}
	g.shareErasure(ctx, store.ErasedDevice, d.Index, now)
	if err := g.sess.closeForDevice(ctx, d.ID, "device erased"); err != nil {
		return nil, err
	}
	if err := g.dropHomePeer(ctx, d, false); err != nil {
		return nil, err
	}
	g.hub.publish(d.ID, Event{Kind: EventRevoked, Reason: "erased"})
	ps, err := g.pseudonymList(ctx, d.Index)
	if err != nil {
		return nil, err
	}
	receipt, err := g.subj.st.EraseDevice(ctx, d.ID, ps)
	if err != nil {
		return nil, newErr(ErrUnavailable, err, "erasing device failed")
	}
	g.checkpoint(ctx, g.subj.st, receipt)
	g.log.Info("device erased", "device_id", d.ID, "rows", receipt)
	return receipt, nil
}

// Replayed counts what ReplayErasures erased again.
type Replayed struct {
	Devices, Accounts int
}

// ReplayErasures erases again every device and account on the ledger that
// the database still holds (an older database was restored, or an erasure
// was cut short): no row, no peer, no login. An account created after its
// name was erased is another one and stays. Run it before serving.
func (g *Gateway) ReplayErasures(ctx context.Context) (Replayed, error) {
	var n Replayed
	if g.subj == nil {
		return n, nil
	}
	for _, e := range g.subj.ledger.Devices() {
		d, err := g.reg.DeviceByIndex(ctx, e.Index)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		if !e.ErasedAt.IsZero() && d.EnrolledAt.After(e.ErasedAt) {
			continue // re-enrolled after its erasure
		}
		if _, err := g.eraseDevice(ctx, d); err != nil {
			return n, err
		}
		n.Devices++
	}
	for _, e := range g.subj.ledger.Accounts() {
		a, err := g.subj.st.AccountByName(ctx, e.Index)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		if a.CreatedAt.After(e.ErasedAt) {
			continue
		}
		if _, err := g.eraseAccount(ctx, a, "erased account found again and erased"); err != nil {
			return n, err
		}
		n.Accounts++
	}
	return n, nil
}

// erasureAAD binds a sealed blind index to its row of the database ledger.
func erasureAAD(kind string, tomb [32]byte) []byte {
	return append([]byte("dasset/erasure/"+kind+"/"), tomb[:]...)
}

func (g *Gateway) erasureRow(kind string, idx privacy.BlindIndex, at time.Time) store.Erasure {
	t := g.subj.keys.Tombstone(kind, idx)
	return store.Erasure{Tombstone: t, Kind: kind, SealedIndex: g.keys.Seal(idx[:], erasureAAD(kind, t)), ErasedAt: at}
}

// shareErasure copies one erasure into the database's ledger for the other
// gateways of a fleet. A failure is logged: SyncErasures copies it later.
func (g *Gateway) shareErasure(ctx context.Context, kind string, idx privacy.BlindIndex, at time.Time) {
	if err := g.subj.st.RecordErasures(ctx, []store.Erasure{g.erasureRow(kind, idx, at)}); err != nil {
		g.log.Warn("copying an erasure into the database failed; the next ledger sync retries", "err", err)
	}
}

// SyncErasures merges this gateway's erasure ledger (kept with its keys)
// and the database's copy both ways: erasures other gateways of the fleet
// recorded are added to this ledger (so this gateway's keystore backup
// carries them), and this ledger's erasures missing from the database (a
// restored older database) are written back. Run it before ReplayErasures,
// at start and periodically. It returns how many erasures it learnt and
// how many it wrote back.
func (g *Gateway) SyncErasures(ctx context.Context) (learnt, restored int, err error) {
	if g.subj == nil {
		return 0, 0, nil
	}
	rows, err := g.subj.st.Erasures(ctx)
	if err != nil {
		return 0, 0, err
	}
	known := make(map[[32]byte]time.Time, len(rows))
	var devices, accounts []privacy.ErasedAccount
	for _, r := range rows {
		known[r.Tombstone] = r.ErasedAt
		b, err := g.keys.Open(r.SealedIndex, erasureAAD(r.Kind, r.Tombstone))
		var idx privacy.BlindIndex
		if err != nil || len(b) != len(idx) {
			g.log.Warn("an erasure in the database does not open with this keystore; skipped", "kind", r.Kind)
			continue
		}
		copy(idx[:], b)
		if g.subj.keys.Tombstone(r.Kind, idx) != r.Tombstone {
			g.log.Warn("an erasure in the database does not match its tombstone; skipped", "kind", r.Kind)
			continue
		}
		e := privacy.ErasedAccount{Index: idx, ErasedAt: r.ErasedAt}
		switch r.Kind {
		case store.ErasedDevice:
			devices = append(devices, e)
		case store.ErasedAccount:
			accounts = append(accounts, e)
		}
	}
	if learnt, err = g.subj.ledger.Merge(devices, accounts); err != nil {
		return 0, 0, err
	}
	var missing []store.Erasure
	for kind, list := range map[string][]privacy.ErasedAccount{store.ErasedDevice: g.subj.ledger.Devices(), store.ErasedAccount: g.subj.ledger.Accounts()} {
		for _, e := range list {
			at, ok := known[g.subj.keys.Tombstone(kind, e.Index)]
			if ok && (e.ErasedAt.IsZero() || !e.ErasedAt.After(at)) {
				continue
			}
			if e.ErasedAt.IsZero() {
				e.ErasedAt = g.cfg.Now() // first-format device entry: erased before now
			}
			missing = append(missing, g.erasureRow(kind, e.Index, e.ErasedAt))
		}
	}
	if err := g.subj.st.RecordErasures(ctx, missing); err != nil {
		return learnt, 0, err
	}
	return learnt, len(missing), nil
}

type subjects struct {
	st     SubjectStore
	keys   PseudonymKeys
	ledger ErasureLedger
}
