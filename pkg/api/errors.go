// Package api is the gRPC edge: it turns protobuf requests into typed domain
// values (and back), maps domain errors to status codes, and holds the
// interceptors. Nothing else in the project knows about gRPC codes.
package api

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
)

// toStatus maps a domain error to a gRPC status with a message safe to send;
// a throttled error carries a jittered google.rpc.RetryInfo hint.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	st := statusOf(err)
	if d := gateway.RetryAfter(err); d > 0 {
		if withHint, herr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(jitter(d))}); herr == nil {
			st = withHint
		}
	}
	return st.Err()
}

// jitter spreads retry hints over [d, 1.5d) so throttled callers do not
// come back in step.
func jitter(d time.Duration) time.Duration {
	return d + rand.N(d/2+1)
}

// statusOf is the status (code and public message) of a domain error.
func statusOf(err error) *status.Status {
	msg := gateway.PublicMessage(err)
	var fe *privacy.FieldError
	switch {
	// Before FieldError: a malformed credential is an authentication
	// failure, not a bad field.
	case errors.Is(err, gateway.ErrUnauthenticated):
		return status.New(codes.Unauthenticated, msg)
	case errors.As(err, &fe):
		return status.New(codes.InvalidArgument, fe.Error())
	case errors.Is(err, gateway.ErrInvalid):
		return status.New(codes.InvalidArgument, msg)
	case errors.Is(err, gateway.ErrPermission):
		return status.New(codes.PermissionDenied, msg)
	case errors.Is(err, gateway.ErrRateLimited):
		return status.New(codes.ResourceExhausted, msg)
	case errors.Is(err, gateway.ErrExhausted):
		return status.New(codes.ResourceExhausted, msg)
	case errors.Is(err, gateway.ErrNotFound):
		return status.New(codes.NotFound, msg)
	case errors.Is(err, gateway.ErrConflict):
		return status.New(codes.AlreadyExists, msg)
	case errors.Is(err, gateway.ErrPrecondition):
		return status.New(codes.FailedPrecondition, msg)
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, gateway.ErrUnavailable):
		return status.New(codes.Unavailable, msg)
	default:
		return status.New(codes.Internal, "internal error")
	}
}

func invalid(field, reason string) error {
	return status.Error(codes.InvalidArgument, field+": "+reason)
}
