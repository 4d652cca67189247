package api

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// DeviceServer serves DeviceService.
type DeviceServer struct {
	gatewayv1.UnimplementedDeviceServiceServer
	GW                *gateway.Gateway
	Log               *slog.Logger
	KeepaliveInterval time.Duration // Sync keepalive; default 15s
	// Instance is this gateway's stable instance id, named in the Login
	// response.
	Instance string
}

// Login admits a device.
func (s *DeviceServer) Login(ctx context.Context, req *gatewayv1.DeviceLoginRequest) (*gatewayv1.DeviceLoginResponse, error) {
	src, local := peerAddrs(ctx)
	sn, err := privacy.ParseSerialNumber(req.GetSerialNumber())
	if err != nil {
		s.GW.RecordInvalidLogin(src, "serial_number")
		return nil, toStatus(err)
	}
	hw, err := privacy.ParseHardwareID(req.GetHardwareId())
	if err != nil {
		s.GW.RecordInvalidLogin(src, "hardware_id")
		return nil, toStatus(err)
	}
	if n := len(req.GetPublicKey()); n != 32 {
		s.GW.RecordInvalidLogin(src, "public_key")
		return nil, invalid("public_key", "must be 32 bytes, got "+strconv.Itoa(n))
	}
	if len(req.GetAgentVersion()) > 64 {
		s.GW.RecordInvalidLogin(src, "agent_version")
		return nil, invalid("agent_version", "longer than 64 bytes")
	}
	adm, err := s.GW.Admit(ctx, gateway.LoginRequest{
		Serial: sn, Hardware: hw, Key: [32]byte(req.GetPublicKey()), Source: src, Local: local,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.DeviceLoginResponse{
		Addresses:         prefixStrings(adm.Addresses),
		Gateway:           gatewayPeer(adm.GatewayKey, adm.Endpoint, adm.AllowedIPs, adm.Keepalive),
		Mtu:               uint32(adm.MTU),
		DeviceToken:       adm.Token,
		TokenExpiresAt:    timestamppb.New(adm.TokenExpires),
		Outcome:           outcomeProto(adm.Outcome),
		GatewayInstanceId: s.Instance,
	}, nil
}

func outcomeProto(o gateway.Outcome) gatewayv1.LoginOutcome {
	switch o {
	case gateway.OutcomeOK:
		return gatewayv1.LoginOutcome_LOGIN_OUTCOME_OK
	case gateway.OutcomeRekeyed:
		return gatewayv1.LoginOutcome_LOGIN_OUTCOME_REKEYED
	case gateway.OutcomeDenied:
		return gatewayv1.LoginOutcome_LOGIN_OUTCOME_DENIED
	case gateway.OutcomeInvalid:
		return gatewayv1.LoginOutcome_LOGIN_OUTCOME_INVALID
	case gateway.OutcomeRateLimited:
		return gatewayv1.LoginOutcome_LOGIN_OUTCOME_RATE_LIMITED
	}
	return gatewayv1.LoginOutcome_LOGIN_OUTCOME_UNSPECIFIED
}

func gatewayPeer(key [32]byte, endpoint string, allowed []netip.Prefix, keepalive time.Duration) *gatewayv1.GatewayPeer {
	return &gatewayv1.GatewayPeer{
		PublicKey:                  key[:],
		Endpoint:                   endpoint,
		AllowedIps:                 prefixStrings(allowed),
		PersistentKeepaliveSeconds: uint32(keepalive / time.Second),
	}
}

// Sync streams a device's events until it disconnects.
func (s *DeviceServer) Sync(_ *gatewayv1.SyncRequest, stream grpc.ServerStreamingServer[gatewayv1.SyncEvent]) error {
	ctx := stream.Context()
	d, err := s.device(ctx)
	if err != nil {
		return err
	}
	events, replaced, cancel := s.GW.Subscribe(d)
	defer cancel()
	every := s.KeepaliveInterval
	if every <= 0 {
		every = 15 * time.Second
	}
	ka := &gatewayv1.SyncEvent{Event: &gatewayv1.SyncEvent_Keepalive{Keepalive: &gatewayv1.Keepalive{GatewayInstance: s.GW.RunID()}}}
	if err := stream.Send(ka); err != nil {
		return err
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-replaced:
			return status.Error(codes.Aborted, "replaced by a newer Sync stream of this device (one per device)")
		case <-t.C:
			if err := stream.Send(ka); err != nil {
				return err
			}
		case e := <-events:
			msg := syncEvent(e)
			if err := stream.Send(msg); err != nil {
				return err
			}
			if e.Kind == gateway.EventRevoked {
				return nil
			}
		}
	}
}

func syncEvent(e gateway.Event) *gatewayv1.SyncEvent {
	switch e.Kind {
	case gateway.EventSessionOpened:
		return &gatewayv1.SyncEvent{Event: &gatewayv1.SyncEvent_SessionOpened{SessionOpened: &gatewayv1.SessionOpened{
			SessionId: e.SessionID, ClientAddresses: prefixStrings(e.ClientAddr), ExpiresAt: timestamppb.New(e.ExpiresAt),
		}}}
	case gateway.EventSessionClosed:
		return &gatewayv1.SyncEvent{Event: &gatewayv1.SyncEvent_SessionClosed{SessionClosed: &gatewayv1.SessionClosed{
			SessionId: e.SessionID, Reason: e.Reason,
		}}}
	default:
		return &gatewayv1.SyncEvent{Event: &gatewayv1.SyncEvent_Revoked{Revoked: &gatewayv1.Revoked{Reason: e.Reason}}}
	}
}

// CreateBindingCode makes a binding code for the calling device.
func (s *DeviceServer) CreateBindingCode(ctx context.Context, _ *gatewayv1.CreateBindingCodeRequest) (*gatewayv1.CreateBindingCodeResponse, error) {
	d, err := s.device(ctx)
	if err != nil {
		return nil, err
	}
	src, _ := peerAddrs(ctx)
	bc, err := s.GW.CreateBindingCode(ctx, d, src)
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.CreateBindingCodeResponse{Code: bc.Code, ExpiresAt: timestamppb.New(bc.Expires), Uri: bc.URI}, nil
}

// Logout removes the calling device's peer and revokes its token.
func (s *DeviceServer) Logout(ctx context.Context, _ *gatewayv1.LogoutRequest) (*gatewayv1.LogoutResponse, error) {
	d, err := s.device(ctx)
	if err != nil {
		return nil, err
	}
	src, _ := peerAddrs(ctx)
	if err := s.GW.Logout(ctx, d, src); err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.LogoutResponse{}, nil
}

// device is the caller the Guard authenticated (DeviceToken methods).
func (s *DeviceServer) device(ctx context.Context) (store.Device, error) {
	d, ok := DeviceFrom(ctx)
	if !ok {
		return store.Device{}, status.Error(codes.Unauthenticated, "no authenticated device (method not listed as device token)")
	}
	return d, nil
}

// bearer extracts "authorization: Bearer TOKEN".
func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return "", status.Error(codes.Unauthenticated, "authorization: missing bearer token")
	}
	tok, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok || tok == "" || len(tok) > 256 {
		return "", status.Error(codes.Unauthenticated, "authorization: malformed bearer token")
	}
	return tok, nil
}

// peerAddrs returns the caller's source address (as typed personal data) and
// the local address its connection reached.
func peerAddrs(ctx context.Context) (privacy.Addr, netip.AddrPort) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return privacy.Addr{}, netip.AddrPort{}
	}
	var src privacy.Addr
	if ta, ok := p.Addr.(*net.TCPAddr); ok {
		src = privacy.NewAddr(ta.AddrPort().Addr())
	}
	var local netip.AddrPort
	if la, ok := p.LocalAddr.(*net.TCPAddr); ok {
		local = la.AddrPort()
	}
	return src, local
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
