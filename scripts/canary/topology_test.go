package canary

import (
	"net/netip"
	"path/filepath"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// link joins gwNS and peerNS with a veth pair named prefix+"g"/prefix+"d",
// each side with the IPv4 and IPv6 prefixes given (e.g. "198.51.100.1/26");
// it returns once the peer side pings the gateway side over both.
func (h *harness) link(gwNS, peerNS, prefix, gw4, peer4, gw6, peer6 string) {
	h.T.Helper()
	h.Link(netnstest.Veth{GwNS: gwNS, PeerNS: peerNS, GwIf: prefix + "g", PeerIf: prefix + "d",
		GwAddrs:   []netip.Prefix{netip.MustParsePrefix(gw4), netip.MustParsePrefix(gw6)},
		PeerAddrs: []netip.Prefix{netip.MustParsePrefix(peer4), netip.MustParsePrefix(peer6)},
	})
}

// gateway is the dasset-gateway process in its namespace, its output in log.
type gateway struct {
	*netnstest.Gateway
	log string
}

// newGateway writes a config whose data directory, keystore and process
// output are all under scanned; the config and admin socket are not.
func (h *harness) newGateway(ns, scanned string) *gateway {
	h.T.Helper()
	return &gateway{log: filepath.Join(scanned, "gateway.log"), Gateway: h.NewGateway(netnstest.GatewaySpec{
		NS: ns, Interface: "cgw" + h.Suffix, Dir: filepath.Join(h.Dir, "gw"),
		DataDir: filepath.Join(scanned, "data"), KeystoreDir: filepath.Join(scanned, "keystore"),
		LogLevel: "debug", GRPCListen: ":8443", WrittenBy: "scripts/canary",
		// Full endpoints on the UAPI socket (memory only, never written):
		// `wg show` then proves the canary addresses reached WireGuard.
		UAPIEndpoints: "full",
	})}
}

// start runs the gateway with stdout and stderr in g.log.
func (g *gateway) start() { g.Start(g.log) }

// startAgent runs dasset-agent up in ns; its state and log stay outside the
// scanned set (the agent is not the gateway).
func (h *harness) startAgent(ns, gw, pin, serial, hwid, ifname, name string) *netnstest.Proc {
	h.T.Helper()
	return h.StartAgent(netnstest.AgentSpec{NS: ns, Gateway: gw, Pin: pin, Serial: serial, HWID: hwid,
		Interface: ifname, StateDir: filepath.Join(h.Dir, name), LogPath: name + ".log"})
}
