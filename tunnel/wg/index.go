package wg

import "net/netip"

// prefixIndex maps every allowed IP of the desired peer set to its owner.
// wireguard-go silently moves an allowed IP to the last peer that names it,
// so the index is what lets AddPeer refuse that instead.
//
// Prefixes are grouped by (family, length), so a lookup costs one map probe
// per length in use that is not longer than the query, plus a scan of the
// groups longer than the query (none for host routes, the common case).
type prefixIndex struct {
	byLen map[lenKey]map[netip.Prefix]Key
}

type lenKey struct {
	v6   bool
	bits int
}

func newPrefixIndex() prefixIndex {
	return prefixIndex{byLen: make(map[lenKey]map[netip.Prefix]Key)}
}

func (x prefixIndex) add(p netip.Prefix, k Key) {
	lk := lenKey{p.Addr().Is6(), p.Bits()}
	m := x.byLen[lk]
	if m == nil {
		m = make(map[netip.Prefix]Key)
		x.byLen[lk] = m
	}
	m[p] = k
}

// remove drops p if k owns it.
func (x prefixIndex) remove(p netip.Prefix, k Key) {
	lk := lenKey{p.Addr().Is6(), p.Bits()}
	m := x.byLen[lk]
	if owner, ok := m[p]; ok && owner == k {
		delete(m, p)
		if len(m) == 0 {
			delete(x.byLen, lk)
		}
	}
}

// overlap returns a prefix overlapping p whose owner is not skipped.
func (x prefixIndex) overlap(p netip.Prefix, skip func(Key) bool) (netip.Prefix, Key, bool) {
	v6 := p.Addr().Is6()
	for lk, m := range x.byLen {
		if lk.v6 != v6 {
			continue
		}
		if lk.bits <= p.Bits() {
			q, err := p.Addr().Prefix(lk.bits)
			if err != nil {
				continue
			}
			if owner, ok := m[q]; ok && !skip(owner) {
				return q, owner, true
			}
			continue
		}
		for q, owner := range m {
			if p.Contains(q.Addr()) && !skip(owner) {
				return q, owner, true
			}
		}
	}
	return netip.Prefix{}, Key{}, false
}
