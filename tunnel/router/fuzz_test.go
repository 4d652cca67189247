package router

import (
	"net/netip"
	"testing"

	xipv4 "golang.org/x/net/ipv4"
	xipv6 "golang.org/x/net/ipv6"
)

// seedPackets are added to the fuzzers besides testdata/fuzz.
func seedPackets() [][]byte {
	return [][]byte{
		ipv4(cli4a, gw4, 8),
		ipv4(cli4a, dev4a, 8),
		ipv4(dev4a, cli4a, 0),
		ipv4(cli4a, dev4b, 8),
		ipv4(dev4a, dev4b, 8),
		ipv6(cli6a, dev6a, 8),
		ipv6(dev6b, gw6, 0),
		ipv6(cli6a, cli6b, 8),
		ipv4(cli4a, gw4, 8)[:19],
		{0x4f, 0, 0, 20},
		{0x60},
	}
}

// FuzzParse checks parseHeader against golang.org/x/net's header parsers:
// it never panics, never claims more bytes than it has, and agrees with
// x/net on the addresses of every packet it accepts.
func FuzzParse(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		h, ok := parseHeader(p)
		if !ok {
			// Rejections must be for a reason x/net agrees with, or for
			// a length field that runs past the buffer.
			if len(p) > 0 && p[0]>>4 == 4 {
				if ref, err := xipv4.ParseHeader(p); err == nil && ref.TotalLen >= ref.Len && ref.TotalLen <= len(p) {
					t.Fatalf("rejected an IPv4 packet x/net accepts: %+v", ref)
				}
			}
			if len(p) > 0 && p[0]>>4 == 6 {
				if ref, err := xipv6.ParseHeader(p); err == nil && 40+ref.PayloadLen <= len(p) {
					t.Fatalf("rejected an IPv6 packet x/net accepts: %+v", ref)
				}
			}
			return
		}
		if h.length > len(p) || h.length < ipv4MinHeader {
			t.Fatalf("length %d for a %d-byte buffer", h.length, len(p))
		}
		switch p[0] >> 4 {
		case 4:
			ref, err := xipv4.ParseHeader(p)
			if err != nil {
				t.Fatalf("accepted an IPv4 packet x/net rejects: %v", err)
			}
			if h.length != ref.TotalLen || h.length < ref.Len {
				t.Fatalf("length %d, x/net total %d header %d", h.length, ref.TotalLen, ref.Len)
			}
			src, _ := netip.AddrFromSlice(ref.Src.To4())
			dst, _ := netip.AddrFromSlice(ref.Dst.To4())
			if h.src != src || h.dst != dst {
				t.Fatalf("addresses %v→%v, x/net %v→%v", h.src, h.dst, src, dst)
			}
		case 6:
			ref, err := xipv6.ParseHeader(p)
			if err != nil {
				t.Fatalf("accepted an IPv6 packet x/net rejects: %v", err)
			}
			if h.length != 40+ref.PayloadLen {
				t.Fatalf("length %d, x/net payload %d", h.length, ref.PayloadLen)
			}
			src, _ := netip.AddrFromSlice(ref.Src)
			dst, _ := netip.AddrFromSlice(ref.Dst)
			if h.src != src || h.dst != dst {
				t.Fatalf("addresses %v→%v, x/net %v→%v", h.src, h.dst, src, dst)
			}
		default:
			t.Fatalf("accepted version %d", p[0]>>4)
		}
	})
}

// FuzzWrite pushes arbitrary bytes through Write at an arbitrary offset: it
// never panics, each packet has exactly one outcome, nothing but gateway
// traffic reaches the host, and nothing is hairpinned unless its address
// pair is an open session.
func FuzzWrite(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(p, uint8(0))
		f.Add(p, uint8(wgOffset))
	}
	inner := newFakeTUN(8)
	r, err := New(inner, testConfig())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	r.SetSessions(testSessions())
	allowed := map[[2]netip.Addr]bool{}
	for _, p := range testSessions() {
		allowed[[2]netip.Addr{p.Client, p.Device}] = true
		allowed[[2]netip.Addr{p.Device, p.Client}] = true
	}
	out, sizes := makeBufs(1, 70000)

	f.Fuzz(func(t *testing.T, p []byte, off uint8) {
		offset := int(off % 64)
		buf := make([]byte, offset+len(p))
		copy(buf[offset:], p)
		before := r.Stats()
		writesBefore := len(inner.Written())
		if n, err := r.Write([][]byte{buf}, offset); err != nil || n != 1 {
			t.Fatalf("Write = %d, %v", n, err)
		}
		d := statDelta(before, r.Stats())
		if len(d) != 1 {
			t.Fatalf("counters changed %v; want exactly one outcome", d)
		}
		for k, v := range d {
			if v != 1 {
				t.Fatalf("%s rose by %d", k, v)
			}
		}
		switch {
		case d["hairpinned"] == 1:
			if len(r.queue) != 1 {
				t.Fatalf("hairpinned but queue holds %d", len(r.queue))
			}
			n, err := r.Read(out, sizes, 0)
			if err != nil || n != 1 {
				t.Fatalf("Read = %d, %v", n, err)
			}
			q := out[0][:sizes[0]]
			src, dst := rawAddrs(q)
			if !allowed[[2]netip.Addr{src, dst}] {
				t.Fatalf("hairpinned %v→%v, not an open session", src, dst)
			}
		case d["to_host"] == 1:
			w := inner.Written()
			if len(w) != writesBefore+1 {
				t.Fatal("to_host counted but inner not written")
			}
			if _, dst := rawAddrs(w[len(w)-1]); dst != gw4 && dst != gw6 {
				t.Fatalf("host got a packet for %v", dst)
			}
		default:
			if len(r.queue) != 0 || len(inner.Written()) != writesBefore {
				t.Fatal("dropped packet went somewhere")
			}
		}
	})
}

// rawAddrs reads the address pair straight from the header bytes.
func rawAddrs(p []byte) (src, dst netip.Addr) {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		src, _ = netip.AddrFromSlice(p[12:16])
		dst, _ = netip.AddrFromSlice(p[16:20])
	case len(p) >= 40 && p[0]>>4 == 6:
		src, _ = netip.AddrFromSlice(p[8:24])
		dst, _ = netip.AddrFromSlice(p[24:40])
	}
	return src, dst
}
