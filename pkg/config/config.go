// Package config is the gateway's configuration: one typed Config read from
// a YAML file, DASSET_* environment variables and command-line flags, in
// that order of rising precedence (flags > environment > file > defaults).
//
// Every key has a dotted name ("tunnel.mode"), which is its YAML path, its
// flag (--tunnel.mode) and, upper-cased with dots turned into underscores
// and prefixed with DASSET_, its environment variable (DASSET_TUNNEL_MODE).
// configs/gateway.yaml documents every key with its default.
//
// This package is the only user of viper in the project.
package config

import (
	"net/netip"
	"path/filepath"
	"time"

	"github.com/planetxlabs/dasset-gateway/pkg/ipam"
)

// Config is the whole gateway configuration. The mapstructure tags are the
// YAML keys; the usage tags are the flags' help texts.
type Config struct {
	DataDir     string `mapstructure:"data_dir" usage:"directory of the database"`
	KeystoreDir string `mapstructure:"keystore_dir" usage:"directory of the key files, outside data_dir (empty: <data_dir>-keys, i.e. /var/lib/dasset-gateway-keys)"`

	Log       Log       `mapstructure:"log"`
	Tunnel    Tunnel    `mapstructure:"tunnel"`
	Network   Network   `mapstructure:"network"`
	GRPC      GRPC      `mapstructure:"grpc"`
	Admin     Admin     `mapstructure:"admin"`
	Metrics   Metrics   `mapstructure:"metrics"`
	Device    Device    `mapstructure:"device"`
	Client    Client    `mapstructure:"client"`
	Throttle  Throttle  `mapstructure:"throttle"`
	Retention Retention `mapstructure:"retention"`
	Privacy   Privacy   `mapstructure:"privacy"`
	Store     Store     `mapstructure:"store"`
}

// Store drivers.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// Store chooses the registry database.
type Store struct {
	Driver  string `mapstructure:"driver" usage:"registry database: sqlite (embedded, in data_dir) or postgres (a fleet's shared registry)"`
	DSN     string `mapstructure:"dsn" usage:"PostgreSQL connection string (key=value or postgres:// URL) with store.driver postgres; for a password prefer DASSET_STORE_DSN or store.dsn_file"`
	DSNFile string `mapstructure:"dsn_file" usage:"file holding the PostgreSQL connection string (not readable by others), instead of store.dsn"`
}

// Log configures the process log.
type Log struct {
	Level  string `mapstructure:"level" usage:"log level: debug, info, warn or error"`
	Format string `mapstructure:"format" usage:"log format: json or text"`
}

// Tunnel configures the WireGuard data plane.
type Tunnel struct {
	Mode                string        `mapstructure:"mode" usage:"data plane: tun (kernel TUN device) or netstack (userspace, no root)"`
	Interface           string        `mapstructure:"interface" usage:"WireGuard interface name (1..15 of a-z A-Z 0-9 _ . -)"`
	ListenPort          int           `mapstructure:"listen_port" usage:"WireGuard UDP port"`
	MTU                 int           `mapstructure:"mtu" usage:"tunnel MTU (1280..9000)"`
	Endpoint            string        `mapstructure:"endpoint" usage:"host:port devices dial for WireGuard (empty: the address their gRPC connection reached, with listen_port)"`
	PersistentKeepalive time.Duration `mapstructure:"persistent_keepalive" usage:"WireGuard persistent keepalive told to peers (whole seconds; 0 disables)"`
	UAPI                bool          `mapstructure:"uapi" usage:"serve a read-only WireGuard UAPI socket so 'wg show' works"`
	UAPIEndpoints       string        `mapstructure:"uapi_endpoints" usage:"peer endpoints on the UAPI socket: truncated (/24, /48, port 0, as the connection log) or full (beyond the privacy policy)"`
	BatchWindow         time.Duration `mapstructure:"batch_window" usage:"how long peer additions wait to be batched with concurrent logins (0: no batching)"`
	ReconcileInterval   time.Duration `mapstructure:"reconcile_interval" usage:"how often the WireGuard peers and hub ACL are compared with the registry in full and repaired (1s..1h)"`
}

// tunnel.uapi_endpoints values.
const (
	// UAPIEndpointsTruncated shows each peer's endpoint as the connection
	// log keeps a source address: its /24 (IPv4) or /48 (IPv6), port 0.
	UAPIEndpointsTruncated = "truncated"
	// UAPIEndpointsFull shows full endpoints: beyond the privacy policy,
	// which keeps endpoints in memory only, for connecting.
	UAPIEndpointsFull = "full"
)

// Network holds the virtual network's prefixes.
type Network struct {
	IPv4          netip.Prefix `mapstructure:"ipv4" usage:"virtual IPv4 network; the gateway is its first address"`
	IPv6          netip.Prefix `mapstructure:"ipv6" usage:"virtual IPv6 network; the gateway is its first address"`
	ClientPrefix  netip.Prefix `mapstructure:"client_prefix" usage:"clients' IPv4 block: the last block of network.ipv4"`
	ClientPrefix6 netip.Prefix `mapstructure:"client_prefix6" usage:"clients' IPv6 block inside network.ipv6, apart from its first /96 (devices)"`
}

// IPAM returns the address allocator's configuration.
func (n Network) IPAM() ipam.Config {
	return ipam.Config{IPv4: n.IPv4, IPv6: n.IPv6, ClientIPv4: n.ClientPrefix, ClientIPv6: n.ClientPrefix6}
}

// GRPC configures the device and client gRPC listener.
type GRPC struct {
	Listen              string   `mapstructure:"listen" usage:"host:port of the device and client gRPC listener"`
	Insecure            bool     `mapstructure:"insecure" usage:"serve gRPC without TLS (tests only)"`
	CertFile            string   `mapstructure:"cert_file" usage:"TLS certificate (PEM); empty with key_file: a self-made certificate"`
	KeyFile             string   `mapstructure:"key_file" usage:"TLS private key (PEM)"`
	Hosts               []string `mapstructure:"hosts" usage:"extra DNS names and IP addresses for the self-made certificate"`
	MaxConcurrentLogins int      `mapstructure:"max_concurrent_logins" usage:"logins handled at once; more wait"`
}

// Admin configures the AdminService listeners and who may use them.
type Admin struct {
	Socket       string     `mapstructure:"socket" usage:"unix socket of the admin service (empty: none)"`
	Listen       string     `mapstructure:"listen" usage:"host:port of the admin service over mutual TLS (empty: none)"`
	CertFile     string     `mapstructure:"cert_file" usage:"admin TLS certificate (PEM), needed with admin.listen"`
	KeyFile      string     `mapstructure:"key_file" usage:"admin TLS private key (PEM), needed with admin.listen"`
	ClientCAFile string     `mapstructure:"client_ca_file" usage:"CA (PEM) that signs operator client certificates, needed with admin.listen"`
	Operators    []Operator `mapstructure:"operators"`
}

// Role is what an operator may do.
type Role string

// Roles.
const (
	// RoleOperator may manage devices, accounts, sessions and retention.
	RoleOperator Role = "operator"
	// RolePrivacy may also read and erase personal data (ExportSubject,
	// EraseSubject, sealed values).
	RolePrivacy Role = "privacy"
)

// Operator is a person allowed on the admin unix socket, known by the peer's
// uid (SO_PEERCRED).
type Operator struct {
	UID   int    `mapstructure:"uid"`
	Name  string `mapstructure:"name"`
	Roles []Role `mapstructure:"roles"`
}

// Has reports whether o has role r.
func (o Operator) Has(r Role) bool {
	for _, x := range o.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// RootOperator is the operator uid 0 is when admin.operators does not list it.
func RootOperator() Operator {
	return Operator{UID: 0, Name: "root", Roles: []Role{RoleOperator, RolePrivacy}}
}

// EffectiveOperators returns admin.operators with uid 0 added as
// RootOperator unless it is listed.
func (a Admin) EffectiveOperators() []Operator {
	out := make([]Operator, 0, len(a.Operators)+1)
	root := true
	for _, o := range a.Operators {
		if o.UID == 0 {
			root = false
		}
		out = append(out, o)
	}
	if root {
		out = append(out, RootOperator())
	}
	return out
}

// Metrics configures the metrics and health HTTP listener.
type Metrics struct {
	Listen string `mapstructure:"listen" usage:"host:port serving /metrics, /healthz and /readyz"`
}

// Device configures device admission.
type Device struct {
	Rekey           string        `mapstructure:"rekey" usage:"a known device logging in with a new WireGuard key: deny (until an operator resets it) or allow"`
	TokenTTL        time.Duration `mapstructure:"token_ttl" usage:"lifetime of a device token"`
	LockoutAttempts int           `mapstructure:"lockout_attempts" usage:"login attempts on one serial number from one source /24 or /48 before each further one waits (1s, doubling)"`
	LockoutWindow   time.Duration `mapstructure:"lockout_window" usage:"longest wait between attempts on one serial number from one source prefix"`
	IdleTimeout     time.Duration `mapstructure:"idle_timeout" usage:"a device peer without a handshake for this long is idle: its endpoint is forgotten"`
}

// Client configures client apps and their sessions.
type Client struct {
	TokenTTL              time.Duration `mapstructure:"token_ttl" usage:"lifetime of a client access token"`
	BindingCodeTTL        time.Duration `mapstructure:"binding_code_ttl" usage:"lifetime of a device binding code"`
	MaxSessionsPerAccount int           `mapstructure:"max_sessions_per_account" usage:"open sessions one account may have"`
	SessionDuration       time.Duration `mapstructure:"session_duration" usage:"longest a session stays open"`
	IdleTimeout           time.Duration `mapstructure:"idle_timeout" usage:"a session without a handshake for this long is closed"`
	LockoutAttempts       int           `mapstructure:"lockout_attempts" usage:"login attempts on one account from one source /24 or /48 before each further one waits (1s, doubling)"`
	LockoutWindow         time.Duration `mapstructure:"lockout_window" usage:"longest wait between attempts on one account from one source prefix"`
}

// Throttle bounds what unauthenticated callers can make the gateway do.
// Sources are judged by prefix: /24 for IPv4, /48 for IPv6.
type Throttle struct {
	SourceRate        int `mapstructure:"source_rate" usage:"login and binding attempts per second from one source prefix (a device's pinned key is not counted)"`
	SourceBurst       int `mapstructure:"source_burst" usage:"attempts one source prefix may make at once"`
	GlobalRate        int `mapstructure:"global_rate" usage:"login and binding attempts per second from all sources (a device's pinned key is not counted)"`
	GlobalBurst       int `mapstructure:"global_burst" usage:"attempts all sources may make at once"`
	SubjectAttempts   int `mapstructure:"subject_attempts" usage:"attempts on one serial number or account from all sources before attempts without the pinned key wait (0: off)"`
	MaxEntries        int `mapstructure:"max_entries" usage:"source prefixes and (subject, prefix) pairs remembered per table; the least recently used go first"`
	PasswordWorkers   int `mapstructure:"password_workers" usage:"argon2id password checks run at once"`
	PasswordQueue     int `mapstructure:"password_queue" usage:"password checks waiting for a worker; beyond: ResourceExhausted"`
	MaxConnsPerSource int `mapstructure:"max_conns_per_source" usage:"live gRPC connections from one source prefix (0: no cap)"`
	MaxConns          int `mapstructure:"max_conns" usage:"live gRPC connections in all (0: no cap)"`
}

// Retention configures the pruner and how long each kind of record is kept.
type Retention struct {
	Interval      time.Duration `mapstructure:"interval" usage:"how often the pruner runs"`
	BatchSize     int           `mapstructure:"batch_size" usage:"rows deleted per statement (1..5000)"`
	ConnectionLog time.Duration `mapstructure:"connection_log" usage:"how long connection log entries and daily pseudonym keys are kept"`
	Sessions      time.Duration `mapstructure:"sessions" usage:"how long closed sessions are kept"`
	BindingCodes  time.Duration `mapstructure:"binding_codes" usage:"how long used or expired binding codes are kept"`
	AuthFailures  time.Duration `mapstructure:"auth_failures" usage:"how long failed-login rows an older version wrote are kept (none are written now)"`
	AuditLog      time.Duration `mapstructure:"audit_log" usage:"how long admin audit log entries are kept"`
}

// Privacy configures the privacy policy.
type Privacy struct {
	PolicyFile string `mapstructure:"policy_file" usage:"privacy policy YAML (empty: the built-in configs/policy.yaml)"`
}

// Default returns the configuration used for every key no source sets. It
// equals configs/gateway.yaml (a test keeps them equal).
func Default() Config {
	return Config{
		DataDir:     "/var/lib/dasset-gateway",
		KeystoreDir: "",
		Store:       Store{Driver: DriverSQLite},
		Log:         Log{Level: "info", Format: "json"},
		Tunnel: Tunnel{
			Mode:                "tun",
			Interface:           "dasset0",
			ListenPort:          51820,
			MTU:                 1420,
			Endpoint:            "",
			PersistentKeepalive: 25 * time.Second,
			UAPI:                true,
			UAPIEndpoints:       UAPIEndpointsTruncated,
			BatchWindow:         2 * time.Millisecond,
			ReconcileInterval:   30 * time.Second,
		},
		Network: Network{
			IPv4:          netip.MustParsePrefix("100.80.0.0/12"),
			IPv6:          netip.MustParsePrefix("fdda:55e7::/48"),
			ClientPrefix:  netip.MustParsePrefix("100.95.0.0/16"),
			ClientPrefix6: netip.MustParsePrefix("fdda:55e7:0:ff::/64"),
		},
		GRPC: GRPC{
			Listen:              ":8443",
			MaxConcurrentLogins: 256,
		},
		Admin: Admin{
			Socket: "/run/dasset-gateway/admin.sock",
		},
		Metrics: Metrics{Listen: "127.0.0.1:9591"},
		Device: Device{
			Rekey:           "deny",
			TokenTTL:        720 * time.Hour,
			LockoutAttempts: 10,
			LockoutWindow:   15 * time.Minute,
			IdleTimeout:     3 * time.Minute,
		},
		Client: Client{
			TokenTTL:              12 * time.Hour,
			BindingCodeTTL:        5 * time.Minute,
			MaxSessionsPerAccount: 4,
			SessionDuration:       time.Hour,
			IdleTimeout:           10 * time.Minute,
			LockoutAttempts:       10,
			LockoutWindow:         15 * time.Minute,
		},
		Throttle: Throttle{
			SourceRate:        20,
			SourceBurst:       100,
			GlobalRate:        1000,
			GlobalBurst:       2000,
			SubjectAttempts:   100,
			MaxEntries:        100000,
			PasswordWorkers:   2,
			PasswordQueue:     64,
			MaxConnsPerSource: 1024,
			MaxConns:          20000,
		},
		Retention: Retention{
			Interval:      time.Minute,
			BatchSize:     500,
			ConnectionLog: 720 * time.Hour,
			Sessions:      720 * time.Hour,
			BindingCodes:  24 * time.Hour,
			AuthFailures:  24 * time.Hour,
			AuditLog:      8760 * time.Hour,
		},
	}
}

// KeystorePath returns keystore_dir, or <data_dir>-keys when it is empty
// (/var/lib/dasset-gateway-keys for the default data_dir): beside the data
// directory, never inside it, so that no copy of the data directory holds
// the keys.
func (c Config) KeystorePath() string {
	if c.KeystoreDir != "" {
		return c.KeystoreDir
	}
	return filepath.Clean(c.DataDir) + "-keys"
}

// LegacyKeystorePath is where keystores were kept by default before they
// moved out of the data directory.
func (c Config) LegacyKeystorePath() string { return filepath.Join(c.DataDir, "keystore") }
