package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/audit"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// ExportMyData serves the caller's right of access: everything stored
// about their account, as JSON.
func (s *ClientServer) ExportMyData(ctx context.Context, _ *gatewayv1.ExportMyDataRequest) (*gatewayv1.ExportMyDataResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	out, err := s.GW.ExportAccount(ctx, a)
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.ExportMyDataResponse{Json: string(out)}, nil
}

// DeleteAccount is the caller's own cancellation, confirmed with the
// account's password: the account is erased as an operator's erasure would,
// and the audit log records it (operator "self", the account's index).
func (s *ClientServer) DeleteAccount(ctx context.Context, req *gatewayv1.DeleteMyAccountRequest) (*gatewayv1.DeleteMyAccountResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	if n := len(req.GetPassword()); n == 0 || n > 1024 {
		return nil, invalid("password", "must be 1 to 1024 bytes")
	}
	receipt, err := s.GW.CancelAccount(ctx, a, []byte(req.GetPassword()))
	if s.Audit != nil {
		e := audit.Entry{Time: s.GW.Now(), Operator: "self", Role: "account", Action: "cancel_account", Target: a.NameIndex.String(), Result: "ok"}
		if err != nil {
			e.Result = status.Code(toStatus(err)).String()
		}
		if _, aerr := s.Audit.Append(e); aerr != nil && err == nil {
			return nil, status.Error(codes.Internal, "account deleted, but writing the audit log failed")
		}
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.DeleteMyAccountResponse{Removed: receipt}, nil
}
