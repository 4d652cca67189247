package privacy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLedgerDevicesAndAccounts(t *testing.T) {
	k, dir := openTestKeystore(t)
	dev := k.BlindIndex(mustSN(t, "SN-LEDGER-1"))
	acct := k.AccountIndex("alice")
	at := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)

	l, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.Contains(dev) || len(l.Accounts()) != 0 {
		t.Fatal("a new ledger is not empty")
	}
	if err := l.AddDevice(dev, at.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := l.AddAccount(acct, at); err != nil {
		t.Fatal(err)
	}
	if err := l.AddAccount(acct, at.Add(-time.Hour)); err != nil { // an older time does not move it back
		t.Fatal(err)
	}

	// Durable, and only blind indexes with the account's erasure time.
	l2, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !l2.Contains(dev) || l2.Contains(acct) {
		t.Fatal("reopened ledger lost the device erasure or mixed up the kinds")
	}
	if got := l2.Devices(); len(got) != 1 || !got[0].ErasedAt.Equal(at.Add(-time.Minute)) {
		t.Fatalf("reopened ledger devices %+v", got)
	}
	if got := l2.Accounts(); len(got) != 1 || got[0].Index != acct || !got[0].ErasedAt.Equal(at) {
		t.Fatalf("reopened ledger accounts %+v", got)
	}
	b, err := os.ReadFile(filepath.Join(dir, LedgerFile))
	if err != nil {
		t.Fatal(err)
	}
	want := "account " + acct.String() + " 1893553445000000006\ndevice " + dev.String() + " 1893553385000000006\n"
	if string(b) != want {
		t.Fatalf("ledger file:\n%s\nwant:\n%s", b, want)
	}
	if st, _ := os.Stat(filepath.Join(dir, LedgerFile)); st.Mode().Perm() != 0o600 {
		t.Fatalf("ledger mode %04o", st.Mode().Perm())
	}
	if err := l2.Remove(dev); err != nil || l2.Contains(dev) {
		t.Fatalf("Remove: %v", err)
	}

	// The first format (a bare index is a device) still reads; bad lines
	// are refused with the line number.
	if n, _, err := ParseLedger([]byte(dev.String() + "\n")); err != nil || n != 1 {
		t.Fatalf("legacy line: %d, %v", n, err)
	}
	if k.Tombstone("device", dev) == k.Tombstone("account", dev) || k.Tombstone("device", dev) == [32]byte(dev) {
		t.Fatal("tombstones do not separate kinds, or are the blind index itself")
	}
	for _, bad := range []string{"device zz\n", "account " + acct.String() + "\n", "account " + acct.String() + " -1\n", "robot " + dev.String() + "\n"} {
		if _, _, err := ParseLedger([]byte(bad)); err == nil || !strings.Contains(err.Error(), ":1:") {
			t.Errorf("ParseLedger(%q) = %v, want an error naming line 1", bad, err)
		}
	}
}

// TestBackupCarriesLedgerAndAudit: the keystore backup holds the erasure
// ledger and the audit log with its head, cut at the head when the log ran
// ahead of it (an append between the two reads).
func TestBackupCarriesLedgerAndAudit(t *testing.T) {
	k, dir := openTestKeystore(t)
	l, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	dev := k.BlindIndex(mustSN(t, "SN-LEDGER-2"))
	if err := l.AddDevice(dev, time.Now()); err != nil {
		t.Fatal(err)
	}
	lines := `{"seq":1,"hash":"a"}` + "\n" + `{"seq":2,"hash":"b"}` + "\n"
	ahead := `{"seq":3,"hash":"c"}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, AuditLogFile), []byte(lines+ahead), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, AuditHeadFile), []byte("2 b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := k.Backup(&buf, []byte("pw")); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "restored")
	if _, err := RestoreKeystore(&buf, []byte("pw"), target); err != nil {
		t.Fatal(err)
	}
	r, err := OpenLedger(target)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Contains(dev) {
		t.Fatal("restored ledger lost the erasure")
	}
	if b, _ := os.ReadFile(filepath.Join(target, AuditLogFile)); string(b) != lines {
		t.Fatalf("restored audit log:\n%s\nwant it cut at the head:\n%s", b, lines)
	}
	if b, _ := os.ReadFile(filepath.Join(target, AuditHeadFile)); string(b) != "2 b\n" {
		t.Fatalf("restored audit head %q", b)
	}
}

// TestBackupExpiresItself: a backup holds no day key already past the
// recorded retention, and a restore later drops those that passed it since
// (and moves the horizon, so they are never made again); the header that
// says so cannot be altered.
func TestBackupExpiresItself(t *testing.T) {
	k, _ := openTestKeystore(t)
	if err := k.SetDayKeyRetention(48 * time.Hour); err != nil {
		t.Fatal(err)
	}
	idx := k.BlindIndex(mustSN(t, "SN-EXPIRY"))
	want := map[string]Pseudonym{}
	for _, d := range []string{"2030-01-01", "2030-01-02", "2030-01-03", "2030-01-04", "2030-01-05"} {
		p, err := k.Pseudonym(day(d+" 12:00"), idx)
		if err != nil {
			t.Fatal(err)
		}
		want[d] = p
	}
	var buf bytes.Buffer
	if err := k.backupAt(&buf, []byte("pw"), day("2030-01-05 10:00")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"horizon": "2030-01-03"`)) || !bytes.Contains(buf.Bytes(), []byte(`"retention": "48h0m0s"`)) {
		t.Fatalf("backup header lacks its horizon:\n%.400s", buf.Bytes())
	}
	if _, err := RestoreKeystore(bytes.NewReader(bytes.Replace(buf.Bytes(), []byte(`"horizon": "2030-01-03"`), []byte(`"horizon": "2030-01-01"`), 1)), []byte("pw"), filepath.Join(t.TempDir(), "x")); err == nil {
		t.Fatal("a backup with an altered horizon was restored")
	}

	// Restored a day later: 01-03 is now past the retention too.
	target := filepath.Join(t.TempDir(), "restored")
	info, err := restoreAt(bytes.NewReader(buf.Bytes()), []byte("pw"), target, day("2030-01-06 10:00"))
	if err != nil {
		t.Fatal(err)
	}
	if info.DayKeys != 2 || info.ExpiredDayKeys != 1 || info.Horizon != "2030-01-04" {
		t.Fatalf("restore info %+v, want 2 day keys, 1 expired, horizon 2030-01-04", info)
	}
	r, err := OpenKeystore(target)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Days(); len(got) != 2 || got[0] != "2030-01-04" || got[1] != "2030-01-05" {
		t.Fatalf("restored day keys %v", got)
	}
	for _, d := range []string{"2030-01-01", "2030-01-03"} {
		if _, err := r.Pseudonym(day(d+" 12:00"), idx); !errors.Is(err, ErrKeyDestroyed) {
			t.Errorf("day %s after restore: %v, want ErrKeyDestroyed", d, err)
		}
	}
	if p, err := r.Pseudonym(day("2030-01-05 12:00"), idx); err != nil || p != want["2030-01-05"] {
		t.Fatalf("kept day key differs: %v", err)
	}
	if d, err := r.DayKeyRetention(); err != nil || d != 48*time.Hour {
		t.Fatalf("restored retention %v, %v", d, err)
	}
}

// TestLedgerMerge: erasures learnt elsewhere are added with one write of
// the file (a new file by rename: a new inode), counting only those new to
// the ledger; a merge that changes nothing writes nothing, and a failed
// write leaves the ledger as it was.
func TestLedgerMerge(t *testing.T) {
	k, dir := openTestKeystore(t)
	d1, d2 := k.BlindIndex(mustSN(t, "SN-MERGE-1")), k.BlindIndex(mustSN(t, "SN-MERGE-2"))
	acct := k.AccountIndex("bob")
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	path := filepath.Join(dir, LedgerFile)
	inode := func() uint64 {
		t.Helper()
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}

	l, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AddDevice(d1, at); err != nil {
		t.Fatal(err)
	}
	before := inode()
	n, err := l.Merge([]ErasedAccount{{Index: d1, ErasedAt: at.Add(time.Hour)}, {Index: d2, ErasedAt: at}}, []ErasedAccount{{Index: acct, ErasedAt: at}})
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("Merge of one known device erased later, a new device and a new account added %d, want 2", n)
	}
	if inode() == before {
		t.Fatal("Merge did not rewrite the ledger file")
	}
	l2, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := l2.Devices(); len(got) != 2 || !l2.Contains(d2) {
		t.Fatalf("reopened ledger devices %+v", got)
	}
	for _, e := range l2.Devices() {
		if e.Index == d1 && !e.ErasedAt.Equal(at.Add(time.Hour)) {
			t.Fatalf("device erased again later kept %v", e.ErasedAt)
		}
	}
	if got := l2.Accounts(); len(got) != 1 || got[0].Index != acct || !got[0].ErasedAt.Equal(at) {
		t.Fatalf("reopened ledger accounts %+v", got)
	}

	// Nothing new or later: no write.
	before = inode()
	if n, err := l.Merge([]ErasedAccount{{Index: d2, ErasedAt: at.Add(-time.Hour)}}, []ErasedAccount{{Index: acct, ErasedAt: at}}); err != nil || n != 0 {
		t.Fatalf("Merge of known erasures: %d, %v", n, err)
	}
	if inode() != before {
		t.Fatal("a Merge that changed nothing rewrote the ledger file")
	}

	// A failed write (the directory is gone) changes nothing.
	gone := t.TempDir()
	lg, err := OpenLedger(gone)
	if err != nil {
		t.Fatal(err)
	}
	if err := lg.AddDevice(d1, at); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(gone); err != nil {
		t.Fatal(err)
	}
	if _, err := lg.Merge([]ErasedAccount{{Index: d1, ErasedAt: at.Add(time.Hour)}, {Index: d2, ErasedAt: at}}, []ErasedAccount{{Index: acct, ErasedAt: at}}); err == nil {
		t.Fatal("Merge into a removed directory succeeded")
	}
	if got := lg.Devices(); len(got) != 1 || got[0].Index != d1 || !got[0].ErasedAt.Equal(at) || len(lg.Accounts()) != 0 {
		t.Fatalf("after a failed Merge: devices %+v accounts %+v", got, lg.Accounts())
	}
}
