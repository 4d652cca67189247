package daemon_test

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// TestSessionLimitConcurrent: 20 OpenSession calls of one account at once,
// against the real daemon, open exactly the account's limit of sessions; the
// others get ResourceExhausted.
func TestSessionLimitConcurrent(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	const limit, calls = 3, 20
	cfg.Client.MaxSessionsPerAccount = limit
	g := startGateway(t, cfg)
	const sn, hw = "DS-LIMIT-0001", "HW-L001-ABCDEF"
	g.enroll(t, [2]string{sn, hw})
	devDir := filepath.Join(dir, "dev")
	startEventAgent(t, g, sn, hw, devDir)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := g.admin.CreateAccount(ctx, &gatewayv1.CreateAccountRequest{Name: "carol", Password: "carol-password-1"}); err != nil {
		t.Fatalf("create account: %v", err)
	}
	c := agent.ClientConfig{Gateway: g.d.GRPCAddr().String(), TLS: agent.TLSOptions{Pin: g.d.Fingerprint()},
		Account: "carol", Password: "carol-password-1", StateDir: filepath.Join(dir, "client")}
	if _, _, err := agent.ClientLogin(ctx, c); err != nil {
		t.Fatalf("client login: %v", err)
	}
	stored, err := agent.LoadClientConfig(c.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: c.Gateway, StateDir: devDir, Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatalf("binding code: %v", err)
	}
	if _, err := agent.Bind(ctx, stored, code); err != nil {
		t.Fatalf("bind: %v", err)
	}
	tok, _, err := agent.ClientLogin(ctx, agent.ClientConfig{Gateway: c.Gateway, TLS: c.TLS, Account: c.Account, Password: c.Password})
	if err != nil {
		t.Fatal(err)
	}

	conn, err := agent.Dial(c.Gateway, c.TLS)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := gatewayv1.NewClientServiceClient(conn)
	actx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	codesSeen := make([]codes.Code, calls)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var priv [32]byte
			_, _ = rand.Read(priv[:])
			pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
			if err != nil {
				t.Error(err)
				return
			}
			<-start
			_, err = client.OpenSession(actx, &gatewayv1.OpenSessionRequest{SerialNumber: sn, ClientPublicKey: pub})
			codesSeen[i] = status.Code(err)
		}()
	}
	close(start)
	wg.Wait()
	ok := 0
	for i, c := range codesSeen {
		switch c {
		case codes.OK:
			ok++
		case codes.ResourceExhausted:
		default:
			t.Errorf("call %d: %v, want OK or ResourceExhausted", i, c)
		}
	}
	if ok != limit {
		t.Fatalf("%d of %d concurrent OpenSession calls succeeded, want exactly the limit %d", ok, calls, limit)
	}
	ls, err := g.admin.ListSessions(ctx, &gatewayv1.ListSessionsRequest{})
	if err != nil || len(ls.GetSessions()) != limit || ls.GetNextPageToken() != "" {
		t.Fatalf("admin ListSessions: %d sessions, %v; want %d on one page", len(ls.GetSessions()), err, limit)
	}
	// In pages of 2: every session once, in the same order.
	p1, err := g.admin.ListSessions(ctx, &gatewayv1.ListSessionsRequest{PageSize: 2})
	if err != nil || len(p1.GetSessions()) != 2 || p1.GetNextPageToken() == "" {
		t.Fatalf("first page: %v, %v", p1, err)
	}
	p2, err := g.admin.ListSessions(ctx, &gatewayv1.ListSessionsRequest{PageSize: 2, PageToken: p1.GetNextPageToken()})
	if err != nil || len(p2.GetSessions()) != 1 || p2.GetNextPageToken() != "" {
		t.Fatalf("second page: %v, %v", p2, err)
	}
	for i, s := range append(p1.GetSessions(), p2.GetSessions()...) {
		if s.GetSessionId() != ls.GetSessions()[i].GetSessionId() {
			t.Fatalf("paged session %d is %s, want %s", i, s.GetSessionId(), ls.GetSessions()[i].GetSessionId())
		}
	}
	if _, err := g.admin.ListDevices(ctx, &gatewayv1.ListDevicesRequest{PageToken: p1.GetNextPageToken()}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a sessions token to ListDevices: %v, want InvalidArgument", err)
	}
}
