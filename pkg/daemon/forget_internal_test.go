package daemon

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/planetxlabs/dasset-gateway/tunnel/wg"
)

// A peer with an endpoint but no handshake (what a peer mid-handshake looks
// like) keeps its endpoint through one retention run and loses it at the
// next; a peer never seen at all is left alone.
func TestForgetterWaitsOneRunForHandshakeLessPeers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tdev, _, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr("100.80.0.1")}, nil, 1420)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := wg.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	d, err := wg.New(tdev, conn.NewDefaultBind(), wg.Config{PrivateKey: priv, StatsMaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	key := func() wg.Key {
		k, err := wg.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k.PublicKey()
	}
	withEndpoint, without := key(), key()
	if err := d.AddPeer(ctx, wg.Peer{PublicKey: withEndpoint, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.80.0.2/32")},
		Endpoint: netip.MustParseAddrPort("192.0.2.9:51820")}); err != nil {
		t.Fatal(err)
	}
	if err := d.AddPeer(ctx, wg.Peer{PublicKey: without, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.80.0.3/32")}}); err != nil {
		t.Fatal(err)
	}
	// The cache (an hour) is filled before the runs: they must not use it.
	if _, err := d.Peers(ctx); err != nil {
		t.Fatal(err)
	}
	f := &endpointForgetter{d: d, now: time.Now}
	endpoint := func() netip.AddrPort {
		t.Helper()
		ps, err := d.PeersNow(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.PublicKey == withEndpoint {
				return p.Endpoint
			}
		}
		t.Fatal("peer gone")
		return netip.AddrPort{}
	}
	if n, err := f.ForgetIdleEndpoints(ctx, time.Minute); err != nil || n != 0 || !endpoint().IsValid() {
		t.Fatalf("first run: forgot %d, %v; endpoint %v; want it kept", n, err, endpoint())
	}
	if n, err := f.ForgetIdleEndpoints(ctx, time.Minute); err != nil || n != 1 || endpoint().IsValid() {
		t.Fatalf("second run: forgot %d, %v; endpoint %v; want it forgotten", n, err, endpoint())
	}
	if n, err := f.ForgetIdleEndpoints(ctx, time.Minute); err != nil || n != 0 {
		t.Fatalf("third run: forgot %d, %v; want nothing left to forget", n, err)
	}
}
