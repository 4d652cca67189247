package privacy

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"
)

// retentionFile holds how long day keys are kept (the connection log's
// retention), written by the gateway at start, so that a keystore backup
// made by another process (dassetctl keys backup) knows when each of its
// day keys expires.
const retentionFile = "day-key-retention"

// SetDayKeyRetention records how long pseudonym day keys are kept: a day's
// key is destroyed once the day lies more than d in the past. Backups carry
// it in their header and expire themselves by it.
func (k *Keystore) SetDayKeyRetention(d time.Duration) error {
	if d <= 0 {
		return &FieldError{Field: "day_key_retention", Reason: "must be positive"}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur, err := k.dayKeyRetentionLocked(); err == nil && cur == d {
		return nil
	}
	return writeAtomic(k.dir, retentionFile, []byte(d.String()+"\n"), false)
}

// DayKeyRetention is what SetDayKeyRetention recorded (0 when never set).
func (k *Keystore) DayKeyRetention() (time.Duration, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.dayKeyRetentionLocked()
}

func (k *Keystore) dayKeyRetentionLocked() (time.Duration, error) {
	b, err := readPrivateFile(filepath.Join(k.dir, retentionFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("privacy: keystore: %s is malformed: want a positive duration", filepath.Join(k.dir, retentionFile))
	}
	return d, nil
}

// dayCut is the first UTC day whose key is kept at now under retention keep
// (the pruner's cut: keys of the days before it are destroyed).
func dayCut(now time.Time, keep time.Duration) string {
	return now.Add(-keep).UTC().Format(dayLayout)
}
