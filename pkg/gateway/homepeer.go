package gateway

import (
	"context"
	"net/netip"
)

// homePeer is the WireGuard peer (public key and endpoint) of the gateway
// whose instance id is home, for a client of a session to the device homed
// there: this gateway when home is this gateway or "" (a device that has
// not logged in to a gateway of the fleet yet), with its endpoint as the
// device login answers it (local is the address the caller's gRPC
// connection reached); another gateway as its last heartbeat recorded it
// in the gateways table (cached for a moment). A home missing from the
// table, or one that records no endpoint (its tunnel.endpoint is empty, and
// only its own callers know the address they reached), is ErrUnavailable:
// the caller asks again later.
func (g *Gateway) homePeer(ctx context.Context, home string, local netip.AddrPort) ([32]byte, string, error) {
	if home == "" || home == g.cfg.InstanceID {
		return g.tun.PublicKey(), g.endpoint(local), nil
	}
	gw, ok := g.fleet.gateway(ctx, home)
	switch {
	case !ok:
		return [32]byte{}, "", newErr(ErrUnavailable, nil, "the device's gateway %s is not in the registry's gateways table", home)
	case gw.Endpoint == "":
		return [32]byte{}, "", newErr(ErrUnavailable, nil, "the device's gateway %s has no tunnel.endpoint configured; every gateway of a fleet needs one", home)
	}
	return [32]byte(gw.PublicKey), gw.Endpoint, nil
}
