package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"
)

// ParseGateways splits the --gateway values (each one address or several,
// comma-separated) into host:port addresses, in order, without duplicates.
// It names the first bad entry.
func ParseGateways(values ...string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, v := range values {
		for _, g := range strings.Split(v, ",") {
			g = strings.TrimSpace(g)
			if g == "" {
				continue
			}
			if _, err := splitGateway(g); err != nil {
				return nil, err
			}
			if !seen[g] {
				seen[g] = true
				out = append(out, g)
			}
		}
	}
	if len(out) == 0 {
		_, err := splitGateway("")
		return nil, err
	}
	return out, nil
}

// candidate is one gateway address the agent may log in to.
type candidate struct {
	// addr is what is dialled, host:port; for a name with several
	// addresses, one of its addresses.
	addr string
	// serverName is the host as given: the name the gateway's TLS
	// certificate must carry.
	serverName string
	// name is the gateway for log lines: its name and port as given, with
	// which of its addresses; for an address, its position in the
	// --gateway list (log lines carry no IP address).
	name string
}

// lookupFunc resolves a host name to its addresses (net.DefaultResolver.LookupNetIP in production).
type lookupFunc func(ctx context.Context, host string) ([]netip.Addr, error)

func defaultLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// candidateLookupTimeout bounds resolving one gateway name.
const candidateLookupTimeout = 5 * time.Second

// resolveCandidates turns gateways into candidates: an address stays one
// candidate; a name becomes one candidate per A/AAAA record, each keeping
// the name as TLS server name. A name that does not resolve stays one
// candidate dialled by name (the dial then says why). Duplicates (two names
// for one address) are dropped, keeping the first.
func resolveCandidates(ctx context.Context, lookup lookupFunc, gateways []string) []candidate {
	var out []candidate
	seen := map[string]bool{}
	addCand := func(c candidate) {
		if !seen[c.addr] {
			seen[c.addr] = true
			out = append(out, c)
		}
	}
	for i, g := range gateways {
		host, port, err := net.SplitHostPort(g)
		if err != nil {
			continue // ParseGateways checked every entry
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			addCand(candidate{addr: net.JoinHostPort(ip.Unmap().String(), port), serverName: host, name: fmt.Sprintf("#%d", i+1)})
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, candidateLookupTimeout)
		ips, err := lookup(lctx, host)
		cancel()
		if err != nil || len(ips) == 0 {
			addCand(candidate{addr: g, serverName: host, name: g})
			continue
		}
		for k, ip := range ips {
			name := g
			if len(ips) > 1 {
				name = fmt.Sprintf("%s (address %d of %d)", g, k+1, len(ips))
			}
			addCand(candidate{addr: net.JoinHostPort(ip.Unmap().String(), port), serverName: host, name: name})
		}
	}
	return out
}

// gatewayList is the order in which the agent tries its candidates: a
// random permutation, so that first logins (and the devices of a gateway
// that died) spread evenly over the fleet; failover takes the next one,
// and after a full round the names are resolved again.
type gatewayList struct {
	gateways []string
	lookup   lookupFunc
	rnd      *rand.Rand
	cands    []candidate
	pos      int
}

func newGatewayList(ctx context.Context, gateways []string, lookup lookupFunc, rnd *rand.Rand) *gatewayList {
	l := &gatewayList{gateways: gateways, lookup: lookup, rnd: rnd}
	l.shuffle(ctx)
	return l
}

func (l *gatewayList) shuffle(ctx context.Context) {
	cands := resolveCandidates(ctx, l.lookup, l.gateways)
	l.cands = make([]candidate, len(cands))
	for i, j := range l.rnd.Perm(len(cands)) {
		l.cands[i] = cands[j]
	}
	l.pos = 0
}

// current is the candidate in use.
func (l *gatewayList) current() candidate { return l.cands[l.pos] }

// len is the number of candidates.
func (l *gatewayList) len() int { return len(l.cands) }

// next moves to the next candidate and returns it; after the last, it
// resolves the names again and starts a new random round.
func (l *gatewayList) next(ctx context.Context) candidate {
	l.pos++
	if l.pos >= len(l.cands) {
		prev := l.cands[len(l.cands)-1]
		l.shuffle(ctx)
		// Do not try the gateway that just failed first again.
		if len(l.cands) > 1 && l.cands[0].addr == prev.addr {
			l.cands[0], l.cands[1] = l.cands[1], l.cands[0]
		}
	}
	return l.current()
}

// failoverAfter is how many failed attempts in a row (a login, or a Sync
// stream reconnect) make the agent give up a gateway for the next one.
const failoverAfter = 2

// errFailover wraps the error that made the agent give up a gateway.
type errFailover struct{ err error }

func (e *errFailover) Error() string { return fmt.Sprintf("gateway unreachable: %v", e.err) }
func (e *errFailover) Unwrap() error { return e.err }
