package gateway

import (
	"errors"
	"fmt"
	"time"
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
	// RetryAfter, when positive, says the caller was throttled and may try
	// again after this long (the API edge sends it as a jittered hint).
	RetryAfter time.Duration
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

// Public messages shared by answers that must not be told apart.
const (
	// msgDeviceRefused answers an unknown serial number, a wrong hardware
	// id and a throttled device login alike.
	msgDeviceRefused = "device not enrolled, wrong hardware id, or too many attempts"
	// msgClientRefused answers an unknown account, a wrong password and a
	// throttled client login alike.
	msgClientRefused = "wrong account or password, or too many attempts"
	// busyRetry is the hint sent with "gateway busy" answers.
	busyRetry = time.Second
)

// throttled is the answer to a throttled attempt: ErrUnauthenticated with
// the same message as a failed one, plus the retry hint.
func throttled(cause error, after time.Duration, msg string) error {
	return &Error{Kind: ErrUnauthenticated, Msg: msg, Cause: cause, RetryAfter: max(after, time.Millisecond)}
}

// busy answers a full admission queue or password pool: ErrRateLimited
// with the busyRetry hint; what names what there are too many of.
func busy(cause error, what string) error {
	return &Error{Kind: ErrRateLimited, Msg: "gateway busy: too many " + what + " at once; retry with backoff", Cause: cause, RetryAfter: busyRetry}
}

// RetryAfter returns the retry hint of a throttled error (0: none).
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// PublicMessage returns the message safe for callers.
func PublicMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Msg
	}
	return err.Error()
}
