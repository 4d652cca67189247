package router

import (
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// Addresses used throughout the tests.
var (
	gw4     = netip.MustParseAddr("100.80.0.1")
	gw6     = netip.MustParseAddr("fd00:80::1")
	dev4a   = netip.MustParseAddr("100.80.0.2")
	dev4b   = netip.MustParseAddr("100.80.0.3")
	dev6a   = netip.MustParseAddr("fd00:80::2")
	dev6b   = netip.MustParseAddr("fd00:80::3")
	cli4a   = netip.MustParseAddr("100.95.0.2")
	cli4b   = netip.MustParseAddr("100.95.0.3")
	cli6a   = netip.MustParseAddr("fd00:80:0:ffff::2")
	cli6b   = netip.MustParseAddr("fd00:80:0:ffff::3")
	outside = netip.MustParseAddr("8.8.8.8")
)

func testConfig() Config {
	return Config{
		Gateway:        []netip.Addr{gw4, gw6},
		Network:        []netip.Prefix{netip.MustParsePrefix("100.80.0.0/12"), netip.MustParsePrefix("fd00:80::/48")},
		ClientPrefixes: []netip.Prefix{netip.MustParsePrefix("100.95.0.0/16"), netip.MustParsePrefix("fd00:80:0:ffff::/64")},
	}
}

// testSessions opens cli4a↔dev4a and cli6a↔dev6a.
func testSessions() []Pair {
	return []Pair{{Client: cli4a, Device: dev4a}, {Client: cli6a, Device: dev6a}}
}

// ipv4 builds an IPv4 packet (UDP protocol number, zero payload bytes of
// the given length). Checksums are irrelevant to the router.
func ipv4(src, dst netip.Addr, payload int) []byte {
	p := make([]byte, 20+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	p[8] = 64
	p[9] = 17
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	for i := 20; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// ipv6 builds an IPv6 packet with the given payload length.
func ipv6(src, dst netip.Addr, payload int) []byte {
	p := make([]byte, 40+payload)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:6], uint16(payload))
	p[6] = 17
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	for i := 40; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// withOffset returns pkt preceded by offset bytes of headroom, with spare
// capacity after it as wireguard-go's buffers have.
func withOffset(pkt []byte, offset int) []byte {
	b := make([]byte, offset+len(pkt), offset+len(pkt)+64)
	copy(b[offset:], pkt)
	return b
}

// fakeTUN is an in-memory inner tun.Device: packets for Read come from
// toRead (or an error from readErr); Write records copies of what it got.
type fakeTUN struct {
	batch  int
	record bool

	toRead  chan []byte
	readErr chan error

	mu       sync.Mutex
	written  [][]byte
	writes   atomic.Int64 // Write calls
	writeErr error

	closeOnce sync.Once
	closed    chan struct{}
	events    chan tun.Event
}

func newFakeTUN(batch int) *fakeTUN {
	return &fakeTUN{
		batch:   batch,
		record:  true,
		toRead:  make(chan []byte, 64),
		readErr: make(chan error, 1),
		closed:  make(chan struct{}),
		events:  make(chan tun.Event, 1),
	}
}

func (f *fakeTUN) File() *os.File { return nil }

func (f *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-f.closed:
		return 0, os.ErrClosed
	case err := <-f.readErr:
		return 0, err
	case p := <-f.toRead:
		sizes[0] = copy(bufs[0][offset:], p)
		n := 1
		for n < len(bufs) && n < f.batch {
			select {
			case p := <-f.toRead:
				sizes[n] = copy(bufs[n][offset:], p)
				n++
			default:
				return n, nil
			}
		}
		return n, nil
	}
}

func (f *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-f.closed:
		return 0, os.ErrClosed
	default:
	}
	f.writes.Add(1)
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	if f.record {
		f.mu.Lock()
		for _, b := range bufs {
			f.written = append(f.written, append([]byte(nil), b[offset:]...))
		}
		f.mu.Unlock()
	}
	return len(bufs), nil
}

func (f *fakeTUN) Written() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.written...)
}

func (f *fakeTUN) MTU() (int, error)        { return 1420, nil }
func (f *fakeTUN) Name() (string, error)    { return "fake0", nil }
func (f *fakeTUN) Events() <-chan tun.Event { return f.events }
func (f *fakeTUN) BatchSize() int           { return f.batch }

func (f *fakeTUN) Close() error {
	f.closeOnce.Do(func() {
		close(f.closed)
		close(f.events)
	})
	return nil
}

func newTestRouter(t testing.TB, cfg Config) (*Router, *fakeTUN) {
	t.Helper()
	inner := newFakeTUN(8)
	r, err := New(inner, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r, inner
}

// statDelta returns after−before for every counter that changed, keyed by
// reason name or "hairpinned", "to_host", "from_host".
func statDelta(before, after Stats) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range after.Dropped {
		if v != before.Dropped[k] {
			d[k] = v - before.Dropped[k]
		}
	}
	if after.Hairpinned != before.Hairpinned {
		d["hairpinned"] = after.Hairpinned - before.Hairpinned
	}
	if after.ToHost != before.ToHost {
		d["to_host"] = after.ToHost - before.ToHost
	}
	if after.FromHost != before.FromHost {
		d["from_host"] = after.FromHost - before.FromHost
	}
	return d
}

// readWithin calls r.Read in a goroutine and waits at most d for it.
func readWithin(t *testing.T, r *Router, bufs [][]byte, sizes []int, offset int, d time.Duration) (int, error, bool) {
	t.Helper()
	type res struct {
		n   int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		n, err := r.Read(bufs, sizes, offset)
		ch <- res{n, err}
	}()
	select {
	case x := <-ch:
		return x.n, x.err, true
	case <-time.After(d):
		return 0, nil, false
	}
}

func makeBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}
