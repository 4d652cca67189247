package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

const wgOffset = 16 // wireguard-go's MessageTransportOffsetContent

func TestNewValidatesConfig(t *testing.T) {
	good := testConfig()
	cases := []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"no network", func(c *Config) { c.Network = nil }, "Network"},
		{"invalid network", func(c *Config) { c.Network = append(c.Network, netip.Prefix{}) }, "Network[2]"},
		{"no gateway", func(c *Config) { c.Gateway = nil }, "Gateway"},
		{"invalid gateway", func(c *Config) { c.Gateway = []netip.Addr{{}} }, "Gateway[0]"},
		{"gateway outside", func(c *Config) { c.Gateway = []netip.Addr{gw4, outside} }, "Gateway[1]"},
		{"client prefix outside", func(c *Config) {
			c.ClientPrefixes = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		}, "ClientPrefixes[0]"},
		{"client prefix wider than network", func(c *Config) {
			c.ClientPrefixes = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}
		}, "ClientPrefixes[0]"},
		{"negative queue", func(c *Config) { c.QueueLen = -1 }, "QueueLen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			cfg.Gateway = slices.Clone(good.Gateway)
			cfg.Network = slices.Clone(good.Network)
			cfg.ClientPrefixes = slices.Clone(good.ClientPrefixes)
			tc.edit(&cfg)
			inner := newFakeTUN(1)
			defer inner.Close()
			r, err := New(inner, cfg)
			if err == nil {
				r.Close()
				t.Fatal("New accepted a bad config")
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q does not name field %s", err, tc.field)
			}
		})
	}
	if _, err := New(nil, good); err == nil {
		t.Fatal("New accepted a nil inner device")
	}
}

// TestWriteClassifies sends one crafted packet per case through Write and
// checks where it went and which counter rose.
func TestWriteClassifies(t *testing.T) {
	const (
		pass    = "to_host"
		hairpin = "hairpinned"
	)
	frag4 := func(src, dst netip.Addr, fragOff uint16, more bool) []byte {
		p := ipv4(src, dst, 32)
		v := fragOff / 8
		if more {
			v |= 0x2000
		}
		binary.BigEndian.PutUint16(p[6:8], v)
		return p
	}
	frag6 := func(src, dst netip.Addr) []byte {
		p := ipv6(src, dst, 40)
		p[6] = 44 // fragment extension header follows
		p[40] = 17
		binary.BigEndian.PutUint16(p[42:44], 8<<3|1)
		return p
	}
	trailing := append(ipv4(cli4a, dev4a, 8), 0xde, 0xad, 0xbe, 0xef)
	mapped := netip.AddrFrom16(dev4a.As16()) // ::ffff:100.80.0.2

	cases := []struct {
		name string
		pkt  []byte
		want string
	}{
		{"v4 client to gateway", ipv4(cli4a, gw4, 10), pass},
		{"v4 device to gateway", ipv4(dev4b, gw4, 0), pass},
		{"v6 client to gateway", ipv6(cli6b, gw6, 10), pass},
		{"v6 device to gateway", ipv6(dev6a, gw6, 10), pass},
		{"v4 client to its device", ipv4(cli4a, dev4a, 10), hairpin},
		{"v4 device to its client", ipv4(dev4a, cli4a, 10), hairpin},
		{"v6 client to its device", ipv6(cli6a, dev6a, 10), hairpin},
		{"v6 device to its client", ipv6(dev6a, cli6a, 10), hairpin},
		{"v4 trailing bytes", trailing, hairpin},
		{"v4 first fragment with session", frag4(cli4a, dev4a, 0, true), hairpin},
		{"v4 later fragment with session", frag4(dev4a, cli4a, 1480, false), hairpin},
		{"v4 fragment without session", frag4(cli4b, dev4a, 8, true), "no_session"},
		{"v6 fragment with session", frag6(cli6a, dev6a), hairpin},
		{"v6 fragment without session", frag6(cli6a, dev6b), "no_session"},
		{"v4 client to other device", ipv4(cli4a, dev4b, 10), "no_session"},
		{"v4 other client to device", ipv4(cli4b, dev4a, 10), "no_session"},
		{"v4 device to other client", ipv4(dev4b, cli4a, 10), "no_session"},
		{"v6 client to other device", ipv6(cli6a, dev6b, 10), "no_session"},
		{"v4 device to device", ipv4(dev4a, dev4b, 10), "device_to_device"},
		{"v6 device to device", ipv6(dev6b, dev6a, 10), "device_to_device"},
		{"v4 device to itself", ipv4(dev4a, dev4a, 10), "device_to_device"},
		{"v4 client to client", ipv4(cli4a, cli4b, 10), "client_to_client"},
		{"v6 client to client", ipv6(cli6b, cli6a, 10), "client_to_client"},
		{"v4 to the internet", ipv4(dev4a, outside, 10), "not_virtual"},
		{"v6 to the internet", ipv6(cli6a, netip.MustParseAddr("2001:db8::1"), 10), "not_virtual"},
		{"v6 to v4-mapped device", ipv6(cli6a, mapped, 10), "not_virtual"},
		{"v6 multicast", ipv6(dev6a, netip.MustParseAddr("ff02::1"), 10), "not_virtual"},
		{"v4 spoofed outside source", ipv4(outside, dev4a, 10), "spoofed_source"},
		{"v4 spoofed outside source to gateway", ipv4(outside, gw4, 10), "spoofed_source"},
		{"v4 spoofed gateway source", ipv4(gw4, dev4a, 10), "spoofed_source"},
		{"v6 link-local source", ipv6(netip.MustParseAddr("fe80::1"), gw6, 10), "spoofed_source"},
		{"empty", nil, "malformed"},
		{"version 0", func() []byte { p := ipv4(cli4a, gw4, 10); p[0] = 0x05; return p }(), "malformed"},
		{"version 5", func() []byte { p := ipv4(cli4a, gw4, 10); p[0] = 0x55; return p }(), "malformed"},
		{"v6 version on a short v4 packet", func() []byte { p := ipv4(cli4a, gw4, 10); p[0] = 0x60; return p }(), "malformed"},
		{"v4 IHL 4", func() []byte { p := ipv4(cli4a, gw4, 10); p[0] = 0x44; return p }(), "malformed"},
		{"v4 IHL 0", func() []byte { p := ipv4(cli4a, gw4, 10); p[0] = 0x40; return p }(), "malformed"},
		{"v4 IHL past buffer", func() []byte { p := ipv4(cli4a, gw4, 10); p[0] = 0x4f; return p }(), "malformed"},
		{"v4 IHL 6 is fine", func() []byte {
			p := ipv4(cli4a, gw4, 10)
			p[0] = 0x46
			return p
		}(), pass},
		{"v4 total length past buffer", func() []byte {
			p := ipv4(cli4a, dev4a, 10)
			binary.BigEndian.PutUint16(p[2:4], uint16(len(p)+1))
			return p
		}(), "malformed"},
		{"v4 total length below header", func() []byte {
			p := ipv4(cli4a, dev4a, 10)
			binary.BigEndian.PutUint16(p[2:4], 19)
			return p
		}(), "malformed"},
		{"v6 payload length past buffer", func() []byte {
			p := ipv6(cli6a, dev6a, 10)
			binary.BigEndian.PutUint16(p[4:6], 11)
			return p
		}(), "malformed"},
	}
	for i := range 20 {
		cases = append(cases, struct {
			name string
			pkt  []byte
			want string
		}{fmt.Sprintf("v4 truncated to %d", i), ipv4(cli4a, gw4, 10)[:i], "malformed"})
	}
	for i := range 40 {
		cases = append(cases, struct {
			name string
			pkt  []byte
			want string
		}{fmt.Sprintf("v6 truncated to %d", i), ipv6(cli6a, gw6, 10)[:i], "malformed"})
	}

	for _, offset := range []int{0, wgOffset} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("offset%d/%s", offset, tc.name), func(t *testing.T) {
				r, inner := newTestRouter(t, testConfig())
				r.SetSessions(testSessions())
				before := r.Stats()
				n, err := r.Write([][]byte{withOffset(tc.pkt, offset)}, offset)
				if err != nil || n != 1 {
					t.Fatalf("Write = %d, %v; want 1, nil", n, err)
				}
				if d := statDelta(before, r.Stats()); len(d) != 1 || d[tc.want] != 1 {
					t.Fatalf("counters changed %v; want only %s+1", d, tc.want)
				}
				written := inner.Written()
				switch tc.want {
				case pass:
					if len(written) != 1 || !bytes.Equal(written[0], tc.pkt) {
						t.Fatalf("inner got %d packets, want the packet", len(written))
					}
				case hairpin:
					if len(written) != 0 {
						t.Fatalf("inner got %d packets, want none", len(written))
					}
					if len(r.queue) != 1 {
						t.Fatalf("queue holds %d packets, want 1", len(r.queue))
					}
					bufs, sizes := makeBufs(2, 2000)
					n, err, ok := readWithin(t, r, bufs, sizes, wgOffset, 5*time.Second)
					if !ok || err != nil || n != 1 {
						t.Fatalf("Read = %d, %v (returned %v); want the hairpinned packet", n, err, ok)
					}
					h, _ := parseHeader(tc.pkt)
					if got := bufs[0][wgOffset : wgOffset+sizes[0]]; !bytes.Equal(got, tc.pkt[:h.length]) {
						t.Fatalf("hairpinned %x, want %x", got, tc.pkt[:h.length])
					}
				default:
					if len(written) != 0 || len(r.queue) != 0 {
						t.Fatalf("dropped packet reached inner (%d) or queue (%d)", len(written), len(r.queue))
					}
				}
			})
		}
	}
}

func TestWriteOffsetPastBuffer(t *testing.T) {
	r, inner := newTestRouter(t, testConfig())
	before := r.Stats()
	if _, err := r.Write([][]byte{make([]byte, 4)}, wgOffset); err != nil {
		t.Fatal(err)
	}
	if d := statDelta(before, r.Stats()); d["malformed"] != 1 || len(d) != 1 {
		t.Fatalf("counters changed %v; want malformed+1", d)
	}
	if inner.writes.Load() != 0 {
		t.Fatal("inner written")
	}
}

// TestWriteBatches checks that a mixed batch ends up in one inner Write with
// only the passing packets, in order.
func TestWriteBatches(t *testing.T) {
	r, inner := newTestRouter(t, testConfig())
	r.SetSessions(testSessions())
	pkts := [][]byte{
		ipv4(cli4a, gw4, 1),
		ipv4(dev4a, dev4b, 2),
		ipv6(dev6a, gw6, 3),
		ipv4(cli4a, dev4a, 4),
		ipv4(cli4b, gw4, 5),
		{0x45},
	}
	var bufs [][]byte
	for _, p := range pkts {
		bufs = append(bufs, withOffset(p, wgOffset))
	}
	before := r.Stats()
	if n, err := r.Write(bufs, wgOffset); err != nil || n != len(bufs) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if got := inner.writes.Load(); got != 1 {
		t.Fatalf("inner Write called %d times, want 1", got)
	}
	want := [][]byte{pkts[0], pkts[2], pkts[4]}
	if got := inner.Written(); !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("inner got %d packets, want the 3 gateway packets in order", len(got))
	}
	d := statDelta(before, r.Stats())
	if d["to_host"] != 3 || d["hairpinned"] != 1 || d["device_to_device"] != 1 || d["malformed"] != 1 || len(d) != 4 {
		t.Fatalf("counters changed %v", d)
	}
	// A batch with nothing for the host does not call inner Write.
	if _, err := r.Write([][]byte{withOffset(ipv4(dev4a, dev4b, 1), 0)}, 0); err != nil {
		t.Fatal(err)
	}
	if got := inner.writes.Load(); got != 1 {
		t.Fatalf("inner Write called %d times, want still 1", got)
	}
}

func TestWriteInnerError(t *testing.T) {
	r, inner := newTestRouter(t, testConfig())
	boom := errors.New("boom")
	inner.writeErr = boom
	before := r.Stats()
	_, err := r.Write([][]byte{ipv4(cli4a, gw4, 1)}, 0)
	if !errors.Is(err, boom) {
		t.Fatalf("Write error %v, want it to wrap the inner error", err)
	}
	if d := statDelta(before, r.Stats()); len(d) != 0 {
		t.Fatalf("counters changed %v on a failed inner write", d)
	}
}

// TestReadMerges checks that host packets and hairpinned packets both come
// out of Read, that host packets from a non-gateway source are dropped, and
// that offset and sizes are honoured.
func TestReadMerges(t *testing.T) {
	r, inner := newTestRouter(t, testConfig())
	r.SetSessions(testSessions())

	hostOK := [][]byte{ipv4(gw4, dev4a, 11), ipv6(gw6, cli6b, 12), ipv4(gw4, outside, 13)}
	hostBad := [][]byte{ipv4(dev4b, dev4a, 14), ipv4(outside, cli4a, 15), {0x45, 0}}
	hair := [][]byte{ipv4(cli4a, dev4a, 21), ipv6(dev6a, cli6a, 22)}

	for _, p := range append(slices.Clone(hostOK), hostBad...) {
		inner.toRead <- p
	}
	for _, p := range hair {
		if _, err := r.Write([][]byte{withOffset(p, wgOffset)}, wgOffset); err != nil {
			t.Fatal(err)
		}
	}

	const sentinel = 0xAA
	want := append(slices.Clone(hostOK), hair...)
	var got [][]byte
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		bufs, sizes := makeBufs(4, 2000)
		for _, b := range bufs {
			for i := range wgOffset {
				b[i] = sentinel
			}
		}
		n, err, ok := readWithin(t, r, bufs, sizes, wgOffset, 5*time.Second)
		if !ok {
			break
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if n < 1 || n > len(bufs) {
			t.Fatalf("Read returned n=%d", n)
		}
		for i := range n {
			for j := range wgOffset {
				if bufs[i][j] != sentinel {
					t.Fatalf("Read wrote before offset in buf %d", i)
				}
			}
			got = append(got, slices.Clone(bufs[i][wgOffset:wgOffset+sizes[i]]))
		}
	}
	sortBytes := func(s [][]byte) { slices.SortFunc(s, bytes.Compare) }
	sortBytes(got)
	sortBytes(want)
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("Read produced %d packets, want %d (3 host + 2 hairpinned)", len(got), len(want))
	}
	s := r.Stats()
	if s.FromHost != 3 || s.Hairpinned != 2 || s.Dropped["host_source"] != 2 || s.Dropped["malformed"] != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestReadFillsWithoutBlocking: with several packets available, one Read
// returns them all.
func TestReadFillsWithoutBlocking(t *testing.T) {
	r, _ := newTestRouter(t, testConfig())
	r.SetSessions(testSessions())
	for i := range 5 {
		if _, err := r.Write([][]byte{ipv4(cli4a, dev4a, i)}, 0); err != nil {
			t.Fatal(err)
		}
	}
	bufs, sizes := makeBufs(8, 2000)
	n, err, ok := readWithin(t, r, bufs, sizes, 0, 5*time.Second)
	if !ok || err != nil || n != 5 {
		t.Fatalf("Read = %d, %v (returned %v); want all 5 queued packets at once", n, err, ok)
	}
	for i := range n {
		if sizes[i] != 20+i {
			t.Fatalf("sizes[%d] = %d, want %d (queue order)", i, sizes[i], 20+i)
		}
	}
	// Fewer bufs than packets: the rest stays for the next Read.
	for i := range 3 {
		r.Write([][]byte{ipv4(cli4a, dev4a, i)}, 0)
	}
	bufs, sizes = makeBufs(2, 2000)
	if n, err, _ := readWithin(t, r, bufs, sizes, 0, 5*time.Second); n != 2 || err != nil {
		t.Fatalf("Read = %d, %v; want 2", n, err)
	}
	if n, err, _ := readWithin(t, r, bufs, sizes, 0, 5*time.Second); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want the last 1", n, err)
	}
}

// TestReadHostBatchAcrossCalls: an inner batch larger than the caller's
// bufs is handed out over several Reads.
func TestReadHostBatchAcrossCalls(t *testing.T) {
	r, inner := newTestRouter(t, testConfig())
	for i := range 5 {
		inner.toRead <- ipv4(gw4, dev4a, i)
	}
	var sizesSeen []int
	deadline := time.Now().Add(10 * time.Second)
	for len(sizesSeen) < 5 && time.Now().Before(deadline) {
		bufs, sizes := makeBufs(2, 2000)
		n, err, ok := readWithin(t, r, bufs, sizes, 0, 5*time.Second)
		if !ok || err != nil {
			t.Fatalf("Read = %d, %v (returned %v)", n, err, ok)
		}
		sizesSeen = append(sizesSeen, sizes[:n]...)
	}
	if !slices.Equal(sizesSeen, []int{20, 21, 22, 23, 24}) {
		t.Fatalf("host packets came out as sizes %v", sizesSeen)
	}
}

func TestReadOversize(t *testing.T) {
	r, _ := newTestRouter(t, testConfig())
	r.SetSessions(testSessions())
	r.Write([][]byte{ipv4(cli4a, dev4a, 100)}, 0)
	r.Write([][]byte{ipv4(cli4a, dev4a, 1)}, 0)
	bufs, sizes := makeBufs(2, 50)
	n, err, ok := readWithin(t, r, bufs, sizes, 10, 5*time.Second)
	if !ok || err != nil || n != 1 || sizes[0] != 21 {
		t.Fatalf("Read = %d, %v, sizes %v; want only the small packet", n, err, sizes)
	}
	if got := r.Stats().Dropped["oversize"]; got != 1 {
		t.Fatalf("oversize = %d, want 1", got)
	}
}

// TestQueueFull: with no reader, Write never blocks; packets past the
// queue length are dropped and counted.
func TestQueueFull(t *testing.T) {
	cfg := testConfig()
	cfg.QueueLen = 4
	r, _ := newTestRouter(t, cfg)
	r.SetSessions(testSessions())
	var bufs [][]byte
	for i := range 10 {
		bufs = append(bufs, withOffset(ipv4(cli4a, dev4a, i), wgOffset))
	}
	done := make(chan error, 1)
	go func() {
		for range 3 {
			if _, err := r.Write(bufs, wgOffset); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write blocked on a full queue")
	}
	s := r.Stats()
	if s.Hairpinned != 4 || s.Dropped["queue_full"] != 26 {
		t.Fatalf("hairpinned %d queue_full %d; want 4 and 26", s.Hairpinned, s.Dropped["queue_full"])
	}
	// Draining makes room again.
	rb, sizes := makeBufs(8, 2000)
	if n, err, _ := readWithin(t, r, rb, sizes, 0, 5*time.Second); n != 4 || err != nil {
		t.Fatalf("Read = %d, %v; want the 4 queued", n, err)
	}
	if _, err := r.Write(bufs[:1], wgOffset); err != nil {
		t.Fatal(err)
	}
	if got := r.Stats().Hairpinned; got != 5 {
		t.Fatalf("hairpinned %d after draining, want 5", got)
	}
}

func TestCloseWakesRead(t *testing.T) {
	base := runtime.NumGoroutine()
	inner := newFakeTUN(4)
	r, err := New(inner, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	readDone := make(chan error, 1)
	go func() {
		bufs, sizes := makeBufs(4, 2000)
		_, err := r.Read(bufs, sizes, wgOffset)
		readDone <- err
	}()
	select {
	case err := <-readDone:
		t.Fatalf("Read returned %v before Close with nothing to read", err)
	case <-time.After(100 * time.Millisecond):
	}
	closeDone := make(chan error, 1)
	go func() { closeDone <- r.Close() }()
	select {
	case err := <-closeDone:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	select {
	case err := <-readDone:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Read after Close returned %v, want os.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake Read")
	}
	select {
	case <-inner.closed:
	default:
		t.Fatal("Close did not close the inner device")
	}
	bufs, sizes := makeBufs(1, 100)
	if _, err := r.Read(bufs, sizes, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close = %v", err)
	}
	if _, err := r.Write([][]byte{ipv4(cli4a, gw4, 1)}, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Write after Close = %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// No goroutine left behind (bounded wait: the runtime may take a moment
	// to retire exited goroutines).
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Fatalf("%d goroutines after Close, %d before New", n, base)
	}
}

// TestReadPassesInnerErrors: an inner failure (not caused by Close) reaches
// the caller, after the packets read with it; reading goes on afterwards
// for a recoverable error.
func TestReadPassesInnerErrors(t *testing.T) {
	r, inner := newTestRouter(t, testConfig())
	bufs, sizes := makeBufs(4, 2000)

	inner.readErr <- tun.ErrTooManySegments
	_, err, ok := readWithin(t, r, bufs, sizes, 0, 5*time.Second)
	if !ok || !errors.Is(err, tun.ErrTooManySegments) {
		t.Fatalf("Read = %v (returned %v); want ErrTooManySegments passed through", err, ok)
	}
	inner.toRead <- ipv4(gw4, cli4a, 3)
	n, err, ok := readWithin(t, r, bufs, sizes, 0, 5*time.Second)
	if !ok || err != nil || n != 1 {
		t.Fatalf("Read after a recoverable error = %d, %v (returned %v)", n, err, ok)
	}

	boom := errors.New("device gone")
	inner.readErr <- boom
	_, err, ok = readWithin(t, r, bufs, sizes, 0, 5*time.Second)
	if !ok || !errors.Is(err, boom) || errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read = %v (returned %v); want the inner error", err, ok)
	}
}

// TestReadNeverFailsFromQueue: queue overflow never shows as a Read error.
func TestReadNeverFailsFromQueue(t *testing.T) {
	cfg := testConfig()
	cfg.QueueLen = 2
	r, _ := newTestRouter(t, cfg)
	r.SetSessions(testSessions())
	bufs, sizes := makeBufs(1, 2000)
	for range 20 {
		r.Write([][]byte{ipv4(cli4a, dev4a, 1), ipv4(dev4a, cli4a, 1), ipv4(cli4a, dev4a, 1)}, 0)
		for range 2 {
			if _, err, ok := readWithin(t, r, bufs, sizes, 0, 5*time.Second); !ok || err != nil {
				t.Fatalf("Read = %v (returned %v)", err, ok)
			}
		}
	}
	if got := r.Stats().Dropped["queue_full"]; got != 20 {
		t.Fatalf("queue_full = %d, want 20", got)
	}
}

// TestSetSessionsConcurrent swaps the ACL while peers write; run with -race.
func TestSetSessionsConcurrent(t *testing.T) {
	cfg := testConfig()
	cfg.QueueLen = 1 << 16
	r, _ := newTestRouter(t, cfg)
	const writers, perWriter = 4, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var swaps int
	var swapWG sync.WaitGroup
	swapWG.Add(1)
	go func() {
		defer swapWG.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				r.SetSessions(testSessions())
			} else {
				r.SetSessions(nil)
			}
			swaps++
			runtime.Gosched()
		}
	}()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := withOffset(ipv4(cli4a, dev4a, w), wgOffset)
			bufs := [][]byte{buf}
			for range perWriter {
				if _, err := r.Write(bufs, wgOffset); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	swapWG.Wait()
	s := r.Stats()
	if total := s.Hairpinned + s.Dropped["no_session"]; total != writers*perWriter {
		t.Fatalf("hairpinned %d + no_session %d != %d", s.Hairpinned, s.Dropped["no_session"], writers*perWriter)
	}
	t.Logf("%d swaps; hairpinned %d, no_session %d", swaps, s.Hairpinned, s.Dropped["no_session"])
}

func TestReasons(t *testing.T) {
	names := Reasons()
	want := []string{"malformed", "no_session", "device_to_device", "client_to_client", "not_virtual",
		"spoofed_source", "queue_full", "host_source", "oversize"}
	if !slices.Equal(names, want) {
		t.Fatalf("Reasons() = %v", names)
	}
	s := (&Router{}).Stats()
	for _, n := range names {
		if _, ok := s.Dropped[n]; !ok {
			t.Fatalf("Stats().Dropped lacks %q", n)
		}
	}
	if Reason(200).String() != "unknown" {
		t.Fatal("out-of-range reason has a name")
	}
}

func TestDelegates(t *testing.T) {
	r, inner := newTestRouter(t, testConfig())
	if mtu, err := r.MTU(); mtu != 1420 || err != nil {
		t.Fatalf("MTU = %d, %v", mtu, err)
	}
	if name, err := r.Name(); name != "fake0" || err != nil {
		t.Fatalf("Name = %q, %v", name, err)
	}
	if r.BatchSize() != inner.BatchSize() || r.File() != nil {
		t.Fatal("BatchSize/File not the inner device's")
	}
	inner.events <- tun.EventUp
	if ev := <-r.Events(); ev != tun.EventUp {
		t.Fatalf("event %v", ev)
	}
}
