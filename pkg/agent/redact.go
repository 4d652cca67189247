package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
)

var addrRE = regexp.MustCompile(`\[[0-9A-Fa-f:.%a-z]+\](:\d+)?|\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b|\b[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}\b`)

// addrScrubber replaces IP addresses in text bound for a log line or an
// error, except the gateway's own: the address dialled, what its name
// resolves to, the addresses its certificate names, and loopback. Those
// belong to the gateway's operator, not to a person, and they are what a
// TLS or dial error is about ("not valid for 192.0.2.7, the name dialled").
// A nil or zero *addrScrubber keeps loopback only.
type addrScrubber struct {
	mu   sync.Mutex
	keep map[netip.Addr]bool // nil until the first add
}

// resolveTimeout bounds the one look-up of the gateway's name.
const resolveTimeout = 2 * time.Second

// newAddrScrubber keeps each gateway's host ("host:port"): as given when
// it is an address, else what it resolves to (looked up once, in the
// background).
func newAddrScrubber(gateways ...string) *addrScrubber {
	s := &addrScrubber{}
	for _, gateway := range gateways {
		host, err := splitGateway(gateway)
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
			s.add(a)
			continue
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
			defer cancel()
			addrs, _ := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			s.add(addrs...)
		}()
	}
	return s
}

func (s *addrScrubber) add(addrs ...netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keep == nil {
		s.keep = map[netip.Addr]bool{}
	}
	for _, a := range addrs {
		s.keep[a.Unmap().WithZone("")] = true
	}
}

// addCert keeps the IP addresses a gateway certificate names.
func (s *addrScrubber) addCert(c *x509.Certificate) {
	for _, ip := range c.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			s.add(a)
		}
	}
}

// kept reports whether the matched text m ("a.b.c.d", "[v6]:port", ...)
// is an address to keep.
func (s *addrScrubber) kept(m string) bool {
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(m); err == nil {
		a = ap.Addr()
	} else if p, err := netip.ParseAddr(strings.Trim(m, "[]")); err == nil {
		a = p
	} else {
		return false
	}
	a = a.Unmap().WithZone("")
	if a.IsLoopback() {
		return true
	}
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keep[a]
}

// text scrubs one string.
func (s *addrScrubber) text(t string) string {
	return addrRE.ReplaceAllStringFunc(t, func(m string) string {
		if s.kept(m) {
			return m
		}
		return "[addr]"
	})
}

// message is err's message (a gRPC status's own message), scrubbed; a nil
// err is the clean end of a stream.
func (s *addrScrubber) message(err error) string {
	if err == nil {
		return "end of stream"
	}
	if st, ok := status.FromError(err); ok {
		return s.text(st.Message())
	}
	return s.text(err.Error())
}

// err returns err with its text scrubbed; errors.Is and errors.As still
// see err.
func (s *addrScrubber) err(err error) error {
	if err == nil {
		return nil
	}
	return &scrubbedError{msg: s.text(err.Error()), err: err}
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// watchCert wraps cfg's connection check so that the addresses of a
// certificate that is the gateway's are kept: one that passes the check,
// or one whose chain verified but that lacks the name dialled.
func (s *addrScrubber) watchCert(cfg *tls.Config) {
	inner := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		var err error
		if inner != nil {
			err = inner(cs)
		}
		var nm *tlsutil.NameMismatchError
		if (err == nil || errors.As(err, &nm)) && len(cs.PeerCertificates) > 0 {
			s.addCert(cs.PeerCertificates[0])
		}
		return err
	}
}

// scrubAddrs replaces every IP address but loopback in s.
func scrubAddrs(s string) string { return (*addrScrubber)(nil).text(s) }
