package router

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	xipv4 "golang.org/x/net/ipv4"
	xipv6 "golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// wgNode is a wireguard-go device over a netstack, listening on UDP; peers
// reach it on 127.0.0.1.
type wgNode struct {
	dev  *device.Device
	net  *netstack.Net
	priv string // hex
	pub  string // hex
	port int
}

func newWGNode(t *testing.T, addrs []netip.Addr, wrap func(tun.Device) tun.Device) *wgNode {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tdev, tnet, err := netstack.CreateNetTUN(addrs, nil, 1420)
	if err != nil {
		t.Fatal(err)
	}
	dtun := tdev
	if wrap != nil {
		dtun = wrap(tdev)
	}
	n := &wgNode{
		dev:  device.NewDevice(dtun, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, "")),
		net:  tnet,
		priv: hex.EncodeToString(key.Bytes()),
		pub:  hex.EncodeToString(key.PublicKey().Bytes()),
	}
	t.Cleanup(n.dev.Close)
	if err := n.dev.IpcSet("private_key=" + n.priv + "\nlisten_port=0\n"); err != nil {
		t.Fatal(err)
	}
	if err := n.dev.Up(); err != nil {
		t.Fatal(err)
	}
	state, err := n.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(state, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			n.port, _ = strconv.Atoi(v)
		}
	}
	if n.port == 0 {
		t.Fatal("no listen port")
	}
	return n
}

// addPeer makes p a peer of n with the given allowed IPs.
func (n *wgNode) addPeer(t *testing.T, p *wgNode, allowed ...string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nendpoint=127.0.0.1:%d\n", p.pub, p.port)
	for _, a := range allowed {
		fmt.Fprintf(&b, "allowed_ip=%s\n", a)
	}
	if err := n.dev.IpcSet(b.String()); err != nil {
		t.Fatal(err)
	}
}

// ping sends one ICMP echo from src to dst over n's netstack and waits for
// the matching reply.
func (n *wgNode) ping(src, dst netip.Addr, seq int, timeout time.Duration) error {
	c, err := n.net.DialPingAddr(src, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	var typ, replyType icmp.Type = xipv4.ICMPTypeEcho, xipv4.ICMPTypeEchoReply
	proto := 1
	if dst.Is6() {
		typ, replyType, proto = xipv6.ICMPTypeEchoRequest, xipv6.ICMPTypeEchoReply, 58
	}
	data := []byte("dasset hairpin " + strconv.Itoa(seq))
	req, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{Seq: seq, Data: data}}).Marshal(nil)
	if err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	if _, err := c.Write(req); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		k, err := c.Read(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(proto, buf[:k])
		if err != nil {
			return err
		}
		if e, ok := m.Body.(*icmp.Echo); ok && m.Type == replyType && e.Seq == seq && bytes.Equal(e.Data, data) {
			return nil
		}
	}
}

// pingEventually retries ping up to tries times (the first packets also
// wait for the WireGuard handshakes).
func (n *wgNode) pingEventually(src, dst netip.Addr, tries int) error {
	var err error
	for i := range tries {
		if err = n.ping(src, dst, 1000+i, 2*time.Second); err == nil {
			return nil
		}
	}
	return err
}

// waitCounter waits (bounded) until get() ≥ want.
func waitCounter(t *testing.T, name string, get func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for get() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want ≥ %d", name, get(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWireGuardHub runs real wireguard-go devices over netstack on
// loopback: a hub whose device is wrapped in a Router, one client and two
// devices. Clients reach a device only through an open session; devices
// never reach each other; everybody reaches the gateway.
func TestWireGuardHub(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four wireguard-go devices")
	}
	var r *Router
	hub := newWGNode(t, []netip.Addr{gw4, gw6}, func(inner tun.Device) tun.Device {
		var err error
		if r, err = New(inner, testConfig()); err != nil {
			t.Fatal(err)
		}
		return r
	})
	client := newWGNode(t, []netip.Addr{cli4a, cli6a}, nil)
	devA := newWGNode(t, []netip.Addr{dev4a, dev6a}, nil)
	devB := newWGNode(t, []netip.Addr{dev4b, dev6b}, nil)

	hub.addPeer(t, client, cli4a.String()+"/32", cli6a.String()+"/128")
	hub.addPeer(t, devA, dev4a.String()+"/32", dev6a.String()+"/128")
	hub.addPeer(t, devB, dev4b.String()+"/32", dev6b.String()+"/128")
	for _, spoke := range []*wgNode{client, devA, devB} {
		spoke.addPeer(t, hub, "100.80.0.0/12", "fd00:80::/48")
	}
	dropped := func(reason string) func() uint64 {
		return func() uint64 { return r.Stats().Dropped[reason] }
	}

	// Everybody reaches the gateway itself (Write → host, host → Read).
	if err := client.pingEventually(cli4a, gw4, 5); err != nil {
		t.Fatalf("client → gateway: %v", err)
	}
	if err := devA.pingEventually(dev6a, gw6, 5); err != nil {
		t.Fatalf("device → gateway (v6): %v", err)
	}
	// ToHost is counted after the inner Write returns, and netstack may
	// answer (FromHost) before that: allow the counter a moment.
	for i := 0; i < 100; i++ {
		if s := r.Stats(); s.ToHost >= 2 && s.FromHost >= 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := r.Stats(); s.ToHost < 2 || s.FromHost < 2 {
		t.Fatalf("after pinging the gateway: to_host %d from_host %d", s.ToHost, s.FromHost)
	}
	// devB must have a handshake too, so that a hairpin or a leak towards it
	// could actually be delivered.
	if err := devB.pingEventually(dev4b, gw4, 5); err != nil {
		t.Fatalf("device B → gateway: %v", err)
	}

	// No session yet: the client cannot reach device A.
	if err := client.ping(cli4a, dev4a, 1, time.Second); err == nil {
		t.Fatal("client reached device A without a session")
	}
	waitCounter(t, "no_session", dropped("no_session"), 1)
	if got := r.Stats().Hairpinned; got != 0 {
		t.Fatalf("hairpinned %d without a session", got)
	}

	// Open the session: now it can, over IPv4 and IPv6, through the hub.
	r.SetSessions([]Pair{{Client: cli4a, Device: dev4a}, {Client: cli6a, Device: dev6a}})
	if err := client.pingEventually(cli4a, dev4a, 5); err != nil {
		t.Fatalf("client → device A with a session: %v", err)
	}
	if err := client.pingEventually(cli6a, dev6a, 5); err != nil {
		t.Fatalf("client → device A with a session (v6): %v", err)
	}
	if got := r.Stats().Hairpinned; got < 4 {
		t.Fatalf("hairpinned %d, want ≥ 4 (two echoes and two replies)", got)
	}
	// The session is for device A only.
	before := dropped("no_session")()
	if err := client.ping(cli4a, dev4b, 2, time.Second); err == nil {
		t.Fatal("client reached device B without a session")
	}
	waitCounter(t, "no_session", dropped("no_session"), before+1)

	// Devices never reach each other, session or not.
	if err := devA.ping(dev4a, dev4b, 3, time.Second); err == nil {
		t.Fatal("device A reached device B")
	}
	waitCounter(t, "device_to_device", dropped("device_to_device"), 1)
	if err := devB.ping(dev6b, dev6a, 4, time.Second); err == nil {
		t.Fatal("device B reached device A (v6)")
	}
	waitCounter(t, "device_to_device", dropped("device_to_device"), 2)

	// Closing the session cuts the path again.
	r.SetSessions(nil)
	before = dropped("no_session")()
	if err := client.ping(cli4a, dev4a, 5, time.Second); err == nil {
		t.Fatal("client reached device A after the session closed")
	}
	waitCounter(t, "no_session", dropped("no_session"), before+1)

	if s := r.Stats(); s.Dropped["malformed"] != 0 || s.Dropped["spoofed_source"] != 0 || s.Dropped["queue_full"] != 0 {
		t.Fatalf("unexpected drops: %v", s.Dropped)
	}
}
