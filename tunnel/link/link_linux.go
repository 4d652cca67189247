//go:build linux

package link

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
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

// createTUN is tun.CreateTUN, retried every 100ms for cfg.BusyWait while the
// kernel answers EBUSY.
func createTUN(cfg Config) (tun.Device, error) {
	wait := cfg.BusyWait
	if wait == 0 {
		wait = 10 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		dev, err := createTUNOnce(cfg.Name, cfg.MTU)
		if !errors.Is(err, unix.EBUSY) {
			return dev, err
		}
		if wait < 0 || time.Now().After(deadline) {
			return nil, fmt.Errorf("%w (waited %v)", ErrBusy, max(wait, 0))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// createTUNOnce is wireguard-go's tun.CreateTUN (same flags), except that it
// closes the clone device when the interface cannot be had, so retries leak
// no descriptor.
func createTUNOnce(name string, mtu int) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("/dev/net/tun does not exist: %w", err)
		}
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}
