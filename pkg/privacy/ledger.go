package privacy

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// Ledger is the erasure ledger: the blind indexes of erased devices, kept in
// the keystore directory (outside the database) so that restoring an older
// database cannot bring an erased device back. The gateway replays it at
// start; re-enrolling an erased device needs an explicit after-erasure flag.
type Ledger struct {
	path string
	mu   sync.Mutex
	set  map[BlindIndex]struct{}
}

// OpenLedger opens (or creates) the ledger file "erased" in dir.
func OpenLedger(dir string) (*Ledger, error) {
	l := &Ledger{path: filepath.Join(dir, "erased"), set: map[BlindIndex]struct{}{}}
	b, err := os.ReadFile(l.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("erasure ledger: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var idx BlindIndex
		if hex.DecodedLen(len(line)) != len(idx) {
			return nil, fmt.Errorf("erasure ledger %s:%d: not a blind index", l.path, n)
		}
		if _, err := hex.Decode(idx[:], line); err != nil {
			return nil, fmt.Errorf("erasure ledger %s:%d: %w", l.path, n, err)
		}
		l.set[idx] = struct{}{}
	}
	return l, nil
}

// Contains reports whether idx was erased.
func (l *Ledger) Contains(idx BlindIndex) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.set[idx]
	return ok
}

// Add records an erasure durably.
func (l *Ledger) Add(idx BlindIndex) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.set[idx]; ok {
		return nil
	}
	l.set[idx] = struct{}{}
	return l.writeLocked()
}

// Remove forgets an erasure (explicit re-enrolment).
func (l *Ledger) Remove(idx BlindIndex) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.set[idx]; !ok {
		return nil
	}
	delete(l.set, idx)
	return l.writeLocked()
}

// All lists the erased indexes.
func (l *Ledger) All() []BlindIndex {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]BlindIndex, 0, len(l.set))
	for idx := range l.set {
		out = append(out, idx)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i][:], out[j][:]) < 0 })
	return out
}

func (l *Ledger) writeLocked() error {
	var buf bytes.Buffer
	keys := make([]string, 0, len(l.set))
	for idx := range l.set {
		keys = append(keys, idx.String())
	}
	sort.Strings(keys)
	for _, k := range keys {
		buf.WriteString(k + "\n")
	}
	if err := writeAtomic(filepath.Dir(l.path), filepath.Base(l.path), buf.Bytes(), false); err != nil {
		return fmt.Errorf("erasure ledger: %w", err)
	}
	return nil
}
