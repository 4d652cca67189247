package store

import "time"

// Validation shared by every backend, so that each rejects bad input with
// the same precise error (a *privacy.FieldError naming the field).

// Invalid is the error for a bad field value.
func Invalid(field, reason string) error { return invalid(field, reason) }

// CheckTime rejects a zero time and one outside what Unix nanoseconds hold.
func CheckTime(field string, t time.Time) error { return checkTime(field, t) }

// CheckSourcePrefix accepts "" or a masked prefix no longer than /24 (IPv4)
// or /48 (IPv6): a full source address must never reach the database.
func CheckSourcePrefix(v string) error { return checkSourcePrefix(v) }

// CheckAdmission validates an Admission before it is queued or written.
func CheckAdmission(a Admission) error {
	switch {
	case a.Key == Key{}:
		return invalid("key", "must not be zero")
	case a.First == 0:
		return invalid("first", "must be at least 1")
	case a.First > a.Last:
		return invalid("last", "must not be below first")
	case a.TokenHash == [32]byte{}:
		return invalid("token_hash", "must not be zero")
	}
	if err := checkInstanceID("gateway", a.Gateway); err != nil {
		return err
	}
	if _, err := time.Parse(time.DateOnly, a.Day); err != nil {
		return invalid("day", "must be a UTC day YYYY-MM-DD")
	}
	return checkTime("token_expires", a.TokenExpires)
}
