package api

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	"github.com/planetxlabs/dasset-gateway/pkg/store"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestTablesCoverEveryMethod: every method registered on the public and the
// admin listener (services, health, reflection) has an entry in that
// listener's table, the tables list nothing that is not served, and the
// public table lists no AdminService method.
func TestTablesCoverEveryMethod(t *testing.T) {
	m := grpcprom.NewServerMetrics()
	pub := grpc.NewServer()
	gatewayv1.RegisterDeviceServiceServer(pub, &DeviceServer{})
	gatewayv1.RegisterClientServiceServer(pub, &ClientServer{})
	Finish(pub, m)
	adm := grpc.NewServer()
	gatewayv1.RegisterAdminServiceServer(adm, &AdminServer{})
	Finish(adm, m)
	for name, c := range map[string]struct {
		s     *grpc.Server
		table map[string]Access
	}{"public": {pub, PublicTable()}, "admin": {adm, AdminTable()}} {
		if miss := (Guard{Table: c.table}).Missing(c.s); len(miss) != 0 {
			t.Errorf("%s listener: methods without an access entry: %v", name, miss)
		}
		served := map[string]bool{}
		for svc, info := range c.s.GetServiceInfo() {
			for _, m := range info.Methods {
				served["/"+svc+"/"+m.Name] = true
			}
		}
		if len(served) < 5 {
			t.Fatalf("%s listener serves only %d methods", name, len(served))
		}
		for m, a := range c.table {
			if !served[m] {
				t.Errorf("%s table lists %s (%v), which the listener does not serve", name, m, a)
			}
		}
	}
	for m := range PublicTable() {
		if strings.Contains(m, "AdminService") {
			t.Errorf("public table lists %s", m)
		}
	}
}

// fakeTokens accepts one device token and one client token, and refuses
// malformed ones the way the gateway does.
type fakeTokens struct{}

func (fakeTokens) DeviceByToken(_ context.Context, tok string) (store.Device, error) {
	if tok == "device-ok" {
		return store.Device{ID: 7}, nil
	}
	return store.Device{}, &gateway.Error{Kind: gateway.ErrUnauthenticated, Cause: &privacy.FieldError{Field: "token", Reason: "malformed"}, Msg: "malformed device token"}
}

func (fakeTokens) AccountByToken(_ context.Context, tok string) (store.Account, error) {
	if tok == "client-ok" {
		return store.Account{ID: 9}, nil
	}
	return store.Account{}, &gateway.Error{Kind: gateway.ErrUnauthenticated, Cause: &privacy.FieldError{Field: "token", Reason: "malformed"}, Msg: "malformed access token"}
}

// recordingDevice serves DeviceService and counts the calls that reach it.
type recordingDevice struct {
	gatewayv1.UnimplementedDeviceServiceServer
	reached atomic.Int32
	device  atomic.Int64
}

func (r *recordingDevice) Logout(ctx context.Context, _ *gatewayv1.LogoutRequest) (*gatewayv1.LogoutResponse, error) {
	r.reached.Add(1)
	d, _ := DeviceFrom(ctx)
	r.device.Store(d.ID)
	return &gatewayv1.LogoutResponse{}, nil
}

func (r *recordingDevice) CreateBindingCode(context.Context, *gatewayv1.CreateBindingCodeRequest) (*gatewayv1.CreateBindingCodeResponse, error) {
	r.reached.Add(1)
	return &gatewayv1.CreateBindingCodeResponse{}, nil
}

func (r *recordingDevice) Login(_ context.Context, req *gatewayv1.DeviceLoginRequest) (*gatewayv1.DeviceLoginResponse, error) {
	r.reached.Add(1)
	return &gatewayv1.DeviceLoginResponse{}, nil
}

func serveGuarded(t *testing.T, table map[string]Access, dev *recordingDevice) *grpc.ClientConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := NewServer(log, grpcprom.NewServerMetrics(), insecure.NewCredentials(), Guard{Table: table, Tokens: fakeTokens{}})
	gatewayv1.RegisterDeviceServiceServer(s, dev)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestGuardRefusesUnlisted: a method missing from the table is refused
// before its handler runs, however valid the caller's token; listed
// methods with a valid token reach the handler with the caller in context.
func TestGuardRefusesUnlisted(t *testing.T) {
	table := PublicTable()
	delete(table, gatewayv1.DeviceService_CreateBindingCode_FullMethodName)
	dev := &recordingDevice{}
	c := gatewayv1.NewDeviceServiceClient(serveGuarded(t, table, dev))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer device-ok")
	if _, err := c.CreateBindingCode(ctx, &gatewayv1.CreateBindingCodeRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unlisted method: %v, want PermissionDenied", err)
	}
	if n := dev.reached.Load(); n != 0 {
		t.Fatalf("the unlisted method's handler ran %d times", n)
	}
	if _, err := c.Logout(ctx, &gatewayv1.LogoutRequest{}); err != nil {
		t.Fatalf("listed method with a valid token: %v", err)
	}
	if dev.reached.Load() != 1 || dev.device.Load() != 7 {
		t.Fatalf("handler reached %d times with device %d, want once with device 7", dev.reached.Load(), dev.device.Load())
	}
	for tok, want := range map[string]codes.Code{"": codes.Unauthenticated, "Bearer %%%": codes.Unauthenticated, "Bearer client-ok": codes.Unauthenticated} {
		ctx := context.Background()
		if tok != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tok)
		}
		if _, err := c.Logout(ctx, &gatewayv1.LogoutRequest{}); status.Code(err) != want {
			t.Errorf("Logout with authorization %q: %v, want %v", tok, err, want)
		}
	}
	if dev.reached.Load() != 1 {
		t.Fatalf("refused calls reached the handler (%d calls)", dev.reached.Load())
	}
}

// rawCodec sends pre-encoded bytes, so a test can send what a proto
// library would refuse to encode.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.CodecV2 = rawCodec{}

// TestUndecodableRequest: invalid UTF-8 in a string field and truncated
// bytes are InvalidArgument naming the problem, and no handler runs.
func TestUndecodableRequest(t *testing.T) {
	dev := &recordingDevice{}
	conn := serveGuarded(t, PublicTable(), dev)
	badUTF8 := protowire.AppendTag(nil, 1, protowire.BytesType)
	badUTF8 = protowire.AppendBytes(badUTF8, []byte{'D', 'S', 0xff, 0xfe})
	truncated := protowire.AppendTag(nil, 1, protowire.BytesType)
	truncated = append(truncated, 40, 'x')
	for name, body := range map[string][]byte{"invalid UTF-8": badUTF8, "truncated": truncated} {
		var out []byte
		err := conn.Invoke(context.Background(), gatewayv1.DeviceService_Login_FullMethodName, body, &out, grpc.ForceCodecV2(rawCodec{}))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
		if name == "invalid UTF-8" && !strings.Contains(status.Convert(err).Message(), "UTF-8") {
			t.Errorf("%s: message %q does not say what is wrong", name, status.Convert(err).Message())
		}
	}
	if dev.reached.Load() != 0 {
		t.Fatalf("undecodable requests reached the handler")
	}
	// A well-formed request still decodes and reaches it.
	good := protowire.AppendTag(nil, 1, protowire.BytesType)
	good = protowire.AppendBytes(good, []byte("DS-1"))
	var out []byte
	if err := conn.Invoke(context.Background(), gatewayv1.DeviceService_Login_FullMethodName, good, &out, grpc.ForceCodecV2(rawCodec{})); err != nil || dev.reached.Load() != 1 {
		t.Fatalf("well-formed request: %v, handler reached %d times", err, dev.reached.Load())
	}
}

// TestMaxPageFitsMessageLimit: a full page of the largest devices, sessions
// and peers the gateway can produce stays far below gRPC's default 4 MiB
// receive limit, whatever the fleet's size.
func TestMaxPageFitsMessageLimit(t *testing.T) {
	long := strings.Repeat("S", 128) // the longest serial number, revealed
	devs := &gatewayv1.ListDevicesResponse{NextPageToken: encodeToken("devices", "9223372036854775807")}
	sess := &gatewayv1.ListSessionsResponse{NextPageToken: sessionToken(gateway.SessionView{ID: strings.Repeat("x", 32)})}
	peers := &gatewayv1.ListPeersResponse{NextPageToken: encodeToken("peers", strings.Repeat("ff", 32))}
	addrs := []string{"100.95.255.254/32", "fdda:55e7:ffff:ffff:ffff:ffff:ffff:fffe/128"}
	ts := timestamppb.Now()
	for range MaxPageSize {
		devs.Devices = append(devs.Devices, &gatewayv1.Device{SerialNumber: long, Addresses: addrs, KeyPinned: true, LastLoginDay: "2030-12-31", Revoked: true, Online: true})
		sess.Sessions = append(sess.Sessions, &gatewayv1.SessionInfo{SessionId: strings.Repeat("x", 32), SerialNumber: long, Account: "account #9223372036854775807",
			ClientAddresses: addrs, DeviceAddresses: addrs, OpenedAt: ts, ExpiresAt: ts})
		peers.Peers = append(peers.Peers, &gatewayv1.Peer{PublicKey: make([]byte, 32), Kind: "device", AllowedIps: addrs, LastHandshake: ts, RxBytes: ^uint64(0), TxBytes: ^uint64(0)})
	}
	for name, m := range map[string]proto.Message{"devices": devs, "sessions": sess, "peers": peers} {
		if n := proto.Size(m); n > 2<<20 {
			t.Errorf("a full page of %s is %d bytes, over half of gRPC's 4 MiB limit", name, n)
		}
	}
}

type fakePeers []PeerStatus

func (f fakePeers) PeerStatuses(context.Context) ([]PeerStatus, error) {
	return append([]PeerStatus(nil), f...), nil
}

// TestListPeersPages: peers come in pages by public key, each once; a token
// of another list, a garbled one and a negative page size are refused.
func TestListPeersPages(t *testing.T) {
	var ps fakePeers
	for _, b := range []byte{9, 3, 7, 1, 8, 2, 5} {
		ps = append(ps, PeerStatus{Key: [32]byte{b}, Kind: "device"})
	}
	srv := &AdminServer{Peers: ps}
	ctx := context.Background()
	var got []byte
	token := ""
	for range 10 {
		resp, err := srv.ListPeers(ctx, &gatewayv1.ListPeersRequest{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetPeers()) > 3 {
			t.Fatalf("page of %d peers", len(resp.GetPeers()))
		}
		for _, p := range resp.GetPeers() {
			got = append(got, p.GetPublicKey()[0])
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if string(got) != string([]byte{1, 2, 3, 5, 7, 8, 9}) {
		t.Fatalf("peers %v, want each once by key", got)
	}
	for name, req := range map[string]*gatewayv1.ListPeersRequest{
		"devices token": {PageToken: encodeToken("devices", "5")},
		"garbled token": {PageToken: "!!"},
		"negative size": {PageSize: -1},
		"short key":     {PageToken: encodeToken("peers", "abcd")},
	} {
		if _, err := srv.ListPeers(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := (&AdminServer{}).ListDevices(ctx, &gatewayv1.ListDevicesRequest{PageToken: encodeToken("peers", strings.Repeat("00", 32))}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("peers token to ListDevices: %v, want InvalidArgument", err)
	}
}
