package daemon

import "github.com/planetxlabs/dasset-gateway/tunnel/wg"

// WireGuard is the daemon's WireGuard device, for tests that change it
// behind the gateway's back.
func (d *Daemon) WireGuard() *wg.Device { return d.dev }
