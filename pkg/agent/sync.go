package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// login calls DeviceService.Login on the gateway cand until it succeeds,
// retrying transient failures with backoff; refusals are returned at once.
// With failover, a gateway that stays unreachable (failoverAfter attempts
// in a row) is given up: login returns *errFailover. The key sent is
// always the device's own (pinned) key: another gateway of the fleet
// admits it as it is, never re-keyed.
func (a *Agent) login(ctx context.Context, client gatewayv1.DeviceServiceClient, cand candidate, failover bool) (*gatewayv1.DeviceLoginResponse, error) {
	req := &gatewayv1.DeviceLoginRequest{
		SerialNumber: a.serial.Reveal(),
		HardwareId:   a.hwid.Reveal(),
		PublicKey:    a.pub[:],
		AgentVersion: a.cfg.Version,
	}
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	bo.rnd = a.rnd
	unreachable := 0
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, loginTimeout)
		resp, err := client.Login(cctx, req)
		cancel()
		if err == nil {
			if resp.GetDeviceToken() == "" {
				return nil, errors.New("gateway sent an unusable login response: device_token: empty")
			}
			if err := writeToken(a.cfg.StateDir, resp.GetDeviceToken()); err != nil {
				return nil, err
			}
			a.mu.Lock()
			a.instance = resp.GetGatewayInstanceId()
			a.mu.Unlock()
			a.log.Info("logged in", "gateway", cand.name, "gateway_instance", resp.GetGatewayInstanceId(),
				"outcome", resp.GetOutcome().String(), "addresses", resp.GetAddresses(), "attempt", attempt)
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		hint := retryHint(err)
		if ferr := loginRefusal(err); ferr != nil && hint == 0 {
			return nil, ferr
		}
		if hint == 0 && unreachableCode(err) {
			unreachable++
			if failover && unreachable >= failoverAfter {
				return nil, &errFailover{err}
			}
		} else {
			unreachable = 0
		}
		// A throttled answer says when to come back: honour it (it is
		// already jittered by the gateway), never coming back sooner than
		// our own backoff.
		d := max(bo.next(), hint)
		a.log.Warn("login failed; retrying", "gateway", cand.name, "code", status.Code(err).String(), "error", a.scrub.message(err), "attempt", attempt, "retry_in", d)
		if err := sleep(ctx, d); err != nil {
			return nil, err
		}
	}
}

// retryHint is the delay a gateway asked for in a google.rpc.RetryInfo
// detail (0: none). A refusal that carries one is throttling, not a final
// answer: the same message covers an unknown device, a wrong hardware id
// and too many attempts, and only the hint tells them apart.
func retryHint(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			if h := ri.GetRetryDelay().AsDuration(); h > 0 {
				return min(h, maxRetryHint)
			}
		}
	}
	return 0
}

// maxRetryHint bounds how long a hint can park the agent.
const maxRetryHint = time.Hour

// loginRefusal returns the error for a Login failure that retrying cannot
// fix, or nil for a transient one.
func loginRefusal(err error) error {
	st := status.Convert(err)
	msg := st.Message()
	switch st.Code() {
	case codes.Unauthenticated:
		return fmt.Errorf("%w: device not enrolled or wrong hardware id (gateway said: %s)", ErrLoginRefused, msg)
	case codes.PermissionDenied:
		return fmt.Errorf("%w: device revoked, locked out, or enrolled with another WireGuard key; an operator resets a pinned key with dassetctl devices reset-key (gateway said: %s)", ErrLoginRefused, msg)
	case codes.AlreadyExists:
		return fmt.Errorf("%w: this device's WireGuard key belongs to another device or client (gateway said: %s)", ErrLoginRefused, msg)
	case codes.InvalidArgument:
		return fmt.Errorf("%w: invalid login request (gateway said: %s)", ErrLoginRefused, msg)
	case codes.FailedPrecondition:
		return fmt.Errorf("%w: %s", ErrLoginRefused, msg)
	case codes.Unimplemented:
		return fmt.Errorf("%w: this gateway has no DeviceService.Login (is the address right?)", ErrLoginRefused)
	}
	return nil
}

// unreachableCode says whether err means the gateway could not be reached
// or did not answer (as opposed to an answer, even a refusal).
func unreachableCode(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return errors.Is(err, errStreamIdle)
}

// errStreamIdle ends a Sync stream that delivered nothing for too long.
var errStreamIdle = errors.New("sync stream idle")

// syncLoop follows the Sync stream, reconnecting with backoff, logging in
// again when the gateway no longer knows the token, and returning
// ErrRevoked when the device is revoked. With failover, a stream that broke
// and whose reconnect failed too returns *errFailover.
func (a *Agent) syncLoop(ctx context.Context, client gatewayv1.DeviceServiceClient, cand candidate, failover bool, token string) error {
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	bo.rnd = a.rnd
	broken := 0         // stream attempts in a row that ended without an event
	var instance string // last gateway_instance seen, across streams
	reloginPending := false
	for {
		started := time.Now()
		gotEvent, err := a.syncOnce(ctx, client, token, &instance)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrRevoked) {
			a.teardown()
			if rerr := removeToken(a.cfg.StateDir); rerr != nil {
				a.log.Warn("removing the device token", "error", rerr)
			}
			return err
		}
		if time.Since(started) > stableStreamTime || gotEvent {
			reloginPending = false
		}
		if time.Since(started) > stableStreamTime {
			bo.reset()
		}
		if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied {
			// The token is unknown (a wiped or replaced gateway) or no longer
			// good: a fresh login says whether the device is still welcome.
			a.log.Warn("the gateway refused the device token; logging in again", "code", c.String(), "error", a.scrub.message(err))
			if reloginPending {
				// The last fresh token was refused too: do not spin.
				if err := sleep(ctx, bo.next()); err != nil {
					return err
				}
			}
			reloginPending = true
			resp, err := a.login(ctx, client, cand, failover)
			if err != nil {
				return err
			}
			if err := a.configure(ctx, cand.addr, resp); err != nil {
				return err
			}
			token = resp.GetDeviceToken()
			continue
		}
		if gotEvent {
			broken = 0
		}
		broken++
		// A silent stream is a gateway gone without closing the connection:
		// a reconnect would ride the same dead transport for another
		// SyncIdleTimeout, so move on at once.
		if failover && (broken >= failoverAfter || errors.Is(err, errStreamIdle)) {
			return &errFailover{err}
		}
		d := bo.next()
		a.log.Warn("sync stream ended; reconnecting", "gateway", cand.name, "code", status.Code(err).String(), "error", a.scrub.message(err), "retry_in", d)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// syncOnce opens one Sync stream and handles its events until it ends.
// gotEvent says whether any event arrived.
func (a *Agent) syncOnce(ctx context.Context, client gatewayv1.DeviceServiceClient, token string, instance *string) (gotEvent bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+token)
	stream, err := client.Sync(sctx, &gatewayv1.SyncRequest{})
	if err != nil {
		return false, err
	}
	a.log.Info("sync stream connected")
	a.forceHandshake("sync stream connected")

	idle := time.AfterFunc(a.cfg.SyncIdleTimeout, func() { cancel(errStreamIdle) })
	defer idle.Stop()
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(context.Cause(sctx), errStreamIdle) && ctx.Err() == nil {
				return gotEvent, fmt.Errorf("%w: nothing for %v", errStreamIdle, a.cfg.SyncIdleTimeout)
			}
			return gotEvent, err
		}
		gotEvent = true
		idle.Reset(a.cfg.SyncIdleTimeout)
		if err := a.handleEvent(ev, instance); err != nil {
			return gotEvent, err
		}
	}
}

func (a *Agent) handleEvent(ev *gatewayv1.SyncEvent, instance *string) error {
	if a.cfg.OnEvent != nil {
		a.cfg.OnEvent(ev)
	}
	switch e := ev.GetEvent().(type) {
	case *gatewayv1.SyncEvent_SessionOpened:
		so := e.SessionOpened
		a.log.Info("session opened", "session_id", so.GetSessionId(), "clients", len(so.GetClientAddresses()),
			"client_addresses", so.GetClientAddresses(), "expires_at", so.GetExpiresAt().AsTime())
		a.forceHandshake("session opened")
	case *gatewayv1.SyncEvent_SessionClosed:
		sc := e.SessionClosed
		a.log.Info("session closed", "session_id", sc.GetSessionId(), "reason", sc.GetReason())
	case *gatewayv1.SyncEvent_Revoked:
		a.log.Warn("device revoked by the gateway", "reason", e.Revoked.GetReason())
		if r := e.Revoked.GetReason(); r != "" {
			return fmt.Errorf("%w: %s", ErrRevoked, r)
		}
		return ErrRevoked
	case *gatewayv1.SyncEvent_Keepalive:
		inst := e.Keepalive.GetGatewayInstance()
		a.log.Debug("keepalive", "gateway_instance", inst)
		if inst != "" && *instance != "" && inst != *instance {
			a.log.Info("the gateway restarted; forcing a WireGuard handshake")
			a.forceHandshake("gateway instance changed")
		}
		if inst != "" {
			*instance = inst
		}
	default:
		a.log.Debug("unknown sync event")
	}
	return nil
}
