package privacy

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LedgerFile is the erasure ledger's file name in the keystore directory.
const LedgerFile = "erased"

// Ledger is the erasure ledger: the blind indexes of erased devices and
// accounts (never anything else), kept in the keystore directory (outside
// the database and the data directory, and in the keystore's backup) so
// that restoring an older database cannot bring an erased subject back. The
// gateway replays it at every start.
//
// The file has one line per erasure: "device HEX UNIXNANO" or "account HEX
// UNIXNANO", HEX being the blind index and UNIXNANO when it was erased: a
// device enrolled or an account created after that is another one and is
// left alone. (A bare "HEX" line, the first format, and "device HEX" are
// devices erased at an unknown time: always erased again.) A device comes
// off this gateway's ledger when it is re-enrolled on purpose
// (after_erasure).
//
// In a fleet every gateway keeps its own ledger with its keys, and the
// database holds a shared copy (store.Erasure: tombstones and sealed
// indexes, see Keystore.Tombstone) that each gateway merges both ways.
type Ledger struct {
	path     string
	mu       sync.Mutex
	devices  map[BlindIndex]time.Time // zero: erased at an unknown time
	accounts map[BlindIndex]time.Time
}

// ErasedAccount is an erasure on the ledger (of an account, or a device
// for Devices).
type ErasedAccount struct {
	Index    BlindIndex
	ErasedAt time.Time // zero: unknown (a device from the first format)
}

// Tombstone is a ledger entry's identity in the database copy of the
// ledger: HMAC-SHA256(K_index, "dasset/erased/v1\x00" ‖ kind ‖ 0 ‖ idx). It
// is not the blind index, so the database keeps no erased subject's index
// in the clear, and only a gateway with the keys can tell whose it is.
func (k *Keystore) Tombstone(kind string, idx BlindIndex) [32]byte {
	m := hmac.New(sha256.New, k.index)
	m.Write([]byte("dasset/erased/v1\x00" + kind + "\x00"))
	m.Write(idx[:])
	var t [32]byte
	m.Sum(t[:0])
	return t
}

// OpenLedger opens (or creates) the ledger file LedgerFile in dir.
func OpenLedger(dir string) (*Ledger, error) {
	l := &Ledger{path: filepath.Join(dir, LedgerFile), devices: map[BlindIndex]time.Time{}, accounts: map[BlindIndex]time.Time{}}
	b, err := os.ReadFile(l.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("erasure ledger: %w", err)
	}
	if err := l.parse(b); err != nil {
		return nil, err
	}
	return l, nil
}

// ParseLedger checks the contents of a ledger file (e.g. in a backup).
func ParseLedger(b []byte) (devices, accounts int, err error) {
	l := &Ledger{path: LedgerFile, devices: map[BlindIndex]time.Time{}, accounts: map[BlindIndex]time.Time{}}
	if err := l.parse(b); err != nil {
		return 0, 0, err
	}
	return len(l.devices), len(l.accounts), nil
}

func (l *Ledger) parse(b []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		bad := func(why string) error { return fmt.Errorf("erasure ledger %s:%d: %s", l.path, n, why) }
		kind := "device"
		if len(f) > 1 {
			kind, f = f[0], f[1:]
		}
		var idx BlindIndex
		if hex.DecodedLen(len(f[0])) != len(idx) {
			return bad("not a blind index")
		}
		if _, err := hex.Decode(idx[:], []byte(f[0])); err != nil {
			return bad("not a blind index")
		}
		var at time.Time
		if len(f) == 2 {
			ns, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || ns <= 0 {
				return bad("erasure time is not a positive Unix time in nanoseconds")
			}
			at = time.Unix(0, ns).UTC()
		}
		switch {
		case kind == "device" && len(f) <= 2:
			if old, ok := l.devices[idx]; !ok || (!old.IsZero() && at.After(old)) || at.IsZero() {
				l.devices[idx] = at
			}
		case kind == "account" && len(f) == 2:
			if at.After(l.accounts[idx]) {
				l.accounts[idx] = at
			}
		default:
			return bad(`want "device HEX UNIXNANO" or "account HEX UNIXNANO"`)
		}
	}
	return sc.Err()
}

// Contains reports whether the device with blind index idx was erased.
func (l *Ledger) Contains(idx BlindIndex) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.devices[idx]
	return ok
}

// AddDevice records durably that the device with blind index idx was
// erased at at (a later time replaces an earlier one).
func (l *Ledger) AddDevice(idx BlindIndex, at time.Time) error {
	_, err := l.Merge([]ErasedAccount{{Index: idx, ErasedAt: at}}, nil)
	return err
}

// AddAccount records durably that the account with name index idx was
// erased (or cancelled) at at. An account of that name created later is
// not affected.
func (l *Ledger) AddAccount(idx BlindIndex, at time.Time) error {
	_, err := l.Merge(nil, []ErasedAccount{{Index: idx, ErasedAt: at}})
	return err
}

// Merge records the device and account erasures given, each as AddDevice
// or AddAccount does, with one write of the file for all of them (none
// when nothing changes), and returns how many were new to the ledger. On
// a failed write the ledger is left as it was.
func (l *Ledger) Merge(devices, accounts []ErasedAccount) (added int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	type undo struct {
		m   map[BlindIndex]time.Time
		idx BlindIndex
		old time.Time
		had bool
	}
	var undos []undo
	set := func(m map[BlindIndex]time.Time, e ErasedAccount, device bool) {
		old, had := m[e.Index]
		at := e.ErasedAt.UTC()
		keep := !at.After(old) // an account's later erasure stays
		if device {
			keep = had && (old.IsZero() || !at.After(old)) // and a device's of unknown time
		}
		if keep {
			return
		}
		undos = append(undos, undo{m, e.Index, old, had})
		m[e.Index] = at
		if !had {
			added++
		}
	}
	for _, e := range devices {
		set(l.devices, e, true)
	}
	for _, e := range accounts {
		set(l.accounts, e, false)
	}
	if len(undos) == 0 {
		return 0, nil
	}
	if err := l.writeLocked(); err != nil {
		for i := len(undos) - 1; i >= 0; i-- {
			u := undos[i]
			if u.had {
				u.m[u.idx] = u.old
			} else {
				delete(u.m, u.idx)
			}
		}
		return 0, err
	}
	return added, nil
}

// Devices lists the device erasures.
func (l *Ledger) Devices() []ErasedAccount { return l.list(l.devices) }

// Accounts lists the account erasures.
func (l *Ledger) Accounts() []ErasedAccount { return l.list(l.accounts) }

func (l *Ledger) list(m map[BlindIndex]time.Time) []ErasedAccount {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ErasedAccount, 0, len(m))
	for idx, at := range m {
		out = append(out, ErasedAccount{Index: idx, ErasedAt: at})
	}
	slices.SortFunc(out, func(a, b ErasedAccount) int { return bytes.Compare(a.Index[:], b.Index[:]) })
	return out
}

// Remove forgets a device erasure (explicit re-enrolment).
func (l *Ledger) Remove(idx BlindIndex) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	old, ok := l.devices[idx]
	if !ok {
		return nil
	}
	delete(l.devices, idx)
	if err := l.writeLocked(); err != nil {
		l.devices[idx] = old
		return err
	}
	return nil
}

func (l *Ledger) writeLocked() error {
	lines := make([]string, 0, len(l.devices)+len(l.accounts))
	for idx, at := range l.devices {
		if at.IsZero() {
			lines = append(lines, "device "+idx.String())
		} else {
			lines = append(lines, "device "+idx.String()+" "+strconv.FormatInt(at.UnixNano(), 10))
		}
	}
	for idx, at := range l.accounts {
		lines = append(lines, "account "+idx.String()+" "+strconv.FormatInt(at.UnixNano(), 10))
	}
	slices.Sort(lines)
	var buf bytes.Buffer
	for _, s := range lines {
		buf.WriteString(s + "\n")
	}
	if err := writeAtomic(filepath.Dir(l.path), filepath.Base(l.path), buf.Bytes(), false); err != nil {
		return fmt.Errorf("erasure ledger: %w", err)
	}
	return nil
}
