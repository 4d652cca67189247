package wg

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/ipc"
)

// UAPI socket limits.
const (
	uapiSocketDir   = "/var/run/wireguard" // where ipc.UAPIOpen puts NAME.sock
	uapiDeadline    = 5 * time.Second      // per operation, read and answer
	uapiMaxLine     = 4096                 // bytes per request line
	uapiMaxRequest  = 1 << 20              // bytes per set request (drained, never applied)
	uapiMaxOps      = 64                   // operations per connection
	uapiMaxConns    = 16                   // connections served at once
	uapiMaxNameSize = 15                   // IFNAMSIZ-1, as wg(8) expects
)

// UAPI errno answers. wireguard-go and wg(8) carry them negated on "set"
// (wg sets errno = -value), so these make `wg set` print the right reason.
const (
	uapiEPERM  = "-1"  // set refused: this socket is read-only
	uapiEINVAL = "-22" // unknown operation or malformed request
)

// UAPIOptions tune what the read-only UAPI socket shows.
type UAPIOptions struct {
	// FullEndpoints shows each peer's endpoint as it is. By default an
	// endpoint is shown truncated like a source address in the connection
	// log: its /24 (IPv4) or /48 (IPv6) network address, port 0.
	FullEndpoints bool
}

// uapiServer serves a read-only UAPI socket.
type uapiServer struct {
	d    *Device
	opt  UAPIOptions
	name string
	path string
	fi   os.FileInfo // the socket file we made
	ln   net.Listener
	sem  chan struct{}

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

// ServeUAPI serves a read-only UAPI socket at /var/run/wireguard/NAME.sock,
// the place `wg show NAME` looks for a userspace interface. "get=1" answers
// the device state without the private_key line, endpoints truncated unless
// opt.FullEndpoints, then errno=0; "set=1" is
// read to its blank line, nothing is applied, and it is answered errno=-1
// (EPERM); anything else is answered errno=-22 (EINVAL) and the connection
// closed. Errnos are negated as wireguard-go sends them and wg(8) reads them
// (wg sets errno to minus the value, so `wg set` prints "Operation not
// permitted"). Connections have a per-operation deadline and bounded lines
// and requests. Closing the returned Closer (or the Device) stops
// serving and removes the socket.
func (d *Device) ServeUAPI(name string, opt UAPIOptions) (io.Closer, error) {
	if err := checkIfaceName(name); err != nil {
		return nil, fmt.Errorf("wg: serve uapi: %w", err)
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("wg: serve uapi %s: %w", name, ErrClosed)
	}
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return nil, fmt.Errorf("wg: serve uapi %s: open socket: %w", name, err)
	}
	ln, err := ipc.UAPIListen(name, f)
	f.Close() // UAPIListen made its own copy of the descriptor
	if err != nil {
		os.Remove(uapiSocketDir + "/" + name + ".sock")
		return nil, fmt.Errorf("wg: serve uapi %s: listen: %w", name, err)
	}
	fi, err := os.Stat(uapiSocketDir + "/" + name + ".sock")
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("wg: serve uapi %s: %w", name, err)
	}
	s := &uapiServer{
		d:     d,
		opt:   opt,
		fi:    fi,
		name:  name,
		path:  uapiSocketDir + "/" + name + ".sock",
		ln:    ln,
		sem:   make(chan struct{}, uapiMaxConns),
		conns: make(map[net.Conn]struct{}),
	}
	d.uapiMu.Lock()
	d.uapis[s] = struct{}{}
	d.uapiMu.Unlock()
	s.wg.Add(1)
	go s.accept()
	d.log.Info("serving read-only UAPI socket", "path", s.path)
	return s, nil
}

// checkIfaceName accepts what wg(8) accepts as an interface name, so the
// socket path cannot escape the socket directory.
func checkIfaceName(name string) error {
	if name == "" || len(name) > uapiMaxNameSize {
		return fmt.Errorf("interface name %q: must be 1 to %d bytes", name, uapiMaxNameSize)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("interface name %q: not allowed", name)
	}
	for _, c := range []byte(name) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '-' || c == '.' || c == '=' || c == '+'
		if !ok {
			return fmt.Errorf("interface name %q: only letters, digits and _ - . = + are allowed", name)
		}
	}
	return nil
}

func (s *uapiServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if !closed {
				// ipc.UAPIListen also ends Accept when the socket file is deleted.
				s.d.log.Warn("UAPI socket stopped accepting", "path", s.path, "err", err)
			}
			return
		}
		select {
		case s.sem <- struct{}{}:
		default:
			c.Close() // too many at once
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			<-s.sem
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// handle serves one connection: up to uapiMaxOps operations, each within
// uapiDeadline.
func (s *uapiServer) handle(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, uapiMaxLine)
	w := bufio.NewWriter(c)
	for range uapiMaxOps {
		if err := c.SetDeadline(time.Now().Add(uapiDeadline)); err != nil {
			return
		}
		op, err := readLine(r)
		if err != nil {
			return // EOF, timeout or an overlong line
		}
		switch op {
		case "get=1":
			if blank, err := readLine(r); err != nil || blank != "" {
				_ = answer(w, uapiEINVAL)
				return
			}
			out, err := s.d.dev.IpcGet()
			if err != nil {
				_ = answer(w, uapiEINVAL)
				return
			}
			_, _ = w.WriteString(getAnswer(out, s.opt.FullEndpoints)) // a write error sticks: answer's Flush reports it
			if answer(w, "0") != nil {
				return
			}
		case "set=1":
			if err := drainRequest(r); err != nil {
				_ = answer(w, uapiEINVAL)
				return
			}
			s.d.log.Warn("refused a UAPI set request: the socket is read-only", "path", s.path)
			if answer(w, uapiEPERM) != nil {
				return
			}
		default:
			_ = answer(w, uapiEINVAL)
			return
		}
	}
}

// answer ends a reply with its errno. bufio.Writer errors stick, so Flush
// reports any error of this or an earlier write.
func answer(w *bufio.Writer, errno string) error {
	_, _ = w.WriteString("errno=" + errno + "\n\n")
	return w.Flush()
}

// readLine reads one line of at most uapiMaxLine bytes, without its "\n".
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", fmt.Errorf("uapi line longer than %d bytes", uapiMaxLine)
		}
		return "", err
	}
	return string(line[:len(line)-1]), nil
}

// drainRequest reads a set request up to its blank line, at most
// uapiMaxRequest bytes.
func drainRequest(r *bufio.Reader) error {
	total := 0
	for {
		line, err := readLine(r)
		if err != nil {
			return err
		}
		if line == "" {
			return nil
		}
		if total += len(line) + 1; total > uapiMaxRequest {
			return fmt.Errorf("uapi set request larger than %d bytes", uapiMaxRequest)
		}
	}
}

// getAnswer is an IpcGet answer as the socket shows it: without the
// private_key line, and with every endpoint truncated unless full.
func getAnswer(s string, full bool) string {
	var b strings.Builder
	b.Grow(len(s))
	for line := range strings.SplitSeq(s, "\n") {
		if line == "" || strings.HasPrefix(line, "private_key=") {
			continue
		}
		if v, ok := strings.CutPrefix(line, "endpoint="); ok && !full {
			ep, ok := truncateEndpoint(v)
			if !ok {
				continue // not an address we can truncate: not shown at all
			}
			line = "endpoint=" + ep
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// truncateEndpoint gives the /24 (IPv4) or /48 (IPv6) network address of an
// ip:port endpoint, with port 0.
func truncateEndpoint(v string) (string, bool) {
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return "", false
	}
	a := ap.Addr().Unmap().WithZone("")
	bits := 48
	if a.Is4() {
		bits = 24
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return "", false
	}
	return netip.AddrPortFrom(p.Addr(), 0).String(), true
}

// Close stops the listener (removing the socket file), closes open
// connections and waits for their handlers.
func (s *uapiServer) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.err = s.ln.Close()
		s.wg.Wait()
		// The listener unlinks the socket on close. If the file is somehow
		// still there, and is still ours (not a new device's), remove it.
		if fi, err := os.Stat(s.path); err == nil && os.SameFile(fi, s.fi) {
			if err := os.Remove(s.path); err != nil && s.err == nil {
				s.err = err
			}
		}
		s.d.uapiMu.Lock()
		delete(s.d.uapis, s)
		s.d.uapiMu.Unlock()
		if s.err != nil {
			s.err = fmt.Errorf("wg: close uapi %s: %w", s.name, s.err)
		}
	})
	return s.err
}
