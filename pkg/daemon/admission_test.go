package daemon_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

func newKey(t testing.TB) []byte {
	t.Helper()
	var priv [32]byte
	if _, err := rand.Read(priv[:]); err != nil {
		t.Fatal(err)
	}
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func deviceClient(t *testing.T, g *testGateway) gatewayv1.DeviceServiceClient {
	t.Helper()
	conn, err := agent.Dial(g.d.GRPCAddr().String(), agent.TLSOptions{Pin: g.d.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return gatewayv1.NewDeviceServiceClient(conn)
}

// TestKeyPinningResetAndRekey: the first login pins the key; another key is
// refused (a printed serial number must not allow a take-over) until an
// operator resets it; the address stays the same through all of it; with
// device.rekey: allow a new key replaces the old peer.
func TestKeyPinningResetAndRekey(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g := startGateway(t, cfg)
	g.enroll(t, [2]string{"DS-PIN-0001", "HW-PIN-1"})
	dev := deviceClient(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	login := func(key []byte) (*gatewayv1.DeviceLoginResponse, error) {
		return dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "DS-PIN-0001", HardwareId: "HW-PIN-1", PublicKey: key})
	}
	k1, k2, k3 := newKey(t), newKey(t), newKey(t)
	r1, err := login(k1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := login(k1); err != nil {
		t.Fatalf("same key again: %v", err)
	}
	if _, err := login(k2); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other key while pinned: %v, want PermissionDenied", err)
	}
	// Keys that can never be peers.
	if _, err := login(make([]byte, 32)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("all-zero key: %v, want InvalidArgument", err)
	}
	lowOrder := []byte{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00}
	if _, err := login(lowOrder); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("low-order key: %v, want InvalidArgument", err)
	}
	// The pinned key with the top bit set is the same Curve25519 key spelt
	// another way: refused as non-canonical, never taken as a different key.
	k1top := append([]byte(nil), k1...)
	k1top[31] |= 0x80
	if _, err := login(k1top); status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "canonical") {
		t.Fatalf("pinned key with the top bit set: %v, want InvalidArgument (not canonical)", err)
	}
	if _, err := g.admin.ResetDeviceKey(ctx, &gatewayv1.ResetDeviceKeyRequest{SerialNumber: "DS-PIN-0001"}); err != nil {
		t.Fatal(err)
	}
	r2, err := login(k2)
	if err != nil {
		t.Fatalf("new key after reset: %v", err)
	}
	if fmt.Sprint(r1.GetAddresses()) != fmt.Sprint(r2.GetAddresses()) {
		t.Fatalf("addresses changed across a re-key: %v → %v", r1.GetAddresses(), r2.GetAddresses())
	}
	peers, err := g.admin.ListPeers(ctx, &gatewayv1.ListPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(peers.GetPeers()) != 1 || string(peers.GetPeers()[0].GetPublicKey()) != string(k2) {
		t.Fatalf("peers after reset and re-login: %v; want only the new key", peers.GetPeers())
	}

	// device.rekey: allow, after a restart on the same data.
	g.stop()
	cfg.Device.Rekey = "allow"
	g = startGateway(t, cfg)
	dev = deviceClient(t, g)
	r3, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: "DS-PIN-0001", HardwareId: "HW-PIN-1", PublicKey: k3})
	if err != nil {
		t.Fatalf("rekey allowed: %v", err)
	}
	if r3.GetOutcome() != gatewayv1.LoginOutcome_LOGIN_OUTCOME_REKEYED || fmt.Sprint(r3.GetAddresses()) != fmt.Sprint(r1.GetAddresses()) {
		t.Fatalf("rekey: outcome %v addresses %v", r3.GetOutcome(), r3.GetAddresses())
	}
	peers, err = g.admin.ListPeers(ctx, &gatewayv1.ListPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(peers.GetPeers()) != 1 || string(peers.GetPeers()[0].GetPublicKey()) != string(k3) {
		t.Fatalf("peers after rekey: %d; want only the new key", len(peers.GetPeers()))
	}
}

// TestAddressExhaustion: a device network with room for 6 devices (100.80.0.2-7) admits 6
// with distinct addresses and refuses the seventh with ResourceExhausted,
// writing nothing for it.
func TestAddressExhaustion(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, filepath.Join(dir))
	cfg.Network.IPv4 = netip.MustParsePrefix("100.80.0.0/28")
	cfg.Network.ClientPrefix = netip.MustParsePrefix("100.80.0.8/29")
	if err := cfg.Validate(); err != nil {
		t.Fatalf("small network config: %v", err)
	}
	g := startGateway(t, cfg)
	var pairs [][2]string
	for i := 0; i < 8; i++ {
		pairs = append(pairs, [2]string{fmt.Sprintf("DS-EXH-%02d", i), fmt.Sprintf("HW-%02d", i)})
	}
	g.enroll(t, pairs...)
	dev := deviceClient(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := map[string]bool{}
	var exhausted error
	admitted := 0
	for _, p := range pairs {
		r, err := dev.Login(ctx, &gatewayv1.DeviceLoginRequest{SerialNumber: p[0], HardwareId: p[1], PublicKey: newKey(t)})
		if err != nil {
			exhausted = err
			break
		}
		admitted++
		for _, a := range r.GetAddresses() {
			if seen[a] {
				t.Fatalf("address %s given twice", a)
			}
			seen[a] = true
		}
	}
	if status.Code(exhausted) != codes.ResourceExhausted {
		t.Fatalf("after %d devices: %v, want ResourceExhausted", admitted, exhausted)
	}
	if admitted != 6 {
		t.Fatalf("admitted %d devices into 100.80.0.2-7; want 6", admitted)
	}
	list, err := g.admin.ListDevices(ctx, &gatewayv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pinned := 0
	for _, d := range list.GetDevices() {
		if d.GetKeyPinned() {
			pinned++
		}
	}
	if pinned != 6 {
		t.Fatalf("%d devices have a pinned key; the refused one must have nothing written", pinned)
	}
}
