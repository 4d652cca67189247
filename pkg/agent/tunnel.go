package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
	"github.com/planetxlabs/dasset-gateway/tunnel/link"
)

// tunnel is the agent's wireguard-go device with the gateway as its one peer.
type tunnel struct {
	dev       *device.Device
	net       *netstack.Net // netstack mode only
	addrs     []netip.Prefix
	mtu       int
	peer      peerConfig
	peerSince time.Time // when the peer was last (re)created (Config.Now; device agent only)
}

func (t *tunnel) close() { t.dev.Close() }

// peerConfig is the gateway peer as the login response describes it.
type peerConfig struct {
	publicKey  [32]byte
	endpoint   netip.AddrPort
	allowedIPs []netip.Prefix
	keepalive  uint32
}

// uapi renders the peer in wireguard-go's IpcSet form.
func (p peerConfig) uapi() string {
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(p.publicKey[:]))
	fmt.Fprintf(&b, "endpoint=%s\n", p.endpoint)
	fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", p.keepalive)
	b.WriteString("replace_allowed_ips=true\n")
	for _, ip := range p.allowedIPs {
		fmt.Fprintf(&b, "allowed_ip=%s\n", ip)
	}
	return b.String()
}

// loginConfig is a validated login response.
type loginConfig struct {
	addrs []netip.Prefix
	mtu   int
	peer  peerConfig
	// endpointName is the gateway's endpoint as sent, host:port, before
	// resolving (for a configuration used on another machine).
	endpointName string
}

// parseLogin validates resp and resolves the gateway's WireGuard endpoint.
func (a *Agent) parseLogin(ctx context.Context, gateway string, resp *gatewayv1.DeviceLoginResponse) (loginConfig, error) {
	return parseTunnelConfig(ctx, gateway, resp.GetAddresses(), resp.GetMtu(), resp.GetGateway())
}

// parseTunnelConfig validates the tunnel part of a device login or a client
// session grant and resolves the gateway's WireGuard endpoint; gateway is
// the gRPC address, whose host stands in for an empty endpoint.
func parseTunnelConfig(ctx context.Context, gateway string, addresses []string, mtu uint32, gw *gatewayv1.GatewayPeer) (loginConfig, error) {
	var lc loginConfig
	if len(addresses) == 0 {
		return lc, errors.New("addresses: none")
	}
	for i, s := range addresses {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return lc, fmt.Errorf("addresses[%d]: %w", i, err)
		}
		lc.addrs = append(lc.addrs, p)
	}
	lc.mtu = int(mtu)
	if lc.mtu == 0 {
		lc.mtu = defaultMTU
	}
	if lc.mtu < 576 || lc.mtu > 65535 {
		return lc, fmt.Errorf("mtu: %d out of range", lc.mtu)
	}
	var err error
	lc.peer, lc.endpointName, err = parseGatewayPeer(ctx, gateway, gw)
	return lc, err
}

// parseGatewayPeer validates the gateway peer of a login response or a
// session (OpenSession, GetSession) and resolves its WireGuard endpoint;
// it also returns the endpoint as sent (host:port, the gRPC host with the
// default WireGuard port when empty). Errors name the field (gateway.*).
func parseGatewayPeer(ctx context.Context, gateway string, gw *gatewayv1.GatewayPeer) (peerConfig, string, error) {
	var pc peerConfig
	if gw == nil {
		return pc, "", errors.New("gateway: missing")
	}
	if len(gw.GetPublicKey()) != 32 {
		return pc, "", fmt.Errorf("gateway.public_key: %d bytes, want 32", len(gw.GetPublicKey()))
	}
	copy(pc.publicKey[:], gw.GetPublicKey())
	if len(gw.GetAllowedIps()) == 0 {
		return pc, "", errors.New("gateway.allowed_ips: none")
	}
	for i, s := range gw.GetAllowedIps() {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return pc, "", fmt.Errorf("gateway.allowed_ips[%d]: %w", i, err)
		}
		pc.allowedIPs = append(pc.allowedIPs, p.Masked())
	}
	pc.keepalive = gw.GetPersistentKeepaliveSeconds()
	ep, err := resolveEndpoint(ctx, gateway, gw.GetEndpoint())
	if err != nil {
		return pc, "", fmt.Errorf("gateway.endpoint: %w", err)
	}
	pc.endpoint = ep
	name := gw.GetEndpoint()
	if name == "" {
		host, _ := splitGateway(gateway) // resolveEndpoint checked it
		name = net.JoinHostPort(host, strconv.Itoa(DefaultWireGuardPort))
	}
	return pc, name, nil
}

// resolveEndpoint turns "host:port" into an address and port. An empty
// endpoint means the gateway's gRPC host with the default WireGuard port.
func resolveEndpoint(ctx context.Context, gateway, endpoint string) (netip.AddrPort, error) {
	var host, portStr string
	if endpoint == "" {
		h, err := splitGateway(gateway)
		if err != nil {
			return netip.AddrPort{}, err
		}
		host, portStr = h, strconv.Itoa(DefaultWireGuardPort)
	} else {
		var err error
		host, portStr, err = net.SplitHostPort(endpoint)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("want host:port: %w", err)
		}
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return netip.AddrPort{}, fmt.Errorf("port %q: not a UDP port", portStr)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve host: %w", err)
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, errors.New("resolve host: no address")
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(port)), nil
}

// configure makes the tunnel match a login response: it builds the
// interface and wireguard-go device on the first call (or when addresses or
// MTU changed) and otherwise just replaces the gateway peer (its key and
// endpoint: after a failover, another gateway's). gateway is the gRPC
// address the response came from.
func (a *Agent) configure(ctx context.Context, gateway string, resp *gatewayv1.DeviceLoginResponse) error {
	lc, err := a.parseLogin(ctx, gateway, resp)
	if err != nil {
		return fmt.Errorf("gateway sent an unusable login response: %w", err)
	}
	a.mu.Lock()
	t := a.tun
	a.mu.Unlock()
	if t != nil && slices.Equal(t.addrs, lc.addrs) && t.mtu == lc.mtu {
		// Same interface: replacing the peer also starts a fresh handshake.
		if err := t.dev.IpcSet("replace_peers=true\n" + lc.peer.uapi()); err != nil {
			return fmt.Errorf("configure gateway peer: %w", err)
		}
		a.mu.Lock()
		t.peer, t.peerSince = lc.peer, a.cfg.Now()
		a.mu.Unlock()
		a.afterPeerSet(t)
		a.log.Info("tunnel reconfigured", "addresses", lc.addrs)
		return nil
	}
	if t != nil {
		a.teardown()
	}
	t, err = a.bringUp(lc)
	if err != nil {
		return err
	}
	a.mu.Lock()
	t.peerSince = a.cfg.Now()
	a.tun = t
	a.mu.Unlock()
	mode := "tun"
	if a.cfg.Netstack {
		mode = "netstack"
	}
	a.log.Info("tunnel up", "mode", mode, "interface", a.cfg.Interface, "addresses", lc.addrs, "mtu", lc.mtu)
	a.markReady()
	return nil
}

func (a *Agent) bringUp(lc loginConfig) (*tunnel, error) {
	return newTunnel(lc, a.priv, a.cfg.Netstack, a.cfg.Interface, a.log, a.scrub)
}

// newTunnel builds a wireguard-go device with private key priv and the
// gateway as its one peer, on a userspace netstack or on a kernel TUN named
// iface (addressed with lc.addrs, routed to the peer's allowed IPs), and
// starts the first handshake. Shared by the device agent and client sessions.
func newTunnel(lc loginConfig, priv [32]byte, useNetstack bool, iface string, log *slog.Logger, sc *addrScrubber) (*tunnel, error) {
	t := &tunnel{addrs: lc.addrs, mtu: lc.mtu, peer: lc.peer}
	var tdev tun.Device
	if useNetstack {
		addrs := make([]netip.Addr, len(lc.addrs))
		for i, p := range lc.addrs {
			addrs[i] = p.Addr()
		}
		ns, err := link.CreateNetstack(addrs, lc.mtu)
		if err != nil {
			return nil, err
		}
		tdev, t.net = ns.Device, ns.Net
	} else {
		d, err := link.CreateTUN(link.Config{Name: iface, MTU: lc.mtu, Addresses: lc.addrs, Routes: lc.peer.allowedIPs})
		if err != nil {
			return nil, err
		}
		tdev = d
	}
	t.dev = device.NewDevice(tdev, conn.NewDefaultBind(), wgLogger(log, sc))
	conf := "private_key=" + hex.EncodeToString(priv[:]) + "\nreplace_peers=true\n" + lc.peer.uapi()
	if err := t.dev.IpcSet(conf); err != nil {
		t.dev.Close()
		return nil, fmt.Errorf("configure wireguard: %w", err)
	}
	if err := t.dev.Up(); err != nil {
		t.dev.Close()
		return nil, fmt.Errorf("wireguard up: %w", err)
	}
	startHandshake(t, log)
	return t, nil
}

// afterPeerSet starts a handshake at once when the peer has no persistent
// keepalive (see startHandshake).
func (a *Agent) afterPeerSet(t *tunnel) { startHandshake(t, a.log) }

// startHandshake starts a handshake at once when the peer has no persistent
// keepalive (with one, wireguard-go already sent a keepalive and so a
// handshake initiation when the peer was created).
func startHandshake(t *tunnel, log *slog.Logger) {
	if t.peer.keepalive != 0 {
		return
	}
	if p := t.dev.LookupPeer(device.NoisePublicKey(t.peer.publicKey)); p != nil {
		if err := p.SendHandshakeInitiation(false); err != nil {
			log.Debug("handshake initiation", "error", err)
		}
	}
}

// forceHandshake removes the gateway peer and adds it again, which drops its
// session keys and makes wireguard-go start a new handshake at once: the
// gateway may have restarted and lost its keys, and WireGuard's own timers
// would take up to minutes to notice.
func (a *Agent) forceHandshake(why string) {
	a.mu.Lock()
	t := a.tun
	now := a.cfg.Now()
	if t == nil || now.Sub(t.peerSince) < minHandshakeGap {
		a.mu.Unlock()
		return
	}
	t.peerSince = now
	peer := t.peer
	a.mu.Unlock()
	conf := "public_key=" + hex.EncodeToString(peer.publicKey[:]) + "\nremove=true\n" + peer.uapi()
	if err := t.dev.IpcSet(conf); err != nil {
		a.log.Warn("forcing a WireGuard handshake failed", "reason", why, "error", err)
		return
	}
	a.afterPeerSet(t)
	a.log.Debug("forced a WireGuard handshake", "reason", why)
}
