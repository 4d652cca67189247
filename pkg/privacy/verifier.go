package privacy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters of the HWID verifier. A login computes one verifier
// (an unknown serial number too), so they are chosen to keep a login well
// under 1 ms of CPU while making every HWID guess of someone holding the
// keystore cost memory and time (BenchmarkVerifier beside
// BenchmarkVerifierHMAC measures both).
const (
	VerifierMemoryKiB = 128
	VerifierTime      = 1
	VerifierThreads   = 1
)

// VerifierVersion is the version of the verifier scheme Verifier computes.
// Version 1 was HMAC-SHA256 alone; version 2 wraps it in argon2id, so a
// version-1 verifier becomes a version-2 one without the HWID
// (UpgradeVerifier).
const VerifierVersion = 2

// Domain separation of the argon2id salt under K_index.
const domainVerifierSalt = "dasset/hwid-kdf-salt/v2\x00"

// Verifier is the only stored form of a HWID: a keyed, memory-hard KDF of
// SN ‖ HWID,
//
//	argon2id(HMAC-SHA256(K_index, "dasset/hwid/v1\x00" ‖ len(sn) ‖ sn ‖ hwid),
//	         salt = HMAC-SHA256(K_index, "dasset/hwid-kdf-salt/v2\x00"))
//
// with len(sn) as two bytes big-endian and the parameters above. Both
// inputs are keyed: without K_index nothing can be guessed at all; with it,
// every guess costs an argon2id evaluation.
func (k *Keystore) Verifier(sn SerialNumber, hw HardwareID) Verifier {
	return k.UpgradeVerifier(k.hmacVerifier(sn, hw))
}

// UpgradeVerifier turns a version-1 (HMAC-only) verifier into the current
// one: what Verifier gives for the same SN and HWID. It needs no HWID, so a
// database of version-1 verifiers is upgraded at start, row by row, and no
// version-1 verifier stays on disk.
func (k *Keystore) UpgradeVerifier(v1 Verifier) Verifier {
	var v Verifier
	copy(v[:], argon2.IDKey(v1[:], k.verSalt, VerifierTime, VerifierMemoryKiB, VerifierThreads, uint32(len(v))))
	return v
}

// hmacVerifier is the version-1 verifier, HMAC-SHA256(K_index,
// "dasset/hwid/v1\x00" ‖ len(sn) ‖ sn ‖ hwid): the keyed input of the KDF.
func (k *Keystore) hmacVerifier(sn SerialNumber, hw HardwareID) Verifier {
	m := hmac.New(sha256.New, k.index)
	m.Write([]byte(domainHWID))
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], uint16(len(sn.v)))
	m.Write(l[:])
	m.Write([]byte(sn.v))
	m.Write([]byte(hw.v))
	var v Verifier
	m.Sum(v[:0])
	return v
}

// verifierSalt derives the salt of the verifier KDF (OpenKeystore keeps
// it, so a login does not compute it again).
func (k *Keystore) verifierSalt() []byte {
	m := hmac.New(sha256.New, k.index)
	m.Write([]byte(domainVerifierSalt))
	return m.Sum(nil)
}
