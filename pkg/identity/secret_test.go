package identity

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

func TestTokens(t *testing.T) {
	tok, hash, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != 43 || strings.ContainsAny(tok, "+/=") {
		t.Fatalf("token %q is not 43 base64url characters", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != 32 {
		t.Fatalf("token does not decode to 32 bytes: %v", err)
	}
	if hash != sha256.Sum256(raw) {
		t.Fatal("hash is not SHA-256 of the token bytes")
	}
	got, err := HashToken(tok)
	if err != nil || got != hash {
		t.Fatalf("HashToken: %v", err)
	}
	tok2, hash2, _ := NewToken()
	if tok2 == tok || hash2 == hash {
		t.Fatal("two tokens are equal")
	}

	// The last character carries 4 unused bits: a non-canonical variant is
	// refused, so one token has one spelling.
	last := tok[len(tok)-1]
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, last)
	variant := tok[:len(tok)-1] + string(alphabet[i^1])
	for name, bad := range map[string]string{
		"empty": "", "short": tok[:42], "long": tok + "A", "padded": tok + "=",
		"std alphabet": strings.Repeat("+", 43), "non-canonical": variant, "space": " " + tok[1:],
	} {
		_, err := HashToken(bad)
		var fe *privacy.FieldError
		if !errors.As(err, &fe) || fe.Field != "token" {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPasswords(t *testing.T) {
	h, err := HashPassword([]byte("correct horse battery"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q is not the expected PHC form", h)
	}
	h2, _ := HashPassword([]byte("correct horse battery"))
	if h == h2 {
		t.Fatal("two hashes of one password are equal (no salt)")
	}
	if ok, err := CheckPassword(h, []byte("correct horse battery")); !ok || err != nil {
		t.Fatalf("right password: %v %v", ok, err)
	}
	if ok, err := CheckPassword(h, []byte("correct horse battery!")); ok || err != nil {
		t.Fatalf("wrong password: %v %v", ok, err)
	}
	if ok, err := CheckPassword(h, make([]byte, MaxPasswordLen+1)); ok || err != nil {
		t.Fatalf("over-long password: %v %v", ok, err)
	}

	var fe *privacy.FieldError
	if _, err := HashPassword(nil); !errors.As(err, &fe) || fe.Field != "password" {
		t.Fatalf("empty password: %v", err)
	}
	if _, err := HashPassword(make([]byte, MaxPasswordLen+1)); !errors.As(err, &fe) {
		t.Fatalf("long password: %v", err)
	}

	parts := strings.Split(h, "$")
	for name, bad := range map[string]string{
		"empty":     "",
		"bcrypt":    "$2a$10$abcdefghijklmnopqrstuv",
		"argon2i":   strings.Replace(h, "argon2id", "argon2i", 1),
		"version":   strings.Replace(h, "v=19", "v=16", 1),
		"huge m":    strings.Replace(h, "m=19456", "m=99999999", 1),
		"zero t":    strings.Replace(h, "t=2", "t=0", 1),
		"params":    strings.Replace(h, "m=19456,t=2,p=1", "t=2,m=19456,p=1", 1),
		"bad salt":  strings.Join([]string{"", parts[1], parts[2], parts[3], "!!!", parts[5]}, "$"),
		"short key": strings.Join([]string{"", parts[1], parts[2], parts[3], parts[4], "AAAA"}, "$"),
		"extra":     h + "$x",
	} {
		if ok, err := CheckPassword(bad, []byte("x")); ok || !errors.Is(err, ErrBadHash) {
			t.Errorf("%s: ok=%v err=%v", name, ok, err)
		}
	}
}

func TestDummyHashIsCurrent(t *testing.T) {
	// DummyPasswordCheck must do a full check, with today's parameters.
	p, err := parsePHC(dummyHash)
	if err != nil {
		t.Fatal(err)
	}
	if p.memory != PasswordMemoryKiB || p.time != PasswordTime || p.threads != PasswordThreads || len(p.key) != passwordKeyLen {
		t.Fatalf("dummy hash parameters %+v differ from the current ones", p)
	}
	if ok, err := CheckPassword(dummyHash, []byte("dasset-dummy-password")); ok || err != nil {
		t.Fatalf("dummy password matches its hash or fails: %v %v", ok, err)
	}
}
