package api

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// PeerStatus is one WireGuard peer as operators see it.
type PeerStatus struct {
	Key           [32]byte
	Kind          string // device, client, unknown
	AllowedIPs    []netip.Prefix
	LastHandshake time.Time
	RxBytes       uint64
	TxBytes       uint64
}

// PeerSource lists the live WireGuard peers.
type PeerSource interface {
	PeerStatuses(ctx context.Context) ([]PeerStatus, error)
}

// AdminServer serves AdminService (admin listener only).
type AdminServer struct {
	gatewayv1.UnimplementedAdminServiceServer
	GW        *gateway.Gateway
	Peers     PeerSource
	Policy    []byte // the policy in force, as YAML
	Retention RetentionRunner
	Audit     AuditLog
	Fleet     FleetSource
	Instance  string // this gateway's instance id
}

// FleetSource lists the gateways of the registry (the store) and what
// each one serves.
type FleetSource interface {
	Gateways(ctx context.Context) ([]store.Gateway, error)
	GatewayLoads(ctx context.Context) (map[string]store.GatewayLoad, error)
}

// ListGateways lists the gateways as their heartbeats recorded them, with
// the devices homed on each and their open sessions.
func (s *AdminServer) ListGateways(ctx context.Context, _ *gatewayv1.ListGatewaysRequest) (*gatewayv1.ListGatewaysResponse, error) {
	if s.Fleet == nil {
		return nil, status.Error(codes.Unavailable, "no fleet registry")
	}
	gs, err := s.Fleet.Gateways(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	loads, err := s.Fleet.GatewayLoads(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &gatewayv1.ListGatewaysResponse{}
	for _, g := range gs {
		l := loads[g.InstanceID]
		out.Gateways = append(out.Gateways, &gatewayv1.FleetGateway{
			InstanceId: g.InstanceID, PublicKey: g.PublicKey[:], Endpoint: g.Endpoint,
			StartedAt: timestamppb.New(g.StartedAt), HeartbeatAt: timestamppb.New(g.HeartbeatAt),
			Self: g.InstanceID == s.Instance, Devices: int64(l.Devices), Sessions: int64(l.Sessions),
		})
	}
	return out, nil
}

// RetentionRunner runs the pruner now.
type RetentionRunner interface {
	RunNow(ctx context.Context) (pruned map[string]int64, keysDestroyed int, at time.Time, err error)
}

// GetPolicy serves the privacy policy in force.
func (s *AdminServer) GetPolicy(context.Context, *gatewayv1.GetPolicyRequest) (*gatewayv1.GetPolicyResponse, error) {
	return &gatewayv1.GetPolicyResponse{Yaml: string(s.Policy)}, nil
}

// RunRetention runs the pruner now and reports what it removed.
func (s *AdminServer) RunRetention(ctx context.Context, _ *gatewayv1.RunRetentionRequest) (*gatewayv1.RunRetentionResponse, error) {
	if s.Retention == nil {
		return nil, status.Error(codes.Unavailable, "the pruner is not running")
	}
	pruned, keys, at, err := s.Retention.RunNow(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, "retention run failed: "+err.Error())
	}
	return &gatewayv1.RunRetentionResponse{Pruned: pruned, KeysDestroyed: int64(keys), RanAt: timestamppb.New(at)}, nil
}

// EnrollDevices adds a batch of devices to the allow-list, all or nothing.
func (s *AdminServer) EnrollDevices(ctx context.Context, req *gatewayv1.EnrollDevicesRequest) (*gatewayv1.EnrollDevicesResponse, error) {
	if len(req.GetDevices()) == 0 {
		return nil, invalid("devices", "must not be empty")
	}
	if len(req.GetDevices()) > 100_000 {
		return nil, invalid("devices", "more than 100000 in one batch")
	}
	batch := make([]gateway.Enrollment, len(req.GetDevices()))
	for i, d := range req.GetDevices() {
		sn, err := privacy.ParseSerialNumber(d.GetSerialNumber())
		if err != nil {
			return nil, batchFieldError(i, err)
		}
		hw, err := privacy.ParseHardwareID(d.GetHardwareId())
		if err != nil {
			return nil, batchFieldError(i, err)
		}
		batch[i] = gateway.Enrollment{Serial: sn, Hardware: hw}
	}
	// Only the privacy role learns why an existing device was not enrolled
	// (another hardware id, erased); for everyone else an existing device
	// is "unchanged", whatever hardware id was sent.
	o, _ := OperatorFrom(ctx)
	opt := gateway.EnrollOptions{Disclose: o.Has(RolePrivacy), AfterErasure: req.GetAfterErasure()}
	if opt.AfterErasure {
		if _, err := requireRole(ctx, RolePrivacy); err != nil {
			return nil, err
		}
	}
	var rep gateway.EnrollReport
	err := s.auditedAll(ctx, "enroll_devices", func() []privacy.BlindIndex { return rep.Existing }, "", false, func() error {
		var err error
		rep, err = s.GW.Enroll(ctx, batch, opt)
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.EnrollDevicesResponse{Enrolled: int64(rep.Enrolled), Unchanged: int64(rep.Unchanged)}, nil
}

// ListDevices lists the allow-list; serial numbers masked unless revealed.
func (s *AdminServer) ListDevices(ctx context.Context, req *gatewayv1.ListDevicesRequest) (*gatewayv1.ListDevicesResponse, error) {
	if req.GetReveal() {
		if req.GetReason() == "" {
			return nil, invalid("reason", "required with reveal")
		}
		if _, err := requireRole(ctx, RolePrivacy); err != nil {
			return nil, err
		}
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := deviceCursor(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	devs, err := s.GW.DevicesPage(ctx, after, size)
	if err != nil {
		return nil, toStatus(err)
	}
	if req.GetReveal() {
		// The audit names every device whose serial number is revealed.
		targets := func() []privacy.BlindIndex {
			ts := make([]privacy.BlindIndex, len(devs))
			for i, d := range devs {
				ts[i] = s.GW.SubjectIndex(gateway.Subject{Serial: d.Serial})
			}
			return ts
		}
		if err := s.auditedAll(ctx, "reveal_devices", targets, req.GetReason(), true, func() error { return nil }); err != nil {
			return nil, err
		}
	}
	out := &gatewayv1.ListDevicesResponse{}
	for _, d := range devs {
		sn := d.Serial.Masked()
		if req.GetReveal() {
			sn = d.Serial.Reveal()
		}
		out.Devices = append(out.Devices, &gatewayv1.Device{
			SerialNumber: sn, Addresses: prefixStrings(d.Addresses), KeyPinned: d.KeyPinned,
			LastLoginDay: d.LastLoginDay, Revoked: d.Revoked, Online: d.Online,
		})
	}
	if len(devs) == size {
		out.NextPageToken = encodeToken("devices", strconv.FormatInt(devs[len(devs)-1].ID, 10))
	}
	return out, nil
}

func batchFieldError(i int, err error) error {
	var fe *privacy.FieldError
	if errors.As(err, &fe) {
		return invalid("devices["+strconv.Itoa(i)+"]."+fe.Field, fe.Reason)
	}
	return toStatus(err)
}

func parseSerial(s string) (privacy.SerialNumber, error) {
	sn, err := privacy.ParseSerialNumber(s)
	if err != nil {
		return sn, toStatus(err)
	}
	return sn, nil
}

// RevokeDevice removes a device's peer and refuses its later logins.
func (s *AdminServer) RevokeDevice(ctx context.Context, req *gatewayv1.RevokeDeviceRequest) (*gatewayv1.RevokeDeviceResponse, error) {
	sn, err := parseSerial(req.GetSerialNumber())
	if err != nil {
		return nil, err
	}
	if err := s.audited(ctx, "revoke_device", s.GW.SubjectIndex(gateway.Subject{Serial: sn}), "", false, func() error { return s.GW.Revoke(ctx, sn) }); err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.RevokeDeviceResponse{}, nil
}

// ResetDeviceKey unpins a device's WireGuard key.
func (s *AdminServer) ResetDeviceKey(ctx context.Context, req *gatewayv1.ResetDeviceKeyRequest) (*gatewayv1.ResetDeviceKeyResponse, error) {
	sn, err := parseSerial(req.GetSerialNumber())
	if err != nil {
		return nil, err
	}
	if err := s.audited(ctx, "reset_device_key", s.GW.SubjectIndex(gateway.Subject{Serial: sn}), "", false, func() error { return s.GW.ResetKey(ctx, sn) }); err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.ResetDeviceKeyResponse{}, nil
}

// CreateAccount adds a client account.
func (s *AdminServer) CreateAccount(ctx context.Context, req *gatewayv1.CreateAccountRequest) (*gatewayv1.CreateAccountResponse, error) {
	if n := len(req.GetPassword()); n > 1024 {
		return nil, invalid("password", "longer than 1024 bytes")
	}
	var id int64
	err := s.audited(ctx, "create_account", s.GW.SubjectIndex(gateway.Subject{Account: req.GetName()}), "", false, func() error {
		var err error
		id, err = s.GW.CreateAccount(ctx, req.GetName(), []byte(req.GetPassword()))
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.CreateAccountResponse{AccountId: strconv.FormatInt(id, 10)}, nil
}

// DeleteAccount cancels an account.
func (s *AdminServer) DeleteAccount(ctx context.Context, req *gatewayv1.DeleteAccountRequest) (*gatewayv1.DeleteAccountResponse, error) {
	var receipt map[string]int64
	err := s.audited(ctx, "delete_account", s.GW.SubjectIndex(gateway.Subject{Account: req.GetName()}), "", false, func() error {
		var err error
		receipt, err = s.GW.DeleteAccount(ctx, req.GetName())
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.DeleteAccountResponse{Removed: receipt}, nil
}

// ListSessions lists open sessions.
func (s *AdminServer) ListSessions(ctx context.Context, req *gatewayv1.ListSessionsRequest) (*gatewayv1.ListSessionsResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := sessionCursor(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	page := s.GW.SessionsPage(ctx, after, size)
	out := &gatewayv1.ListSessionsResponse{}
	if len(page) == size {
		out.NextPageToken = sessionToken(page[len(page)-1])
	}
	for _, ss := range page {
		out.Sessions = append(out.Sessions, &gatewayv1.SessionInfo{
			SessionId:       ss.ID,
			SerialNumber:    ss.Serial.Masked(),
			Account:         "account #" + strconv.FormatInt(ss.AccountID, 10),
			ClientAddresses: prefixStrings(ss.ClientAddrs),
			DeviceAddresses: prefixStrings(ss.DeviceAddrs),
			OpenedAt:        timestamppb.New(ss.OpenedAt),
			ExpiresAt:       timestamppb.New(ss.ExpiresAt),
		})
	}
	return out, nil
}

// CloseSession closes any session.
func (s *AdminServer) CloseSession(ctx context.Context, req *gatewayv1.AdminCloseSessionRequest) (*gatewayv1.AdminCloseSessionResponse, error) {
	if req.GetSessionId() == "" {
		return nil, invalid("session_id", "must not be empty")
	}
	if err := s.GW.CloseSession(ctx, nil, req.GetSessionId()); err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.AdminCloseSessionResponse{}, nil
}

// ListPeers shows the live WireGuard view.
func (s *AdminServer) ListPeers(ctx context.Context, req *gatewayv1.ListPeersRequest) (*gatewayv1.ListPeersResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := peerCursor(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	ps, err := s.Peers.PeerStatuses(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	// Keyset on the public key: peers after the cursor, by key.
	if after != nil {
		ps = slices.DeleteFunc(ps, func(p PeerStatus) bool { return bytes.Compare(p.Key[:], after) <= 0 })
	}
	slices.SortFunc(ps, func(a, b PeerStatus) int { return bytes.Compare(a.Key[:], b.Key[:]) })
	out := &gatewayv1.ListPeersResponse{}
	if len(ps) > size {
		ps = ps[:size]
		out.NextPageToken = encodeToken("peers", hex.EncodeToString(ps[size-1].Key[:]))
	}
	for _, p := range ps {
		pp := &gatewayv1.Peer{PublicKey: p.Key[:], Kind: p.Kind, AllowedIps: prefixStrings(p.AllowedIPs), RxBytes: p.RxBytes, TxBytes: p.TxBytes}
		if !p.LastHandshake.IsZero() {
			pp.LastHandshake = timestamppb.New(p.LastHandshake)
		}
		out.Peers = append(out.Peers, pp)
	}
	return out, nil
}

// recentHandshake is how fresh a handshake must be for a peer to count as
// recent in the summary (WireGuard re-handshakes every 2 minutes under load).
const recentHandshake = 3 * time.Minute

// GetSummary counts devices, sessions and peers without listing them.
func (s *AdminServer) GetSummary(ctx context.Context, _ *gatewayv1.GetSummaryRequest) (*gatewayv1.GetSummaryResponse, error) {
	dc, err := s.GW.CountDevices(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	ps, err := s.Peers.PeerStatuses(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &gatewayv1.GetSummaryResponse{
		DevicesEnrolled: int64(dc.Enrolled), DevicesOnline: int64(dc.Online), DevicesRevoked: int64(dc.Revoked),
		SessionsOpen: int64(s.GW.OpenSessionCount()), Peers: int64(len(ps)),
	}
	now := s.GW.Now()
	for _, p := range ps {
		if !p.LastHandshake.IsZero() && now.Sub(p.LastHandshake) <= recentHandshake {
			out.PeersRecent++
		}
		out.RxBytes += p.RxBytes
		out.TxBytes += p.TxBytes
	}
	return out, nil
}
