package privacy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseSerialNumber: any string is either a serial number that keeps
// its exact value within the rules, or a field error naming serial_number;
// the masked form shows at most the last two characters.
func FuzzParseSerialNumber(f *testing.F) {
	for _, s := range []string{"DS-000123", "", "a", "ab", "DS 1", "DS-\xff", strings.Repeat("S", 64), strings.Repeat("S", 65), "Ω", "ds_1.2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sn, err := ParseSerialNumber(s)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "serial_number" || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not a serial_number field error", err)
			}
			return
		}
		if sn.Reveal() != s || len(s) == 0 || len(s) > MaxSerialLen {
			t.Fatalf("accepted %q as %q", s, sn.Reveal())
		}
		for _, r := range s {
			if !isSerialChar(r) {
				t.Fatalf("accepted %q with %q", s, r)
			}
		}
		if m := sn.Masked(); !strings.HasPrefix(m, "****") || len(m) > 4+MaskedChars || (len(s) > MaskedChars && !strings.HasSuffix(s, m[4:])) {
			t.Fatalf("masked %q as %q", s, m)
		}
	})
}

// FuzzParseHardwareID: the same for hardware ids (printable ASCII).
func FuzzParseHardwareID(f *testing.F) {
	for _, s := range []string{"3c:52:82:aa:10:0f", "", "HW 1", "HW\x00", "\xff", strings.Repeat("h", 128), strings.Repeat("h", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hw, err := ParseHardwareID(s)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "hardware_id" {
				t.Fatalf("error %v is not a hardware_id field error", err)
			}
			return
		}
		if hw.Reveal() != s || len(s) == 0 || len(s) > MaxHardwareIDLen {
			t.Fatalf("accepted %q as %q", s, hw.Reveal())
		}
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] >= 0x7f {
				t.Fatalf("accepted %q with byte %#x", s, s[i])
			}
		}
	})
}

// FuzzParsePolicy: any bytes either load as a policy or fail with an
// error; a loaded policy's own YAML loads again.
func FuzzParsePolicy(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("..", "..", "configs", "policy.yaml")); err == nil {
		f.Add(b)
	}
	f.Add(DefaultPolicy().YAML())
	f.Add([]byte("retention:\n  connection_log: 720h\n"))
	f.Add([]byte("fields: [1, 2\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			return
		}
		if _, err := ParsePolicy(p.YAML()); err != nil {
			t.Fatalf("a loaded policy's YAML does not load again: %v", err)
		}
	})
}
