// Package privacy holds the typed personal data the gateway handles, the
// keys that blind, seal and pseudonymise it, and the policy that says which
// form each field may take in each sink.
//
// Raw values never leave these types by accident: String, LogValue and
// Format give only what the policy allows in a process log. Reveal is the one
// explicit way to the raw value, for the code paths that need it (sealing,
// HMAC input, a privacy-role export).
package privacy

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"unicode/utf8"
)

// FieldError says which input field was bad and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// ErrInvalid is matched (errors.Is) by every FieldError.
var ErrInvalid = errors.New("invalid argument")

func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

const (
	// MaxSerialLen bounds a serial number.
	MaxSerialLen = 64
	// MaxHardwareIDLen bounds a hardware identifier.
	MaxHardwareIDLen = 128
)

// SerialNumber is a device's serial number (personal data).
type SerialNumber struct{ v string }

// ParseSerialNumber validates s: 1..64 characters of A-Z a-z 0-9 '-' '_' '.'.
func ParseSerialNumber(s string) (SerialNumber, error) {
	if err := checkToken("serial_number", s, MaxSerialLen, isSerialChar); err != nil {
		return SerialNumber{}, err
	}
	return SerialNumber{v: s}, nil
}

func isSerialChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
}

// Reveal returns the raw serial number. Call it only to seal, to HMAC, or to
// show it to an authorised person.
func (s SerialNumber) Reveal() string { return s.v }

// IsZero reports whether s was never set.
func (s SerialNumber) IsZero() bool { return s.v == "" }

// Masked shows only the last two characters ("****34"), for operators
// without the privacy role: enough to tell a few devices apart on a screen,
// while a serial number's pattern (prefix and digits) leaves thousands of
// candidates, not a hundred.
func (s SerialNumber) Masked() string { return Mask(s.v) }

// MaskedChars is how many characters of a serial number Mask shows.
const MaskedChars = 2

// Mask masks all but the last two characters of v (and all of a value that
// short).
func Mask(v string) string {
	if len(v) <= MaskedChars {
		return "****"
	}
	return "****" + v[len(v)-MaskedChars:]
}

// String never shows the value.
func (s SerialNumber) String() string { return "[serial-number]" }

// GoString never shows the value.
func (s SerialNumber) GoString() string { return s.String() }

// LogValue never shows the value: logs carry the pseudonym instead.
func (s SerialNumber) LogValue() slog.Value { return logSafe(s.String()) }

// Format never shows the value, whatever the verb.
func (s SerialNumber) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// HardwareID is a device's hardware identifier (personal data). It is only
// ever stored as a verifier.
type HardwareID struct{ v string }

// ParseHardwareID validates s: 1..128 printable ASCII characters, no spaces.
func ParseHardwareID(s string) (HardwareID, error) {
	if err := checkToken("hardware_id", s, MaxHardwareIDLen, func(r rune) bool { return r > ' ' && r < 0x7f }); err != nil {
		return HardwareID{}, err
	}
	return HardwareID{v: s}, nil
}

// Reveal returns the raw value, for the verifier HMAC only.
func (h HardwareID) Reveal() string { return h.v }

// String never shows the value.
func (h HardwareID) String() string { return "[hardware-id]" }

// GoString never shows the value.
func (h HardwareID) GoString() string { return h.String() }

// LogValue never shows the value.
func (h HardwareID) LogValue() slog.Value { return logSafe(h.String()) }

// Format never shows the value, whatever the verb.
func (h HardwareID) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(h.String())) }

func checkToken(field, s string, max int, ok func(rune) bool) error {
	switch {
	case s == "":
		return &FieldError{Field: field, Reason: "must not be empty"}
	case len(s) > max:
		return &FieldError{Field: field, Reason: fmt.Sprintf("longer than %d bytes", max)}
	case !utf8.ValidString(s):
		return &FieldError{Field: field, Reason: "not valid UTF-8"}
	}
	for i, r := range s {
		if !ok(r) {
			return &FieldError{Field: field, Reason: fmt.Sprintf("character %d is not allowed", i+1)}
		}
	}
	return nil
}

// Addr is the source IP address of a device or client (personal data). Its
// only loggable form is the truncated prefix (/24 for IPv4, /48 for IPv6).
type Addr struct{ a netip.Addr }

// NewAddr wraps a source address.
func NewAddr(a netip.Addr) Addr { return Addr{a: a.Unmap()} }

// Truncated returns the /24 (IPv4) or /48 (IPv6) prefix holding the address,
// the only form the policy allows outside memory. The zero Addr gives the
// zero Prefix.
func (a Addr) Truncated() netip.Prefix {
	if !a.a.IsValid() {
		return netip.Prefix{}
	}
	bits := 48
	if a.a.Is4() {
		bits = 24
	}
	p, _ := a.a.Prefix(bits)
	return p
}

// Reveal returns the raw address (memory only: e.g. to compute an endpoint).
func (a Addr) Reveal() netip.Addr { return a.a }

// String gives the truncated prefix.
func (a Addr) String() string {
	if !a.a.IsValid() {
		return "unknown"
	}
	return a.Truncated().String()
}

// LogValue gives the truncated prefix.
func (a Addr) LogValue() slog.Value { return logSafe(a.String()) }

// Format gives the truncated prefix, whatever the verb.
func (a Addr) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(a.String())) }

// Endpoint is a peer's WireGuard UDP endpoint: memory only, never logged.
type Endpoint struct{ ap netip.AddrPort }

// NewEndpoint wraps an endpoint.
func NewEndpoint(ap netip.AddrPort) Endpoint { return Endpoint{ap: ap} }

// Reveal returns the raw endpoint.
func (e Endpoint) Reveal() netip.AddrPort { return e.ap }

// String never shows the value.
func (e Endpoint) String() string { return "[endpoint]" }

// LogValue never shows the value.
func (e Endpoint) LogValue() slog.Value { return logSafe(e.String()) }

// Format never shows the value.
func (e Endpoint) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(e.String())) }

// BlindIndex is HMAC(K_index, SN): how the registry finds a device without
// holding its serial number.
type BlindIndex [32]byte

// String is the hex form (not personal data on its own: it needs K_index).
func (b BlindIndex) String() string { return hex.EncodeToString(b[:]) }

// LogValue hides the index: it never changes, so in a log it would link a
// subject's records across days. Log the day's Pseudonym instead.
func (b BlindIndex) LogValue() slog.Value { return logSafe("[blind-index]") }

// Verifier is a keyed, memory-hard KDF of SN ‖ HWID (Keystore.Verifier):
// the only stored form of a HWID.
type Verifier [32]byte

// LogValue hides the verifier.
func (v Verifier) LogValue() slog.Value { return logSafe("[verifier]") }

// Pseudonym is HMAC(K_day, blind index) cut to 128 bits: links one
// subject's records within one UTC day, and nothing after its key is gone.
type Pseudonym [16]byte

// String is the hex form.
func (p Pseudonym) String() string { return hex.EncodeToString(p[:]) }

// LogValue is the hex form.
func (p Pseudonym) LogValue() slog.Value { return logSafe(p.String()) }

// safeText is a log value in the form the policy allows, made by a privacy
// type's LogValue. ReplaceAttr lets it through under any key; any other
// value under a personal-data key is redacted.
type safeText string

// String is the text.
func (t safeText) String() string { return string(t) }

// MarshalText is the text (the JSON and text handlers use it).
func (t safeText) MarshalText() ([]byte, error) { return []byte(t), nil }

func logSafe(s string) slog.Value { return slog.AnyValue(safeText(s)) }
