package daemon_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// listServices asks a server's reflection service for its services.
func listServices(t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	if err := st.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("reflection send: %v", err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("reflection recv: %v", err)
	}
	var out []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		out = append(out, s.GetName())
	}
	slices.Sort(out)
	return out
}

// TestPublicListenerAccess: reflection on the device/client listener lists
// only DeviceService, ClientService, health and reflection; AdminService
// methods are not served there; malformed and unknown tokens are
// Unauthenticated on every token method, a stream included.
func TestPublicListenerAccess(t *testing.T) {
	g := startGateway(t, testConfig(t, t.TempDir()))
	conn, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := listServices(t, conn)
	want := []string{"dasset.gateway.v1.ClientService", "dasset.gateway.v1.DeviceService", "grpc.health.v1.Health",
		"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
	if !slices.Equal(got, want) {
		t.Fatalf("public reflection lists %v, want %v", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := gatewayv1.NewAdminServiceClient(conn).GetPolicy(ctx, &gatewayv1.GetPolicyRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("AdminService on the public listener: %v, want Unimplemented", err)
	}
	dev, cli := gatewayv1.NewDeviceServiceClient(conn), gatewayv1.NewClientServiceClient(conn)
	for _, tok := range []string{"", "Bearer", "Bearer not-a-token", "Bearer " + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Basic abc"} {
		actx := ctx
		if tok != "" {
			actx = metadata.AppendToOutgoingContext(ctx, "authorization", tok)
		}
		calls := map[string]func() error{
			"ClientService.ListDevices": func() error {
				_, err := cli.ListDevices(actx, &gatewayv1.ListBoundDevicesRequest{})
				return err
			},
			"DeviceService.CreateBindingCode": func() error {
				_, err := dev.CreateBindingCode(actx, &gatewayv1.CreateBindingCodeRequest{})
				return err
			},
			"DeviceService.Sync": func() error {
				st, err := dev.Sync(actx, &gatewayv1.SyncRequest{})
				if err != nil {
					return err
				}
				_, err = st.Recv()
				return err
			},
		}
		for name, call := range calls {
			if err := call(); status.Code(err) != codes.Unauthenticated {
				t.Errorf("%s with authorization %q: %v, want Unauthenticated", name, tok, err)
			}
		}
	}
	// The admin socket's reflection lists AdminService.
	if got, _ := g.admin.GetPolicy(ctx, &gatewayv1.GetPolicyRequest{}); got.GetYaml() == "" {
		t.Fatal("admin GetPolicy returned nothing")
	}
}
