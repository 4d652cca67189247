// Package ipam maps allocation offsets to the gateway's virtual IPv4 and
// IPv6 addresses, and addresses back to offsets. It is pure arithmetic over
// the configured prefixes: it keeps no state and hands out nothing by itself.
//
// Layout (defaults in brackets):
//
//	IPv4 network  [100.80.0.0/12]      offset 0 = network address, 1 = gateway
//	IPv6 network  [fdda:55e7::/48]     offset 1 = gateway
//	devices       offsets [2, c-1] where c is the client prefix's offset in the
//	              IPv4 network: IPv4 = network + n, IPv6 = IPv6 network + n
//	              (so every device address lies in the first /96 of the IPv6 network)
//	client IPv4   [100.95.0.0/16]      the LAST block of the IPv4 network
//	client IPv6   [fdda:55e7:0:ff::/64]
//	clients       offsets [1, size-2] of the client prefix: IPv4 = client prefix + n,
//	              IPv6 = client IPv6 prefix + n (the client broadcast is never used)
//
// The client IPv4 prefix must end where the IPv4 network ends, so the device
// range is one contiguous run of offsets; New refuses any other placement.
//
// Choosing a free offset, keeping it stable per device and reporting
// exhaustion are the store's job: it records which offsets are taken, picks
// one in DeviceRange or ClientRange, and turns an empty range into an error.
package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// ErrOutOfRange is matched (errors.Is) by the error Device and Client return
// for an offset outside their range.
var ErrOutOfRange = errors.New("offset out of range")

// Config holds the prefixes the addresses come from.
type Config struct {
	// IPv4 is the whole virtual IPv4 network (e.g. 100.80.0.0/12).
	IPv4 netip.Prefix
	// IPv6 is the whole virtual IPv6 network (e.g. fdda:55e7::/48).
	IPv6 netip.Prefix
	// ClientIPv4 is the clients' IPv4 block: inside IPv4, at its end.
	ClientIPv4 netip.Prefix
	// ClientIPv6 is the clients' IPv6 block: inside IPv6, apart from the
	// device addresses (the first /96 of IPv6).
	ClientIPv6 netip.Prefix
}

// Kind tells which role an address plays in the virtual network.
type Kind uint8

// Kinds of address.
const (
	// KindOutside is any address that is neither the gateway's nor an
	// assignable device or client address (including network and broadcast
	// addresses inside the prefixes).
	KindOutside Kind = iota
	// KindGateway is the gateway's own address (first address of a network).
	KindGateway
	// KindDevice is an address in the device range.
	KindDevice
	// KindClient is an address in the client range.
	KindClient
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindGateway:
		return "gateway"
	case KindDevice:
		return "device"
	case KindClient:
		return "client"
	default:
		return "outside"
	}
}

// Allocator computes addresses from offsets and back. It is immutable and
// safe for concurrent use.
type Allocator struct {
	cfg Config

	base4, client4 uint32 // network and client IPv4 base addresses
	base6, client6 [16]byte

	deviceFirst, deviceLast uint32
	clientFirst, clientLast uint32
}

// New validates cfg and returns an Allocator for it. The error names the
// field (ipv4, ipv6, client_ipv4, client_ipv6) and the reason.
func New(cfg Config) (*Allocator, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("ipam: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	check4 := func(field string, p netip.Prefix) bool {
		switch {
		case !p.IsValid():
			bad(field, "must be a valid IPv4 prefix")
		case !p.Addr().Is4():
			bad(field, "must be an IPv4 prefix, got %s", p)
		case p.Masked() != p:
			bad(field, "must have no host bits set (%s, not %s)", p.Masked(), p)
		case p.Bits() > 30:
			bad(field, "must be /30 or larger, got /%d", p.Bits())
		default:
			return true
		}
		return false
	}
	check6 := func(field string, p netip.Prefix) bool {
		switch {
		case !p.IsValid():
			bad(field, "must be a valid IPv6 prefix")
		case !p.Addr().Is6() || p.Addr().Is4In6():
			bad(field, "must be an IPv6 prefix, got %s", p)
		case p.Masked() != p:
			bad(field, "must have no host bits set (%s, not %s)", p.Masked(), p)
		case p.Bits() > 96:
			bad(field, "must leave at least 32 host bits (/96 or larger), got /%d", p.Bits())
		default:
			return true
		}
		return false
	}
	ok4 := check4("ipv4", cfg.IPv4)
	ok6 := check6("ipv6", cfg.IPv6)
	okc4 := check4("client_ipv4", cfg.ClientIPv4)
	okc6 := check6("client_ipv6", cfg.ClientIPv6)

	a := &Allocator{cfg: cfg}
	if ok4 && okc4 {
		a.base4 = v4(cfg.IPv4.Addr())
		a.client4 = v4(cfg.ClientIPv4.Addr())
		last4 := a.base4 | hostMask(cfg.IPv4.Bits())
		clientLast4 := a.client4 | hostMask(cfg.ClientIPv4.Bits())
		switch {
		case cfg.ClientIPv4.Bits() <= cfg.IPv4.Bits() || !cfg.IPv4.Contains(cfg.ClientIPv4.Addr()):
			bad("client_ipv4", "%s must be a smaller block inside ipv4 %s", cfg.ClientIPv4, cfg.IPv4)
		case clientLast4 != last4:
			bad("client_ipv4", "%s must be the last block of ipv4 %s (it must end at %s)",
				cfg.ClientIPv4, cfg.IPv4, fromV4(last4))
		default:
			// The client block is at most half the network and at most a
			// /30, so it starts at offset 4 or later: devices 2 and 3 at least.
			a.deviceFirst, a.deviceLast = 2, a.client4-a.base4-1
			a.clientFirst, a.clientLast = 1, hostMask(cfg.ClientIPv4.Bits())-1
		}
	}
	if ok6 && okc6 {
		a.base6 = cfg.IPv6.Addr().As16()
		a.client6 = cfg.ClientIPv6.Addr().As16()
		devices6 := netip.PrefixFrom(cfg.IPv6.Addr(), 96)
		switch {
		case cfg.ClientIPv6.Bits() <= cfg.IPv6.Bits() || !cfg.IPv6.Contains(cfg.ClientIPv6.Addr()):
			bad("client_ipv6", "%s must be a smaller block inside ipv6 %s", cfg.ClientIPv6, cfg.IPv6)
		case cfg.ClientIPv6.Overlaps(devices6):
			bad("client_ipv6", "%s overlaps the gateway and device addresses %s", cfg.ClientIPv6, devices6)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return a, nil
}

// Config returns the configuration the Allocator was built from.
func (a *Allocator) Config() Config { return a.cfg }

// Gateway returns the gateway's addresses: the first address of each network.
func (a *Allocator) Gateway() (v4, v6 netip.Addr) {
	return fromV4(a.base4 + 1), with32(a.base6, 1)
}

// GatewayPrefixes returns the gateway's addresses with the network prefix
// lengths (IPv4 first), as they are set on the tunnel interface.
func (a *Allocator) GatewayPrefixes() []netip.Prefix {
	g4, g6 := a.Gateway()
	return []netip.Prefix{
		netip.PrefixFrom(g4, a.cfg.IPv4.Bits()),
		netip.PrefixFrom(g6, a.cfg.IPv6.Bits()),
	}
}

// Network returns the whole virtual network (IPv4 first): what devices and
// clients route into the tunnel.
func (a *Allocator) Network() []netip.Prefix {
	return []netip.Prefix{a.cfg.IPv4, a.cfg.IPv6}
}

// ClientNetworks returns the client prefixes (IPv4 first).
func (a *Allocator) ClientNetworks() []netip.Prefix {
	return []netip.Prefix{a.cfg.ClientIPv4, a.cfg.ClientIPv6}
}

// DeviceRange returns the inclusive range of device offsets.
func (a *Allocator) DeviceRange() (first, last uint32) { return a.deviceFirst, a.deviceLast }

// ClientRange returns the inclusive range of client offsets.
func (a *Allocator) ClientRange() (first, last uint32) { return a.clientFirst, a.clientLast }

// Device returns the addresses of device offset n. An offset outside
// DeviceRange is an error matching ErrOutOfRange.
func (a *Allocator) Device(n uint32) (v4, v6 netip.Addr, err error) {
	if n < a.deviceFirst || n > a.deviceLast {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("ipam: device offset %d not in [%d, %d]: %w",
			n, a.deviceFirst, a.deviceLast, ErrOutOfRange)
	}
	return fromV4(a.base4 + n), with32(a.base6, n), nil
}

// Client returns the addresses of client offset n. An offset outside
// ClientRange is an error matching ErrOutOfRange.
func (a *Allocator) Client(n uint32) (v4, v6 netip.Addr, err error) {
	if n < a.clientFirst || n > a.clientLast {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("ipam: client offset %d not in [%d, %d]: %w",
			n, a.clientFirst, a.clientLast, ErrOutOfRange)
	}
	return fromV4(a.client4 + n), with32(a.client6, n), nil
}

// DevicePrefixes returns device offset n's addresses as a /32 and a /128
// (IPv4 first): the peer's allowed IPs.
func (a *Allocator) DevicePrefixes(n uint32) ([]netip.Prefix, error) {
	v4, v6, err := a.Device(n)
	if err != nil {
		return nil, err
	}
	return hostPrefixes(v4, v6), nil
}

// ClientPrefixes returns client offset n's addresses as a /32 and a /128
// (IPv4 first): the peer's allowed IPs.
func (a *Allocator) ClientPrefixes(n uint32) ([]netip.Prefix, error) {
	v4, v6, err := a.Client(n)
	if err != nil {
		return nil, err
	}
	return hostPrefixes(v4, v6), nil
}

// Kind tells what addr is. IPv4-mapped IPv6 addresses are treated as IPv4.
func (a *Allocator) Kind(addr netip.Addr) Kind {
	g4, g6 := a.Gateway()
	addr = addr.Unmap()
	if addr == g4 || addr == g6 {
		return KindGateway
	}
	if _, ok := a.DeviceOffset(addr); ok {
		return KindDevice
	}
	if _, ok := a.ClientOffset(addr); ok {
		return KindClient
	}
	return KindOutside
}

// DeviceOffset returns the device offset whose IPv4 or IPv6 address is addr;
// ok is false when addr is not a device address.
func (a *Allocator) DeviceOffset(addr netip.Addr) (n uint32, ok bool) {
	n, ok = offset(addr.Unmap(), a.cfg.IPv4, a.base4, a.base6)
	if !ok || n < a.deviceFirst || n > a.deviceLast {
		return 0, false
	}
	return n, true
}

// ClientOffset returns the client offset whose IPv4 or IPv6 address is addr;
// ok is false when addr is not a client address.
func (a *Allocator) ClientOffset(addr netip.Addr) (n uint32, ok bool) {
	n, ok = offset(addr.Unmap(), a.cfg.ClientIPv4, a.client4, a.client6)
	if !ok || n < a.clientFirst || n > a.clientLast {
		return 0, false
	}
	return n, true
}

// offset returns addr minus the base of its family, if addr lies within
// p4 (IPv4) or within 2^32 addresses of base6 (IPv6).
func offset(addr netip.Addr, p4 netip.Prefix, base4 uint32, base6 [16]byte) (uint32, bool) {
	switch {
	case addr.Is4():
		if !p4.Contains(addr) {
			return 0, false
		}
		return v4(addr) - base4, true
	case addr.Is6():
		b := addr.As16()
		if [12]byte(b[:12]) != [12]byte(base6[:12]) {
			return 0, false
		}
		return binary.BigEndian.Uint32(b[12:]), true
	}
	return 0, false
}

func hostPrefixes(v4, v6 netip.Addr) []netip.Prefix {
	return []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)}
}

func hostMask(bits int) uint32 { return ^uint32(0) >> bits }

func v4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func fromV4(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// with32 returns base with its last 32 bits set to n. New guarantees those
// bits are zero in base (prefixes of /96 or shorter, masked).
func with32(base [16]byte, n uint32) netip.Addr {
	binary.BigEndian.PutUint32(base[12:], n)
	return netip.AddrFrom16(base)
}
