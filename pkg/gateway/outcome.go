package gateway

// Outcome is the result of a login or other admission step. This is the one
// list: metrics labels, connection-log rows and process-log lines all use it.
type Outcome string

// The outcomes.
const (
	OutcomeOK          Outcome = "ok"
	OutcomeDenied      Outcome = "denied"
	OutcomeInvalid     Outcome = "invalid"
	OutcomeRateLimited Outcome = "rate_limited"
	OutcomeRekeyed     Outcome = "rekeyed"
)

// Outcomes lists every outcome, so metrics can create all label values up front.
func Outcomes() []Outcome {
	return []Outcome{OutcomeOK, OutcomeDenied, OutcomeInvalid, OutcomeRateLimited, OutcomeRekeyed}
}

// Connection-log events.
const (
	EventLogin        = "login"
	EventLogout       = "logout"
	EventSessionOpen  = "session_open"
	EventSessionClose = "session_close"
	EventClientLogin  = "client_login"
)
