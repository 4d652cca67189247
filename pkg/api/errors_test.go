package api

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
)

// A throttled answer has the code and message of a plain refusal plus a
// RetryInfo hint, jittered within [d, 1.5d).
func TestToStatusRetryHint(t *testing.T) {
	plain := toStatus(&gateway.Error{Kind: gateway.ErrUnauthenticated, Msg: "refused"})
	const d = 2 * time.Second
	hinted := toStatus(&gateway.Error{Kind: gateway.ErrUnauthenticated, Msg: "refused", Cause: errors.New("x"), RetryAfter: d})
	ps, hs := status.Convert(plain), status.Convert(hinted)
	if ps.Code() != codes.Unauthenticated || hs.Code() != ps.Code() || hs.Message() != ps.Message() {
		t.Fatalf("plain %v, hinted %v: want the same code and message", ps, hs)
	}
	if len(ps.Details()) != 0 {
		t.Fatalf("plain refusal carries details %v", ps.Details())
	}
	var got time.Duration
	for _, det := range hs.Details() {
		if ri, ok := det.(*errdetails.RetryInfo); ok {
			got = ri.GetRetryDelay().AsDuration()
		}
	}
	if got < d || got >= d*3/2 {
		t.Fatalf("retry hint %v, want within [%v, %v)", got, d, d*3/2)
	}
	busy := status.Convert(toStatus(&gateway.Error{Kind: gateway.ErrRateLimited, Msg: "busy", RetryAfter: time.Second}))
	if busy.Code() != codes.ResourceExhausted || len(busy.Details()) != 1 {
		t.Fatalf("busy: %v %v", busy.Code(), busy.Details())
	}
}
