package gateway

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"strings"
)

// Binding codes are 10 characters of Crockford's base32 (no I, L, O, U):
// 50 bits, single use and short-lived, easy to type from a QR code's
// fallback text. Only their SHA-256 is stored.
const (
	bindAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	bindLen      = 10
)

func newBindingCode() (string, [32]byte, error) {
	var raw [bindLen]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", [32]byte{}, err
	}
	var b strings.Builder
	for _, x := range raw {
		b.WriteByte(bindAlphabet[x&31])
	}
	code := b.String()
	return code, sha256.Sum256([]byte(code)), nil
}

// hashBindingCode normalises a typed code (case, dashes, spaces) and hashes it.
func hashBindingCode(code string) ([32]byte, error) {
	c := strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(code))
	if len(c) != bindLen {
		return [32]byte{}, errors.New("must be 10 characters")
	}
	for i := 0; i < len(c); i++ {
		if !strings.ContainsRune(bindAlphabet, rune(c[i])) {
			return [32]byte{}, errors.New("contains a character that is not in a binding code")
		}
	}
	return sha256.Sum256([]byte(c)), nil
}
