package fleet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/config"
	"github.com/planetxlabs/dasset-gateway/pkg/ipam"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
	"github.com/planetxlabs/dasset-gateway/pkg/tlsutil"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// TestMain lets the test binary, re-executed inside a namespace, be the
// device driver (driverEnv) or fetch a gateway's metrics (netnstest).
func TestMain(m *testing.M) {
	netnstest.Main(m, map[string]netnstest.Job{driverEnv: runDriver})
}

// fleet is one run: PostgreSQL, three gateways (a, b, c) in namespaces
// fl<x><suffix>, each joined by a veth pair on 10.214.<n>.0/24 to the
// devices' namespace fld<suffix>, where the driver runs.
type fleet struct {
	*netnstest.Harness
	pg       *pgtest.Cluster
	dsn      string
	dsnFile  string // holds dsn (0600): the gateways' store.dsn_file
	unrun    int    // admitted devices the driver does not run
	devNS    string
	certFile string
	keyFile  string
	pin      string
	gws      []*member
	drv      *driverClient
	drvProc  *netnstest.Proc
}

// member is one gateway of the fleet.
type member struct {
	*netnstest.Gateway
	f        *fleet
	name     string // a, b, c
	addr     string // HOST:PORT devices dial
	endpoint string // its WireGuard HOST:PORT (tunnel.endpoint)
	// reconcile is its tunnel.reconcile_interval (full passes on a timer).
	reconcile time.Duration
	keystore  string
	instance  string
	runs      int
}

// gatewayGW4 is every gateway's own virtual IPv4 address (the default
// network.ipv4's first address).
const gatewayGW4 = "100.80.0.1"

func newFleet(t *testing.T) *fleet {
	t.Helper()
	h := netnstest.New(t, netnstest.Options{Who: "fleet e2e", Tools: []string{"ping"}, TailLines: 60})
	f := &fleet{Harness: h, devNS: "fld" + h.Suffix}
	f.pg = pgtest.Start(t)
	f.dsn, f.dsnFile = f.registry()
	// One certificate for the fleet (the gateways' grpc.cert_file), so the
	// devices pin one fingerprint for all of them.
	dir := filepath.Join(h.Dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.certFile, f.keyFile, f.pin, err = tlsutil.EnsureSelfSigned(dir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	f.Netns(f.devNS)
	for i, name := range []string{"a", "b", "c"} {
		n := i + 1
		ns := "fl" + name + h.Suffix
		f.Netns(ns)
		gwAddr := fmt.Sprintf("10.214.%d.1", n)
		f.Link(netnstest.Veth{GwNS: ns, PeerNS: f.devNS,
			GwIf: fmt.Sprintf("flv%sg", name), PeerIf: fmt.Sprintf("flv%sd", name),
			GwAddrs:   []netip.Prefix{netip.MustParsePrefix(gwAddr + "/24")},
			PeerAddrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.214.%d.2/24", n))},
		})
		gdir := filepath.Join(h.Dir, "gateway-"+name)
		m := &member{f: f, name: name, addr: gwAddr + ":8443", endpoint: gwAddr + ":51820", keystore: filepath.Join(gdir, "keystore"),
			reconcile: time.Second}
		if name == "b" {
			// b's timer never fires during the test: whatever b learns from
			// other gateways within the test, it learns from the change feed.
			m.reconcile = time.Hour
		}
		m.Gateway = h.NewGateway(netnstest.GatewaySpec{NS: ns, Interface: "flw" + name + h.Suffix, Dir: gdir,
			DataDir: filepath.Join(gdir, "data"), KeystoreDir: m.keystore, WrittenBy: "scripts/fleet"})
		f.gws = append(f.gws, m)
	}
	return f
}

// registry makes the fleet's role and database with configs/fleet/postgres.sql
// (run by psql, as the operator would) and returns the gateways' connection
// string (as that role, which is no superuser) and a 0600 file holding it.
func (f *fleet) registry() (dsn, file string) {
	f.T.Helper()
	psql, err := exec.LookPath("psql")
	if err != nil {
		bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
		if len(bins) == 0 {
			f.T.Fatalf("no psql (the postgresql package): %v", err)
		}
		slices.Sort(bins)
		psql = bins[len(bins)-1]
	}
	const password = "fleet-e2e-registry"
	sql := filepath.Join(netnstest.RepoRoot(f.T), "configs", "fleet", "postgres.sql")
	if out, err := f.Run(psql, "--no-psqlrc", "--set", "ON_ERROR_STOP=1", "--set", "password='"+password+"'",
		"--dbname", f.pg.DSN("postgres"), "--file", sql); err != nil {
		f.T.Fatalf("configs/fleet/postgres.sql: %v\n%s", err, out)
	}
	dsn = fmt.Sprintf("host=%s port=%d user=dasset_gateway password=%s dbname=dasset sslmode=disable", f.pg.Dir(), pgtest.Port, password)
	file = filepath.Join(f.Dir, "registry.dsn")
	if err := os.WriteFile(file, []byte(dsn+"\n"), 0o600); err != nil {
		f.T.Fatal(err)
	}
	return dsn, file
}

// start runs the gateway on the fleet's registry and certificate. The
// devices all come from one address per gateway (the driver's namespace):
// the per-source login throttle is lifted so that their first logins are
// not spread over minutes.
func (m *member) start() {
	m.f.T.Helper()
	m.runs++
	f := m.f
	m.Proc = f.Start(m.NS, fmt.Sprintf("gateway-%s-%d.log", m.name, m.runs), f.Path("dasset-gateway"),
		"serve", "--config", m.Config,
		"--store.driver=postgres", "--store.dsn_file="+f.dsnFile,
		"--grpc.cert_file="+f.certFile, "--grpc.key_file="+f.keyFile, "--tunnel.endpoint="+m.endpoint,
		"--throttle.source_rate=100000", "--throttle.source_burst=100000",
		"--tunnel.reconcile_interval="+m.reconcile.String())
}

// publicKey is the gateway's WireGuard public key (base64) as the registry
// lists it.
func (m *member) publicKey() string {
	m.f.T.Helper()
	var fl struct {
		Gateways []struct {
			InstanceID string `json:"instance_id"`
			PublicKey  string `json:"public_key"`
		} `json:"gateways"`
	}
	m.f.gws[0].CtlJSON(&fl, "fleet")
	for _, g := range fl.Gateways {
		if g.InstanceID == m.instance {
			return g.PublicKey
		}
	}
	m.f.T.Fatalf("gateway %s (%s) is not in dassetctl fleet: %+v", m.name, m.instance, fl)
	return ""
}

// counter sums the samples of a counter of m's metrics whose labels
// include want.
func (m *member) counter(name string, want map[string]string) float64 {
	m.f.T.Helper()
	body, err := m.Get(netnstest.MetricsURL + "/metrics")
	if err != nil {
		m.f.T.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		m.f.T.Fatalf("gateway %s metrics: %v", m.name, err)
	}
	fam, ok := fams[name]
	if !ok {
		m.f.T.Fatalf("gateway %s: no metric %s", m.name, name)
	}
	var sum float64
	for _, s := range fam.GetMetric() {
		match := 0
		for _, l := range s.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
				match++
			}
		}
		if match == len(want) && s.GetCounter() != nil {
			sum += s.GetCounter().GetValue()
		}
	}
	return sum
}

// startReady starts the gateway, waits until it is ready and reads its
// instance id.
func (m *member) startReady() {
	m.f.T.Helper()
	m.start()
	m.WaitReady(60 * time.Second)
	b, err := os.ReadFile(filepath.Join(m.DataDir, "instance_id"))
	if err != nil {
		m.f.T.Fatal(err)
	}
	id := strings.TrimSpace(string(b))
	if m.instance != "" && id != m.instance {
		m.f.T.Fatalf("gateway %s: instance id %s after a restart, %s before", m.name, id, m.instance)
	}
	m.instance = id
}

// kill ends the gateway with SIGKILL (no shutdown of any kind).
func (m *member) kill() {
	m.f.T.Helper()
	if err := m.Proc.Signal(syscall.SIGKILL); err != nil {
		m.f.T.Fatal(err)
	}
	if ok, _ := m.Proc.Wait(10 * time.Second); !ok {
		m.f.T.Fatalf("gateway %s: still running 10s after SIGKILL", m.name)
	}
}

// joinKeystore gives m the fleet's shared keys from a member already
// running: `dassetctl keys backup --fleet` there, `keys restore` into m's
// empty keystore (which makes m its own WireGuard key).
func (f *fleet) joinKeystore(from, m *member) {
	f.T.Helper()
	const pass = "fleet-e2e-keystore-passphrase\n"
	backup := filepath.Join(f.Dir, "fleet-keys-"+m.name)
	if _, err := f.RunStdin(pass, f.Path("dassetctl"), "keys", "backup", "--fleet", "--keystore", from.keystore, "--out", backup, "--passphrase-stdin"); err != nil {
		f.T.Fatal(err)
	}
	if _, err := f.RunStdin(pass, f.Path("dassetctl"), "keys", "restore", "--keystore", m.keystore, "--in", backup, "--passphrase-stdin"); err != nil {
		f.T.Fatal(err)
	}
}

// load is one gateway's share of the fleet as `dassetctl fleet` lists it.
type load struct{ devices, sessions int64 }

// loads lists, by instance id, the devices homed on each gateway and their
// open sessions, as `dassetctl fleet -o json` on m reports them.
func (m *member) loads() map[string]load {
	m.f.T.Helper()
	var fl struct {
		Gateways []struct {
			InstanceID string `json:"instance_id"`
			Devices    int64  `json:"devices,string"`
			Sessions   int64  `json:"sessions,string"`
		} `json:"gateways"`
	}
	m.CtlJSON(&fl, "fleet")
	out := map[string]load{}
	for _, g := range fl.Gateways {
		out[g.InstanceID] = load{g.Devices, g.Sessions}
	}
	return out
}

// gatewaysFrom lists every gateway's gRPC address, m's first (a client's
// --gateway).
func (f *fleet) gatewaysFrom(m *member) string {
	list := []string{m.addr}
	for _, o := range f.gws {
		if o != m {
			list = append(list, o.addr)
		}
	}
	return strings.Join(list, ",")
}

// byInstance is the member with instance id id, or nil.
func (f *fleet) byInstance(id string) *member {
	for _, m := range f.gws {
		if m.instance == id {
			return m
		}
	}
	return nil
}

// startDriver runs the driver in the devices' namespace with these devices
// and waits until it serves.
func (f *fleet) startDriver(devs []identity) {
	f.T.Helper()
	cfg := driverConfig{Socket: filepath.Join(f.Dir, "driver.sock"), Pin: f.pin,
		StateDir: filepath.Join(f.Dir, "devices"), Devices: devs}
	for _, m := range f.gws {
		cfg.Gateways = append(cfg.Gateways, m.addr)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		f.T.Fatal(err)
	}
	path := filepath.Join(f.Dir, "driver.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		f.T.Fatal(err)
	}
	f.drvProc = f.Start(f.devNS, "driver.log", f.SelfArgv(driverEnv, path)...)
	f.WaitOutput(f.drvProc, 60*time.Second, "driver ready", func(out string) bool { return strings.Contains(out, "driver ready") })
	f.drv = newDriverClient(cfg.Socket)
}

// devices is the driver's view of every device, by serial number.
func (f *fleet) devices() map[string]deviceState {
	f.T.Helper()
	var list []deviceState
	if err := f.drv.call("/devices", nil, &list); err != nil {
		f.T.Fatal(err)
	}
	out := make(map[string]deviceState, len(list))
	for _, d := range list {
		out[d.Serial] = d
	}
	return out
}

// ping pings the gateway address through each listed device's tunnel and
// fails the test naming the devices that got no reply within.
func (f *fleet) ping(what string, serials []string, within time.Duration) {
	f.T.Helper()
	var res pingResult
	if err := f.drv.call("/ping", pingRequest{Serials: serials, Dst: gatewayGW4, WithinMS: int(within / time.Millisecond)}, &res); err != nil {
		f.T.Fatal(err)
	}
	if len(res.Failed) > 0 {
		shown := 0
		for sn, why := range res.Failed {
			if shown++; shown > 5 {
				break
			}
			f.T.Logf("%s: %s: %s", what, sn, why)
		}
		f.T.Fatalf("%s: %d devices got no echo reply within %v (%d did)", what, len(res.Failed), within, res.OK)
	}
}

// client calls one of the driver's client endpoints and fails the test
// unless the answer is OK.
func (f *fleet) client(path string, req clientRequest) clientResult {
	f.T.Helper()
	res := f.tryClient(path, req)
	if res.Code != "OK" {
		f.T.Fatalf("%s %+v: %+v", path, req, res)
	}
	return res
}

func (f *fleet) tryClient(path string, req clientRequest) clientResult {
	f.T.Helper()
	var res clientResult
	if err := f.drv.call(path, req, &res); err != nil {
		f.T.Fatal(err)
	}
	return res
}

// peer is one entry of `dassetctl peers -o json`.
type peer struct {
	PublicKey  string   `json:"public_key"` // base64
	Kind       string   `json:"kind"`
	AllowedIPs []string `json:"allowed_ips"`
}

// peers lists the gateway's WireGuard peers.
func (m *member) peers() []peer {
	m.f.T.Helper()
	var l struct {
		Peers []peer `json:"peers"`
	}
	m.CtlJSON(&l, "peers")
	return l.Peers
}

// hasWGPeer asks m's WireGuard device itself, over its UAPI socket (a unix
// socket on the shared file system; a read costs no process start), whether
// key (base64) is one of its peers.
func (m *member) hasWGPeer(key string) (bool, error) {
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return false, err
	}
	c, err := net.DialTimeout("unix", "/var/run/wireguard/"+m.Interface+".sock", time.Second)
	if err != nil {
		return false, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		return false, err
	}
	want := "public_key=" + hex.EncodeToString(raw)
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		switch line := sc.Text(); {
		case line == want:
			return true, nil
		case line == "":
			return false, nil
		case strings.HasPrefix(line, "errno=") && line != "errno=0":
			return false, fmt.Errorf("UAPI get: %s", line)
		}
	}
	return false, fmt.Errorf("UAPI get: no end of answer: %v", sc.Err())
}

// registryAddresses reads every admitted device's pinned key (base64) and
// address offset from the database.
func (f *fleet) registryAddresses() map[string]uint32 {
	f.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		f.T.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT encode(pinned_key, 'base64'), address_offset FROM devices WHERE address_offset IS NOT NULL`)
	if err != nil {
		f.T.Fatal(err)
	}
	out := map[string]uint32{}
	for rows.Next() {
		var key string
		var off int64
		if err := rows.Scan(&key, &off); err != nil {
			f.T.Fatal(err)
		}
		if _, dup := out[key]; dup {
			f.T.Fatalf("registry: key %s holds two addresses", key)
		}
		out[key] = uint32(off)
	}
	if err := rows.Err(); err != nil {
		f.T.Fatal(err)
	}
	return out
}

// registryHomes reads every admitted device's home gateway by pinned key
// (base64) from the database.
func (f *fleet) registryHomes() map[string]string {
	f.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		f.T.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT encode(pinned_key, 'base64'), coalesce(home_gateway, '') FROM devices WHERE pinned_key IS NOT NULL`)
	if err != nil {
		f.T.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var key, home string
		if err := rows.Scan(&key, &home); err != nil {
			f.T.Fatal(err)
		}
		out[key] = home
	}
	if err := rows.Err(); err != nil {
		f.T.Fatal(err)
	}
	return out
}

// checkHomes checks that the registry records each device's home as the
// gateway the device last logged in to.
func (f *fleet) checkHomes(devs map[string]deviceState) {
	f.T.Helper()
	homes := f.registryHomes()
	for sn, d := range devs {
		if got := homes[d.Key]; got != d.Instance {
			f.T.Fatalf("device %s: home %q in the registry, logged in to %q", sn, got, d.Instance)
		}
	}
}

// openSessionOffsetsTwice counts client offsets held by more than one open
// session in the database.
func (f *fleet) openSessionOffsetsTwice() int {
	f.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		f.T.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT client_offset FROM sessions WHERE closed_at IS NULL
		GROUP BY client_offset HAVING count(*) > 1) AS twice`).Scan(&n); err != nil {
		f.T.Fatal(err)
	}
	return n
}

// checkAddresses checks that no address is held twice: in the database
// (every admitted device's offset is its own), against what the devices
// use (each device's addresses are those of its offset in the registry),
// and in the live gateways' peer lists (no address is allowed to two keys,
// within one gateway or across them).
func (f *fleet) checkAddresses(devs map[string]deviceState, live []*member) {
	f.T.Helper()
	plan, err := ipam.New(config.Default().Network.IPAM())
	if err != nil {
		f.T.Fatal(err)
	}
	reg := f.registryAddresses()
	if len(reg) != len(devs)+f.unrun {
		f.T.Fatalf("registry: %d admitted devices with an address, want %d (%d run, %d logged in by hand)", len(reg), len(devs)+f.unrun, len(devs), f.unrun)
	}
	owner := map[uint32]string{}
	for key, off := range reg {
		if other, ok := owner[off]; ok {
			f.T.Fatalf("registry: offset %d held by %s and %s", off, other, key)
		}
		owner[off] = key
	}
	for sn, d := range devs {
		off, ok := reg[d.Key]
		if !ok {
			f.T.Fatalf("device %s: key %s not pinned in the registry", sn, d.Key)
		}
		want, err := plan.DevicePrefixes(off)
		if err != nil {
			f.T.Fatal(err)
		}
		if got := strings.Join(d.Addrs, ","); got != prefixList(want) {
			f.T.Fatalf("device %s uses %s; the registry gives it offset %d: %s", sn, got, off, prefixList(want))
		}
	}
	if n := f.openSessionOffsetsTwice(); n != 0 {
		f.T.Fatalf("registry: %d client addresses held by more than one open session", n)
	}
	holder := map[string]string{}
	for _, m := range live {
		for _, p := range m.peers() {
			for _, ip := range p.AllowedIPs {
				if k, ok := holder[ip]; ok && k != p.PublicKey {
					f.T.Fatalf("address %s allowed to two peers: %s and %s (gateway %s)", ip, k, p.PublicKey, m.name)
				}
				holder[ip] = p.PublicKey
			}
		}
	}
	// Positive evidence: the live gateways hold every device (an IPv4 and
	// an IPv6 address each), so the check above saw them all.
	if len(holder) < 2*len(devs) {
		f.T.Fatalf("the live gateways' peers allow %d addresses; want at least %d (every device's two)", len(holder), 2*len(devs))
	}
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// holdsOnly fails the test unless m's device peers are exactly the listed
// devices, each with its own addresses (a device is a peer only on its
// home).
func (m *member) holdsOnly(devs []deviceState) {
	m.f.T.Helper()
	n := m.holdsDevices(devs)
	if n != len(devs) {
		m.f.T.Fatalf("gateway %s has %d device peers; want exactly its %d devices", m.name, n, len(devs))
	}
}

// holdsDevices fails the test unless every listed device is a device peer
// of m with its own addresses; it returns how many device peers m has.
func (m *member) holdsDevices(devs []deviceState) int {
	m.f.T.Helper()
	have := map[string]string{}
	for _, p := range m.peers() {
		if p.Kind == "device" {
			ips := slices.Clone(p.AllowedIPs)
			slices.Sort(ips)
			have[p.PublicKey] = strings.Join(ips, ",")
		}
	}
	for _, d := range devs {
		want := slices.Clone(d.Addrs)
		slices.Sort(want)
		if got, ok := have[d.Key]; !ok || got != strings.Join(want, ",") {
			m.f.T.Fatalf("gateway %s: device %s: peer allowed IPs %q (present %v), want %q", m.name, d.Serial, got, ok, strings.Join(want, ","))
		}
	}
	return len(have)
}

// until polls fn every interval until it succeeds and fails the test,
// naming what was awaited, when within passes first.
func (f *fleet) until(within, interval time.Duration, what string, fn func() error) {
	f.T.Helper()
	if err := poll.Until(f.Context(), within, interval, fn); err != nil {
		f.T.Fatalf("%s: %v", what, err)
	}
}
