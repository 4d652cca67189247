package throttle

import (
	"net"
	"net/netip"
	"sync"
)

// ListenerConfig caps live connections.
type ListenerConfig struct {
	// PerSource caps live connections from one source prefix (0: no cap).
	PerSource int
	// Total caps live connections (0: no cap).
	Total int
	// OnRefuse is called with "source" or "total" for each connection
	// closed at once for being over a cap (metrics).
	OnRefuse func(reason string)
}

// Listener is a net.Listener that closes, at once, connections beyond the
// caps, and counts live ones per source prefix until they close. Its table
// holds only prefixes with live connections, so it is bounded by Total.
type Listener struct {
	net.Listener
	cfg ListenerConfig

	mu    sync.Mutex
	total int
	per   map[netip.Prefix]int
}

// NewListener wraps l.
func NewListener(l net.Listener, cfg ListenerConfig) *Listener {
	return &Listener{Listener: l, cfg: cfg, per: make(map[netip.Prefix]int)}
}

// Accept returns the next connection within the caps.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pfx := Prefix(addrOf(c.RemoteAddr()))
		if reason := l.admit(pfx); reason != "" {
			_ = c.Close()
			if l.cfg.OnRefuse != nil {
				l.cfg.OnRefuse(reason)
			}
			continue
		}
		return &countedConn{Conn: c, l: l, pfx: pfx}, nil
	}
}

func (l *Listener) admit(pfx netip.Prefix) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.Total > 0 && l.total >= l.cfg.Total {
		return "total"
	}
	if l.cfg.PerSource > 0 && l.per[pfx] >= l.cfg.PerSource {
		return "source"
	}
	l.total++
	l.per[pfx]++
	return ""
}

func (l *Listener) release(pfx netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.per[pfx]--; l.per[pfx] <= 0 {
		delete(l.per, pfx)
	}
}

// Live is the number of live connections, in all and from pfx's prefix.
func (l *Listener) Live(a netip.Addr) (total, fromSource int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.per[Prefix(a)]
}

type countedConn struct {
	net.Conn
	l    *Listener
	pfx  netip.Prefix
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.pfx) })
	return err
}

func addrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.TCPAddr:
		return v.AddrPort().Addr()
	case *net.UDPAddr:
		return v.AddrPort().Addr()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr()
	}
	return netip.Addr{}
}
