package ctl

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// fakeAdmin is a fake AdminService: it records every request and answers
// with canned responses, or with err when set.
type fakeAdmin struct {
	gatewayv1.UnimplementedAdminServiceServer

	mu       sync.Mutex
	requests []proto.Message // every request received, in order
	err      error

	devices  *gatewayv1.ListDevicesResponse
	sessions *gatewayv1.ListSessionsResponse
	peers    *gatewayv1.ListPeersResponse
	gateways *gatewayv1.ListGatewaysResponse
	removed  map[string]int64
	export   string
	policy   string
	pruned   *gatewayv1.RunRetentionResponse
	// enrollDelay is how long each EnrollDevices call takes.
	enrollDelay time.Duration
	// maxPage, when set, caps the lists' page size (to see several pages).
	maxPage int
	// block makes GetPolicy wait until the caller gives up.
	block bool
}

func (f *fakeAdmin) record(req proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, proto.Clone(req))
	return f.err
}

// received returns the requests of type T received so far.
func received[T proto.Message](f *fakeAdmin) []T {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []T
	for _, r := range f.requests {
		if t, ok := r.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func (f *fakeAdmin) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

func (f *fakeAdmin) EnrollDevices(ctx context.Context, r *gatewayv1.EnrollDevicesRequest) (*gatewayv1.EnrollDevicesResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	if f.enrollDelay > 0 {
		select {
		case <-time.After(f.enrollDelay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// The first device of a batch counts as already enrolled, to see both
	// counters summed.
	return &gatewayv1.EnrollDevicesResponse{Enrolled: int64(len(r.Devices) - 1), Unchanged: 1}, nil
}

// fakePage serves items in pages of pageSize (at most f.maxPage when set):
// the token is the index of the next item.
func fakePage[T any](f *fakeAdmin, items []T, size int32, token string) ([]T, string) {
	start := 0
	if token != "" {
		start, _ = strconv.Atoi(token)
	}
	n := int(size)
	if n <= 0 || (f.maxPage > 0 && n > f.maxPage) {
		n = f.maxPage
	}
	if n <= 0 || start+n >= len(items) {
		return items[min(start, len(items)):], ""
	}
	return items[start : start+n], strconv.Itoa(start + n)
}

func (f *fakeAdmin) ListDevices(_ context.Context, r *gatewayv1.ListDevicesRequest) (*gatewayv1.ListDevicesResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	page, next := fakePage(f, f.devices.GetDevices(), r.GetPageSize(), r.GetPageToken())
	return &gatewayv1.ListDevicesResponse{Devices: page, NextPageToken: next}, nil
}

// GetSummary counts the canned lists.
func (f *fakeAdmin) GetSummary(_ context.Context, r *gatewayv1.GetSummaryRequest) (*gatewayv1.GetSummaryResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	s := &gatewayv1.GetSummaryResponse{SessionsOpen: int64(len(f.sessions.GetSessions()))}
	for _, d := range f.devices.GetDevices() {
		s.DevicesEnrolled++
		switch {
		case d.GetRevoked():
			s.DevicesRevoked++
		case d.GetOnline():
			s.DevicesOnline++
		}
	}
	for _, p := range f.peers.GetPeers() {
		s.Peers++
		if hs := p.GetLastHandshake(); hs != nil && testNow.Sub(hs.AsTime()) <= 3*time.Minute {
			s.PeersRecent++
		}
		s.RxBytes += p.GetRxBytes()
		s.TxBytes += p.GetTxBytes()
	}
	return s, nil
}

func (f *fakeAdmin) RevokeDevice(_ context.Context, r *gatewayv1.RevokeDeviceRequest) (*gatewayv1.RevokeDeviceResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &gatewayv1.RevokeDeviceResponse{}, nil
}

func (f *fakeAdmin) CreateAccount(_ context.Context, r *gatewayv1.CreateAccountRequest) (*gatewayv1.CreateAccountResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &gatewayv1.CreateAccountResponse{AccountId: "acc-1"}, nil
}

func (f *fakeAdmin) ListSessions(_ context.Context, r *gatewayv1.ListSessionsRequest) (*gatewayv1.ListSessionsResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	page, next := fakePage(f, f.sessions.GetSessions(), r.GetPageSize(), r.GetPageToken())
	return &gatewayv1.ListSessionsResponse{Sessions: page, NextPageToken: next}, nil
}

func (f *fakeAdmin) ListPeers(_ context.Context, r *gatewayv1.ListPeersRequest) (*gatewayv1.ListPeersResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	page, next := fakePage(f, f.peers.GetPeers(), r.GetPageSize(), r.GetPageToken())
	return &gatewayv1.ListPeersResponse{Peers: page, NextPageToken: next}, nil
}

func (f *fakeAdmin) ListGateways(_ context.Context, r *gatewayv1.ListGatewaysRequest) (*gatewayv1.ListGatewaysResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return f.gateways, nil
}

func (f *fakeAdmin) ExportSubject(_ context.Context, r *gatewayv1.ExportSubjectRequest) (*gatewayv1.ExportSubjectResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &gatewayv1.ExportSubjectResponse{Json: f.export}, nil
}

func (f *fakeAdmin) EraseSubject(_ context.Context, r *gatewayv1.EraseSubjectRequest) (*gatewayv1.EraseSubjectResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &gatewayv1.EraseSubjectResponse{Removed: f.removed}, nil
}

// serveUnix serves f on a unix socket in a temporary directory and returns
// the socket's path.
func serveUnix(t *testing.T, f *fakeAdmin) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, f, lis)
	return path
}

func serve(t *testing.T, f *fakeAdmin, lis net.Listener, opts ...grpc.ServerOption) {
	t.Helper()
	s := grpc.NewServer(opts...)
	gatewayv1.RegisterAdminServiceServer(s, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
}

// serveTLS serves f on a loopback TCP port with mutual TLS.
func serveTLS(t *testing.T, f *fakeAdmin, tc *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, f, lis, grpc.Creds(credentials.NewTLS(tc)))
	return lis.Addr().String()
}

// testNow is the fixed clock of every test run.
var testNow = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)

type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs the real command tree with args, stdin and environment env.
func runCLI(t *testing.T, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := Run(ctx, args, Env{
		Stdin:  strings.NewReader(stdin),
		Stdout: &out,
		Stderr: &errb,
		Getenv: func(k string) string { return env[k] },
		Now:    func() time.Time { return testNow },
	})
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

func (f *fakeAdmin) ResetDeviceKey(_ context.Context, r *gatewayv1.ResetDeviceKeyRequest) (*gatewayv1.ResetDeviceKeyResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &gatewayv1.ResetDeviceKeyResponse{}, nil
}

func (f *fakeAdmin) DeleteAccount(_ context.Context, r *gatewayv1.DeleteAccountRequest) (*gatewayv1.DeleteAccountResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &gatewayv1.DeleteAccountResponse{Removed: f.removed}, nil
}

func (f *fakeAdmin) CloseSession(_ context.Context, r *gatewayv1.AdminCloseSessionRequest) (*gatewayv1.AdminCloseSessionResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return &gatewayv1.AdminCloseSessionResponse{}, nil
}

func (f *fakeAdmin) GetPolicy(ctx context.Context, r *gatewayv1.GetPolicyRequest) (*gatewayv1.GetPolicyResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	if f.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &gatewayv1.GetPolicyResponse{Yaml: f.policy}, nil
}

func (f *fakeAdmin) RunRetention(_ context.Context, r *gatewayv1.RunRetentionRequest) (*gatewayv1.RunRetentionResponse, error) {
	if err := f.record(r); err != nil {
		return nil, err
	}
	return f.pruned, nil
}
