package privacy

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFleetBackupRestore: a fleet keys file carries the shared keys, the
// keystore id, the horizon and the erasure ledger, and nothing of the
// member's own (WireGuard key, audit log and head, retention, day key
// files); each restore makes the joining gateway a WireGuard key of its
// own, and a restored keystore that loses it later is refused.
func TestFleetBackupRestore(t *testing.T) {
	k, dir := openTestKeystore(t)
	sn := mustSN(t, "SN-FLEET")
	idx := k.BlindIndex(sn)
	if _, err := k.Pseudonym(day("2025-03-01 00:00"), idx); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Pseudonym(day("2025-03-05 00:00"), idx); err != nil {
		t.Fatal(err)
	}
	if _, err := k.DestroyKeysBefore(day("2025-03-02 00:00")); err != nil {
		t.Fatal(err)
	}
	if err := k.SetDayKeyRetention(48 * time.Hour); err != nil {
		t.Fatal(err)
	}
	led, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := led.AddDevice(k.BlindIndex(mustSN(t, "SN-ERASED")), time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{AuditLogFile, AuditHeadFile} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("member's own "+name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sealed := k.Seal([]byte("secret"), []byte("aad"))

	var buf bytes.Buffer
	if err := k.BackupFleet(&buf, []byte("fleet pass")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{indexKeyFile, sealKeyFile, dayKEKFile, wireguardKeyFile} {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(buf.Bytes(), raw) {
			t.Fatalf("the fleet keys file holds %s in the clear", name)
		}
	}

	// Wrong passphrase, or the envelope relabelled as a keystore backup
	// (the format is bound to the ciphertext): refused, nothing written.
	target := filepath.Join(t.TempDir(), "a")
	if _, err := RestoreKeystore(bytes.NewReader(buf.Bytes()), []byte("wrong"), target); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	relabelled := bytes.Replace(buf.Bytes(), []byte(`"`+fleetFormat+`"`), []byte(`"`+backupFormat+`"`), 1)
	if _, err := RestoreKeystore(bytes.NewReader(relabelled), []byte("fleet pass"), target); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("relabelled fleet file: %v", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a failed restore left files behind")
	}

	var joined []*Keystore
	for _, name := range []string{"a", "b"} {
		target := filepath.Join(t.TempDir(), name)
		info, err := RestoreKeystore(bytes.NewReader(buf.Bytes()), []byte("fleet pass"), target)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Fleet || info.ErasedDevices != 1 || info.Horizon != "2025-03-02" || info.DayKeys != 0 {
			t.Fatalf("restore info %+v", info)
		}
		for _, name := range []string{AuditLogFile, AuditHeadFile, retentionFile, filepath.Join(daysDir, "2025-03-05.key")} {
			if _, err := os.Stat(filepath.Join(target, name)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the joining keystore holds the member's %s (%v)", name, err)
			}
		}
		r, err := OpenKeystore(target)
		if err != nil {
			t.Fatal(err)
		}
		if info.WireGuardPublicKey != r.GatewayPublicKey() {
			t.Fatal("the restore reported another WireGuard public key than the keystore holds")
		}
		if r.ID() != k.ID() || r.BlindIndex(sn) != idx || r.Horizon() != "2025-03-02" {
			t.Fatalf("restored keystore: id %s, horizon %q; want %s, 2025-03-02 and the member's index key", r.ID(), r.Horizon(), k.ID())
		}
		if pt, err := r.Open(sealed, []byte("aad")); err != nil || string(pt) != "secret" {
			t.Fatalf("the joining gateway cannot open the member's sealed value: %q %v", pt, err)
		}
		kek1, _ := os.ReadFile(filepath.Join(dir, dayKEKFile))
		kek2, _ := os.ReadFile(filepath.Join(target, dayKEKFile))
		if !bytes.Equal(kek1, kek2) {
			t.Fatal("the joining gateway's day-key KEK differs")
		}
		rl, err := OpenLedger(target)
		if err != nil {
			t.Fatal(err)
		}
		if !rl.Contains(k.BlindIndex(mustSN(t, "SN-ERASED"))) {
			t.Fatal("the erasure ledger did not come along")
		}
		joined = append(joined, r)
	}
	own := map[[32]byte]string{k.GatewayPublicKey(): "member"}
	for i, r := range joined {
		if prev, dup := own[r.GatewayPublicKey()]; dup {
			t.Fatalf("joined keystore %d has the WireGuard key of %s", i, prev)
		}
		own[r.GatewayPublicKey()] = "joined"
	}

	// A keystore that had its WireGuard key and lost it is refused, and
	// no new key is made in its place.
	lost := joined[0].Dir()
	if err := os.Remove(filepath.Join(lost, wireguardKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeystore(lost); err == nil || !strings.Contains(err.Error(), wireguardKeyFile) {
		t.Fatalf("a restored keystore without its WireGuard key opened (or the error does not name it): %v", err)
	}
	if _, err := os.Stat(filepath.Join(lost, wireguardKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a new WireGuard key was made in a keystore that lost its own")
	}
}

// TestFleetRestoreRefusesForeignFiles: a fleet keys file that lacks a
// shared key, or holds a per-gateway file, is refused before anything is
// written.
func TestFleetRestoreRefusesForeignFiles(t *testing.T) {
	key := func() []byte { return bytes.Repeat([]byte{7}, keyLen) }
	base := func() map[string][]byte {
		return map[string][]byte{indexKeyFile: key(), sealKeyFile: key(), dayKEKFile: key(), idFile: []byte("0123456789abcdef0123456789abcdef\n")}
	}
	for _, tc := range []struct {
		name string
		edit func(map[string][]byte)
		want string
	}{
		{"wireguard key", func(f map[string][]byte) { f[wireguardKeyFile] = key() }, `holds "wireguard.key"`},
		{"audit log", func(f map[string][]byte) { f[AuditLogFile] = []byte("x"); f[AuditHeadFile] = []byte("1 ab") }, "not a shared fleet key"},
		{"day key", func(f map[string][]byte) { f[daysDir+"/2025-01-01.key"] = key() }, "not a shared fleet key"},
		{"no KEK", func(f map[string][]byte) { delete(f, dayKEKFile) }, "lacks " + dayKEKFile},
		{"no seal key", func(f map[string][]byte) { delete(f, sealKeyFile) }, "lacks " + sealKeyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := base()
			tc.edit(files)
			var buf bytes.Buffer
			if err := writeBackup(&buf, fleetFormat, []byte("p"), files, nil, time.Now()); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(t.TempDir(), "ks")
			_, err := RestoreKeystore(&buf, []byte("p"), target)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v, want an error containing %q", err, tc.want)
			}
			if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
				t.Fatal("a refused restore left files behind")
			}
		})
	}
	// The same files without the edits restore (the control).
	var buf bytes.Buffer
	if err := writeBackup(&buf, fleetFormat, []byte("p"), base(), nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := RestoreKeystore(&buf, []byte("p"), filepath.Join(t.TempDir(), "ok")); err != nil {
		t.Fatalf("control: %v", err)
	}
}
