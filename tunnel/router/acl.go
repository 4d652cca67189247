package router

import "net/netip"

// Pair is an open session: the client address may exchange packets with the
// device address, in both directions. A session over IPv4 and IPv6 is two
// pairs. A pair whose Client is not inside Config.ClientPrefixes, or whose
// Device is, never matches a packet.
type Pair struct {
	Client, Device netip.Addr
}

// sessions is an immutable ACL table; SetSessions replaces it whole.
type sessions struct {
	pairs map[Pair]struct{}
}

func newSessions(pairs []Pair) *sessions {
	s := &sessions{pairs: make(map[Pair]struct{}, len(pairs))}
	for _, p := range pairs {
		if !p.Client.IsValid() || !p.Device.IsValid() {
			continue
		}
		s.pairs[Pair{Client: p.Client.Unmap(), Device: p.Device.Unmap()}] = struct{}{}
	}
	return s
}

func (s *sessions) allowed(client, device netip.Addr) bool {
	_, ok := s.pairs[Pair{Client: client, Device: device}]
	return ok
}

// SetSessions replaces the set of open sessions. The new table is built
// aside and swapped in atomically: packets in flight see either the old or
// the new table, and the packet path takes no lock. IPv4-mapped IPv6
// addresses are unmapped; invalid addresses are ignored.
func (r *Router) SetSessions(pairs []Pair) {
	r.acl.Store(newSessions(pairs))
}
