package wg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// node is a Device on a netstack TUN with the standard UDP bind, listening
// on a free port (peers reach it at 127.0.0.1).
type node struct {
	*Device
	net *netstack.Net
}

func newNode(tb testing.TB, cfg Config, addrs ...string) *node {
	tb.Helper()
	var local []netip.Addr
	for _, a := range addrs {
		local = append(local, netip.MustParseAddr(a))
	}
	tdev, tnet, err := netstack.CreateNetTUN(local, nil, 1420)
	if err != nil {
		tb.Fatal(err)
	}
	if cfg.PrivateKey.IsZero() {
		if cfg.PrivateKey, err = GeneratePrivateKey(); err != nil {
			tb.Fatal(err)
		}
	}
	d, err := New(tdev, conn.NewDefaultBind(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	if d.ListenPort() == 0 {
		tb.Fatal("ListenPort is 0 after New")
	}
	return &node{Device: d, net: tnet}
}

func (n *node) endpoint() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(n.ListenPort()))
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func pubKeys(tb testing.TB, n int) []Key {
	tb.Helper()
	keys := make([]Key, n)
	for i := range keys {
		priv, err := GeneratePrivateKey()
		if err != nil {
			tb.Fatal(err)
		}
		keys[i] = priv.PublicKey()
	}
	return keys
}

// host returns 10.x.y.z/32 for i.
func host(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// devicePeers reads the device itself (not the cache) as key → status.
func devicePeers(tb testing.TB, d *Device) map[Key]PeerStatus {
	tb.Helper()
	st, err := d.get()
	if err != nil {
		tb.Fatal(err)
	}
	m := make(map[Key]PeerStatus, len(st.peers))
	for _, p := range st.peers {
		m[p.PublicKey] = p
	}
	return m
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ping sends ICMP echo requests from src to dst over tnet until a matching
// reply arrives (at most 5 attempts of 3s; the first packet also waits for
// the WireGuard handshake).
func ping(t *testing.T, tnet *netstack.Net, src, dst string) {
	t.Helper()
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	pc, err := tnet.DialPingAddr(s, d)
	if err != nil {
		t.Fatalf("dial ping %s→%s: %v", src, dst, err)
	}
	defer pc.Close()
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1
	if d.Is6() {
		reqType, replyType, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	buf := make([]byte, 1500)
	for attempt := 1; attempt <= 5; attempt++ {
		req := &icmp.Echo{Seq: attempt, Data: []byte("dasset over wireguard")}
		msg, err := (&icmp.Message{Type: reqType, Body: req}).Marshal(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := pc.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Write(msg); err != nil {
			t.Fatalf("ping write: %v", err)
		}
		n, err := pc.Read(buf)
		if err != nil {
			t.Logf("ping %s→%s attempt %d: %v", src, dst, attempt, err)
			continue
		}
		reply, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			t.Fatalf("parse reply: %v", err)
		}
		echo, ok := reply.Body.(*icmp.Echo)
		if reply.Type != replyType || !ok {
			t.Fatalf("reply is %v, want echo reply", reply.Type)
		}
		if echo.Seq != req.Seq || !bytes.Equal(echo.Data, req.Data) {
			t.Fatalf("reply seq %d data %q, want %d %q", echo.Seq, echo.Data, req.Seq, req.Data)
		}
		return
	}
	t.Fatalf("no echo reply %s→%s", src, dst)
}

// TestTunnelPing runs two devices over the loopback UDP bind, adds each as
// the other's peer, and pings across the tunnel over IPv4 and IPv6.
func TestTunnelPing(t *testing.T) {
	ctx := ctxT(t)
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	gw := newNode(t, Config{Logger: logger, StatsMaxAge: time.Nanosecond}, "100.80.0.1", "fd00::1")
	dev := newNode(t, Config{Logger: logger}, "100.80.0.2", "fd00::2")

	if err := gw.AddPeer(ctx, Peer{PublicKey: dev.PublicKey(), AllowedIPs: prefixes("100.80.0.2/32", "fd00::2/128")}); err != nil {
		t.Fatal(err)
	}
	if err := dev.AddPeer(ctx, Peer{
		PublicKey:           gw.PublicKey(),
		AllowedIPs:          prefixes("100.80.0.1/32", "fd00::1/128"),
		Endpoint:            gw.endpoint(),
		PersistentKeepalive: 25 * time.Second,
	}); err != nil {
		t.Fatal(err)
	}
	// The gateway learns the device's endpoint from its handshake (roaming).
	ping(t, dev.net, "100.80.0.2", "100.80.0.1")
	ping(t, gw.net, "fd00::1", "fd00::2")

	peers, err := gw.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 1 {
		t.Fatalf("gateway has %d peers, want 1", len(peers))
	}
	p := peers[0]
	if p.PublicKey != dev.PublicKey() || !samePrefixes(p.AllowedIPs, prefixes("100.80.0.2/32", "fd00::2/128")) {
		t.Fatalf("gateway peer %+v", p)
	}
	if p.Endpoint != dev.endpoint() {
		t.Errorf("gateway learned endpoint %v, want %v", p.Endpoint, dev.endpoint())
	}
	if p.LastHandshake.IsZero() || time.Since(p.LastHandshake) > time.Minute || p.RxBytes == 0 || p.TxBytes == 0 {
		t.Errorf("after ping: handshake %v rx %d tx %d", p.LastHandshake, p.RxBytes, p.TxBytes)
	}
	// The one-key lookup reads the same status.
	if hs, ok, err := gw.LastHandshake(ctx, dev.PublicKey()); err != nil || !ok || !hs.Equal(p.LastHandshake) {
		t.Errorf("LastHandshake(device) = %v, %v, %v; want %v", hs, ok, err, p.LastHandshake)
	}
	if hs, ok, err := gw.LastHandshake(ctx, gw.PublicKey()); err != nil || ok || !hs.IsZero() {
		t.Errorf("LastHandshake(not a peer) = %v, %v, %v; want not found", hs, ok, err)
	}
	if all, err := gw.LastHandshakes(ctx); err != nil || len(all) != 1 || !all[dev.PublicKey()].Equal(p.LastHandshake) {
		t.Errorf("LastHandshakes = %v, %v; want only the device's, %v", all, err, p.LastHandshake)
	}
	st, err := gw.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Peers != 1 || st.HandshakeAges.Under2m != 1 || st.RxBytes < p.RxBytes || st.TxBytes < p.TxBytes {
		t.Errorf("stats %+v", st)
	}
	if out := logs.String(); strings.Contains(out, "127.0.0.1") || !strings.Contains(out, "wireguard-go") {
		t.Errorf("logs leak an address or lack wireguard-go's messages:\n%s", out)
	}
}

// TestAddPeerBatchesConcurrentCalls checks 100 concurrent AddPeer calls are
// applied with one IpcSet. The window is long and MaxBatch is 100, so the
// batch is applied when the 100th call joins it: no timing involved.
func TestAddPeerBatchesConcurrentCalls(t *testing.T) {
	ctx := ctxT(t)
	const n = 100
	gw := newNode(t, Config{BatchWindow: time.Hour, MaxBatch: n}, "100.80.0.1")
	keys := pubKeys(t, n)
	before := gw.ipcSets.Load()

	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs <- gw.AddPeer(ctx, Peer{PublicKey: keys[i], AllowedIPs: []netip.Prefix{host(i)}})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := gw.ipcSets.Load() - before; got != 1 {
		t.Fatalf("%d concurrent AddPeer calls made %d IpcSet calls, want 1", n, got)
	}
	peers, err := gw.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != n {
		t.Fatalf("Peers has %d peers, want %d", len(peers), n)
	}
	byKey := make(map[Key]PeerStatus)
	for _, p := range peers {
		byKey[p.PublicKey] = p
	}
	for i, k := range keys {
		if p, ok := byKey[k]; !ok || !samePrefixes(p.AllowedIPs, []netip.Prefix{host(i)}) {
			t.Fatalf("peer %d: %+v (present %v)", i, p, ok)
		}
		if !gw.HasPeer(k) {
			t.Fatalf("HasPeer(%d) false", i)
		}
	}

	// Re-adding identical peers changes nothing and needs no IpcSet.
	before = gw.ipcSets.Load()
	if err := gw.AddPeer(ctx, Peer{PublicKey: keys[0], AllowedIPs: []netip.Prefix{host(0)}}); err != nil {
		t.Fatal(err)
	}
	if got := gw.ipcSets.Load() - before; got != 0 {
		t.Fatalf("identical AddPeer made %d IpcSet calls", got)
	}
}

func TestAllowedIPOverlapRefused(t *testing.T) {
	ctx := ctxT(t)
	gw := newNode(t, Config{}, "100.80.0.1")
	keys := pubKeys(t, 3)
	a, b, c := keys[0], keys[1], keys[2]
	if err := gw.AddPeer(ctx, Peer{PublicKey: a, AllowedIPs: prefixes("100.80.0.5/32")}); err != nil {
		t.Fatal(err)
	}
	for _, steal := range []string{"100.80.0.5/32", "100.80.0.0/24", "0.0.0.0/0"} {
		err := gw.AddPeer(ctx, Peer{PublicKey: b, AllowedIPs: prefixes("fd00::9/128", steal)})
		if !errors.Is(err, ErrAllowedIPInUse) || !strings.Contains(err.Error(), a.String()) {
			t.Fatalf("AddPeer taking %s: %v, want ErrAllowedIPInUse naming the owner", steal, err)
		}
	}
	err := gw.AddPeers(ctx, []Peer{{PublicKey: b, AllowedIPs: prefixes("100.80.0.5/32")}})
	if !errors.Is(err, ErrAllowedIPInUse) {
		t.Fatalf("AddPeers taking a's IP: %v", err)
	}
	dp := devicePeers(t, gw.Device)
	if len(dp) != 1 || !samePrefixes(dp[a].AllowedIPs, prefixes("100.80.0.5/32")) || gw.HasPeer(b) {
		t.Fatalf("after refused overlaps the device has %v", dp)
	}

	// Updating a to give up the IP frees it; the same key is an update.
	if err := gw.AddPeer(ctx, Peer{PublicKey: a, AllowedIPs: prefixes("100.80.0.6/32")}); err != nil {
		t.Fatal(err)
	}
	if err := gw.AddPeer(ctx, Peer{PublicKey: b, AllowedIPs: prefixes("100.80.0.5/32")}); err != nil {
		t.Fatal(err)
	}
	// Within one AddPeers an IP may move between peers of the set.
	if err := gw.AddPeers(ctx, []Peer{
		{PublicKey: a, AllowedIPs: prefixes("100.80.0.7/32")},
		{PublicKey: c, AllowedIPs: prefixes("100.80.0.6/32")},
	}); err != nil {
		t.Fatal(err)
	}
	// Two peers of one set may not share an IP.
	err = gw.AddPeers(ctx, []Peer{
		{PublicKey: a, AllowedIPs: prefixes("100.80.1.1/32")},
		{PublicKey: c, AllowedIPs: prefixes("100.80.1.0/24")},
	})
	if !errors.Is(err, ErrAllowedIPInUse) || !strings.Contains(err.Error(), "peers[1]") {
		t.Fatalf("AddPeers with an inner overlap: %v", err)
	}
	dp = devicePeers(t, gw.Device)
	want := map[Key][]netip.Prefix{a: prefixes("100.80.0.7/32"), b: prefixes("100.80.0.5/32"), c: prefixes("100.80.0.6/32")}
	if len(dp) != len(want) {
		t.Fatalf("device has %d peers, want %d", len(dp), len(want))
	}
	for k, w := range want {
		if !samePrefixes(dp[k].AllowedIPs, w) {
			t.Fatalf("peer %s has %v, want %v", k, dp[k].AllowedIPs, w)
		}
	}
}

// TestBatchFailureRetriesPeerByPeer makes the IpcSet of a batch fail half
// way (the lines before the bad peer applied, as wireguard-go does), and
// checks the other peers of the batch succeed, the bad one fails and is
// rolled back, and the device ends equal to the desired state.
func TestBatchFailureRetriesPeerByPeer(t *testing.T) {
	ctx := ctxT(t)
	const n = 6
	gw := newNode(t, Config{BatchWindow: time.Hour, MaxBatch: 1}, "100.80.0.1")
	keys := pubKeys(t, n+1)
	old := keys[n] // an existing peer, later updated to the poisoned IP
	if err := gw.AddPeer(ctx, Peer{PublicKey: old, AllowedIPs: prefixes("10.9.9.9/32")}); err != nil {
		t.Fatal(err)
	}
	gw.mu.Lock()
	gw.cfg.MaxBatch = n // the next batch is applied when n changes are queued
	gw.mu.Unlock()

	const poison = "allowed_ip=10.66.66.66/32\n"
	var failures int // only the batcher goroutine calls ipcSetFn
	gw.ipcSetFn = func(conf string) error {
		i := strings.Index(conf, poison)
		if i < 0 {
			return gw.dev.IpcSet(conf)
		}
		failures++
		start := strings.LastIndex(conf[:i], "public_key=")
		if err := gw.dev.IpcSet(conf[:start]); err != nil {
			return err
		}
		return errors.New("injected failure")
	}

	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			p := Peer{PublicKey: keys[i], AllowedIPs: []netip.Prefix{host(i)}}
			if i == 2 {
				p.AllowedIPs = prefixes("10.66.66.66/32")
			}
			errs[i] = gw.AddPeer(ctx, p)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i == 2 {
			if err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("poisoned call: %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("call %d failed with the poisoned one: %v", i, err)
		}
	}
	// One failed batch, then one failed retry of the poisoned peer alone.
	if failures != 2 {
		t.Fatalf("%d failed IpcSet calls, want 2", failures)
	}
	want := map[Key][]netip.Prefix{old: prefixes("10.9.9.9/32")}
	for _, i := range []int{0, 1, 3, 4, 5} {
		want[keys[i]] = []netip.Prefix{host(i)}
	}
	checkDevice := func() {
		t.Helper()
		dp := devicePeers(t, gw.Device)
		if len(dp) != len(want) {
			t.Fatalf("device has %d peers, want %d: %v", len(dp), len(want), dp)
		}
		for k, w := range want {
			if !samePrefixes(dp[k].AllowedIPs, w) {
				t.Fatalf("peer %s: device has %v, want %v", k, dp[k].AllowedIPs, w)
			}
			if !gw.HasPeer(k) {
				t.Fatalf("HasPeer(%s) false", k)
			}
		}
	}
	checkDevice()
	if gw.HasPeer(keys[2]) {
		t.Fatal("the failed new peer is still in the desired state")
	}

	// A failed update rolls back to the previous configuration.
	gw.mu.Lock()
	gw.cfg.MaxBatch = 1
	gw.mu.Unlock()
	err := gw.AddPeer(ctx, Peer{PublicKey: old, AllowedIPs: prefixes("10.66.66.66/32", "10.9.9.8/32")})
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("poisoned update: %v", err)
	}
	checkDevice()
	// The rolled-back update's other IP is free again.
	if err := gw.AddPeer(ctx, Peer{PublicKey: keys[2], AllowedIPs: prefixes("10.9.9.8/32")}); err != nil {
		t.Fatal(err)
	}
}

func TestRemovePeerAndReconcile(t *testing.T) {
	ctx := ctxT(t)
	gw := newNode(t, Config{}, "100.80.0.1")
	keys := pubKeys(t, 4)
	var peers []Peer
	for i := range 3 {
		peers = append(peers, Peer{PublicKey: keys[i], AllowedIPs: []netip.Prefix{host(i)}})
	}
	if err := gw.AddPeers(ctx, peers); err != nil {
		t.Fatal(err)
	}
	if err := gw.RemovePeer(ctx, keys[3]); err != nil {
		t.Fatalf("removing an unknown key: %v", err)
	}
	if err := gw.RemovePeer(ctx, keys[0]); err != nil {
		t.Fatal(err)
	}
	if _, ok := devicePeers(t, gw.Device)[keys[0]]; ok || gw.HasPeer(keys[0]) {
		t.Fatal("removed peer still present")
	}
	// Its IP is free again.
	if err := gw.AddPeer(ctx, Peer{PublicKey: keys[3], AllowedIPs: []netip.Prefix{host(0)}}); err != nil {
		t.Fatal(err)
	}

	// A peer added behind our back is removed by Reconcile, keys[1] is
	// updated, keys[3] removed, keys[0] added back.
	stray := pubKeys(t, 1)[0]
	if err := gw.dev.IpcSet("public_key=" + stray.Hex() + "\nallowed_ip=10.200.0.1/32\n"); err != nil {
		t.Fatal(err)
	}
	want := []Peer{
		{PublicKey: keys[0], AllowedIPs: []netip.Prefix{host(0)}},
		{PublicKey: keys[1], AllowedIPs: []netip.Prefix{host(11)}, PersistentKeepalive: 5 * time.Second},
		{PublicKey: keys[2], AllowedIPs: []netip.Prefix{host(2)}},
	}
	before := gw.ipcSets.Load()
	if err := gw.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := gw.ipcSets.Load() - before; got != 1 {
		t.Fatalf("Reconcile made %d IpcSet calls, want 1", got)
	}
	dp := devicePeers(t, gw.Device)
	if len(dp) != len(want) {
		t.Fatalf("device has %d peers after Reconcile, want %d", len(dp), len(want))
	}
	for _, w := range want {
		h, ok := dp[w.PublicKey]
		if !ok || !samePrefixes(h.AllowedIPs, w.AllowedIPs) || h.PersistentKeepalive != w.PersistentKeepalive {
			t.Fatalf("peer %s: %+v", w.PublicKey, h)
		}
	}
	if gw.HasPeer(keys[3]) || !gw.HasPeer(keys[0]) {
		t.Fatal("desired state not replaced by Reconcile")
	}
	// Reconciling to the same set changes nothing.
	before = gw.ipcSets.Load()
	if err := gw.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := gw.ipcSets.Load() - before; got != 0 {
		t.Fatalf("no-op Reconcile made %d IpcSet calls", got)
	}
}

func TestRemovePeers(t *testing.T) {
	ctx := ctxT(t)
	gw := newNode(t, Config{}, "100.80.0.1")
	keys := pubKeys(t, 6)
	var peers []Peer
	for i := range 5 {
		peers = append(peers, Peer{PublicKey: keys[i], AllowedIPs: []netip.Prefix{host(i)}})
	}
	if err := gw.AddPeers(ctx, peers); err != nil {
		t.Fatal(err)
	}
	before := gw.ipcSets.Load()
	// keys[5] is unknown: skipped.
	if err := gw.RemovePeers(ctx, []Key{keys[0], keys[2], keys[5], keys[4]}); err != nil {
		t.Fatal(err)
	}
	if got := gw.ipcSets.Load() - before; got != 1 {
		t.Fatalf("RemovePeers made %d IpcSet calls, want 1", got)
	}
	dp := devicePeers(t, gw.Device)
	for i, k := range keys[:5] {
		_, onDevice := dp[k]
		want := i == 1 || i == 3
		if onDevice != want || gw.HasPeer(k) != want {
			t.Fatalf("peer %d: on device %v, in desired state %v, want %v", i, onDevice, gw.HasPeer(k), want)
		}
	}
	before = gw.ipcSets.Load()
	if err := gw.RemovePeers(ctx, []Key{keys[0], keys[5]}); err != nil {
		t.Fatal(err)
	}
	if got := gw.ipcSets.Load() - before; got != 0 {
		t.Fatalf("removing only unknown keys made %d IpcSet calls", got)
	}
}

func TestAddPeersBulk(t *testing.T) {
	ctx := ctxT(t)
	const n = 2000
	gw := newNode(t, Config{}, "100.80.0.1")
	keys := pubKeys(t, n)
	peers := make([]Peer, n)
	for i := range peers {
		peers[i] = Peer{PublicKey: keys[i], AllowedIPs: []netip.Prefix{host(i)}}
	}
	// All or nothing on validation.
	bad := slices.Clone(peers)
	bad[1234].AllowedIPs = prefixes("10.0.0.1/8")
	err := gw.AddPeers(ctx, bad)
	if !errors.Is(err, ErrInvalidPeer) || !strings.Contains(err.Error(), "peers[1234]") {
		t.Fatalf("AddPeers with an invalid peer: %v", err)
	}
	dup := slices.Clone(peers)
	dup[7].PublicKey = keys[3]
	if err := gw.AddPeers(ctx, dup); !errors.Is(err, ErrInvalidPeer) || !strings.Contains(err.Error(), "same key as peers[3]") {
		t.Fatalf("AddPeers with a duplicate key: %v", err)
	}
	if len(devicePeers(t, gw.Device)) != 0 || gw.HasPeer(keys[0]) {
		t.Fatal("a refused AddPeers changed the peer set")
	}

	before := gw.ipcSets.Load()
	if err := gw.AddPeers(ctx, peers); err != nil {
		t.Fatal(err)
	}
	if got := gw.ipcSets.Load() - before; got != 1 {
		t.Fatalf("AddPeers of %d made %d IpcSet calls, want 1", n, got)
	}
	if got := len(devicePeers(t, gw.Device)); got != n {
		t.Fatalf("device has %d peers, want %d", got, n)
	}
}

func TestStatusCache(t *testing.T) {
	ctx := ctxT(t)
	gw := newNode(t, Config{StatsMaxAge: time.Hour}, "100.80.0.1")
	keys := pubKeys(t, 2)
	if err := gw.AddPeer(ctx, Peer{PublicKey: keys[0], AllowedIPs: []netip.Prefix{host(0)}}); err != nil {
		t.Fatal(err)
	}
	before := gw.ipcGets.Load()
	for range 10 {
		s, err := gw.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Peers != 1 || s.HandshakeAges.OlderOrNever != 1 {
			t.Fatalf("stats %+v", s)
		}
		if _, err := gw.Peers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := gw.ipcGets.Load() - before; got != 1 {
		t.Fatalf("10 Stats + 10 Peers made %d IpcGet calls, want 1", got)
	}
	// After a change Peers reads the device again; Stats keeps its cache.
	if err := gw.AddPeer(ctx, Peer{PublicKey: keys[1], AllowedIPs: []netip.Prefix{host(1)}}); err != nil {
		t.Fatal(err)
	}
	before = gw.ipcGets.Load()
	peers, err := gw.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 2 || gw.ipcGets.Load()-before != 1 {
		t.Fatalf("Peers after a change: %d peers, %d IpcGet", len(peers), gw.ipcGets.Load()-before)
	}
	// Callers cannot change the cache through the returned slices.
	peers[0].AllowedIPs[0] = netip.MustParsePrefix("192.0.2.0/24")
	again, err := gw.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range again {
		if p.AllowedIPs[0] == netip.MustParsePrefix("192.0.2.0/24") {
			t.Fatal("Peers returned the cache's own slices")
		}
	}
}

func TestClosed(t *testing.T) {
	ctx := ctxT(t)
	gw := newNode(t, Config{}, "100.80.0.1")
	k := pubKeys(t, 1)[0]
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := gw.AddPeer(ctx, Peer{PublicKey: k}); !errors.Is(err, ErrClosed) {
		t.Fatalf("AddPeer after Close: %v", err)
	}
	if err := gw.AddPeers(ctx, []Peer{{PublicKey: k}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("AddPeers after Close: %v", err)
	}
	if err := gw.RemovePeer(ctx, k); !errors.Is(err, ErrClosed) {
		t.Fatalf("RemovePeer after Close: %v", err)
	}
	if _, err := gw.Stats(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Stats after Close: %v", err)
	}
	if _, err := gw.ServeUAPI("dwgclosed", UAPIOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("ServeUAPI after Close: %v", err)
	}
}

func TestQueuedChangeFailsOnClose(t *testing.T) {
	gw := newNode(t, Config{BatchWindow: time.Hour}, "100.80.0.1")
	k := pubKeys(t, 1)[0]
	errc := make(chan error, 1)
	go func() { errc <- gw.AddPeer(context.Background(), Peer{PublicKey: k}) }()
	// Wait (bounded) until the change is queued, then close.
	deadline := time.Now().Add(10 * time.Second)
	for !gw.HasPeer(k) {
		if time.Now().After(deadline) {
			t.Fatal("AddPeer never queued")
		}
		time.Sleep(time.Millisecond)
	}
	gw.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("queued AddPeer after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("queued AddPeer did not return after Close")
	}
}

func TestAddPeerContextEnds(t *testing.T) {
	gw := newNode(t, Config{BatchWindow: time.Hour}, "100.80.0.1")
	k := pubKeys(t, 1)[0]
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := gw.AddPeer(ctx, Peer{PublicKey: k})
	if !errors.Is(err, context.Canceled) || !gw.HasPeer(k) {
		t.Fatalf("AddPeer with an ended ctx: %v (queued: %v)", err, gw.HasPeer(k))
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"zero key", Config{}, "private_key"},
		{"port", Config{PrivateKey: Key{9}, ListenPort: 70000}, "listen_port 70000"},
	} {
		tdev, _, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr("100.80.0.1")}, nil, 1420)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := New(tdev, nil, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New error = %v, want one naming %q", tc.name, err, tc.want)
		}
	}
}

// readAnswer reads a UAPI answer up to and including its blank line.
func readAnswer(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	for range 100000 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading UAPI answer: %v (so far %q)", err, b.String())
		}
		if line == "\n" {
			return b.String()
		}
		b.WriteString(line)
	}
	t.Fatal("UAPI answer too long")
	return ""
}

func TestServeUAPI(t *testing.T) {
	ctx := ctxT(t)
	name := fmt.Sprintf("dwgtest%d", os.Getpid())
	path := "/var/run/wireguard/" + name + ".sock"
	priv, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	gw := newNode(t, Config{PrivateKey: priv}, "100.80.0.1")
	keys := pubKeys(t, 2)
	peer, peer6 := keys[0], keys[1]
	if err := gw.AddPeer(ctx, Peer{PublicKey: peer, AllowedIPs: prefixes("100.80.0.2/32"), PersistentKeepalive: 25 * time.Second,
		Endpoint: netip.MustParseAddrPort("198.51.100.77:41234")}); err != nil {
		t.Fatal(err)
	}
	if err := gw.AddPeer(ctx, Peer{PublicKey: peer6, AllowedIPs: prefixes("100.80.0.3/32"),
		Endpoint: netip.MustParseAddrPort("[2001:db8:1:2::5]:41235")}); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.ServeUAPI("../etc", UAPIOptions{}); err == nil {
		t.Fatal("ServeUAPI accepted a name with a path in it")
	}
	closer, err := gw.ServeUAPI(name, UAPIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closer.Close() })

	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)

	// get=1: the state without the private key.
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		t.Fatal(err)
	}
	ans := readAnswer(t, r)
	if strings.Contains(ans, "private_key") || strings.Contains(ans, priv.Hex()) {
		t.Fatalf("get answer carries the private key:\n%s", ans)
	}
	for _, want := range []string{
		fmt.Sprintf("listen_port=%d\n", gw.ListenPort()),
		"public_key=" + peer.Hex() + "\n",
		"allowed_ip=100.80.0.2/32\n",
		"persistent_keepalive_interval=25\n",
		"endpoint=198.51.100.0:0\n",
		"endpoint=[2001:db8:1::]:0\n",
	} {
		if !strings.Contains(ans, want) {
			t.Fatalf("get answer lacks %q:\n%s", want, ans)
		}
	}
	for _, leak := range []string{"198.51.100.77", "41234", "2001:db8:1:2", "41235"} {
		if strings.Contains(ans, leak) {
			t.Fatalf("get answer shows %q of a full endpoint:\n%s", leak, ans)
		}
	}
	if !strings.HasSuffix(ans, "\nerrno=0\n") {
		t.Fatalf("get answer does not end with errno=0:\n%s", ans)
	}

	// set=1 on the same connection: refused, nothing applied.
	if _, err := io.WriteString(c, "set=1\npublic_key="+peer.Hex()+"\nremove=true\n\n"); err != nil {
		t.Fatal(err)
	}
	if ans := readAnswer(t, r); ans != "errno=-1\n" {
		t.Fatalf("set answer %q, want errno=-1 (EPERM)", ans)
	}
	if _, ok := devicePeers(t, gw.Device)[peer]; !ok || !gw.HasPeer(peer) {
		t.Fatal("a refused set removed the peer")
	}

	// Anything else: EINVAL and the connection is closed.
	if _, err := io.WriteString(c, "frobnicate=1\n\n"); err != nil {
		t.Fatal(err)
	}
	if ans := readAnswer(t, r); ans != "errno=-22\n" {
		t.Fatalf("unknown operation answer %q, want errno=-22", ans)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed after an unknown operation: %v", err)
	}

	// An overlong line closes the connection without an answer.
	c2, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(20 * time.Second))
	go io.WriteString(c2, strings.Repeat("x", uapiMaxLine+10)+"\n")
	// Closing with unread input resets the connection: that counts as closed.
	if n, err := io.Copy(io.Discard, c2); n != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("overlong line: read %d bytes, %v; want a close without answer", n, err)
	}

	t.Run("wg", func(t *testing.T) {
		if _, err := exec.LookPath("wg"); err != nil {
			t.Skip("wg (wireguard-tools) is not installed")
		}
		out, err := exec.CommandContext(ctx, "wg", "show", name).CombinedOutput()
		if err != nil {
			t.Fatalf("wg show %s: %v\n%s", name, err, out)
		}
		for _, want := range []string{"peer: " + peer.String(), "allowed ips: 100.80.0.2/32", fmt.Sprintf("listening port: %d", gw.ListenPort())} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("wg show lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(string(out), priv.String()) || strings.Contains(string(out), "private key") {
			t.Fatalf("wg show prints the private key:\n%s", out)
		}
		// Endpoints are truncated as in the connection log.
		out, err = exec.CommandContext(ctx, "wg", "show", name, "endpoints").CombinedOutput()
		if err != nil {
			t.Fatalf("wg show %s endpoints: %v\n%s", name, err, out)
		}
		for _, want := range []string{peer.String() + "\t198.51.100.0:0", peer6.String() + "\t[2001:db8:1::]:0"} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("wg show endpoints lacks %q:\n%s", want, out)
			}
		}
		for _, leak := range []string{"198.51.100.77", "41234", "2001:db8:1:2", "41235"} {
			if strings.Contains(string(out), leak) {
				t.Fatalf("wg show endpoints shows %q of a full endpoint:\n%s", leak, out)
			}
		}
		out, err = exec.CommandContext(ctx, "wg", "set", name, "peer", peer.String(), "remove").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Operation not permitted") {
			t.Fatalf("wg set: %v\n%s\nwant a failure with 'Operation not permitted'", err, out)
		}
		if _, ok := devicePeers(t, gw.Device)[peer]; !ok {
			t.Fatal("wg set removed the peer")
		}
	})

	if err := closer.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after Close: %v", err)
	}
	// The name can be served again (here with full endpoints, beyond the
	// policy: the positive control of the truncation), and the Device's
	// Close closes it.
	if _, err := gw.ServeUAPI(name, UAPIOptions{FullEndpoints: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("wg"); err == nil {
		out, err := exec.CommandContext(ctx, "wg", "show", name, "endpoints").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "198.51.100.77:41234") || !strings.Contains(string(out), "[2001:db8:1:2::5]:41235") {
			t.Fatalf("wg show endpoints with FullEndpoints: %v\n%s", err, out)
		}
	}
	gw.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after Device.Close: %v", err)
	}
}

// benchmarkAddPeer adds 1000 peers per op through concurrent AddPeer calls.
func benchmarkAddPeer(b *testing.B, maxBatch int) {
	const n = 1000
	keys := pubKeys(b, n)
	ctx := ctxT(b)
	var sets uint64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		gw := newNode(b, Config{MaxBatch: maxBatch}, "100.80.0.1")
		before := gw.ipcSets.Load()
		var wg sync.WaitGroup
		var failed sync.Once
		b.StartTimer()
		for i := range n {
			wg.Go(func() {
				if err := gw.AddPeer(ctx, Peer{PublicKey: keys[i], AllowedIPs: []netip.Prefix{host(i)}}); err != nil {
					failed.Do(func() { b.Error(err) })
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		sets += gw.ipcSets.Load() - before
		gw.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(sets)/float64(b.N), "ipcsets/op")
	b.ReportMetric(float64(n), "peers/op")
}

// BenchmarkAddPeerBatched: 1000 concurrent AddPeer calls, batched (defaults).
func BenchmarkAddPeerBatched(b *testing.B) { benchmarkAddPeer(b, 0) }

// BenchmarkAddPeerSerial: the same calls with one IpcSet per peer (MaxBatch 1),
// the reference for BenchmarkAddPeerBatched.
func BenchmarkAddPeerSerial(b *testing.B) { benchmarkAddPeer(b, 1) }
