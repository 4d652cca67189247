// Package tlsutil builds the TLS material the gateway, the agent and
// dassetctl share: a self-signed server certificate made on first start,
// certificate pins (SHA-256 of the leaf), and client and server configs
// with TLS 1.3 as the minimum.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
)

const (
	// CertFileName and KeyFileName are the files EnsureSelfSigned keeps in its directory.
	CertFileName = "tls.crt"
	KeyFileName  = "tls.key"

	selfSignedValidity = 2 * 365 * 24 * time.Hour
)

// EnsureSelfSigned returns the server certificate and key in dir
// (dir/tls.crt, dir/tls.key). When neither exists it makes an ECDSA P-256
// self-signed certificate valid for two years from now, for "localhost",
// 127.0.0.1, ::1, the host name, the host's own non-loopback addresses
// (HostAddrs) and every entry of hosts (a DNS name or an IP address), and
// writes the key with mode 0600, so that clients given the certificate as
// their CA can dial the host by any of its names or addresses. fingerprint
// is the lowercase hex SHA-256 of the leaf certificate's DER, the pin
// clients use.
func EnsureSelfSigned(dir string, hosts []string, now time.Time) (certFile, keyFile, fingerprint string, err error) {
	certFile = filepath.Join(dir, CertFileName)
	keyFile = filepath.Join(dir, KeyFileName)
	certExists, err := exists(certFile)
	if err != nil {
		return "", "", "", err
	}
	keyExists, err := exists(keyFile)
	if err != nil {
		return "", "", "", err
	}
	switch {
	case certExists && keyExists:
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return "", "", "", fmt.Errorf("tlsutil: load %s and %s: %w", certFile, keyFile, err)
		}
		return certFile, keyFile, Fingerprint(pair.Certificate[0]), nil
	case certExists != keyExists:
		missing := keyFile
		if !certExists {
			missing = certFile
		}
		return "", "", "", fmt.Errorf("tlsutil: %s is missing while its pair exists; remove both to make a new self-signed certificate", missing)
	}

	local, err := HostAddrs()
	if err != nil {
		return "", "", "", err
	}
	certPEM, keyPEM, der, err := selfSigned(hosts, local, now)
	if err != nil {
		return "", "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", "", fmt.Errorf("tlsutil: create %s: %w", dir, err)
	}
	// Key first: a crash in between leaves a key without a certificate,
	// which the check above reports instead of silently replacing.
	if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
		return "", "", "", fmt.Errorf("tlsutil: %w", err)
	}
	if err := atomicfile.Write(certFile, certPEM, 0o644); err != nil {
		return "", "", "", fmt.Errorf("tlsutil: %w", err)
	}
	return certFile, keyFile, Fingerprint(der), nil
}

// HostAddrs returns the host's own unicast addresses that others can dial:
// every interface address except loopback, link-local and multicast ones.
func HostAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("tlsutil: the host's addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr().Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() || !ip.IsGlobalUnicast() {
			continue
		}
		out = append(out, ip.WithZone(""))
	}
	return out, nil
}

func selfSigned(hosts []string, local []netip.Addr, now time.Time) (certPEM, keyPEM, der []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tlsutil: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tlsutil: serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "dasset-gateway"},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(selfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for i, h := range hosts {
		if err := checkHost(strings.TrimSpace(h)); err != nil {
			return nil, nil, nil, fmt.Errorf("tlsutil: hosts[%d] %q: %w", i, h, err)
		}
	}
	all := append([]string{}, hosts...)
	if h, err := os.Hostname(); err == nil && checkHost(h) == nil {
		all = append(all, h)
	}
	for _, a := range local {
		all = append(all, a.String())
	}
	for _, h := range all {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
			if !containsIP(tmpl.IPAddresses, ip) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
			continue
		}
		if !containsString(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tlsutil: create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tlsutil: marshal key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, der, nil
}

// checkHost accepts an IP address (optionally in brackets) or a DNS name
// (letters, digits, '-', '.', and a leading "*." wildcard).
func checkHost(h string) error {
	if h == "" {
		return errors.New("empty")
	}
	if net.ParseIP(strings.Trim(h, "[]")) != nil {
		return nil
	}
	name := strings.TrimPrefix(h, "*.")
	if len(name) > 253 {
		return errors.New("DNS name longer than 253 bytes")
	}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if label == "" || len(label) > 63 {
			return errors.New("not an IP address, and not a DNS name (empty or over-long label)")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("not an IP address, and %q is not allowed in a DNS name (give a host without a port)", r)
			}
		}
	}
	return nil
}

func containsIP(ips []net.IP, ip net.IP) bool {
	for _, x := range ips {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("tlsutil: %w", err)
}

// Fingerprint returns the lowercase hex SHA-256 of a certificate's DER.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// ParsePin parses a certificate pin: 64 hex digits (either case), optionally
// separated by colons, optionally prefixed by "sha256:".
func ParsePin(s string) ([32]byte, error) {
	var pin [32]byte
	orig := s
	s = strings.TrimSpace(s)
	if len(s) >= 7 && strings.EqualFold(s[:7], "sha256:") {
		s = s[7:]
	}
	offset := strings.Index(orig, s)
	if s == "" {
		return pin, errors.New("pin: empty; want the SHA-256 of the server certificate as 64 hex digits")
	}
	digits := make([]byte, 0, 64)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ':':
			continue
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			digits = append(digits, c)
		default:
			return pin, fmt.Errorf("pin: invalid character %q at position %d of %q; want hex digits", c, offset+i, orig)
		}
	}
	if len(digits) != 64 {
		return pin, fmt.Errorf("pin: %d hex digits; want 64 (a SHA-256)", len(digits))
	}
	if _, err := hex.Decode(pin[:], digits); err != nil {
		return pin, fmt.Errorf("pin: %w", err)
	}
	return pin, nil
}

// ClientConfig returns a TLS 1.3 client config. With pin, the server's leaf
// certificate must have that SHA-256 (no chain or host name check: the pin
// is stronger than both). With caFile, the chain must verify against the CA
// certificates in that PEM file. With neither, the system roots are used.
// serverName is sent as SNI and, without a pin, verified.
func ClientConfig(caFile, pin, serverName string) (*tls.Config, error) {
	if caFile != "" && pin != "" {
		return nil, errors.New("tlsutil: give a CA file or a pin, not both")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: serverName}
	switch {
	case pin != "":
		want, err := ParsePin(pin)
		if err != nil {
			return nil, err
		}
		cfg.InsecureSkipVerify = true // replaced by the pin check below
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tlsutil: server sent no certificate")
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				return fmt.Errorf("tlsutil: server certificate sha256 %s does not match the pin", hex.EncodeToString(got[:]))
			}
			return nil
		}
	default:
		var pool *x509.CertPool // nil: the system roots
		if caFile != "" {
			p, err := loadPool(caFile)
			if err != nil {
				return nil, err
			}
			pool = p
		}
		// The chain and the name are checked here rather than by crypto/tls,
		// so that a name mismatch says which name was dialled and which
		// names the certificate has.
		cfg.RootCAs = pool
		cfg.InsecureSkipVerify = true // replaced by verifyChainAndName
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			name := serverName
			if name == "" {
				name = cs.ServerName
			}
			return verifyChainAndName(cs.PeerCertificates, pool, name)
		}
	}
	return cfg, nil
}

// verifyChainAndName verifies the server's chain against roots (nil: the
// system roots) for server authentication, then the leaf for name.
func verifyChainAndName(certs []*x509.Certificate, roots *x509.CertPool, name string) error {
	if len(certs) == 0 {
		return errors.New("tlsutil: server sent no certificate")
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return fmt.Errorf("tlsutil: server certificate: %w", err)
	}
	if name == "" {
		return errors.New("tlsutil: no server name to check the certificate against")
	}
	if err := certs[0].VerifyHostname(name); err != nil {
		return &NameMismatchError{Dialled: name, Names: CertNames(certs[0])}
	}
	return nil
}

// NameMismatchError is a server certificate that is valid, but not for the
// name the client dialled.
type NameMismatchError struct {
	Dialled string   // the host name or address the client dialled
	Names   []string // every DNS name and IP address the certificate has
}

func (e *NameMismatchError) Error() string {
	names := "no names at all"
	if len(e.Names) > 0 {
		names = strings.Join(e.Names, ", ")
	}
	return fmt.Sprintf("tlsutil: the server's certificate is not valid for %s, the name dialled; it is valid for %s", e.Dialled, names)
}

// CertNames lists a certificate's DNS names and IP addresses.
func CertNames(c *x509.Certificate) []string {
	out := append([]string{}, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

// ServerConfig returns a TLS 1.3 server config with the given key pair. With
// clientCAFile, clients must present a certificate that verifies against it
// (mutual TLS, for the admin listener).
func ServerConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: load %s and %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}}
	if clientCAFile != "" {
		pool, err := loadPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("tlsutil: CA file %s: no PEM certificate found", file)
	}
	return pool, nil
}
