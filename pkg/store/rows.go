package store

// Row scanning shared by every backend: each selects the columns named here
// in this order, with its own SQL dialect around them, and reads the row
// with the function beside them. The scan targets are ones database/sql and
// pgx both convert to (a nullable column into a pointer, a SQLite 0/1
// integer or a PostgreSQL boolean into a bool).

// Scanner is a row as database/sql (*sql.Row, *sql.Rows) and pgx (pgx.Row,
// pgx.Rows) give it.
type Scanner interface{ Scan(dest ...any) error }

// DeviceCols are the columns ScanDevice reads, of the devices table as d.
const DeviceCols = `d.id, d.blind_index, d.sealed_serial, d.verifier, d.pinned_key, d.address_offset, d.last_login_day, d.revoked, d.enrolled_at, d.home_gateway`

// ScanDevice reads a row of DeviceCols.
func ScanDevice(sc Scanner) (Device, error) {
	var (
		d             Device
		idx, ver, key []byte
		sealed        []byte
		off           *int64
		enrolled      int64
		home          *string
	)
	if err := sc.Scan(&d.ID, &idx, &sealed, &ver, &key, &off, &d.LastLoginDay, &d.Revoked, &enrolled, &home); err != nil {
		return Device{}, err
	}
	if err := to32((*[32]byte)(&d.Index), idx, "blind_index"); err != nil {
		return Device{}, err
	}
	if err := to32((*[32]byte)(&d.Verifier), ver, "verifier"); err != nil {
		return Device{}, err
	}
	if key != nil {
		if err := to32((*[32]byte)(&d.Key), key, "pinned_key"); err != nil {
			return Device{}, err
		}
		d.KeyPinned = true
	}
	if off != nil {
		d.Offset = uint32(*off)
	}
	d.SealedSerial = sealed
	d.EnrolledAt = fromNanos(enrolled)
	if home != nil {
		d.Home = *home
	}
	return d, nil
}

// AccountCols are the columns ScanAccount reads, of the accounts table as a.
const AccountCols = `a.id, a.name_index, a.sealed_name, a.password_hash, a.created_at`

// ScanAccount reads a row of AccountCols.
func ScanAccount(sc Scanner) (Account, error) {
	var (
		a       Account
		idx     []byte
		created int64
	)
	if err := sc.Scan(&a.ID, &idx, &a.SealedName, &a.PasswordHash, &created); err != nil {
		return Account{}, err
	}
	if err := to32((*[32]byte)(&a.NameIndex), idx, "name_index"); err != nil {
		return Account{}, err
	}
	a.CreatedAt = fromNanos(created)
	return a, nil
}

// SessionCols are the columns ScanSession reads, of the sessions table.
const SessionCols = `id, account_id, device_id, client_key, client_offset, opened_at, expires_at, closed_at`

// ScanSession reads a row of SessionCols.
func ScanSession(sc Scanner) (Session, error) {
	var (
		s               Session
		account         *int64
		key             []byte
		off             int64
		opened, expires int64
		closed          *int64
	)
	if err := sc.Scan(&s.ID, &account, &s.DeviceID, &key, &off, &opened, &expires, &closed); err != nil {
		return Session{}, err
	}
	if err := to32((*[32]byte)(&s.ClientKey), key, "client_key"); err != nil {
		return Session{}, err
	}
	if account != nil {
		s.AccountID = *account
	}
	s.ClientOffset = uint32(off)
	s.OpenedAt, s.ExpiresAt = fromNanos(opened), fromNanos(expires)
	if closed != nil {
		s.ClosedAt = fromNanos(*closed)
	}
	return s, nil
}

// HostedSessionCols are the columns ScanHostedSession reads: a session (of
// the sessions table as s) with its device's address offset and pinned key
// (of the devices table as d).
const HostedSessionCols = `s.id, s.account_id, s.device_id, s.client_key, s.client_offset, s.opened_at, s.expires_at, s.closed_at, d.address_offset, d.pinned_key`

// ScanHostedSession reads a row of HostedSessionCols. A device without an
// address or a pinned key leaves DeviceOffset 0 or DeviceKey zero.
func ScanHostedSession(sc Scanner) (HostedSession, error) {
	var (
		h               HostedSession
		account         *int64
		key, devKey     []byte
		off             int64
		devOff          *int64
		opened, expires int64
		closed          *int64
	)
	if err := sc.Scan(&h.ID, &account, &h.DeviceID, &key, &off, &opened, &expires, &closed, &devOff, &devKey); err != nil {
		return HostedSession{}, err
	}
	if err := to32((*[32]byte)(&h.ClientKey), key, "client_key"); err != nil {
		return HostedSession{}, err
	}
	if devKey != nil {
		if err := to32((*[32]byte)(&h.DeviceKey), devKey, "pinned_key"); err != nil {
			return HostedSession{}, err
		}
	}
	if account != nil {
		h.AccountID = *account
	}
	if devOff != nil {
		h.DeviceOffset = uint32(*devOff)
	}
	h.ClientOffset = uint32(off)
	h.OpenedAt, h.ExpiresAt = fromNanos(opened), fromNanos(expires)
	if closed != nil {
		h.ClosedAt = fromNanos(*closed)
	}
	return h, nil
}

// GatewayCols are the columns ScanGateway reads, of the gateways table.
const GatewayCols = `instance_id, public_key, endpoint, started_at, heartbeat_at`

// ScanGateway reads a row of GatewayCols.
func ScanGateway(sc Scanner) (Gateway, error) {
	var (
		g           Gateway
		key         []byte
		start, beat int64
	)
	if err := sc.Scan(&g.InstanceID, &key, &g.Endpoint, &start, &beat); err != nil {
		return Gateway{}, err
	}
	if err := to32((*[32]byte)(&g.PublicKey), key, "public_key"); err != nil {
		return Gateway{}, err
	}
	g.StartedAt, g.HeartbeatAt = fromNanos(start), fromNanos(beat)
	return g, nil
}

// ErasureCols are the columns ScanErasure reads, of the erasures table.
const ErasureCols = `tombstone, kind, sealed_index, erased_at`

// ScanErasure reads a row of ErasureCols.
func ScanErasure(sc Scanner) (Erasure, error) {
	var (
		e  Erasure
		tb []byte
		at int64
	)
	if err := sc.Scan(&tb, &e.Kind, &e.SealedIndex, &at); err != nil {
		return Erasure{}, err
	}
	if err := to32(&e.Tombstone, tb, "tombstone"); err != nil {
		return Erasure{}, err
	}
	e.ErasedAt = fromNanos(at)
	return e, nil
}
