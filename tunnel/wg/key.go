package wg

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// KeySize is the size of a WireGuard (Curve25519) key in bytes.
const KeySize = 32

// Key is a WireGuard Curve25519 key, public or private. Its text form is
// standard base64 (44 characters), as wg(8) prints it.
type Key [KeySize]byte

// lowOrderPoints are the Curve25519 points of small order (the list libsodium
// refuses in crypto_scalarmult_curve25519 and WireGuard implementations check
// for). A public key equal to one of them, with or without the top bit set
// (which X25519 ignores), forces a predictable shared secret.
var lowOrderPoints = [...]Key{
	// 0 (order 4)
	{},
	// 1 (order 1)
	{0x01},
	// order 8
	{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
	// order 8
	{0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
		0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
	// p-1 (order 2)
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	// p (= 0, order 4)
	{0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	// p+1 (= 1, order 1)
	{0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
}

// ParseKey parses a key in standard base64 (the form wg(8) uses).
func ParseKey(s string) (Key, error) {
	if len(s) != base64.StdEncoding.EncodedLen(KeySize) {
		return Key{}, fmt.Errorf("%w: base64 key must be %d characters, got %d",
			ErrInvalidKey, base64.StdEncoding.EncodedLen(KeySize), len(s))
	}
	// 44 characters without padding decode to 33 bytes: size the buffer
	// for what the input could hold, then check the length.
	var buf [KeySize + 1]byte
	n, err := base64.StdEncoding.Strict().Decode(buf[:], []byte(s))
	if err != nil {
		return Key{}, fmt.Errorf("%w: not base64: %v", ErrInvalidKey, err)
	}
	if n != KeySize {
		return Key{}, fmt.Errorf("%w: decodes to %d bytes, want %d", ErrInvalidKey, n, KeySize)
	}
	return Key(buf[:KeySize]), nil
}

// parseHexKey parses the lowercase hex form the UAPI protocol uses.
func parseHexKey(s string) (Key, error) {
	var k Key
	if len(s) != hex.EncodedLen(KeySize) {
		return Key{}, fmt.Errorf("%w: hex key must be %d characters, got %d", ErrInvalidKey, hex.EncodedLen(KeySize), len(s))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return Key{}, fmt.Errorf("%w: not hex: %v", ErrInvalidKey, err)
	}
	return k, nil
}

// KeyFromBytes copies a 32-byte key. Any other length is an error.
func KeyFromBytes(b []byte) (Key, error) {
	if len(b) != KeySize {
		return Key{}, fmt.Errorf("%w: key must be exactly %d bytes, got %d", ErrInvalidKey, KeySize, len(b))
	}
	return Key(b), nil
}

// String returns the key in standard base64, as wg(8) prints it.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Hex returns the key in lowercase hex, as the UAPI protocol carries it.
func (k Key) Hex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether every byte of the key is zero.
func (k Key) IsZero() bool {
	var zero Key
	return subtle.ConstantTimeCompare(k[:], zero[:]) == 1
}

// Validate refuses the all-zero key, non-canonical encodings and the
// Curve25519 points of small order. It is meant for public keys received
// from outside. X25519 ignores the top bit and reduces u modulo 2^255-19, so
// a key with the top bit set, or with u >= 2^255-19, is another spelling of
// a canonical key (every honest public key is canonical): it would pass as
// "a different key" of the same peer. Such keys are refused.
func (k Key) Validate() error {
	if k.IsZero() {
		return fmt.Errorf("%w: all-zero key", ErrInvalidKey)
	}
	masked := k
	masked[KeySize-1] &= 0x7f
	for i := range lowOrderPoints {
		if subtle.ConstantTimeCompare(masked[:], lowOrderPoints[i][:]) == 1 {
			return fmt.Errorf("%w: a Curve25519 point of small order", ErrInvalidKey)
		}
	}
	if !k.canonical() {
		return fmt.Errorf("%w: not canonical (top bit set or u >= 2^255-19)", ErrInvalidKey)
	}
	return nil
}

// canonical reports whether k, read as a little-endian integer, is below
// p = 2^255-19 (which implies the top bit is clear).
func (k Key) canonical() bool {
	if k[KeySize-1]&0x80 != 0 {
		return false
	}
	// u >= p only when bytes 1..30 are 0xff, byte 31 is 0x7f and byte 0 >= 0xed.
	if k[KeySize-1] != 0x7f || k[0] < 0xed {
		return true
	}
	for _, b := range k[1 : KeySize-1] {
		if b != 0xff {
			return true
		}
	}
	return false
}

// GeneratePrivateKey returns a new random, clamped Curve25519 private key.
func GeneratePrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate private key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// PublicKey returns the public key of a private key.
func (k Key) PublicKey() Key {
	pub, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// Unreachable: X25519 fails only for a low-order peer point, and the
		// base point is not one.
		panic("wg: X25519 with the base point failed: " + err.Error())
	}
	return Key(pub)
}
