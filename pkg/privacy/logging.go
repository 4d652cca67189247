package privacy

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"unicode"
)

// Redacted replaces a value that must not reach a log.
const Redacted = "[redacted]"

// sensitiveTokens are key words (after splitting a key on separators and
// camelCase) that mark personal data.
var sensitiveTokens = map[string]bool{
	"sn": true, "sns": true, "serial": true, "serials": true, "serialno": true, "serialnumber": true,
	"hwid": true, "hwids": true, "hardware": true, "hardwareid": true,
	"ip": true, "ips": true, "ipv": true, "ipaddr": true, "ipaddress": true,
	"addr": true, "addrs": true, "address": true, "addresses": true,
	"remote": true, "remoteaddr": true, "peeraddr": true,
	"source": true, "src": true, "sourceip": true, "srcip": true,
	"endpoint": true, "endpoints": true,
}

// sensitiveParts mark personal data wherever they occur in a key written
// without separators ("deviceSerialNumber", "clientipaddress").
var sensitiveParts = []string{"serial", "hwid", "hardwareid", "endpoint", "ipaddr", "ipv4", "ipv6", "address", "remoteaddr", "peeraddr"}

// ipOwners prefix "ip" in keys written without separators ("clientip").
var ipOwners = []string{"client", "source", "src", "remote", "peer", "device", "public", "real", "origin", "user", "host", "local", "dst", "dest", "forwarded"}

// SensitiveKey reports whether a log attribute key names personal data: sn,
// serial, serial_number, hwid, hardware_id, ip, addr, address, remote,
// remote_addr, peer_addr, source, endpoint, in any case, alone or with a
// prefix or suffix ("client_ip", "remoteAddr", "sn_hash").
func SensitiveKey(key string) bool {
	toks := splitKey(key)
	for _, t := range toks {
		if sensitiveTokens[t] {
			return true
		}
	}
	joined := strings.Join(toks, "")
	if sensitiveTokens[joined] {
		return true
	}
	for _, p := range sensitiveParts {
		if strings.Contains(joined, p) {
			return true
		}
	}
	for _, suf := range []string{"ip", "ips"} {
		if rest, ok := strings.CutSuffix(joined, suf); ok {
			for _, o := range ipOwners {
				if rest == o {
					return true
				}
			}
		}
	}
	return false
}

// splitKey lower-cases key and splits it on non-letters/digits, between
// letters and digits, and at camelCase boundaries.
func splitKey(key string) []string {
	var toks []string
	var cur []rune
	flush := func() {
		if len(cur) > 0 {
			toks = append(toks, string(cur))
			cur = cur[:0]
		}
	}
	rs := []rune(key)
	for i, r := range rs {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case i > 0 && unicode.IsDigit(r) != unicode.IsDigit(rs[i-1]):
			// "ip6" → ip|6, "ipv4" → ipv|4.
			flush()
			cur = append(cur, unicode.ToLower(r))
		case unicode.IsUpper(r):
			// "remoteAddr" → remote|addr; "HWID" stays one token;
			// "IPAddr" → ip|addr.
			if i > 0 && (unicode.IsLower(rs[i-1]) || (i+1 < len(rs) && unicode.IsLower(rs[i+1]) && unicode.IsUpper(rs[i-1]))) {
				flush()
			}
			cur = append(cur, unicode.ToLower(r))
		default:
			cur = append(cur, r)
		}
	}
	flush()
	return toks
}

// ReplaceAttr is the process log's safety net (slog.HandlerOptions
// ReplaceAttr). Under a key that names personal data (SensitiveKey, or inside
// a group so named) it replaces plain values: an IP address (string,
// netip.Addr/AddrPort/Prefix, net.IP, net.Addr) by its truncated prefix, any
// other string, []byte or value by "[redacted]". Numbers, booleans, times and
// durations pass, and so do the privacy types (their LogValue is already
// the form the policy allows).
func ReplaceAttr(groups []string, a slog.Attr) slog.Attr {
	v := a.Value
	if v.Kind() == slog.KindLogValuer {
		v = v.Resolve()
	}
	if v.Kind() == slog.KindAny {
		switch v.Any().(type) {
		case safeText, *slog.Source:
			return a
		}
	}
	sensitive := SensitiveKey(a.Key)
	for _, g := range groups {
		sensitive = sensitive || SensitiveKey(g)
	}
	if v.Kind() == slog.KindGroup {
		// The handlers never pass groups, but a direct caller may.
		attrs := v.Group()
		out := make([]slog.Attr, len(attrs))
		gs := append(groups[:len(groups):len(groups)], a.Key)
		for i, at := range attrs {
			out[i] = ReplaceAttr(gs, at)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(out...)}
	}
	if !sensitive {
		return a
	}
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, redactString(v.String()))
	case slog.KindAny:
		return slog.String(a.Key, redactAny(v.Any()))
	default: // int, uint, float, bool, time, duration
		return slog.Attr{Key: a.Key, Value: v}
	}
}

func redactString(s string) string {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return NewAddr(a.WithZone("")).String()
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return NewAddr(ap.Addr().WithZone("")).String()
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return truncatePrefix(p)
	}
	return Redacted
}

func redactAny(x any) string {
	switch x := x.(type) {
	case netip.Addr:
		return NewAddr(x.WithZone("")).String()
	case netip.AddrPort:
		return NewAddr(x.Addr().WithZone("")).String()
	case netip.Prefix:
		return truncatePrefix(x)
	case net.IP:
		if a, ok := netip.AddrFromSlice(x); ok {
			return NewAddr(a).String()
		}
	case *net.IPNet:
		if a, ok := netip.AddrFromSlice(x.IP); ok {
			ones, _ := x.Mask.Size()
			return truncatePrefix(netip.PrefixFrom(a.Unmap(), ones))
		}
	case *net.UDPAddr:
		if x != nil {
			return redactAny(x.IP)
		}
	case *net.TCPAddr:
		if x != nil {
			return redactAny(x.IP)
		}
	case *net.IPAddr:
		if x != nil {
			return redactAny(x.IP)
		}
	case net.Addr:
		return redactString(x.String())
	}
	return Redacted
}

// truncatePrefix keeps at most /24 (IPv4) or /48 (IPv6) of p.
func truncatePrefix(p netip.Prefix) string {
	t := NewAddr(p.Addr().WithZone("")).Truncated()
	if p.Bits() >= 0 && p.Bits() < t.Bits() {
		return p.Masked().String()
	}
	return t.String()
}

// NewLogger makes the process logger: format "json" or "text" (anything but
// "json" gives text), at level, with ReplaceAttr as its safety net.
func NewLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: ReplaceAttr}
	if strings.EqualFold(format, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
