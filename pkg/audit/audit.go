// Package audit is the append-only, hash-chained log of every admin call
// that reveals or changes personal data. Each line is a JSON entry holding
// the hash of the line before it; the newest hash is also kept outside the
// log (in the keystore directory), so a truncated log or an older restored
// copy is detected rather than trusted. Pruning past the retention keeps the
// hash of the last pruned entry as the chain's anchor.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
)

// Entry is one audited admin call. Target is a blind index (hex), never a
// raw identifier; a call about several subjects names them all in Targets.
type Entry struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Operator string    `json:"operator"`
	Role     string    `json:"role"`
	Action   string    `json:"action"`
	Target   string    `json:"target,omitempty"`
	Targets  []string  `json:"targets,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Result   string    `json:"result"`
	// Anchor marks the first line after pruning: Prev is the hash of the
	// last pruned entry and the line holds no call.
	Anchor bool   `json:"anchor,omitempty"`
	Prev   string `json:"prev"`
	Hash   string `json:"hash"`
}

// ErrBroken means the chain does not verify.
var ErrBroken = errors.New("audit log chain broken")

const genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Log is an audit log file with its head hash kept in headPath.
type Log struct {
	path, headPath string

	mu   sync.Mutex
	seq  uint64
	head string
}

// Open opens (or creates) the log and checks it against the stored head.
func Open(path, headPath string) (*Log, error) {
	l := &Log{path: path, headPath: headPath}
	entries, err := l.read()
	if err != nil {
		return nil, err
	}
	l.head = genesis
	if n := len(entries); n > 0 {
		l.seq, l.head = entries[n-1].Seq, entries[n-1].Hash
		if entries[n-1].Anchor {
			l.head = entries[n-1].Prev
		}
	}
	if err := l.verifyEntries(entries); err != nil {
		return nil, err
	}
	return l, nil
}

func hashOf(e Entry) (string, error) {
	e.Hash = ""
	b, err := json.Marshal(e)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Append writes one entry durably (fsync) and moves the head.
func (l *Log) Append(e Entry) (Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq = l.seq + 1
	e.Time = e.Time.UTC().Truncate(time.Second)
	e.Prev = l.head
	h, err := hashOf(e)
	if err != nil {
		return Entry{}, err
	}
	e.Hash = h
	line, err := json.Marshal(e)
	if err != nil {
		return Entry{}, err
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return Entry{}, fmt.Errorf("audit: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return Entry{}, fmt.Errorf("audit: append: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return Entry{}, fmt.Errorf("audit: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return Entry{}, fmt.Errorf("audit: %w", err)
	}
	if err := atomicfile.Write(l.headPath, []byte(fmt.Sprintf("%d %s\n", e.Seq, e.Hash)), 0o600); err != nil {
		return Entry{}, fmt.Errorf("audit: head: %w", err)
	}
	l.seq, l.head = e.Seq, e.Hash
	return e, nil
}

func (l *Log) read() ([]Entry, error) {
	b, err := os.ReadFile(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	var out []Entry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrBroken, n, err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

func (l *Log) storedHead() (uint64, string, error) {
	b, err := os.ReadFile(l.headPath)
	if errors.Is(err, os.ErrNotExist) {
		return 0, genesis, nil
	}
	if err != nil {
		return 0, "", err
	}
	var seq uint64
	var h string
	if _, err := fmt.Sscanf(string(b), "%d %s", &seq, &h); err != nil {
		return 0, "", fmt.Errorf("%w: head file unreadable", ErrBroken)
	}
	return seq, h, nil
}

// Verify checks every link of the chain and that its end is the stored head.
// It returns the number of entries checked.
func (l *Log) Verify() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	entries, err := l.read()
	if err != nil {
		return 0, err
	}
	return len(entries), l.verifyEntries(entries)
}

func (l *Log) verifyEntries(entries []Entry) error {
	prev := genesis
	for i, e := range entries {
		if i == 0 && e.Anchor {
			prev = e.Prev
		}
		if e.Prev != prev {
			return fmt.Errorf("%w: entry %d does not follow the one before it", ErrBroken, e.Seq)
		}
		h, err := hashOf(e)
		if err != nil {
			return err
		}
		if h != e.Hash {
			return fmt.Errorf("%w: entry %d was altered", ErrBroken, e.Seq)
		}
		if !e.Anchor {
			prev = e.Hash
		}
	}
	seq, head, err := l.storedHead()
	if err != nil {
		return err
	}
	if head != prev && !(len(entries) > 0 && entries[len(entries)-1].Anchor && head == entries[len(entries)-1].Prev) {
		last := uint64(0)
		if n := len(entries); n > 0 {
			last = entries[n-1].Seq
		}
		return fmt.Errorf("%w: the log ends at entry %d but the stored head is entry %d (truncated or an older copy restored)", ErrBroken, last, seq)
	}
	return nil
}

// Prune drops entries older than before, keeping an anchor line that holds
// the hash of the last dropped entry. Returns how many were dropped.
func (l *Log) Prune(before time.Time) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	entries, err := l.read()
	if err != nil {
		return 0, err
	}
	if err := l.verifyEntries(entries); err != nil {
		return 0, err
	}
	cut := 0
	for cut < len(entries) && entries[cut].Time.Before(before) {
		cut++
	}
	// An anchor alone at the end is kept; dropping nothing is a no-op.
	dropped := 0
	for _, e := range entries[:cut] {
		if !e.Anchor {
			dropped++
		}
	}
	if dropped == 0 {
		return 0, nil
	}
	anchor := Entry{Seq: entries[cut-1].Seq, Time: entries[cut-1].Time, Anchor: true, Prev: entries[cut-1].Hash, Result: "pruned"}
	if anchor.Hash, err = hashOf(anchor); err != nil {
		return 0, err
	}
	var buf bytes.Buffer
	rest := append([]Entry{anchor}, entries[cut:]...)
	for _, e := range rest {
		b, _ := json.Marshal(e)
		buf.Write(append(b, '\n'))
	}
	if err := atomicfile.Write(l.path, buf.Bytes(), 0o600); err != nil {
		return 0, fmt.Errorf("audit: prune: %w", err)
	}
	return dropped, nil
}
