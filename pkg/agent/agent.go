// Package agent is the device side of DASSET: it keeps the device's
// WireGuard key, logs in to the gateway over gRPC, brings up its own
// wireguard-go tunnel to the gateway (a kernel TUN, or a userspace netstack
// for unprivileged runs), and follows the gateway's Sync stream, reconnecting
// with backoff and forcing a fresh WireGuard handshake whenever the gateway
// may have lost its session keys.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// Defaults for Config fields left zero.
const (
	DefaultStateDir   = "/var/lib/dasset-agent"
	DefaultInterface  = "dasset0"
	DefaultMinBackoff = 250 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
	// DefaultSyncIdleTimeout is three of the gateway's Sync keepalives
	// (every 15 s): a gateway that vanished without closing the connection
	// (power loss, a cut link) is given up, and failed over, after 45 s.
	DefaultSyncIdleTimeout = 45 * time.Second
	// DefaultWireGuardPort is used when the gateway sends no endpoint.
	DefaultWireGuardPort = 51820

	defaultMTU       = 1420
	loginTimeout     = 15 * time.Second
	stableStreamTime = 30 * time.Second
	// minHandshakeGap keeps forced handshakes apart: WireGuard's initiation
	// timestamps are coarse, so a second initiation a few milliseconds after
	// the first would be dropped by the gateway as a replay.
	minHandshakeGap = time.Second
)

// ErrRevoked is returned by Run when the gateway revokes the device.
var ErrRevoked = errors.New("device revoked by the gateway")

// ErrLoginRefused is wrapped by the error Run returns when the gateway
// refuses the device for good (not enrolled, wrong hardware id, revoked,
// key mismatch, invalid request). Such errors are not retried.
var ErrLoginRefused = errors.New("login refused")

// Config configures an Agent.
type Config struct {
	// Gateway is the gateway's gRPC address, host:port, or several,
	// comma-separated (a fleet); a name with several A/AAAA records counts
	// as one gateway per address. The agent starts on a random one and
	// fails over to the others (see Run).
	Gateway string
	// Serial and HardwareID identify the device (personal data: never logged).
	Serial, HardwareID string
	// Interface is the kernel TUN name (default dasset0); unused with Netstack.
	Interface string
	// StateDir holds private.key and token (default /var/lib/dasset-agent).
	StateDir string
	// CAFile, Pin and Insecure say how to authenticate the gateway (see TLSOptions).
	CAFile, Pin string
	Insecure    bool
	// Netstack runs the tunnel on a userspace netstack instead of a kernel
	// TUN, for unprivileged in-process tests.
	Netstack bool
	// Logger receives the agent's log (default slog.Default()).
	Logger *slog.Logger
	// Version is sent to the gateway as the agent version.
	Version string
	// MinBackoff and MaxBackoff bound the retry delays (default 250ms, 10s).
	MinBackoff, MaxBackoff time.Duration
	// SyncIdleTimeout reconnects a Sync stream that delivered nothing for
	// this long (default 45s), so a gateway that vanished is noticed.
	SyncIdleTimeout time.Duration
	// OnEvent, if set, is called with every Sync event (for tests).
	OnEvent func(*gatewayv1.SyncEvent)
	// Now is the clock that spaces forced handshakes (default time.Now;
	// tests move it instead of sleeping).
	Now func() time.Time
}

func (c *Config) tlsOptions() TLSOptions {
	return TLSOptions{CAFile: c.CAFile, Pin: c.Pin, Insecure: c.Insecure}
}

// Agent is one device's connection to the gateway.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	serial privacy.SerialNumber
	hwid   privacy.HardwareID
	priv   [32]byte
	pub    [32]byte

	ready     chan struct{}
	readyOnce sync.Once
	running   atomic.Bool

	scrub *addrScrubber // keeps the gateway's own addresses in log lines

	gateways []string   // Config.Gateway, parsed
	lookup   lookupFunc // resolves gateway names (tests replace it)
	rnd      *rand.Rand // spreads logins and jitters backoff (tests seed it)

	mu       sync.Mutex
	tun      *tunnel // nil while down
	instance string  // gateway instance of the last login
}

// New validates cfg, fills in defaults and loads (or on first run creates)
// the device's WireGuard private key in cfg.StateDir.
func New(cfg Config) (*Agent, error) {
	gateways, err := ParseGateways(cfg.Gateway)
	if err != nil {
		return nil, err
	}
	serial, err := privacy.ParseSerialNumber(cfg.Serial)
	if err != nil {
		return nil, err
	}
	hwid, err := privacy.ParseHardwareID(cfg.HardwareID)
	if err != nil {
		return nil, err
	}
	if err := cfg.tlsOptions().Validate(); err != nil {
		return nil, err
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.Interface == "" && !cfg.Netstack {
		cfg.Interface = DefaultInterface
	}
	if len(cfg.Interface) > 15 {
		return nil, fmt.Errorf("interface %q: longer than 15 bytes", cfg.Interface)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("max backoff %v: less than min backoff %v", cfg.MaxBackoff, cfg.MinBackoff)
	}
	if cfg.SyncIdleTimeout <= 0 {
		cfg.SyncIdleTimeout = DefaultSyncIdleTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	priv, created, err := loadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	pub, err := publicKey(priv)
	if err != nil {
		return nil, err
	}
	if created {
		cfg.Logger.Info("created a new WireGuard key", "state_dir", cfg.StateDir)
	}
	return &Agent{
		cfg:      cfg,
		log:      cfg.Logger,
		scrub:    &addrScrubber{}, // Run keeps the resolved candidates' addresses
		gateways: gateways,
		lookup:   defaultLookup,
		rnd:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		serial:   serial,
		hwid:     hwid,
		priv:     priv,
		pub:      pub,
		ready:    make(chan struct{}),
	}, nil
}

// PublicKey returns the device's WireGuard public key.
func (a *Agent) PublicKey() [32]byte { return a.pub }

// Ready is closed once the tunnel is up for the first time.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Addresses returns the device's virtual addresses (nil while down).
func (a *Agent) Addresses() []netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tun == nil {
		return nil
	}
	return slices.Clone(a.tun.addrs)
}

// Net returns the userspace network stack in Netstack mode while the tunnel
// is up; nil otherwise.
func (a *Agent) Net() *netstack.Net {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tun == nil {
		return nil
	}
	return a.tun.net
}

// GatewayInstance is the instance id of the gateway the last login reached
// ("" before the first login, or from a gateway that names none).
func (a *Agent) GatewayInstance() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.instance
}

// Run logs in, brings the tunnel up and follows the Sync stream until ctx
// is done (then it returns nil after closing the tunnel) or the device is
// revoked (ErrRevoked) or refused (ErrLoginRefused). Run may be called once.
//
// With several gateway candidates, Run starts on a random one; when that
// gateway is unreachable (logins fail, or its Sync stream broke and the
// reconnect failed) it fails over to the next with jittered backoff,
// keeping its WireGuard key and state: it logs in there with the same
// pinned key and moves its WireGuard peer to that gateway.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	if a.cfg.Insecure {
		a.log.Warn("TLS is off (--insecure): the gateway is not authenticated and traffic to it is readable")
	}
	defer a.teardown()
	list := newGatewayList(ctx, a.gateways, a.lookup, a.rnd)
	a.keepCandidates(list)
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	bo.rnd = a.rnd
	for {
		cand := list.current()
		started := time.Now()
		err := a.runOn(ctx, cand, list.len() > 1)
		if ctx.Err() != nil {
			return nil
		}
		var fo *errFailover
		if !errors.As(err, &fo) {
			return err
		}
		if time.Since(started) > stableStreamTime {
			bo.reset()
		}
		next := list.next(ctx)
		a.keepCandidates(list)
		d := bo.next()
		a.log.Warn("gateway unreachable; failing over", "gateway", cand.name, "next_gateway", next.name,
			"candidates", list.len(), "error", a.scrub.message(fo.err), "retry_in", d)
		if err := sleep(ctx, d); err != nil {
			return nil
		}
	}
}

// keepCandidates lets the candidates' addresses into log lines: they are
// the operator's gateways, not a person's.
func (a *Agent) keepCandidates(l *gatewayList) {
	for _, c := range l.cands {
		if ap, err := netip.ParseAddrPort(c.addr); err == nil {
			a.scrub.add(ap.Addr())
		}
	}
}

// runOn logs in to one gateway candidate, brings the tunnel to it and
// follows its Sync stream. With failover, it gives up on a gateway that
// stays unreachable by returning *errFailover.
func (a *Agent) runOn(ctx context.Context, cand candidate, failover bool) error {
	conn, err := dialAs(cand.addr, cand.serverName, a.cfg.tlsOptions(), a.scrub)
	if err != nil {
		if failover {
			return &errFailover{err}
		}
		return err
	}
	defer conn.Close()
	client := gatewayv1.NewDeviceServiceClient(conn)
	resp, err := a.login(ctx, client, cand, failover)
	if err != nil {
		return err
	}
	if err := a.configure(ctx, cand.addr, resp); err != nil {
		return err
	}
	return a.syncLoop(ctx, client, cand, failover, resp.GetDeviceToken())
}

func (a *Agent) teardown() {
	a.mu.Lock()
	t := a.tun
	a.tun = nil
	a.mu.Unlock()
	if t != nil {
		t.close()
		a.log.Info("tunnel down")
	}
}

func (a *Agent) markReady() { a.readyOnce.Do(func() { close(a.ready) }) }

// wgLogger adapts wireguard-go's logger to slog at debug (verbose) and warn
// (errors), with IP addresses but the gateway's scrubbed.
func wgLogger(l *slog.Logger, sc *addrScrubber) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(sc.text(fmt.Sprintf(format, args...)), "component", "wireguard")
			}
		},
		Errorf: func(format string, args ...any) {
			l.Warn(sc.text(fmt.Sprintf(format, args...)), "component", "wireguard")
		},
	}
}
