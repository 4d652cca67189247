package agent

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
)

// WGQuick is a session's WireGuard configuration for a stock WireGuard app
// (wg-quick, or the official apps, which import the same format).
type WGQuick struct {
	// SessionID and Expires go into a comment at the top.
	SessionID string
	Expires   time.Time
	// PrivateKey is the session's own key; the gateway knows its public half.
	PrivateKey [32]byte
	// Addresses are the session's client addresses ([Interface] Address).
	Addresses []netip.Prefix
	// MTU is the tunnel MTU the gateway asked for (0: leave it to the app).
	MTU int
	// PeerPublicKey is the gateway's WireGuard public key.
	PeerPublicKey [32]byte
	// Endpoint is the gateway's WireGuard endpoint, host:port; a name is
	// kept as a name so that the app resolves it where it runs.
	Endpoint string
	// AllowedIPs are routed into the tunnel: the device's addresses.
	AllowedIPs []netip.Prefix
	// PersistentKeepalive in seconds (0: off).
	PersistentKeepalive uint32
}

// Render returns the configuration in wg-quick's INI format. It holds the
// private key: write it only to a file of mode 0600.
func (w WGQuick) Render() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# dasset session %s", w.SessionID)
	if !w.Expires.IsZero() {
		fmt.Fprintf(&b, ", expires %s", w.Expires.UTC().Format(time.RFC3339))
	}
	b.WriteString("\n[Interface]\n")
	fmt.Fprintf(&b, "PrivateKey = %s\n", base64.StdEncoding.EncodeToString(w.PrivateKey[:]))
	fmt.Fprintf(&b, "Address = %s\n", joinPrefixList(w.Addresses))
	if w.MTU > 0 {
		fmt.Fprintf(&b, "MTU = %d\n", w.MTU)
	}
	b.WriteString("\n[Peer]\n")
	fmt.Fprintf(&b, "PublicKey = %s\n", base64.StdEncoding.EncodeToString(w.PeerPublicKey[:]))
	fmt.Fprintf(&b, "Endpoint = %s\n", w.Endpoint)
	fmt.Fprintf(&b, "AllowedIPs = %s\n", joinPrefixList(w.AllowedIPs))
	if w.PersistentKeepalive > 0 {
		fmt.Fprintf(&b, "PersistentKeepalive = %d\n", w.PersistentKeepalive)
	}
	return []byte(b.String())
}

func joinPrefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// wgQuickName is what wg-quick accepts as a configuration file name: the
// interface name (1 to 15 of these bytes) followed by ".conf".
var wgQuickName = regexp.MustCompile(`^[a-zA-Z0-9_=+.-]{1,15}\.conf$`)

// CheckWGQuickPath says whether wg-quick (and the apps, which name the
// tunnel after the file) accept path as a configuration file name.
func CheckWGQuickPath(path string) error {
	if path == "" {
		return errors.New("empty file name")
	}
	if base := filepath.Base(path); !wgQuickName.MatchString(base) {
		return fmt.Errorf("%q: the file name must be NAME.conf, NAME being 1 to 15 of a-z A-Z 0-9 _ = + . - (wg-quick names the interface after it)", base)
	}
	return nil
}

// WriteWGQuick writes w to path (mode 0600, atomically: a reader sees the
// old file or the whole new one).
func WriteWGQuick(path string, w WGQuick) error {
	if err := CheckWGQuickPath(path); err != nil {
		return err
	}
	if err := atomicfile.Write(path, w.Render(), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// hostPrefixes are the addresses of ps as single-host prefixes (/32, /128).
func hostPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = netip.PrefixFrom(p.Addr(), p.Addr().BitLen())
	}
	return out
}
