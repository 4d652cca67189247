package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// TestKernelTUN runs the agent on a real kernel TUN (root only). It uses a
// small virtual network outside the product's default 100.80.0.0/12 so it
// cannot clash with other tests on the host, and the interface disappears
// with the wireguard-go device.
func TestKernelTUN(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a kernel TUN")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	const (
		gw   = "100.127.255.1"
		dev  = "100.127.255.2/32"
		vnet = "100.127.255.0/30"
	)
	g := newFakeGatewayNet(t, nil, gw, dev, vnet)

	// An echo service on the gateway's side of the tunnel.
	g.mu.Lock()
	gwNet := g.wgNet
	g.mu.Unlock()
	echo, err := gwNet.ListenUDPAddrPort(netip.MustParseAddrPort(gw + ":7"))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteTo(buf[:n], from)
		}
	}()

	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	ifname := "dagt" + hex.EncodeToString(suffix)
	cfg := testConfig(t, g, t.TempDir())
	cfg.Netstack = false
	cfg.Interface = ifname
	r := start(t, cfg)
	r.waitReady(t)

	l, err := netlink.LinkByName(ifname)
	if err != nil {
		t.Fatalf("interface %s: %v", ifname, err)
	}
	if l.Attrs().MTU != 1420 {
		t.Errorf("MTU %d, want 1420", l.Attrs().MTU)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != dev {
		t.Fatalf("addresses %v, want %s", addrs, dev)
	}
	routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, rt := range routes {
		if rt.Dst != nil && rt.Dst.String() == vnet {
			found = true
		}
	}
	if !found {
		t.Fatalf("no route to %s via %s: %v", vnet, ifname, routes)
	}
	if r.a.Net() != nil {
		t.Error("Net() is not nil in kernel mode")
	}

	// UDP through the kernel TUN and WireGuard to the gateway's echo service.
	var lastErr error
	ok := false
	for i := 0; i < 10 && !ok; i++ {
		lastErr = func() error {
			d := net.Dialer{Timeout: time.Second}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "udp", gw+":7")
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Second))
			if _, err := c.Write([]byte("through the tunnel")); err != nil {
				return err
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err != nil {
				return err
			}
			if string(buf[:n]) != "through the tunnel" {
				return net.UnknownNetworkError("bad echo")
			}
			ok = true
			return nil
		}()
	}
	if !ok {
		t.Fatalf("no UDP echo through the kernel tunnel: %v", lastErr)
	}

	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(ifname); err == nil {
		t.Fatalf("interface %s still exists after shutdown", ifname)
	}
}
