package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// ClientServer serves ClientService.
type ClientServer struct {
	gatewayv1.UnimplementedClientServiceServer
	GW *gateway.Gateway
	// Audit, when set, records users' own cancellations.
	Audit AuditLog
}

// Login checks an account's password and returns an access token.
func (s *ClientServer) Login(ctx context.Context, req *gatewayv1.ClientLoginRequest) (*gatewayv1.ClientLoginResponse, error) {
	if req.GetAccount() == "" {
		return nil, invalid("account", "must not be empty")
	}
	if n := len(req.GetPassword()); n == 0 || n > 1024 {
		return nil, invalid("password", "must be 1 to 1024 bytes")
	}
	src, _ := peerAddrs(ctx)
	tok, exp, err := s.GW.ClientLogin(ctx, req.GetAccount(), []byte(req.GetPassword()), src)
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.ClientLoginResponse{AccessToken: tok, ExpiresAt: timestamppb.New(exp)}, nil
}

// account is the caller the Guard authenticated (ClientToken methods).
func (s *ClientServer) account(ctx context.Context) (store.Account, error) {
	a, ok := AccountFrom(ctx)
	if !ok {
		return store.Account{}, status.Error(codes.Unauthenticated, "no authenticated account (method not listed as client token)")
	}
	return a, nil
}

// ListDevices lists the account's devices.
func (s *ClientServer) ListDevices(ctx context.Context, _ *gatewayv1.ListBoundDevicesRequest) (*gatewayv1.ListBoundDevicesResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	devs, err := s.GW.BoundDevices(ctx, a)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &gatewayv1.ListBoundDevicesResponse{}
	for _, d := range devs {
		bd := &gatewayv1.BoundDevice{
			SerialNumber: d.Serial.Reveal(), Online: d.Online, Addresses: prefixStrings(d.Addresses),
		}
		if !d.BoundByAnother.IsZero() {
			bd.BoundByAnotherAccountAt = timestamppb.New(d.BoundByAnother)
		}
		out.Devices = append(out.Devices, bd)
	}
	return out, nil
}

// BindDevice redeems a binding code.
func (s *ClientServer) BindDevice(ctx context.Context, req *gatewayv1.BindDeviceRequest) (*gatewayv1.BindDeviceResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetCode() == "" {
		return nil, invalid("code", "must not be empty")
	}
	src, _ := peerAddrs(ctx)
	sn, err := s.GW.BindDevice(ctx, a, req.GetCode(), src)
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.BindDeviceResponse{SerialNumber: sn.Reveal()}, nil
}

// UnbindDevice removes a binding.
func (s *ClientServer) UnbindDevice(ctx context.Context, req *gatewayv1.UnbindDeviceRequest) (*gatewayv1.UnbindDeviceResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	sn, err := privacy.ParseSerialNumber(req.GetSerialNumber())
	if err != nil {
		return nil, toStatus(err)
	}
	receipt, err := s.GW.UnbindDevice(ctx, a, sn)
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.UnbindDeviceResponse{Removed: receipt}, nil
}

// OpenSession opens a remote-control session.
func (s *ClientServer) OpenSession(ctx context.Context, req *gatewayv1.OpenSessionRequest) (*gatewayv1.OpenSessionResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	sn, err := privacy.ParseSerialNumber(req.GetSerialNumber())
	if err != nil {
		return nil, toStatus(err)
	}
	if len(req.GetClientPublicKey()) != 32 {
		return nil, invalid("client_public_key", "must be 32 bytes")
	}
	_, local := peerAddrs(ctx)
	g, err := s.GW.OpenSession(ctx, a, sn, [32]byte(req.GetClientPublicKey()), local)
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.OpenSessionResponse{
		SessionId:       g.ID,
		ClientAddresses: prefixStrings(g.ClientAddrs),
		DeviceAddresses: prefixStrings(g.DeviceAddrs),
		Gateway:         gatewayPeer(g.GatewayKey, g.Endpoint, g.AllowedIPs, g.Keepalive),
		ExpiresAt:       timestamppb.New(g.ExpiresAt),
		Mtu:             uint32(g.MTU),
	}, nil
}

// CloseSession closes one of the account's sessions.
func (s *ClientServer) CloseSession(ctx context.Context, req *gatewayv1.CloseSessionRequest) (*gatewayv1.CloseSessionResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetSessionId() == "" {
		return nil, invalid("session_id", "must not be empty")
	}
	if err := s.GW.CloseSession(ctx, &a, req.GetSessionId()); err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.CloseSessionResponse{}, nil
}

// GetSession returns one of the account's open sessions.
func (s *ClientServer) GetSession(ctx context.Context, req *gatewayv1.GetSessionRequest) (*gatewayv1.SessionInfo, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetSessionId() == "" {
		return nil, invalid("session_id", "must not be empty")
	}
	_, local := peerAddrs(ctx)
	v, err := s.GW.Session(ctx, a, req.GetSessionId(), local)
	if err != nil {
		return nil, toStatus(err)
	}
	info := &gatewayv1.SessionInfo{
		SessionId: v.ID, ClientAddresses: prefixStrings(v.ClientAddrs), DeviceAddresses: prefixStrings(v.DeviceAddrs),
		OpenedAt: timestamppb.New(v.OpenedAt), ExpiresAt: timestamppb.New(v.ExpiresAt),
	}
	if p := v.Gateway; p != nil {
		info.Gateway = gatewayPeer(p.Key, p.Endpoint, p.AllowedIPs, p.Keepalive)
	}
	return info, nil
}

// ChangePassword replaces the caller's password; the account's sessions
// close and its tokens are revoked, and the answer carries a fresh token.
func (s *ClientServer) ChangePassword(ctx context.Context, req *gatewayv1.ChangePasswordRequest) (*gatewayv1.ChangePasswordResponse, error) {
	a, err := s.account(ctx)
	if err != nil {
		return nil, err
	}
	if n := len(req.GetOldPassword()); n == 0 || n > 1024 {
		return nil, invalid("old_password", "must be 1 to 1024 bytes")
	}
	if n := len(req.GetNewPassword()); n < 8 || n > 1024 {
		return nil, invalid("new_password", "must be 8 to 1024 bytes")
	}
	src, _ := peerAddrs(ctx)
	tok, exp, closed, err := s.GW.ChangePassword(ctx, a, []byte(req.GetOldPassword()), []byte(req.GetNewPassword()), src)
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.ChangePasswordResponse{AccessToken: tok, ExpiresAt: timestamppb.New(exp), SessionsClosed: int32(closed)}, nil
}
