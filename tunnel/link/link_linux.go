//go:build linux

package link

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func isPermission(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		strings.Contains(err.Error(), "operation not permitted") || strings.Contains(err.Error(), "permission denied")
}

func configure(name string, cfg Config) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link: find %q: %w", name, err)
	}
	if cfg.MTU > 0 {
		if err := netlink.LinkSetMTU(l, cfg.MTU); err != nil {
			return fmt.Errorf("link: set MTU %d on %q: %w", cfg.MTU, name, err)
		}
	}
	for _, p := range cfg.Addresses {
		a := &netlink.Addr{IPNet: prefixToIPNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(l, a); err != nil {
			return fmt.Errorf("link: add address %s to %q: %w", p, name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("link: set %q up: %w", name, err)
	}
	for _, r := range cfg.Routes {
		route := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(r.Masked()), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("link: add route %s via %q: %w", r, name, err)
		}
	}
	return nil
}
