package router

import (
	"encoding/binary"
	"net/netip"
)

const (
	ipv4MinHeader = 20
	ipv6Header    = 40
)

// header is what the router needs of an IP packet: its address pair and the
// length the IP header claims for the whole packet.
type header struct {
	src, dst netip.Addr
	length   int // total packet length according to the IP header (≤ len of the buffer)
}

// parseHeader reads the version, header length, total length, source and
// destination of an IPv4 or IPv6 packet. It reports false for anything
// truncated or inconsistent: an unknown version, an IPv4 IHL below 5 or past
// the buffer, a total length shorter than the header or longer than the
// buffer. IPv6 extension headers are not walked: the decision is taken on the
// address pair alone, so fragments follow their pair. It does not allocate.
func parseHeader(p []byte) (header, bool) {
	if len(p) == 0 {
		return header{}, false
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < ipv4MinHeader {
			return header{}, false
		}
		ihl := int(p[0]&0x0f) * 4
		if ihl < ipv4MinHeader || ihl > len(p) {
			return header{}, false
		}
		total := int(binary.BigEndian.Uint16(p[2:4]))
		if total < ihl || total > len(p) {
			return header{}, false
		}
		return header{
			src:    netip.AddrFrom4([4]byte(p[12:16])),
			dst:    netip.AddrFrom4([4]byte(p[16:20])),
			length: total,
		}, true
	case 6:
		if len(p) < ipv6Header {
			return header{}, false
		}
		// A payload length of zero is either an empty payload or a
		// jumbogram; jumbograms cannot cross a WireGuard tunnel, and an
		// empty payload is exactly 40 bytes, so either way the packet is
		// taken as its fixed header plus what the field says.
		total := ipv6Header + int(binary.BigEndian.Uint16(p[4:6]))
		if total > len(p) {
			return header{}, false
		}
		return header{
			src:    netip.AddrFrom16([16]byte(p[8:24])),
			dst:    netip.AddrFrom16([16]byte(p[24:40])),
			length: total,
		}, true
	default:
		return header{}, false
	}
}
