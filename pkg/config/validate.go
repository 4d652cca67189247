package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/ipam"
)

// Validate checks every key and returns all problems joined (errors.Join),
// each starting with its key: `tunnel.mode: must be "tun" or "netstack", got "tap"`.
func (c Config) Validate() error {
	var v validator

	v.nonEmpty("data_dir", c.DataDir)
	if c.DataDir != "" {
		keys, data := filepath.Clean(c.KeystorePath()), filepath.Clean(c.DataDir)
		switch {
		case keys == data:
			v.bad("keystore_dir", "must not be data_dir itself: a copy of the data directory must never hold the keys")
		case within(keys, data):
			v.bad("keystore_dir", "%s is inside data_dir %s: a copy of the data directory would hold the keys; use a directory outside it, e.g. %s-keys", keys, data, data)
		case within(data, keys):
			v.bad("keystore_dir", "%s holds data_dir %s: keep the keys and the data in separate directories", keys, data)
		}
	}

	c.Store.validate(&v)

	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "text")

	t := c.Tunnel
	v.oneOf("tunnel.mode", t.Mode, "tun", "netstack")
	v.oneOf("tunnel.uapi_endpoints", t.UAPIEndpoints, UAPIEndpointsTruncated, UAPIEndpointsFull)
	if !validInterfaceName(t.Interface) {
		v.bad("tunnel.interface", "must be 1 to 15 characters of a-z A-Z 0-9 _ . -, got %q", t.Interface)
	}
	v.intRange("tunnel.listen_port", t.ListenPort, 1, 65535)
	v.intRange("tunnel.mtu", t.MTU, 1280, 9000)
	if t.Endpoint != "" {
		v.hostPort("tunnel.endpoint", t.Endpoint, true)
	}
	switch {
	case t.PersistentKeepalive < 0 || t.PersistentKeepalive > 65535*time.Second:
		v.bad("tunnel.persistent_keepalive", "must be between 0s and 65535s, got %s", t.PersistentKeepalive)
	case t.PersistentKeepalive%time.Second != 0:
		v.bad("tunnel.persistent_keepalive", "must be whole seconds, got %s", t.PersistentKeepalive)
	}
	v.durRange("tunnel.batch_window", t.BatchWindow, 0, time.Second)
	v.durRange("tunnel.reconcile_interval", t.ReconcileInterval, time.Second, time.Hour)

	c.validateNetwork(&v)

	g := c.GRPC
	v.hostPort("grpc.listen", g.Listen, false)
	if (g.CertFile == "") != (g.KeyFile == "") {
		if g.CertFile == "" {
			v.bad("grpc.cert_file", "must be set when grpc.key_file is")
		} else {
			v.bad("grpc.key_file", "must be set when grpc.cert_file is")
		}
	}
	if g.Insecure && g.CertFile != "" {
		v.bad("grpc.insecure", "must be false when grpc.cert_file is set")
	}
	for i, h := range g.Hosts {
		if _, err := netip.ParseAddr(h); err != nil && !validDNSName(h) {
			v.bad(fmt.Sprintf("grpc.hosts[%d]", i), "must be a DNS name or an IP address, got %q", h)
		}
	}
	v.intRange("grpc.max_concurrent_logins", g.MaxConcurrentLogins, 1, 1<<20)

	a := c.Admin
	if a.Socket == "" && a.Listen == "" {
		v.bad("admin.socket", "must be set when admin.listen is empty (the admin service needs a listener)")
	}
	if a.Listen != "" {
		v.hostPort("admin.listen", a.Listen, false)
		v.nonEmptyWith("admin.cert_file", a.CertFile, "admin.listen")
		v.nonEmptyWith("admin.key_file", a.KeyFile, "admin.listen")
		v.nonEmptyWith("admin.client_ca_file", a.ClientCAFile, "admin.listen")
	}
	uids := map[int]int{}
	for i, o := range a.Operators {
		key := fmt.Sprintf("admin.operators[%d]", i)
		if o.UID < 0 {
			v.bad(key+".uid", "must be 0 or more, got %d", o.UID)
		}
		if j, dup := uids[o.UID]; dup {
			v.bad(key+".uid", "uid %d is already admin.operators[%d]", o.UID, j)
		}
		uids[o.UID] = i
		if strings.TrimSpace(o.Name) == "" {
			v.bad(key+".name", "must be set")
		}
		if len(o.Roles) == 0 {
			v.bad(key+".roles", "must list at least one of %q, %q", RoleOperator, RolePrivacy)
		}
		for j, r := range o.Roles {
			if r != RoleOperator && r != RolePrivacy {
				v.bad(fmt.Sprintf("%s.roles[%d]", key, j), "must be %q or %q, got %q", RoleOperator, RolePrivacy, r)
			}
		}
	}

	v.hostPort("metrics.listen", c.Metrics.Listen, false)

	d := c.Device
	v.oneOf("device.rekey", d.Rekey, "deny", "allow")
	v.positive("device.token_ttl", d.TokenTTL)
	v.intRange("device.lockout_attempts", d.LockoutAttempts, 1, 1<<20)
	v.positive("device.lockout_window", d.LockoutWindow)
	v.positive("device.idle_timeout", d.IdleTimeout)

	cl := c.Client
	v.positive("client.token_ttl", cl.TokenTTL)
	v.positive("client.binding_code_ttl", cl.BindingCodeTTL)
	v.intRange("client.max_sessions_per_account", cl.MaxSessionsPerAccount, 1, 1<<20)
	v.positive("client.session_duration", cl.SessionDuration)
	v.positive("client.idle_timeout", cl.IdleTimeout)
	v.intRange("client.lockout_attempts", cl.LockoutAttempts, 1, 1<<20)
	v.positive("client.lockout_window", cl.LockoutWindow)

	th := c.Throttle
	v.intRange("throttle.source_rate", th.SourceRate, 1, 1<<30)
	v.intRange("throttle.source_burst", th.SourceBurst, 1, 1<<30)
	v.intRange("throttle.global_rate", th.GlobalRate, 1, 1<<30)
	v.intRange("throttle.global_burst", th.GlobalBurst, 1, 1<<30)
	v.intRange("throttle.subject_attempts", th.SubjectAttempts, 0, 1<<30)
	v.intRange("throttle.max_entries", th.MaxEntries, 1000, 10_000_000)
	v.intRange("throttle.password_workers", th.PasswordWorkers, 1, 64)
	v.intRange("throttle.password_queue", th.PasswordQueue, 0, 1<<16)
	v.intRange("throttle.max_conns_per_source", th.MaxConnsPerSource, 0, 1<<30)
	v.intRange("throttle.max_conns", th.MaxConns, 0, 1<<30)

	r := c.Retention
	v.positive("retention.interval", r.Interval)
	v.intRange("retention.batch_size", r.BatchSize, 1, 5000)
	v.positive("retention.connection_log", r.ConnectionLog)
	v.positive("retention.sessions", r.Sessions)
	v.positive("retention.binding_codes", r.BindingCodes)
	v.positive("retention.auth_failures", r.AuthFailures)
	v.positive("retention.audit_log", r.AuditLog)

	return errors.Join(v.errs...)
}

// validateNetwork checks each prefix on its own, then (when they are all
// well formed) how they fit together, through ipam.New.
func (c Config) validateNetwork(v *validator) {
	n := c.Network
	before := len(v.errs)
	v.prefix("network.ipv4", n.IPv4, true)
	v.prefix("network.ipv6", n.IPv6, false)
	v.prefix("network.client_prefix", n.ClientPrefix, true)
	v.prefix("network.client_prefix6", n.ClientPrefix6, false)
	if len(v.errs) > before {
		return
	}
	switch {
	case n.ClientPrefix.Bits() <= n.IPv4.Bits() || !n.IPv4.Contains(n.ClientPrefix.Addr()):
		v.bad("network.client_prefix", "%s must be a smaller block inside network.ipv4 %s", n.ClientPrefix, n.IPv4)
	case n.ClientPrefix6.Bits() <= n.IPv6.Bits() || !n.IPv6.Contains(n.ClientPrefix6.Addr()):
		v.bad("network.client_prefix6", "%s must be a smaller block inside network.ipv6 %s", n.ClientPrefix6, n.IPv6)
	default:
		if _, err := ipam.New(n.IPAM()); err != nil {
			// ipam names its fields ipv4, ipv6, client_ipv4, client_ipv6.
			msg := strings.NewReplacer(
				"ipam: client_ipv4:", "network.client_prefix:",
				"ipam: client_ipv6:", "network.client_prefix6:",
				"ipam: ipv4:", "network.ipv4:",
				"ipam: ipv6:", "network.ipv6:",
			).Replace(err.Error())
			v.errs = append(v.errs, errors.New(msg))
		}
	}
}

type validator struct{ errs []error }

func (v *validator) bad(key, format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

func (v *validator) nonEmpty(key, s string) {
	if strings.TrimSpace(s) == "" {
		v.bad(key, "must be set")
	}
}

func (v *validator) nonEmptyWith(key, s, because string) {
	if strings.TrimSpace(s) == "" {
		v.bad(key, "must be set when %s is", because)
	}
}

func (v *validator) oneOf(key, s string, allowed ...string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = strconv.Quote(a)
	}
	list := strings.Join(quoted[:len(quoted)-1], ", ") + " or " + quoted[len(quoted)-1]
	v.bad(key, "must be %s, got %q", list, s)
}

func (v *validator) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.bad(key, "must be between %d and %d, got %d", lo, hi, n)
	}
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.bad(key, "must be more than 0s, got %s", d)
	}
}

func (v *validator) durRange(key string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		v.bad(key, "must be between %s and %s, got %s", lo, hi, d)
	}
}

// hostPort checks a host:port address. The host may be empty (all
// addresses) unless needHost.
func (v *validator) hostPort(key, s string, needHost bool) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.bad(key, "must be host:port, got %q", s)
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 || (needHost && p == 0) {
		v.bad(key, "port must be a number from 0 to 65535, got %q", port)
	}
	switch {
	case host == "":
		if needHost {
			v.bad(key, "must name a host, got %q", s)
		}
	case strings.Contains(host, "%"):
		// a zoned IPv6 address; netip parses it
		if _, err := netip.ParseAddr(host); err != nil {
			v.bad(key, "host must be an IP address or DNS name, got %q", host)
		}
	default:
		if _, err := netip.ParseAddr(host); err != nil && !validDNSName(host) {
			v.bad(key, "host must be an IP address or DNS name, got %q", host)
		}
	}
}

func (v *validator) prefix(key string, p netip.Prefix, want4 bool) {
	family, example := "IPv6", "fdda:55e7::/48"
	if want4 {
		family, example = "IPv4", "100.80.0.0/12"
	}
	switch {
	case !p.IsValid():
		v.bad(key, "must be an %s prefix such as %q", family, example)
	case p.Addr().Is4() != want4 || p.Addr().Is4In6():
		v.bad(key, "must be an %s prefix, got %s", family, p)
	case p.Masked() != p:
		v.bad(key, "must have no host bits set: %s, not %s", p.Masked(), p)
	}
}

func validInterfaceName(s string) bool {
	if len(s) < 1 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

// validDNSName reports whether s is a syntactically valid host name
// (letters, digits, hyphens; labels of 1..63; 253 in all; a trailing dot
// allowed).
func validDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// within reports whether path lies strictly inside dir (both cleaned).
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}
