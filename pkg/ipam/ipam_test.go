package ipam

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func defaultConfig() Config {
	return Config{
		IPv4:       netip.MustParsePrefix("100.80.0.0/12"),
		IPv6:       netip.MustParsePrefix("fdda:55e7::/48"),
		ClientIPv4: netip.MustParsePrefix("100.95.0.0/16"),
		ClientIPv6: netip.MustParsePrefix("fdda:55e7:0:ff::/64"),
	}
}

func mustNew(t *testing.T, cfg Config) *Allocator {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return a
}

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

func TestDefaultLayout(t *testing.T) {
	a := mustNew(t, defaultConfig())

	g4, g6 := a.Gateway()
	if g4 != ip("100.80.0.1") || g6 != ip("fdda:55e7::1") {
		t.Errorf("Gateway() = %v, %v", g4, g6)
	}
	wantGW := []netip.Prefix{pfx("100.80.0.1/12"), pfx("fdda:55e7::1/48")}
	if got := a.GatewayPrefixes(); !equalPrefixes(got, wantGW) {
		t.Errorf("GatewayPrefixes() = %v, want %v", got, wantGW)
	}
	if got, want := a.Network(), []netip.Prefix{pfx("100.80.0.0/12"), pfx("fdda:55e7::/48")}; !equalPrefixes(got, want) {
		t.Errorf("Network() = %v, want %v", got, want)
	}
	if got, want := a.ClientNetworks(), []netip.Prefix{pfx("100.95.0.0/16"), pfx("fdda:55e7:0:ff::/64")}; !equalPrefixes(got, want) {
		t.Errorf("ClientNetworks() = %v, want %v", got, want)
	}
	// 100.95.0.0 is offset 15<<16 in 100.80.0.0/12.
	if f, l := a.DeviceRange(); f != 2 || l != 15<<16-1 {
		t.Errorf("DeviceRange() = [%d, %d], want [2, %d]", f, l, 15<<16-1)
	}
	if f, l := a.ClientRange(); f != 1 || l != 65534 {
		t.Errorf("ClientRange() = [%d, %d], want [1, 65534]", f, l)
	}
}

func TestDeviceAndClientAddresses(t *testing.T) {
	a := mustNew(t, defaultConfig())
	tests := []struct {
		name   string
		fn     func(uint32) (netip.Addr, netip.Addr, error)
		n      uint32
		v4, v6 string // empty: out of range
	}{
		{"device below range (network)", a.Device, 0, "", ""},
		{"device below range (gateway)", a.Device, 1, "", ""},
		{"first device", a.Device, 2, "100.80.0.2", "fdda:55e7::2"},
		{"device .255 is a normal address", a.Device, 255, "100.80.0.255", "fdda:55e7::ff"},
		{"device crossing a /24", a.Device, 256, "100.80.1.0", "fdda:55e7::100"},
		{"last device", a.Device, 15<<16 - 1, "100.94.255.255", "fdda:55e7::e:ffff"},
		{"device into client prefix", a.Device, 15 << 16, "", ""},
		{"device far out", a.Device, 1 << 31, "", ""},
		{"client network address", a.Client, 0, "", ""},
		{"first client", a.Client, 1, "100.95.0.1", "fdda:55e7:0:ff::1"},
		{"last client", a.Client, 65534, "100.95.255.254", "fdda:55e7:0:ff::fffe"},
		{"client broadcast", a.Client, 65535, "", ""},
		{"client far out", a.Client, 1 << 20, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v4, v6, err := tt.fn(tt.n)
			if tt.v4 == "" {
				if !errors.Is(err, ErrOutOfRange) {
					t.Fatalf("offset %d: got %v, %v, %v; want ErrOutOfRange", tt.n, v4, v6, err)
				}
				if v4.IsValid() || v6.IsValid() {
					t.Errorf("offset %d: addresses %v, %v returned with an error", tt.n, v4, v6)
				}
				return
			}
			if err != nil {
				t.Fatalf("offset %d: %v", tt.n, err)
			}
			if v4 != ip(tt.v4) || v6 != ip(tt.v6) {
				t.Errorf("offset %d = %v, %v; want %s, %s", tt.n, v4, v6, tt.v4, tt.v6)
			}
		})
	}
}

func TestPrefixes(t *testing.T) {
	a := mustNew(t, defaultConfig())
	got, err := a.DevicePrefixes(7)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{pfx("100.80.0.7/32"), pfx("fdda:55e7::7/128")}; !equalPrefixes(got, want) {
		t.Errorf("DevicePrefixes(7) = %v, want %v", got, want)
	}
	got, err = a.ClientPrefixes(9)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{pfx("100.95.0.9/32"), pfx("fdda:55e7:0:ff::9/128")}; !equalPrefixes(got, want) {
		t.Errorf("ClientPrefixes(9) = %v, want %v", got, want)
	}
	if _, err := a.DevicePrefixes(1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("DevicePrefixes(1) error = %v, want ErrOutOfRange", err)
	}
	if _, err := a.ClientPrefixes(0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("ClientPrefixes(0) error = %v, want ErrOutOfRange", err)
	}
}

func TestKindAndOffsets(t *testing.T) {
	a := mustNew(t, defaultConfig())
	tests := []struct {
		addr   string
		kind   Kind
		offset uint32 // for devices and clients
	}{
		{"100.80.0.0", KindOutside, 0},
		{"100.80.0.1", KindGateway, 0},
		{"::ffff:100.80.0.1", KindGateway, 0},
		{"fdda:55e7::1", KindGateway, 0},
		{"fdda:55e7::", KindOutside, 0},
		{"100.80.0.2", KindDevice, 2},
		{"fdda:55e7::2", KindDevice, 2},
		{"::ffff:100.80.1.0", KindDevice, 256},
		{"100.94.255.255", KindDevice, 15<<16 - 1},
		{"fdda:55e7::e:ffff", KindDevice, 15<<16 - 1},
		{"fdda:55e7::f:0", KindOutside, 0},    // IPv6 of the first client offset's IPv4 slot: not a device
		{"fdda:55e7::1:0:0", KindOutside, 0},  // beyond 32 bits of offset
		{"fdda:55e7:0:1::2", KindOutside, 0},  // second /64
		{"100.95.0.0", KindOutside, 0},        // client network address
		{"100.95.0.1", KindClient, 1},         //
		{"fdda:55e7:0:ff::1", KindClient, 1},  //
		{"100.95.255.254", KindClient, 65534}, //
		{"fdda:55e7:0:ff::fffe", KindClient, 65534},
		{"100.95.255.255", KindOutside, 0},       // broadcast
		{"fdda:55e7:0:ff::ffff", KindOutside, 0}, // the broadcast's offset in IPv6 too
		{"fdda:55e7:0:ff::1:1", KindOutside, 0},  // beyond the client IPv4 range
		{"100.96.0.1", KindOutside, 0},
		{"10.0.0.1", KindOutside, 0},
		{"2001:db8::2", KindOutside, 0},
	}
	for _, tt := range tests {
		addr := ip(tt.addr)
		if got := a.Kind(addr); got != tt.kind {
			t.Errorf("Kind(%s) = %v, want %v", addr, got, tt.kind)
		}
		dn, dok := a.DeviceOffset(addr)
		cn, cok := a.ClientOffset(addr)
		if dok != (tt.kind == KindDevice) || cok != (tt.kind == KindClient) {
			t.Errorf("%s: DeviceOffset ok=%v ClientOffset ok=%v for kind %v", addr, dok, cok, tt.kind)
		}
		if tt.kind == KindDevice && dn != tt.offset {
			t.Errorf("DeviceOffset(%s) = %d, want %d", addr, dn, tt.offset)
		}
		if tt.kind == KindClient && cn != tt.offset {
			t.Errorf("ClientOffset(%s) = %d, want %d", addr, cn, tt.offset)
		}
	}
	if got := a.Kind(netip.Addr{}); got != KindOutside {
		t.Errorf("Kind(zero Addr) = %v", got)
	}
}

// TestSmallPoolProperty walks every offset of a small layout: each valid
// device and client offset gives distinct addresses inside their prefixes,
// and the inverse maps them back; nothing else is assignable.
func TestSmallPoolProperty(t *testing.T) {
	cfg := Config{
		IPv4:       pfx("10.9.0.0/24"),
		IPv6:       pfx("fd00:9::/64"),
		ClientIPv4: pfx("10.9.0.192/26"),
		ClientIPv6: pfx("fd00:9:0:0:1::/80"),
	}
	a := mustNew(t, cfg)
	if f, l := a.DeviceRange(); f != 2 || l != 191 {
		t.Fatalf("DeviceRange() = [%d, %d], want [2, 191]", f, l)
	}
	if f, l := a.ClientRange(); f != 1 || l != 62 {
		t.Fatalf("ClientRange() = [%d, %d], want [1, 62]", f, l)
	}
	seen := map[netip.Addr]string{}
	g4, g6 := a.Gateway()
	seen[g4], seen[g6] = "gateway", "gateway"
	claim := func(addr netip.Addr, who string) {
		t.Helper()
		if prev, dup := seen[addr]; dup {
			t.Fatalf("%s: address %s already used by %s", who, addr, prev)
		}
		seen[addr] = who
	}
	for n := uint32(0); n < 300; n++ {
		v4, v6, err := a.Device(n)
		if n < 2 || n > 191 {
			if err == nil {
				t.Fatalf("Device(%d) = %v, %v; want an error", n, v4, v6)
			}
		} else {
			if err != nil {
				t.Fatalf("Device(%d): %v", n, err)
			}
			if !cfg.IPv4.Contains(v4) || cfg.ClientIPv4.Contains(v4) || !cfg.IPv6.Contains(v6) || cfg.ClientIPv6.Contains(v6) {
				t.Fatalf("Device(%d) = %v, %v: outside its range", n, v4, v6)
			}
			claim(v4, "device")
			claim(v6, "device")
			for _, addr := range []netip.Addr{v4, v6} {
				if got, ok := a.DeviceOffset(addr); !ok || got != n {
					t.Fatalf("DeviceOffset(%s) = %d, %v; want %d", addr, got, ok, n)
				}
				if a.Kind(addr) != KindDevice {
					t.Fatalf("Kind(%s) = %v", addr, a.Kind(addr))
				}
			}
		}

		v4, v6, err = a.Client(n)
		if n < 1 || n > 62 {
			if err == nil {
				t.Fatalf("Client(%d) = %v, %v; want an error", n, v4, v6)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Client(%d): %v", n, err)
		}
		if !cfg.ClientIPv4.Contains(v4) || !cfg.ClientIPv6.Contains(v6) {
			t.Fatalf("Client(%d) = %v, %v: outside the client prefixes", n, v4, v6)
		}
		claim(v4, "client")
		claim(v6, "client")
		for _, addr := range []netip.Addr{v4, v6} {
			if got, ok := a.ClientOffset(addr); !ok || got != n {
				t.Fatalf("ClientOffset(%s) = %d, %v; want %d", addr, got, ok, n)
			}
			if a.Kind(addr) != KindClient {
				t.Fatalf("Kind(%s) = %v", addr, a.Kind(addr))
			}
		}
	}
	// 2 gateway + 190 devices ×2 + 62 clients ×2
	if want := 2 + 190*2 + 62*2; len(seen) != want {
		t.Errorf("%d distinct addresses, want %d", len(seen), want)
	}
	// Every IPv4 address of the /24 is accounted for: 256 - network -
	// client network - client broadcast.
	var v4s int
	for addr := range seen {
		if addr.Is4() {
			v4s++
		}
	}
	if v4s != 256-3 {
		t.Errorf("%d IPv4 addresses assignable, want 253", v4s)
	}
}

// TestDefaultRandomInverse checks the inverse at random offsets of the
// default (large) layout, with a fixed seed.
func TestDefaultRandomInverse(t *testing.T) {
	a := mustNew(t, defaultConfig())
	r := rand.New(rand.NewPCG(1, 2))
	df, dl := a.DeviceRange()
	cf, cl := a.ClientRange()
	for range 2000 {
		n := df + r.Uint32N(dl-df+1)
		v4, v6, err := a.Device(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, addr := range []netip.Addr{v4, v6} {
			if got, ok := a.DeviceOffset(addr); !ok || got != n || a.Kind(addr) != KindDevice {
				t.Fatalf("device %d: %s → %d, %v, %v", n, addr, got, ok, a.Kind(addr))
			}
		}
		n = cf + r.Uint32N(cl-cf+1)
		v4, v6, err = a.Client(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, addr := range []netip.Addr{v4, v6} {
			if got, ok := a.ClientOffset(addr); !ok || got != n || a.Kind(addr) != KindClient {
				t.Fatalf("client %d: %s → %d, %v, %v", n, addr, got, ok, a.Kind(addr))
			}
		}
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"zero ipv4", func(c *Config) { c.IPv4 = netip.Prefix{} }, "ipv4: must be a valid IPv4 prefix"},
		{"ipv6 as ipv4", func(c *Config) { c.IPv4 = pfx("fd00::/64") }, "ipv4: must be an IPv4 prefix"},
		{"host bits", func(c *Config) { c.IPv4 = pfx("100.80.0.1/12") }, "ipv4: must have no host bits set (100.80.0.0/12"},
		{"ipv4 too small", func(c *Config) { c.IPv4 = pfx("100.80.0.0/31") }, "ipv4: must be /30 or larger"},
		{"ipv4 as ipv6", func(c *Config) { c.IPv6 = pfx("10.0.0.0/8") }, "ipv6: must be an IPv6 prefix"},
		{"4in6 as ipv6", func(c *Config) { c.IPv6 = pfx("::ffff:10.0.0.0/104") }, "ipv6: must be an IPv6 prefix"},
		{"ipv6 host bits", func(c *Config) { c.IPv6 = pfx("fdda:55e7::1/48") }, "ipv6: must have no host bits set"},
		{"ipv6 too small", func(c *Config) { c.IPv6 = pfx("fdda:55e7::/112") }, "ipv6: must leave at least 32 host bits"},
		{"client outside", func(c *Config) { c.ClientIPv4 = pfx("10.0.0.0/16") }, "client_ipv4: 10.0.0.0/16 must be a smaller block inside ipv4"},
		{"client equal", func(c *Config) { c.ClientIPv4 = pfx("100.80.0.0/12") }, "client_ipv4: 100.80.0.0/12 must be a smaller block inside ipv4"},
		{"client larger", func(c *Config) { c.ClientIPv4 = pfx("100.64.0.0/10") }, "client_ipv4: 100.64.0.0/10 must be a smaller block"},
		{"client not last", func(c *Config) { c.ClientIPv4 = pfx("100.81.0.0/16") }, "client_ipv4: 100.81.0.0/16 must be the last block of ipv4 100.80.0.0/12 (it must end at 100.95.255.255)"},
		{"client host bits", func(c *Config) { c.ClientIPv4 = pfx("100.95.0.1/16") }, "client_ipv4: must have no host bits set"},
		{"client too small", func(c *Config) { c.ClientIPv4 = pfx("100.95.255.254/31") }, "client_ipv4: must be /30 or larger"},
		{"client6 outside", func(c *Config) { c.ClientIPv6 = pfx("fd00:1::/64") }, "client_ipv6: fd00:1::/64 must be a smaller block inside ipv6"},
		{"client6 over devices", func(c *Config) { c.ClientIPv6 = pfx("fdda:55e7::/64") }, "client_ipv6: fdda:55e7::/64 overlaps the gateway and device addresses fdda:55e7::/96"},
		{"client6 is ipv4", func(c *Config) { c.ClientIPv6 = pfx("100.95.0.0/16") }, "client_ipv6: must be an IPv6 prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultConfig()
			tt.modify(&cfg)
			a, err := New(cfg)
			if err == nil {
				t.Fatalf("New(%+v) = %v, want error containing %q", cfg, a, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New error = %q, want it to contain %q", err, tt.want)
			}
			if a != nil {
				t.Errorf("New returned an Allocator with an error")
			}
		})
	}
}

func TestNewReportsAllProblems(t *testing.T) {
	_, err := New(Config{IPv4: pfx("fd00::/64"), ClientIPv6: pfx("10.0.0.0/8")})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"ipam: ipv4:", "ipam: ipv6:", "ipam: client_ipv4:", "ipam: client_ipv6:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestSmallestLayout(t *testing.T) {
	// A /29 with a /30 client block at its end: devices 2..3, clients 1..2.
	a := mustNew(t, Config{
		IPv4:       pfx("10.0.0.0/29"),
		IPv6:       pfx("fd00::/64"),
		ClientIPv4: pfx("10.0.0.4/30"),
		ClientIPv6: pfx("fd00:0:0:0:1::/96"),
	})
	if f, l := a.DeviceRange(); f != 2 || l != 3 {
		t.Errorf("DeviceRange() = [%d, %d], want [2, 3]", f, l)
	}
	if f, l := a.ClientRange(); f != 1 || l != 2 {
		t.Errorf("ClientRange() = [%d, %d], want [1, 2]", f, l)
	}
	if v4, _, err := a.Client(2); err != nil || v4 != ip("10.0.0.6") {
		t.Errorf("Client(2) = %v, %v", v4, err)
	}
	// A small client block at the end of a larger network.
	b := mustNew(t, Config{
		IPv4:       pfx("10.0.0.0/28"),
		IPv6:       pfx("fd00::/64"),
		ClientIPv4: pfx("10.0.0.12/30"),
		ClientIPv6: pfx("fd00:0:0:0:1::/80"),
	})
	if f, l := b.DeviceRange(); f != 2 || l != 11 {
		t.Errorf("DeviceRange() = [%d, %d], want [2, 11]", f, l)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindOutside: "outside", KindGateway: "gateway", KindDevice: "device", KindClient: "client", Kind(99): "outside"} {
		if k.String() != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, k.String(), want)
		}
	}
}

func equalPrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
