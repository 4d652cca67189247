package gateway

import (
	"errors"
	"fmt"
)

// Domain errors. pkg/api maps them to gRPC status codes; nothing else does.
var (
	// ErrInvalid: bad input (the wrapped FieldError names the field).
	ErrInvalid = errors.New("invalid argument")
	// ErrUnauthenticated: unknown device, wrong hardware id, bad or expired token.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermission: authenticated but not allowed (revoked, key mismatch, not bound).
	ErrPermission = errors.New("permission denied")
	// ErrRateLimited: lockout or a full admission queue.
	ErrRateLimited = errors.New("rate limited")
	// ErrNotFound: the named thing does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request conflicts with stored state (e.g. key in use).
	ErrConflict = errors.New("conflict")
	// ErrExhausted: no free virtual address.
	ErrExhausted = errors.New("resource exhausted")
	// ErrPrecondition: the system is not in a state to do it (device offline).
	ErrPrecondition = errors.New("failed precondition")
	// ErrUnavailable: a dependency (tunnel, store) failed; retry later.
	ErrUnavailable = errors.New("unavailable")
)

// Error is a domain error with a public message and an optional cause that
// stays internal (it is logged, never sent to the caller).
type Error struct {
	Kind  error  // one of the Err* sentinels
	Msg   string // safe to show to the caller: no personal data
	Cause error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Msg + ": " + e.Cause.Error()
	}
	return e.Msg
}

// Is matches the sentinel kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

func newErr(kind error, cause error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Cause: cause}
}

// PublicMessage returns the message safe for callers.
func PublicMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Msg
	}
	return err.Error()
}
