package router

import (
	"net/netip"
	"testing"
)

// TestWriteDoesNotAllocate: the packet path allocates nothing in steady
// state, for a packet to the host and for a hairpinned one (pooled buffer,
// drained by Read).
func TestWriteDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	r, inner := newTestRouter(t, testConfig())
	inner.record = false
	r.SetSessions(testSessions())

	pass := [][]byte{withOffset(ipv4(cli4a, gw4, 1380), wgOffset), withOffset(ipv6(dev6a, gw6, 1360), wgOffset)}
	if a := testing.AllocsPerRun(1000, func() {
		if _, err := r.Write(pass, wgOffset); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Write of packets to the host: %v allocs per run, want 0", a)
	}

	hair := [][]byte{withOffset(ipv4(cli4a, dev4a, 1380), wgOffset), withOffset(ipv6(dev6a, cli6a, 1360), wgOffset)}
	out, sizes := makeBufs(2, wgOffset+1500)
	if a := testing.AllocsPerRun(1000, func() {
		if _, err := r.Write(hair, wgOffset); err != nil {
			t.Fatal(err)
		}
		if n, err := r.Read(out, sizes, wgOffset); n != 2 || err != nil {
			t.Fatalf("Read = %d, %v", n, err)
		}
	}); a != 0 {
		t.Errorf("Write+Read of hairpinned packets: %v allocs per run, want 0", a)
	}

	drop := [][]byte{withOffset(ipv4(dev4a, dev4b, 100), wgOffset), {0x45}}
	if a := testing.AllocsPerRun(1000, func() {
		if _, err := r.Write(drop, wgOffset); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Write of dropped packets: %v allocs per run, want 0", a)
	}
	if s := r.Stats(); s.Dropped["queue_full"] != 0 {
		t.Fatalf("queue_full = %d during the hairpin run", s.Dropped["queue_full"])
	}
}

// batch returns n wireguard-go-like buffers holding copies of pkt.
func batch(pkt []byte, n int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = withOffset(pkt, wgOffset)
	}
	return bufs
}

const benchBatchSize = 32

// BenchmarkInnerWrite is the reference: the fake inner device alone.
func BenchmarkInnerWrite(b *testing.B) {
	inner := newFakeTUN(benchBatchSize)
	inner.record = false
	bufs := batch(ipv4(cli4a, gw4, 1380), benchBatchSize)
	b.SetBytes(int64(benchBatchSize * 1400))
	b.ReportAllocs()
	for b.Loop() {
		inner.Write(bufs, wgOffset)
	}
}

// BenchmarkWritePass: a batch of packets to the gateway through the router.
func BenchmarkWritePass(b *testing.B) {
	r, inner := newTestRouter(b, testConfig())
	inner.record = false
	r.SetSessions(testSessions())
	bufs := batch(ipv4(cli4a, gw4, 1380), benchBatchSize)
	b.SetBytes(int64(benchBatchSize * 1400))
	b.ReportAllocs()
	for b.Loop() {
		r.Write(bufs, wgOffset)
	}
}

// BenchmarkWriteHairpin: a batch of client→device packets through the
// router and back out of Read (copy in, copy out).
func BenchmarkWriteHairpin(b *testing.B) {
	r, _ := newTestRouter(b, testConfig())
	sessions := testSessions()
	// A realistically sized ACL: 10k open sessions besides the test's.
	for i := range 10000 {
		c := cli4b.As4()
		d := dev4b.As4()
		c[2], c[3] = byte(i>>8), byte(i)
		d[2], d[3] = byte(i>>8), byte(i)
		sessions = append(sessions, Pair{Client: netip.AddrFrom4(c), Device: netip.AddrFrom4(d)})
	}
	r.SetSessions(sessions)
	bufs := batch(ipv4(cli4a, dev4a, 1380), benchBatchSize)
	out, sizes := makeBufs(benchBatchSize, wgOffset+1500)
	b.SetBytes(int64(benchBatchSize * 1400))
	b.ReportAllocs()
	for b.Loop() {
		r.Write(bufs, wgOffset)
		for got := 0; got < benchBatchSize; {
			n, err := r.Read(out, sizes, wgOffset)
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
}
