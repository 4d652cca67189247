package api

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

var testOps = Operators{
	ByUID: map[uint32]Operator{
		0:    {Name: "root", Roles: []Role{RoleOperator, RolePrivacy}},
		1000: {Name: "olivia", Roles: []Role{RoleOperator}},
		1001: {Name: "pat", Roles: []Role{RolePrivacy}},
	},
}

// callAs calls fn as the admin listener's guard would let uid call method.
func callAs(uid uint32, method string, fn func(ctx context.Context) error) error {
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: PeerCred{UID: uid}})
	g := Guard{Table: AdminTable(), Operators: testOps}
	_, err := g.Unary()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, func(ctx context.Context, _ any) (any, error) {
		return nil, fn(ctx)
	})
	return err
}

func TestAdminRoles(t *testing.T) {
	srv := &AdminServer{}
	reveal := func(ctx context.Context) error {
		_, err := srv.ListDevices(ctx, &gatewayv1.ListDevicesRequest{Reveal: true, Reason: "ticket"})
		return err
	}
	export := func(ctx context.Context) error {
		_, err := srv.ExportSubject(ctx, &gatewayv1.ExportSubjectRequest{Subject: &gatewayv1.ExportSubjectRequest_SerialNumber{SerialNumber: "X1"}, Reason: "r"})
		return err
	}
	erase := func(ctx context.Context) error {
		_, err := srv.EraseSubject(ctx, &gatewayv1.EraseSubjectRequest{Subject: &gatewayv1.EraseSubjectRequest_SerialNumber{SerialNumber: "X1"}, Reason: "r"})
		return err
	}
	for name, c := range map[string]struct {
		method string
		fn     func(context.Context) error
	}{
		"reveal": {gatewayv1.AdminService_ListDevices_FullMethodName, reveal},
		"export": {gatewayv1.AdminService_ExportSubject_FullMethodName, export},
		"erase":  {gatewayv1.AdminService_EraseSubject_FullMethodName, erase},
	} {
		if err := callAs(1000, c.method, c.fn); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s as an operator without the privacy role: %v, want PermissionDenied", name, err)
		}
	}
	if err := callAs(4242, gatewayv1.AdminService_GetPolicy_FullMethodName, func(context.Context) error { return nil }); status.Code(err) != codes.PermissionDenied {
		t.Errorf("unknown uid: %v, want PermissionDenied", err)
	}
	// The privacy role passes the role check (and reaches the handler, which
	// has no gateway here: it fails later, not with PermissionDenied).
	reached := false
	if err := callAs(1001, gatewayv1.AdminService_ListDevices_FullMethodName, func(ctx context.Context) error {
		_, err := requireRole(ctx, RolePrivacy)
		reached = err == nil
		return err
	}); err != nil || !reached {
		t.Errorf("privacy operator: %v", err)
	}
	// A reveal without a reason is refused before anything else.
	if err := callAs(0, gatewayv1.AdminService_ListDevices_FullMethodName, func(ctx context.Context) error {
		_, err := srv.ListDevices(ctx, &gatewayv1.ListDevicesRequest{Reveal: true})
		return err
	}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("reveal without reason: %v", err)
	}
}

// TestPeerCredOverUnixSocket: the admin transport reads the caller's uid
// from the kernel (SO_PEERCRED) on a real unix socket.
func TestPeerCredOverUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := Guard{Table: AdminTable(), Operators: Operators{ByUID: map[uint32]Operator{
		uint32(os.Getuid()): {Name: "me", Roles: []Role{RoleOperator}},
	}}}
	s := grpc.NewServer(grpc.Creds(UnixPeerCredentials()), grpc.ChainUnaryInterceptor(g.Unary()))
	gatewayv1.RegisterAdminServiceServer(s, &whoami{})
	go func() { _ = s.Serve(l) }()
	defer s.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := gatewayv1.NewAdminServiceClient(conn).GetPolicy(context.Background(), &gatewayv1.GetPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetYaml() != "me" {
		t.Fatalf("operator seen by the server = %q, want me", resp.GetYaml())
	}
}

type whoami struct {
	gatewayv1.UnimplementedAdminServiceServer
}

func (whoami) GetPolicy(ctx context.Context, _ *gatewayv1.GetPolicyRequest) (*gatewayv1.GetPolicyResponse, error) {
	o, _ := OperatorFrom(ctx)
	return &gatewayv1.GetPolicyResponse{Yaml: o.Name}, nil
}
