package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// TokenLen is the number of random bytes in a bearer token.
const TokenLen = 32

var tokenEncoding = base64.RawURLEncoding.Strict()

// NewToken makes a bearer token: 32 random bytes, base64url without
// padding. Only its SHA-256 hash is stored.
func NewToken() (token string, hash [32]byte, err error) {
	var b [TokenLen]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", [32]byte{}, fmt.Errorf("identity: new token: %w", err)
	}
	return tokenEncoding.EncodeToString(b[:]), sha256.Sum256(b[:]), nil
}

// HashToken is the stored form of a token NewToken made. Anything that is
// not such a token is an error.
func HashToken(token string) ([32]byte, error) {
	if len(token) != tokenEncoding.EncodedLen(TokenLen) {
		return [32]byte{}, &privacy.FieldError{Field: "token", Reason: fmt.Sprintf("must be %d characters of base64url", tokenEncoding.EncodedLen(TokenLen))}
	}
	b, err := tokenEncoding.DecodeString(token)
	if err != nil || len(b) != TokenLen {
		return [32]byte{}, &privacy.FieldError{Field: "token", Reason: "not base64url"}
	}
	return sha256.Sum256(b), nil
}

// Argon2id parameters for passwords (OWASP: m=19 MiB, t=2, p=1).
const (
	PasswordMemoryKiB = 19 * 1024
	PasswordTime      = 2
	PasswordThreads   = 1
	passwordSaltLen   = 16
	passwordKeyLen    = 32
	// MaxPasswordLen bounds a password.
	MaxPasswordLen = 1024
)

// ErrBadHash is returned (wrapped) for a stored hash that is not an argon2id
// PHC string this package can check.
var ErrBadHash = errors.New("malformed password hash")

// HashPassword hashes pw with argon2id and returns the PHC string
// "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>".
func HashPassword(pw []byte) (string, error) {
	switch {
	case len(pw) == 0:
		return "", &privacy.FieldError{Field: "password", Reason: "must not be empty"}
	case len(pw) > MaxPasswordLen:
		return "", &privacy.FieldError{Field: "password", Reason: fmt.Sprintf("longer than %d bytes", MaxPasswordLen)}
	}
	salt := make([]byte, passwordSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("identity: hash password: %w", err)
	}
	p := phc{memory: PasswordMemoryKiB, time: PasswordTime, threads: PasswordThreads, salt: salt}
	p.key = argon2.IDKey(pw, p.salt, p.time, p.memory, p.threads, passwordKeyLen)
	return p.String(), nil
}

// CheckPassword reports whether pw matches hash (from HashPassword), in
// constant time. A malformed hash is an error wrapping ErrBadHash.
func CheckPassword(hash string, pw []byte) (bool, error) {
	p, err := parsePHC(hash)
	if err != nil {
		return false, err
	}
	if len(pw) > MaxPasswordLen {
		DummyPasswordCheck()
		return false, nil
	}
	got := argon2.IDKey(pw, p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(got, p.key) == 1, nil
}

// dummyHash is a valid hash of a password nobody knows, with the current
// parameters.
const dummyHash = "$argon2id$v=19$m=19456,t=2,p=1$ZGFzc2V0LWR1bW15LXNhbHQ$uydRg48owqpbUXlV5yUOYGmk8F/I9mq/5ATZLn/7mKg"

// DummyPasswordCheck does the work of a password check that fails: run it
// for an unknown account so it costs what a wrong password costs.
func DummyPasswordCheck() {
	_, _ = CheckPassword(dummyHash, []byte("dasset-dummy-password"))
}

type phc struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

func (p phc) String() string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.memory, p.time, p.threads,
		base64.RawStdEncoding.EncodeToString(p.salt), base64.RawStdEncoding.EncodeToString(p.key))
}

func parsePHC(s string) (phc, error) {
	bad := func(reason string) (phc, error) { return phc{}, fmt.Errorf("identity: %w: %s", ErrBadHash, reason) }
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" {
		return bad("not a PHC string")
	}
	if parts[1] != "argon2id" {
		return bad(fmt.Sprintf("algorithm %q is not argon2id", parts[1]))
	}
	if parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return bad(fmt.Sprintf("version %q is not v=%d", parts[2], argon2.Version))
	}
	var p phc
	var m, t, par uint64
	if n, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &par); err != nil || n != 3 ||
		parts[3] != fmt.Sprintf("m=%d,t=%d,p=%d", m, t, par) {
		return bad("parameters are not m=<KiB>,t=<passes>,p=<threads>")
	}
	// Bounds keep a bad row from costing the gateway more than a login.
	if m < 8*par || m > 1<<20 || t < 1 || t > 16 || par < 1 || par > 16 {
		return bad("parameters out of range")
	}
	p.memory, p.time, p.threads = uint32(m), uint32(t), uint8(par)
	var err error
	if p.salt, err = base64.RawStdEncoding.Strict().DecodeString(parts[4]); err != nil || len(p.salt) < 8 {
		return bad("salt")
	}
	if p.key, err = base64.RawStdEncoding.Strict().DecodeString(parts[5]); err != nil || len(p.key) < 16 || len(p.key) > 64 {
		return bad("hash")
	}
	return p, nil
}
