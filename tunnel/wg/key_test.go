package wg

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/curve25519"
)

func mustHexKey(t *testing.T, s string) Key {
	t.Helper()
	k, err := parseHexKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKey(t *testing.T) {
	valid := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("\x42", 32)))
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"valid", valid, ""},
		{"empty", "", "must be 44 characters, got 0"},
		{"short", valid[:43], "must be 44 characters, got 43"},
		{"long", valid + "=", "must be 44 characters, got 45"},
		{"not base64", strings.Repeat("!", 43) + "=", "not base64"},
		{"url alphabet", strings.Repeat("-", 43) + "=", "not base64"},
		{"33 bytes in 44 chars", base64.StdEncoding.EncodeToString(make([]byte, 33)), "decodes to 33 bytes"},
		{"non-canonical padding bits", valid[:42] + "R=", "not base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKey(tc.in)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseKey: %v", err)
				}
				if k.String() != tc.in {
					t.Fatalf("round trip: got %s, want %s", k, tc.in)
				}
				return
			}
			if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ParseKey(%q) error = %v, want ErrInvalidKey containing %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func TestKeyFromBytes(t *testing.T) {
	for _, n := range []int{0, 31, 33, 64} {
		_, err := KeyFromBytes(make([]byte, n))
		if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), "exactly 32 bytes") {
			t.Errorf("KeyFromBytes(%d bytes) error = %v, want ErrInvalidKey saying 32 bytes", n, err)
		}
	}
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(i)
	}
	k, err := KeyFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 99 // the key is a copy
	if k[0] != 0 || k[31] != 31 {
		t.Fatalf("KeyFromBytes did not copy: %v", k)
	}
	if got, want := k.Hex(), hex.EncodeToString(k[:]); got != want {
		t.Fatalf("Hex = %s, want %s", got, want)
	}
}

// TestLowOrderPointsAreLowOrder checks the blocklist against X25519 itself:
// a point is of small order exactly when every clamped scalar maps it to
// zero, which x/crypto reports as an error.
func TestLowOrderPointsAreLowOrder(t *testing.T) {
	scalar, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range lowOrderPoints {
		for _, top := range []byte{0, 0x80} {
			q := p
			q[31] |= top
			if _, err := curve25519.X25519(scalar[:], q[:]); err == nil {
				t.Errorf("lowOrderPoints[%d] (top bit %#x) is not of small order", i, top)
			}
			if err := q.Validate(); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Validate(lowOrderPoints[%d], top bit %#x) = %v, want ErrInvalidKey", i, top, err)
			}
		}
	}
}

func TestValidate(t *testing.T) {
	priv, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		key     Key
		wantErr string
	}{
		{"zero", Key{}, "all-zero"},
		{"one", Key{1}, "small order"},
		{"order 8", mustHexKey(t, "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "small order"},
		{"order 8 with top bit", mustHexKey(t, "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880"), "small order"},
		{"p-1", mustHexKey(t, "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "small order"},
		{"p", mustHexKey(t, "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "small order"},
		{"p+1 with top bit", mustHexKey(t, "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"), "small order"},
		{"generated public key", priv.PublicKey(), ""},
		{"generated public key with top bit", func() Key { k := priv.PublicKey(); k[31] |= 0x80; return k }(), "not canonical"},
		{"p+2 (= 2)", mustHexKey(t, "efffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "not canonical"},
		{"2^255-1", mustHexKey(t, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "not canonical"},
		{"p-2 (largest canonical)", mustHexKey(t, "ebffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), ""},
		{"2^255-20 with a low byte", mustHexKey(t, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7e7f"), ""},
		{"base point", Key{9}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.key.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate error = %v, want ErrInvalidKey containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestPublicKeyRFC7748 uses the X25519 test vector of RFC 7748 section 6.1.
// TestCanonicalPublicKeys: every public key X25519 makes is canonical.
func TestCanonicalPublicKeys(t *testing.T) {
	for range 1000 {
		priv, err := GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if pub := priv.PublicKey(); !pub.canonical() {
			t.Fatalf("X25519 made a non-canonical public key %x", pub)
		}
	}
}

func TestPublicKeyRFC7748(t *testing.T) {
	alice := mustHexKey(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	want := mustHexKey(t, "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	if got := alice.PublicKey(); got != want {
		t.Fatalf("PublicKey = %s, want %s", got.Hex(), want.Hex())
	}
}

func TestGeneratePrivateKey(t *testing.T) {
	a, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a.IsZero() {
		t.Fatal("generated keys are equal or zero")
	}
	if a[0]&7 != 0 || a[31]&0x80 != 0 || a[31]&0x40 == 0 {
		t.Fatalf("key is not clamped: %s", a.Hex())
	}
	// Diffie-Hellman agreement: a·B == b·A.
	pa, pb := a.PublicKey(), b.PublicKey()
	ab, err := curve25519.X25519(a[:], pb[:])
	if err != nil {
		t.Fatal(err)
	}
	ba, err := curve25519.X25519(b[:], pa[:])
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(ab) != hex.EncodeToString(ba) {
		t.Fatal("shared secrets differ")
	}
}
