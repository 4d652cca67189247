package config

import (
	"bufio"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// clearEnv makes every DASSET_* variable of a key empty (= unset) for the
// test, so the environment the tests run in cannot change their results.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, k := range Keys() {
		t.Setenv(EnvVar(k), "")
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func loadValid(t *testing.T, path string) Config {
	t.Helper()
	c, err := Load(path, nil)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(%s): %v", path, err)
	}
	return c
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadWithoutFileIsDefault(t *testing.T) {
	clearEnv(t)
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load(\"\") = %+v\nwant %+v", c, Default())
	}
}

// TestDocumentedDefaults keeps configs/gateway.yaml and Default() equal, and
// makes sure the file names every key.
func TestDocumentedDefaults(t *testing.T) {
	clearEnv(t)
	const path = "../../configs/gateway.yaml"
	c := loadValid(t, path)
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("configs/gateway.yaml differs from Default():\n got %+v\nwant %+v", c, Default())
	}
	v := viper.New()
	v.SetConfigFile(path)
	if err := v.ReadInConfig(); err != nil {
		t.Fatal(err)
	}
	documented := v.AllKeys()
	for _, k := range Keys() {
		if !slices.Contains(documented, k) {
			t.Errorf("configs/gateway.yaml does not document %s", k)
		}
	}
}

func TestGoodFiles(t *testing.T) {
	clearEnv(t)
	files, err := filepath.Glob("testdata/good/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("good files: %v, %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { loadValid(t, f) })
	}
}

func TestGoodFileValues(t *testing.T) {
	clearEnv(t)

	if c := loadValid(t, "testdata/good/empty.yaml"); !reflect.DeepEqual(c, Default()) {
		t.Errorf("empty.yaml = %+v, want the defaults", c)
	}

	want := Default()
	want.DataDir = "/srv/dasset"
	if c := loadValid(t, "testdata/good/minimal.yaml"); !reflect.DeepEqual(c, want) {
		t.Errorf("minimal.yaml = %+v\nwant %+v", c, want)
	}

	want = Default()
	want.DataDir, want.KeystoreDir = "/tmp/dasset-test", "/tmp/dasset-test-keys"
	want.Log = Log{Level: "debug", Format: "text"}
	want.Tunnel.Mode, want.Tunnel.Interface, want.Tunnel.ListenPort = "netstack", "dasset-ns1", 51821
	want.Tunnel.Endpoint, want.Tunnel.UAPI, want.Tunnel.BatchWindow = "[::1]:51821", false, 0
	want.Network = Network{
		IPv4:          netip.MustParsePrefix("10.99.0.0/24"),
		IPv6:          netip.MustParsePrefix("fd00:99::/64"),
		ClientPrefix:  netip.MustParsePrefix("10.99.0.192/26"),
		ClientPrefix6: netip.MustParsePrefix("fd00:99::1:0:0:0/80"),
	}
	want.GRPC.Listen, want.GRPC.Insecure = "127.0.0.1:0", true
	want.Metrics.Listen = "127.0.0.1:0"
	want.Admin.Socket = "/tmp/dasset-test/admin.sock"
	if c := loadValid(t, "testdata/good/netstack.yaml"); !reflect.DeepEqual(c, want) {
		t.Errorf("netstack.yaml = %+v\nwant %+v", c, want)
	}

	full := Config{
		DataDir:     "/data/gw",
		KeystoreDir: "/keys/gw",
		Store:       Store{Driver: DriverPostgres, DSN: "host=/run/postgresql dbname=dasset user=gateway"},
		Log:         Log{Level: "warn", Format: "text"},
		Tunnel: Tunnel{
			Mode: "netstack", Interface: "wg.gw_1", ListenPort: 51999, MTU: 1380,
			Endpoint: "gw.example.net:51999", PersistentKeepalive: 15 * time.Second,
			UAPI: false, UAPIEndpoints: UAPIEndpointsFull, BatchWindow: 0, ReconcileInterval: 5 * time.Minute,
		},
		Network: Network{
			IPv4:          netip.MustParsePrefix("100.64.0.0/16"),
			IPv6:          netip.MustParsePrefix("fd12:3456:789a::/48"),
			ClientPrefix:  netip.MustParsePrefix("100.64.192.0/18"),
			ClientPrefix6: netip.MustParsePrefix("fd12:3456:789a:1::/64"),
		},
		GRPC: GRPC{
			Listen: "[::]:9443", CertFile: "/etc/dasset/tls.crt", KeyFile: "/etc/dasset/tls.key",
			Hosts:               []string{"gw.example.net", "192.0.2.10", "2001:db8::10"},
			MaxConcurrentLogins: 64,
		},
		Admin: Admin{
			Listen: "127.0.0.1:9444", CertFile: "/etc/dasset/admin.crt", KeyFile: "/etc/dasset/admin.key",
			ClientCAFile: "/etc/dasset/operators-ca.crt",
			Operators: []Operator{
				{UID: 1000, Name: "alice", Roles: []Role{RoleOperator, RolePrivacy}},
				{UID: 1001, Name: "bob", Roles: []Role{RoleOperator}},
			},
		},
		Metrics: Metrics{Listen: "[::1]:9592"},
		Device: Device{
			Rekey: "allow", TokenTTL: 168 * time.Hour, LockoutAttempts: 5,
			LockoutWindow: time.Hour, IdleTimeout: 5 * time.Minute,
		},
		Client: Client{
			TokenTTL: time.Hour, BindingCodeTTL: 2 * time.Minute, MaxSessionsPerAccount: 2,
			SessionDuration: 30 * time.Minute, IdleTimeout: 5 * time.Minute,
			LockoutAttempts: 6, LockoutWindow: 30 * time.Minute,
		},
		Throttle: Throttle{
			SourceRate: 5, SourceBurst: 10, GlobalRate: 500, GlobalBurst: 600, SubjectAttempts: 0,
			MaxEntries: 5000, PasswordWorkers: 1, PasswordQueue: 8, MaxConnsPerSource: 0, MaxConns: 100,
		},
		Retention: Retention{
			Interval: 30 * time.Second, BatchSize: 1000, ConnectionLog: 168 * time.Hour,
			Sessions: 72 * time.Hour, BindingCodes: time.Hour, AuthFailures: 12 * time.Hour,
			AuditLog: 2160 * time.Hour,
		},
		Privacy: Privacy{PolicyFile: "/etc/dasset/policy.yaml"},
	}
	c := loadValid(t, "testdata/good/full.yaml")
	if !reflect.DeepEqual(c, full) {
		t.Errorf("full.yaml = %+v\nwant %+v", c, full)
	}
	// full.yaml must really set every key away from its default (but
	// grpc.insecure, which cannot be true with a certificate, and
	// store.dsn_file, which cannot be set with store.dsn: see
	// postgres_dsn_file.yaml).
	def := reflect.ValueOf(Default())
	got := reflect.ValueOf(c)
	for _, f := range fields() {
		if f.key != "grpc.insecure" && f.key != "store.dsn_file" && reflect.DeepEqual(got.FieldByIndex(f.path).Interface(), def.FieldByIndex(f.path).Interface()) {
			t.Errorf("full.yaml leaves %s at its default", f.key)
		}
	}
}

// expectations reads the leading "# error: ..." lines of a bad file.
func expectations(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		msg, ok := strings.CutPrefix(sc.Text(), "# error: ")
		if !ok {
			break
		}
		want = append(want, msg)
	}
	if len(want) == 0 {
		t.Fatalf("%s: no leading '# error: ' line", path)
	}
	return want
}

// TestBadFiles loads every testdata/bad file: each must fail, at Load or at
// Validate, with every message its "# error:" lines list.
func TestBadFiles(t *testing.T) {
	clearEnv(t)
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("bad files: %v, %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			want := expectations(t, f)
			c, err := Load(f, nil)
			if err == nil {
				err = c.Validate()
			}
			if err == nil {
				t.Fatalf("%s loaded and validated; want %q", f, want)
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	clearEnv(t)
	path := writeFile(t, "tunnel:\n  listen_port: 1\n  mode: netstack\n")

	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	BindFlags(fs)
	c, err := Load(path, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Tunnel.ListenPort != 1 {
		t.Errorf("file only: listen_port = %d, want 1", c.Tunnel.ListenPort)
	}

	t.Setenv("DASSET_TUNNEL_LISTEN_PORT", "2")
	c, err = Load(path, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Tunnel.ListenPort != 2 {
		t.Errorf("file+env: listen_port = %d, want 2", c.Tunnel.ListenPort)
	}

	if err := fs.Parse([]string{"--tunnel.listen_port=3"}); err != nil {
		t.Fatal(err)
	}
	c, err = Load(path, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Tunnel.ListenPort != 3 {
		t.Errorf("file+env+flag: listen_port = %d, want 3", c.Tunnel.ListenPort)
	}
	// Keys that only the file sets keep the file's value; unset keys keep
	// the default, not the flag's (equal) default.
	if c.Tunnel.Mode != "netstack" {
		t.Errorf("mode = %q, want the file's netstack", c.Tunnel.Mode)
	}
	if c.Tunnel.MTU != 1420 {
		t.Errorf("mtu = %d, want the default", c.Tunnel.MTU)
	}
}

func TestEnvironment(t *testing.T) {
	clearEnv(t)
	t.Setenv("DASSET_TUNNEL_MODE", "netstack")
	t.Setenv("DASSET_TUNNEL_UAPI", "false")
	t.Setenv("DASSET_TUNNEL_BATCH_WINDOW", "5ms")
	t.Setenv("DASSET_NETWORK_IPV4", "10.10.0.0/16")
	t.Setenv("DASSET_NETWORK_CLIENT_PREFIX", "10.10.255.0/24")
	t.Setenv("DASSET_GRPC_HOSTS", "gw.example.net, 192.0.2.1")
	t.Setenv("DASSET_DATA_DIR", "/env/data")
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Tunnel.Mode, want.Tunnel.UAPI, want.Tunnel.BatchWindow = "netstack", false, 5*time.Millisecond
	want.Network.IPv4 = netip.MustParsePrefix("10.10.0.0/16")
	want.Network.ClientPrefix = netip.MustParsePrefix("10.10.255.0/24")
	want.GRPC.Hosts = []string{"gw.example.net", "192.0.2.1"}
	want.DataDir = "/env/data"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load with env = %+v\nwant %+v", c, want)
	}
}

func TestEnvironmentBadValuesNameTheirKeys(t *testing.T) {
	clearEnv(t)
	t.Setenv("DASSET_TUNNEL_MTU", "big")
	t.Setenv("DASSET_DEVICE_TOKEN_TTL", "30d")
	t.Setenv("DASSET_NETWORK_IPV6", "fdda::1")
	_, err := Load("", nil)
	if err == nil {
		t.Fatal("Load accepted bad environment values")
	}
	for _, want := range []string{
		`tunnel.mtu: must be a whole number, got "big"`,
		`device.token_ttl: must be a duration with a unit, such as "25s" or "15m", got "30d"`,
		`network.ipv6: must be a prefix such as "100.80.0.0/12", got "fdda::1"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error:\n%v\nwant it to contain %q", err, want)
		}
	}
}

func TestFlags(t *testing.T) {
	clearEnv(t)
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	BindFlags(fs)
	for _, k := range Keys() {
		fl := fs.Lookup(k)
		if k == "admin.operators" {
			if fl != nil {
				t.Errorf("admin.operators has a flag")
			}
			continue
		}
		if fl == nil {
			t.Errorf("no flag --%s", k)
			continue
		}
		if !strings.Contains(fl.Usage, EnvVar(k)) {
			t.Errorf("--%s usage %q does not name %s", k, fl.Usage, EnvVar(k))
		}
	}
	if got := fs.Lookup("tunnel.persistent_keepalive").DefValue; got != "25s" {
		t.Errorf("--tunnel.persistent_keepalive default shown as %q", got)
	}
	if got := fs.Lookup("network.ipv4").DefValue; got != "100.80.0.0/12" {
		t.Errorf("--network.ipv4 default shown as %q", got)
	}

	err := fs.Parse([]string{
		"--tunnel.mode=netstack",
		"--tunnel.uapi=false",
		"--tunnel.persistent_keepalive=10s",
		"--network.ipv6=fd00:1::/48",
		"--network.client_prefix6=fd00:1:0:ff::/64",
		"--grpc.hosts=a.example,b.example",
		"--grpc.max_concurrent_logins=8",
		"--keystore_dir=/keys",
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load("", fs)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Tunnel.Mode, want.Tunnel.UAPI, want.Tunnel.PersistentKeepalive = "netstack", false, 10*time.Second
	want.Network.IPv6 = netip.MustParsePrefix("fd00:1::/48")
	want.Network.ClientPrefix6 = netip.MustParsePrefix("fd00:1:0:ff::/64")
	want.GRPC.Hosts = []string{"a.example", "b.example"}
	want.GRPC.MaxConcurrentLogins = 8
	want.KeystoreDir = "/keys"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load with flags = %+v\nwant %+v", c, want)
	}

	// A flag set without our flags (or nil) is fine: nothing is bound.
	other := pflag.NewFlagSet("other", pflag.ContinueOnError)
	other.String("config", "", "")
	if c, err := Load("", other); err != nil || !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load with a foreign flag set = %+v, %v", c, err)
	}
}

func TestBadFlagValueNamesKey(t *testing.T) {
	clearEnv(t)
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	BindFlags(fs)
	if err := fs.Parse([]string{"--network.ipv4=100.80.0.0"}); err != nil {
		t.Fatal(err)
	}
	_, err := Load("", fs)
	if err == nil || !strings.Contains(err.Error(), `network.ipv4: must be a prefix such as "100.80.0.0/12", got "100.80.0.0"`) {
		t.Fatalf("Load error = %v", err)
	}
}

func TestMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(p, nil)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("Load(missing) error = %v, want it to name the file", err)
	}
}

func TestValidateReturnsEveryProblem(t *testing.T) {
	c := Default()
	c.Tunnel.Mode = "tap"
	c.Log.Level = "loud"
	c.Retention.BatchSize = 0
	c.Network.ClientPrefix6 = netip.Prefix{}
	err := c.Validate()
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("Validate() = %v, want joined errors", err)
	}
	var keys []string
	for _, e := range joined.Unwrap() {
		key, _, _ := strings.Cut(e.Error(), ": ")
		keys = append(keys, key)
	}
	want := []string{"log.level", "tunnel.mode", "network.client_prefix6", "retention.batch_size"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("problems for keys %v, want %v (%v)", keys, want, err)
	}
	if !strings.Contains(err.Error(), `tunnel.mode: must be "tun" or "netstack", got "tap"`) {
		t.Errorf("error %q", err)
	}
}

func TestValidateAddresses(t *testing.T) {
	ok := []string{":8443", "0.0.0.0:1", "[::]:8443", "127.0.0.1:0", "[fe80::1%eth0]:9", "gw.example.net:443", "localhost:9591"}
	bad := []string{"", "8443", "127.0.0.1", "[::1]", "host:port", "1.2.3.4:70000", "bad host:80", "a..b:1", "-x.example:1"}
	for _, s := range ok {
		c := Default()
		c.Metrics.Listen = s
		if err := c.Validate(); err != nil {
			t.Errorf("metrics.listen %q: %v", s, err)
		}
	}
	for _, s := range bad {
		c := Default()
		c.Metrics.Listen = s
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "metrics.listen: ") {
			t.Errorf("metrics.listen %q: error %v, want one naming metrics.listen", s, err)
		}
	}
}

func TestEffectiveOperators(t *testing.T) {
	a := Admin{}
	if got := a.EffectiveOperators(); !reflect.DeepEqual(got, []Operator{RootOperator()}) {
		t.Errorf("no operators: %+v", got)
	}
	alice := Operator{UID: 1000, Name: "alice", Roles: []Role{RoleOperator}}
	a.Operators = []Operator{alice}
	if got := a.EffectiveOperators(); !reflect.DeepEqual(got, []Operator{alice, RootOperator()}) {
		t.Errorf("alice only: %+v", got)
	}
	if !RootOperator().Has(RolePrivacy) || alice.Has(RolePrivacy) || !alice.Has(RoleOperator) {
		t.Error("Has gives wrong answers")
	}

	clearEnv(t)
	c := loadValid(t, "testdata/good/root_listed.yaml")
	root := Operator{UID: 0, Name: "root", Roles: []Role{RoleOperator}}
	if got := c.Admin.EffectiveOperators(); !reflect.DeepEqual(got, []Operator{root}) {
		t.Errorf("root listed: %+v, want only the listed root", got)
	}
}

func TestKeystorePath(t *testing.T) {
	c := Default()
	if got := c.KeystorePath(); got != "/var/lib/dasset-gateway-keys" {
		t.Errorf("default KeystorePath() = %q", got)
	}
	c.KeystoreDir = "/etc/dasset/keys"
	if got := c.KeystorePath(); got != "/etc/dasset/keys" {
		t.Errorf("KeystorePath() = %q", got)
	}
}

func TestEnvVar(t *testing.T) {
	for key, want := range map[string]string{
		"tunnel.mode":                     "DASSET_TUNNEL_MODE",
		"data_dir":                        "DASSET_DATA_DIR",
		"client.max_sessions_per_account": "DASSET_CLIENT_MAX_SESSIONS_PER_ACCOUNT",
	} {
		if got := EnvVar(key); got != want {
			t.Errorf("EnvVar(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestNetworkIPAM(t *testing.T) {
	n := Default().Network
	got := n.IPAM()
	if got.IPv4 != n.IPv4 || got.IPv6 != n.IPv6 || got.ClientIPv4 != n.ClientPrefix || got.ClientIPv6 != n.ClientPrefix6 {
		t.Errorf("IPAM() = %+v from %+v", got, n)
	}
}
