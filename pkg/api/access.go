package api

import (
	"context"
	"fmt"
	"sort"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// Access says who may call a gRPC method. The zero value refuses the call:
// a method missing from a listener's table cannot be called there.
type Access uint8

// Who may call.
const (
	Unlisted    Access = iota // refused (PermissionDenied)
	Public                    // anyone; the handler checks what it needs
	DeviceToken               // a device bearer token (DeviceFrom)
	ClientToken               // a client access token (AccountFrom)
	AnyOperator               // an operator with any role (OperatorFrom)
	PrivacyRole               // an operator with the privacy role
)

func (a Access) String() string {
	switch a {
	case Public:
		return "public"
	case DeviceToken:
		return "device token"
	case ClientToken:
		return "client token"
	case AnyOperator:
		return "operator"
	case PrivacyRole:
		return "privacy role"
	default:
		return "unlisted"
	}
}

// Methods every listener serves: health checking and reflection.
var infraMethods = []string{
	healthpb.Health_Check_FullMethodName,
	healthpb.Health_Watch_FullMethodName,
	healthpb.Health_List_FullMethodName,
	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName,
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName,
}

// PublicTable is the access table of the device/client listener. A new
// RPC is refused there until it is listed here.
func PublicTable() map[string]Access {
	t := map[string]Access{
		gatewayv1.DeviceService_Login_FullMethodName:             Public,
		gatewayv1.DeviceService_Sync_FullMethodName:              DeviceToken,
		gatewayv1.DeviceService_CreateBindingCode_FullMethodName: DeviceToken,
		gatewayv1.DeviceService_Logout_FullMethodName:            DeviceToken,

		gatewayv1.ClientService_Login_FullMethodName:          Public,
		gatewayv1.ClientService_ListDevices_FullMethodName:    ClientToken,
		gatewayv1.ClientService_BindDevice_FullMethodName:     ClientToken,
		gatewayv1.ClientService_UnbindDevice_FullMethodName:   ClientToken,
		gatewayv1.ClientService_OpenSession_FullMethodName:    ClientToken,
		gatewayv1.ClientService_CloseSession_FullMethodName:   ClientToken,
		gatewayv1.ClientService_GetSession_FullMethodName:     ClientToken,
		gatewayv1.ClientService_ExportMyData_FullMethodName:   ClientToken,
		gatewayv1.ClientService_DeleteAccount_FullMethodName:  ClientToken,
		gatewayv1.ClientService_ChangePassword_FullMethodName: ClientToken,
	}
	for _, m := range infraMethods {
		t[m] = Public
	}
	return t
}

// AdminTable is the access table of the admin listeners. Every caller must
// be an operator; the privacy role is needed where personal data is revealed,
// exported or erased (ListDevices checks it itself when asked to reveal).
func AdminTable() map[string]Access {
	t := map[string]Access{
		gatewayv1.AdminService_EnrollDevices_FullMethodName:  AnyOperator,
		gatewayv1.AdminService_ListDevices_FullMethodName:    AnyOperator,
		gatewayv1.AdminService_RevokeDevice_FullMethodName:   AnyOperator,
		gatewayv1.AdminService_ResetDeviceKey_FullMethodName: AnyOperator,
		gatewayv1.AdminService_CreateAccount_FullMethodName:  AnyOperator,
		gatewayv1.AdminService_DeleteAccount_FullMethodName:  AnyOperator,
		gatewayv1.AdminService_ListSessions_FullMethodName:   AnyOperator,
		gatewayv1.AdminService_CloseSession_FullMethodName:   AnyOperator,
		gatewayv1.AdminService_ListPeers_FullMethodName:      AnyOperator,
		gatewayv1.AdminService_ListGateways_FullMethodName:   AnyOperator,
		gatewayv1.AdminService_ExportSubject_FullMethodName:  PrivacyRole,
		gatewayv1.AdminService_EraseSubject_FullMethodName:   PrivacyRole,
		gatewayv1.AdminService_GetPolicy_FullMethodName:      AnyOperator,
		gatewayv1.AdminService_RunRetention_FullMethodName:   AnyOperator,
		gatewayv1.AdminService_VerifyAudit_FullMethodName:    AnyOperator,
		gatewayv1.AdminService_GetSummary_FullMethodName:     AnyOperator,
	}
	for _, m := range infraMethods {
		t[m] = AnyOperator
	}
	return t
}

// TokenAuthority checks bearer tokens (the gateway).
type TokenAuthority interface {
	DeviceByToken(ctx context.Context, token string) (store.Device, error)
	AccountByToken(ctx context.Context, token string) (store.Account, error)
}

var _ TokenAuthority = (*gateway.Gateway)(nil)

// Guard authorises every call of a listener by its table before the handler
// runs, and puts who called into the context.
type Guard struct {
	Table     map[string]Access
	Tokens    TokenAuthority // for DeviceToken and ClientToken methods
	Operators Operators      // for AnyOperator and PrivacyRole methods
}

type deviceKey struct{}
type accountKey struct{}

// DeviceFrom returns the device a DeviceToken method's caller proved to be.
func DeviceFrom(ctx context.Context) (store.Device, bool) {
	d, ok := ctx.Value(deviceKey{}).(store.Device)
	return d, ok
}

// AccountFrom returns the account a ClientToken method's caller proved to be.
func AccountFrom(ctx context.Context) (store.Account, bool) {
	a, ok := ctx.Value(accountKey{}).(store.Account)
	return a, ok
}

// Missing returns the methods registered on s that the table does not list
// (sorted), for a check at start-up and in tests.
func (g Guard) Missing(s *grpc.Server) []string {
	var out []string
	for svc, info := range s.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			if g.Table[full] == Unlisted {
				out = append(out, full)
			}
		}
	}
	sort.Strings(out)
	return out
}

func (g Guard) authorize(ctx context.Context, method string) (context.Context, error) {
	switch access := g.Table[method]; access {
	case Public:
		return ctx, nil
	case DeviceToken, ClientToken:
		if g.Tokens == nil {
			return nil, status.Error(codes.Internal, "no token authority on this listener")
		}
		tok, err := bearer(ctx)
		if err != nil {
			return nil, err
		}
		if access == DeviceToken {
			d, err := g.Tokens.DeviceByToken(ctx, tok)
			if err != nil {
				return nil, toStatus(err)
			}
			return context.WithValue(ctx, deviceKey{}, d), nil
		}
		a, err := g.Tokens.AccountByToken(ctx, tok)
		if err != nil {
			return nil, toStatus(err)
		}
		return context.WithValue(ctx, accountKey{}, a), nil
	case AnyOperator, PrivacyRole:
		o, err := g.Operators.identify(ctx)
		if err != nil {
			return nil, err
		}
		if !o.Has(RoleOperator) && !o.Has(RolePrivacy) {
			return nil, status.Error(codes.PermissionDenied, "operator "+o.Name+" has no role")
		}
		if access == PrivacyRole && !o.Has(RolePrivacy) {
			return nil, status.Error(codes.PermissionDenied, "this needs the "+string(RolePrivacy)+" role; operator "+o.Name+" lacks it")
		}
		return context.WithValue(ctx, operatorKey{}, o), nil
	default:
		return nil, status.Error(codes.PermissionDenied, fmt.Sprintf("%s is not in this listener's access table", method))
	}
}

// Unary is the guard's unary interceptor.
func (g Guard) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, err := g.authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// Stream is the guard's stream interceptor.
func (g Guard) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, err := g.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return h(srv, &idStream{ServerStream: ss, ctx: ctx})
	}
}
