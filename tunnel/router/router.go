// Package router is the gateway's hub: a tun.Device that wraps the real one
// (kernel TUN or netstack) under wireguard-go and decides, packet by packet,
// what crosses it.
//
// wireguard-go writes decrypted peer packets into Write. A packet for one of
// the gateway's own addresses goes to the inner device (the host stack). A
// packet between a client and a device with an open session (SetSessions) is
// copied onto a bounded queue and comes back out of Read, so wireguard-go
// encrypts it towards the other peer: it hairpins in userspace and never
// touches the host. Everything else is dropped and counted by reason.
//
// Read merges that queue with the inner device's packets; a host packet
// enters the tunnel only if its source is a gateway address, so the host never
// routes into the virtual network whatever its forwarding settings say.
package router

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

const (
	// DefaultQueueLen is the hairpin queue length when Config.QueueLen is 0.
	DefaultQueueLen = 4096

	// innerOffset is the headroom left before each packet read from the
	// inner device (wireguard-go's MessageTransportHeaderSize, which covers
	// the Linux TUN's virtio header).
	innerOffset = 16
	// maxPacket is the largest IP packet (and wireguard-go's MaxSegmentSize).
	maxPacket = 65535
	// minPooledBuf is the smallest capacity of a pooled hairpin buffer.
	minPooledBuf = 1500
)

// Config says which addresses the router treats as what.
type Config struct {
	// Gateway lists the gateway's own virtual addresses (IPv4 and IPv6).
	Gateway []netip.Addr
	// Network is the whole virtual network, IPv4 and IPv6.
	Network []netip.Prefix
	// ClientPrefixes are the prefixes client addresses come from; every
	// other address of Network (but the gateway's) is a device.
	ClientPrefixes []netip.Prefix
	// QueueLen bounds the hairpin queue (packets); 0 means DefaultQueueLen.
	QueueLen int
}

// Router is a tun.Device wrapping another one; see the package comment.
type Router struct {
	inner   tun.Device
	gateway []netip.Addr
	network []netip.Prefix
	clients []netip.Prefix

	acl atomic.Pointer[sessions]

	queue    chan *packetBuf
	bufPool  sync.Pool // *packetBuf
	passPool sync.Pool // *[][]byte
	bufCap   int

	// inner reader (Tailscale tstun pattern): one goroutine reads the
	// inner device into innerBufs and hands the result over innerCh; it
	// reads again once Read has consumed them (consumed).
	innerBufs  [][]byte
	innerSizes []int
	innerCh    chan innerResult
	consumed   chan struct{}

	readMu  sync.Mutex // serialises Read; guards pend and readErr
	pend    pending
	readErr error

	closeOnce sync.Once
	closed    atomic.Bool
	done      chan struct{}
	wg        sync.WaitGroup
	closeErr  error

	dropped    [numReasons]atomic.Uint64
	hairpinned atomic.Uint64
	toHost     atomic.Uint64
	fromHost   atomic.Uint64
}

type packetBuf struct {
	b []byte
}

type innerResult struct {
	n   int
	err error
}

// pending is an inner read result not yet fully handed to Read's callers.
type pending struct {
	active bool
	n, idx int
	err    error
}

var _ tun.Device = (*Router)(nil)

// New wraps inner. It validates cfg (each error names the field), then
// starts the goroutine that reads inner. The Router owns inner from now on:
// Close closes it.
func New(inner tun.Device, cfg Config) (*Router, error) {
	if inner == nil {
		return nil, errors.New("router: inner device is nil")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Router{
		inner:    inner,
		network:  masked(cfg.Network),
		clients:  masked(cfg.ClientPrefixes),
		innerCh:  make(chan innerResult),
		consumed: make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	for _, a := range cfg.Gateway {
		r.gateway = append(r.gateway, a.Unmap())
	}
	qlen := cfg.QueueLen
	if qlen == 0 {
		qlen = DefaultQueueLen
	}
	r.queue = make(chan *packetBuf, qlen)

	r.bufCap = minPooledBuf
	if mtu, err := inner.MTU(); err == nil && mtu > r.bufCap && mtu <= maxPacket {
		r.bufCap = mtu
	}
	r.bufPool.New = func() any { return &packetBuf{b: make([]byte, 0, r.bufCap)} }

	batch := max(inner.BatchSize(), 1)
	r.passPool.New = func() any {
		s := make([][]byte, 0, max(batch, 128))
		return &s
	}
	r.innerBufs = make([][]byte, batch)
	for i := range r.innerBufs {
		r.innerBufs[i] = make([]byte, innerOffset+maxPacket)
	}
	r.innerSizes = make([]int, batch)
	r.acl.Store(newSessions(nil))

	r.wg.Add(1)
	go r.pollInner()
	return r, nil
}

func (c *Config) validate() error {
	if len(c.Network) == 0 {
		return errors.New("router: config Network: empty; the virtual network needs at least one prefix")
	}
	for i, p := range c.Network {
		if !p.IsValid() {
			return fmt.Errorf("router: config Network[%d]: invalid prefix", i)
		}
	}
	if len(c.Gateway) == 0 {
		return errors.New("router: config Gateway: empty; the gateway needs at least one address")
	}
	for i, a := range c.Gateway {
		if !a.IsValid() {
			return fmt.Errorf("router: config Gateway[%d]: invalid address", i)
		}
		if !inPrefixes(masked(c.Network), a.Unmap()) {
			return fmt.Errorf("router: config Gateway[%d]: %s is outside Network", i, a)
		}
	}
	for i, p := range c.ClientPrefixes {
		if !p.IsValid() {
			return fmt.Errorf("router: config ClientPrefixes[%d]: invalid prefix", i)
		}
		inside := false
		for _, n := range c.Network {
			if n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
				inside = true
				break
			}
		}
		if !inside {
			return fmt.Errorf("router: config ClientPrefixes[%d]: %s is outside Network", i, p)
		}
	}
	if c.QueueLen < 0 {
		return fmt.Errorf("router: config QueueLen: %d is negative", c.QueueLen)
	}
	return nil
}

func masked(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	return out
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (r *Router) isGateway(a netip.Addr) bool {
	for _, g := range r.gateway {
		if g == a {
			return true
		}
	}
	return false
}

// action is what Write does with a peer packet.
type action uint8

const (
	actDrop    action = iota
	actPass           // to the inner device (host)
	actHairpin        // back to wireguard-go through Read
)

// classify decides the fate of a peer packet from its address pair.
func (r *Router) classify(acl *sessions, src, dst netip.Addr) (action, Reason) {
	if !inPrefixes(r.network, src) || r.isGateway(src) {
		return actDrop, ReasonSpoofedSource
	}
	if r.isGateway(dst) {
		return actPass, 0
	}
	if !inPrefixes(r.network, dst) {
		return actDrop, ReasonNotVirtual
	}
	srcClient, dstClient := inPrefixes(r.clients, src), inPrefixes(r.clients, dst)
	switch {
	case srcClient && dstClient:
		return actDrop, ReasonClientToClient
	case !srcClient && !dstClient:
		return actDrop, ReasonDeviceToDevice
	case srcClient:
		if acl.allowed(src, dst) {
			return actHairpin, 0
		}
	default:
		if acl.allowed(dst, src) {
			return actHairpin, 0
		}
	}
	return actDrop, ReasonNoSession
}

// Write takes decrypted packets from wireguard-go (one goroutine per peer;
// the buffers are reused after Write returns). Packets for the gateway go to
// the inner device in one Write call; allowed client↔device packets are
// copied onto the hairpin queue; the rest are dropped and counted. It never
// blocks on the queue and does not allocate in steady state. Dropped packets
// are not errors: it returns len(bufs) unless the inner device fails.
func (r *Router) Write(bufs [][]byte, offset int) (int, error) {
	if r.closed.Load() {
		return 0, os.ErrClosed
	}
	acl := r.acl.Load()
	ps := r.passPool.Get().(*[][]byte)
	pass := (*ps)[:0]
	for _, b := range bufs {
		if offset < 0 || offset > len(b) {
			r.drop(ReasonMalformed)
			continue
		}
		pkt := b[offset:]
		h, ok := parseHeader(pkt)
		if !ok {
			r.drop(ReasonMalformed)
			continue
		}
		switch act, reason := r.classify(acl, h.src, h.dst); act {
		case actPass:
			pass = append(pass, b)
		case actHairpin:
			r.enqueue(pkt[:h.length])
		default:
			r.drop(reason)
		}
	}
	var err error
	if len(pass) > 0 {
		_, err = r.inner.Write(pass, offset)
		if err == nil {
			r.toHost.Add(uint64(len(pass)))
		}
	}
	clear(pass)
	*ps = pass[:0]
	r.passPool.Put(ps)
	if err != nil {
		return 0, fmt.Errorf("router: write to inner device: %w", err)
	}
	return len(bufs), nil
}

// enqueue copies pkt into a pooled buffer and queues it for Read, or drops
// it if the queue is full.
func (r *Router) enqueue(pkt []byte) {
	pb := r.bufPool.Get().(*packetBuf)
	if cap(pb.b) < len(pkt) {
		pb.b = make([]byte, len(pkt))
	}
	pb.b = pb.b[:len(pkt)]
	copy(pb.b, pkt)
	select {
	case r.queue <- pb:
		r.hairpinned.Add(1)
	default:
		r.drop(ReasonQueueFull)
		r.release(pb)
	}
}

func (r *Router) release(pb *packetBuf) {
	pb.b = pb.b[:0]
	r.bufPool.Put(pb)
}

// pollInner reads the inner device until Close. Each result is handed to
// Read over innerCh; the next read waits until Read has consumed the
// buffers. An os.ErrClosed from the inner device ends the loop (it can never
// read again); other errors are handed over and reading goes on.
func (r *Router) pollInner() {
	defer r.wg.Done()
	for {
		n, err := r.inner.Read(r.innerBufs, r.innerSizes, innerOffset)
		select {
		case r.innerCh <- innerResult{n: n, err: err}:
		case <-r.done:
			return
		}
		select {
		case <-r.consumed:
		case <-r.done:
			return
		}
		if err != nil && errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// Read hands wireguard-go packets to encrypt: host packets from the inner
// device whose source is a gateway address, and hairpinned peer packets. It
// blocks until it has at least one packet, then fills as many of bufs as are
// available without blocking (each at offset, its length in sizes). It
// returns an error only after Close (os.ErrClosed), or when the inner device
// itself fails (its error, wrapped).
func (r *Router) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	if len(bufs) == 0 {
		return 0, nil
	}
	for {
		if r.closed.Load() {
			return 0, os.ErrClosed
		}
		if !r.pend.active {
			// Don't let a busy hairpin queue starve the host.
			select {
			case res := <-r.innerCh:
				r.pend = pending{active: true, n: res.n, err: res.err}
			default:
			}
		}
		n := r.takeHost(bufs, sizes, offset, 0)
		n = r.takeQueued(bufs, sizes, offset, n)
		if n > 0 {
			return n, nil
		}
		if err := r.readErr; err != nil {
			r.readErr = nil
			if r.closed.Load() {
				return 0, os.ErrClosed
			}
			return 0, fmt.Errorf("router: read from inner device: %w", err)
		}
		select {
		case res := <-r.innerCh:
			r.pend = pending{active: true, n: res.n, err: res.err}
		case pb := <-r.queue:
			n = r.copyQueued(pb, bufs, sizes, offset, 0)
			n = r.takeQueued(bufs, sizes, offset, n)
			if n > 0 {
				return n, nil
			}
		case <-r.done:
			return 0, os.ErrClosed
		}
	}
}

// takeHost moves the pending inner packets that pass the host filter into
// bufs[n:], and returns the new n. When the pending batch is used up, the
// reader goroutine may read again and the batch's error (if any) is kept
// for a later Read.
func (r *Router) takeHost(bufs [][]byte, sizes []int, offset, n int) int {
	p := &r.pend
	if !p.active {
		return n
	}
	for n < len(bufs) && p.idx < p.n && p.idx < len(r.innerBufs) {
		size := r.innerSizes[p.idx]
		pkt := r.innerBufs[p.idx][innerOffset : innerOffset+size]
		p.idx++
		if size == 0 {
			continue
		}
		h, ok := parseHeader(pkt)
		if !ok {
			r.drop(ReasonMalformed)
			continue
		}
		if !r.isGateway(h.src) {
			r.drop(ReasonHostSource)
			continue
		}
		if offset < 0 || offset > len(bufs[n]) || len(bufs[n])-offset < len(pkt) {
			r.drop(ReasonOversize)
			continue
		}
		sizes[n] = copy(bufs[n][offset:], pkt)
		r.fromHost.Add(1)
		n++
	}
	if p.idx >= p.n || p.idx >= len(r.innerBufs) {
		r.readErr = p.err
		*p = pending{}
		r.consumed <- struct{}{} // buffered 1; the poller waits for exactly one
	}
	return n
}

// takeQueued moves queued hairpin packets into bufs[n:] without blocking.
func (r *Router) takeQueued(bufs [][]byte, sizes []int, offset, n int) int {
	for n < len(bufs) {
		select {
		case pb := <-r.queue:
			n = r.copyQueued(pb, bufs, sizes, offset, n)
		default:
			return n
		}
	}
	return n
}

func (r *Router) copyQueued(pb *packetBuf, bufs [][]byte, sizes []int, offset, n int) int {
	defer r.release(pb)
	if offset < 0 || offset > len(bufs[n]) || len(bufs[n])-offset < len(pb.b) {
		r.drop(ReasonOversize)
		return n
	}
	sizes[n] = copy(bufs[n][offset:], pb.b)
	return n + 1
}

// Close closes the inner device, wakes a blocked Read and waits for the
// reader goroutine to end. Afterwards Read and Write return os.ErrClosed.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		close(r.done)
		if err := r.inner.Close(); err != nil {
			r.closeErr = fmt.Errorf("router: close inner device: %w", err)
		}
		r.wg.Wait()
	})
	return r.closeErr
}

// File returns the inner device's file (nil for netstack).
func (r *Router) File() *os.File { return r.inner.File() }

// MTU returns the inner device's MTU.
func (r *Router) MTU() (int, error) { return r.inner.MTU() }

// Name returns the inner device's name.
func (r *Router) Name() (string, error) { return r.inner.Name() }

// Events returns the inner device's event channel.
func (r *Router) Events() <-chan tun.Event { return r.inner.Events() }

// BatchSize returns the inner device's batch size.
func (r *Router) BatchSize() int { return r.inner.BatchSize() }
