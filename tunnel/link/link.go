// Package link makes the network interface under a wireguard-go device: a
// kernel TUN (tun.CreateTUN, which keeps the GSO/GRO offloads) addressed and
// brought up through netlink, or a userspace netstack for unprivileged runs.
package link

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// ErrPermission means the process may not create a TUN interface
// (needs root or CAP_NET_ADMIN and access to /dev/net/tun).
var ErrPermission = errors.New("creating a TUN interface needs CAP_NET_ADMIN and /dev/net/tun (run as root, or set tunnel.mode: netstack)")

// Config describes an interface to create.
type Config struct {
	Name      string
	MTU       int
	Addresses []netip.Prefix // e.g. 100.80.0.1/12, fdda:55e7::1/48
	Routes    []netip.Prefix // extra routes through the interface
	// BusyWait is how long to retry while the interface is busy (another
	// process, e.g. the previous gateway still exiting, holds it); default
	// 10s, negative: no retry.
	BusyWait time.Duration
}

// ErrBusy means another process holds the TUN interface.
var ErrBusy = errors.New("the interface is busy: another process holds it (a previous dasset-gateway still exiting, or another program using the same tunnel.interface)")

// CreateTUN creates a kernel TUN interface with wireguard-go's tun.CreateTUN
// (offloads kept), then addresses it, sets its MTU, brings it up and adds
// routes through netlink.
func CreateTUN(cfg Config) (tun.Device, error) {
	if cfg.Name == "" {
		return nil, errors.New("link: interface name is empty")
	}
	if len(cfg.Name) > 15 {
		return nil, fmt.Errorf("link: interface name %q is longer than 15 bytes", cfg.Name)
	}
	dev, err := createTUN(cfg)
	if err != nil {
		if errors.Is(err, os.ErrPermission) || isPermission(err) {
			return nil, fmt.Errorf("link: create TUN %q: %w", cfg.Name, ErrPermission)
		}
		return nil, fmt.Errorf("link: create TUN %q: %w", cfg.Name, err)
	}
	name, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("link: TUN name: %w", err)
	}
	if err := configure(name, cfg); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// Netstack is a userspace network stack under wireguard-go: no root needed.
type Netstack struct {
	Device tun.Device
	Net    *netstack.Net
}

// CreateNetstack creates a netstack TUN with the given local addresses.
func CreateNetstack(addrs []netip.Addr, mtu int) (*Netstack, error) {
	dev, n, err := netstack.CreateNetTUN(addrs, nil, mtu)
	if err != nil {
		return nil, fmt.Errorf("link: create netstack: %w", err)
	}
	return &Netstack{Device: dev, Net: n}, nil
}
