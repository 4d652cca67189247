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
