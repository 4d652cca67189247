// Package wg runs the gateway's WireGuard device: a wireguard-go
// device.Device with a validated, batched peer API, one cached status read
// for metrics, and a read-only UAPI socket so `wg show` works.
//
// wireguard-go is configured through its UAPI text protocol (IpcSet/IpcGet).
// IpcSet takes the device's configuration lock and IpcGet locks every peer
// while it renders, so this package applies concurrent peer changes in
// batches (one IpcSet for many peers) and serves all status reads from one
// cached IpcGet.
package wg

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// Errors returned (wrapped, with detail) by this package.
var (
	// ErrInvalidKey: a key is malformed, all-zero or a small-order point.
	ErrInvalidKey = errors.New("invalid WireGuard key")
	// ErrOwnKey: a peer has the device's own public key.
	ErrOwnKey = errors.New("peer public key is the device's own public key")
	// ErrAllowedIPInUse: an allowed IP overlaps one that another peer holds.
	ErrAllowedIPInUse = errors.New("allowed IP is in use by another peer")
	// ErrInvalidPeer: a peer field other than the key is invalid.
	ErrInvalidPeer = errors.New("invalid peer")
	// ErrClosed: the device is closed.
	ErrClosed = errors.New("WireGuard device is closed")
)

// Defaults for Config fields left zero.
const (
	DefaultBatchWindow = 2 * time.Millisecond
	DefaultMaxBatch    = 512
	DefaultStatsMaxAge = 5 * time.Second
)

// maxKeepalive is the largest persistent keepalive the protocol carries (uint16 seconds).
const maxKeepalive = 65535 * time.Second

// Peer is the desired configuration of one WireGuard peer.
type Peer struct {
	PublicKey  Key
	AllowedIPs []netip.Prefix
	// Endpoint is optional; the zero value leaves the peer's endpoint to
	// roaming (what wireguard-go learns from authenticated packets).
	Endpoint netip.AddrPort
	// PersistentKeepalive is 0 (off) or whole seconds up to 65535s.
	PersistentKeepalive time.Duration
}

// Config configures New.
type Config struct {
	// PrivateKey is the device's private key (required).
	PrivateKey Key
	// ListenPort is the UDP port; 0 picks a free one (see Device.ListenPort).
	ListenPort int
	// Logger receives this package's and wireguard-go's messages, with IP
	// addresses redacted. Nil discards them.
	Logger *slog.Logger
	// BatchWindow is how long the first AddPeer of a batch waits for others
	// to join it. Default 2ms.
	BatchWindow time.Duration
	// MaxBatch applies a batch early once it holds this many peers. Default 512.
	MaxBatch int
	// StatsMaxAge is how long one IpcGet serves Peers and Stats. Default 5s.
	StatsMaxAge time.Duration
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.BatchWindow <= 0 {
		c.BatchWindow = DefaultBatchWindow
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.StatsMaxAge <= 0 {
		c.StatsMaxAge = DefaultStatsMaxAge
	}
}

// Device is a running wireguard-go device with a validated peer set.
// Its methods are safe for concurrent use.
type Device struct {
	dev  *device.Device
	log  *slog.Logger
	cfg  Config
	pub  Key
	port int

	// ipcSetFn applies UAPI configuration; tests wrap it to count or fail calls.
	ipcSetFn func(string) error
	ipcSets  atomic.Uint64 // IpcSet calls made, for tests and debugging
	ipcGets  atomic.Uint64 // IpcGet calls made by this package

	mu      sync.Mutex
	closed  bool
	peers   map[Key]*entry // desired state: applied and queued changes
	index   prefixIndex    // allowed IP → owner, over the desired state
	queue   []*request
	queued  int           // items in queue
	wake    chan struct{} // cap 1: the queue became non-empty
	full    chan struct{} // cap 1: the queue holds MaxBatch items
	stop    chan struct{}
	stopped chan struct{} // the batcher has exited
	closeMu sync.Mutex    // serialises Close

	gen   atomic.Uint64 // bumped after every applied change (invalidates Peers' cache)
	stats statusCache

	uapiMu sync.Mutex
	uapis  map[*uapiServer]struct{}
}

// New creates a wireguard-go device on t, sets its private key and listen
// port, and brings it up. A nil bind means conn.NewDefaultBind(). The device
// owns t from then on: Close closes it, and so does New if it fails.
func New(t tun.Device, bind conn.Bind, cfg Config) (*Device, error) {
	if t == nil {
		return nil, errors.New("wg: new device: TUN device is nil")
	}
	if err := cfg.PrivateKey.Validate(); err != nil {
		t.Close()
		return nil, fmt.Errorf("wg: new device: private_key: %w", err)
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		t.Close()
		return nil, fmt.Errorf("wg: new device: listen_port %d: must be 0..65535", cfg.ListenPort)
	}
	cfg.setDefaults()
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	d := &Device{
		log:     cfg.Logger,
		cfg:     cfg,
		pub:     cfg.PrivateKey.PublicKey(),
		peers:   make(map[Key]*entry),
		index:   newPrefixIndex(),
		wake:    make(chan struct{}, 1),
		full:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
		uapis:   make(map[*uapiServer]struct{}),
	}
	d.stats.lock = make(chan struct{}, 1)
	d.dev = device.NewDevice(t, bind, newWGLogger(cfg.Logger))
	d.ipcSetFn = d.dev.IpcSet

	conf := "private_key=" + cfg.PrivateKey.Hex() + "\nlisten_port=" + strconv.Itoa(cfg.ListenPort) + "\n"
	if err := d.set(conf); err != nil {
		d.dev.Close()
		return nil, fmt.Errorf("wg: new device: configure: %w", err)
	}
	if err := d.dev.Up(); err != nil {
		d.dev.Close()
		return nil, fmt.Errorf("wg: new device: up: %w", redactErr(err))
	}
	info, err := d.get()
	if err != nil {
		d.dev.Close()
		return nil, fmt.Errorf("wg: new device: read back: %w", err)
	}
	d.port = info.listenPort
	go d.run()
	d.log.Info("wireguard device up", "public_key", d.pub.String(), "listen_port", d.port)
	return d, nil
}

// PublicKey returns the device's public key.
func (d *Device) PublicKey() Key { return d.pub }

// ListenPort returns the UDP port the device listens on (the one chosen by
// the system when Config.ListenPort was 0).
func (d *Device) ListenPort() int { return d.port }

// Close stops the batcher (queued changes fail with ErrClosed), closes the
// UAPI sockets served by ServeUAPI, then the wireguard-go device and its TUN.
// It is safe to call more than once.
func (d *Device) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()

	close(d.stop)
	<-d.stopped

	d.uapiMu.Lock()
	servers := make([]*uapiServer, 0, len(d.uapis))
	for s := range d.uapis {
		servers = append(servers, s)
	}
	d.uapiMu.Unlock()
	var errs []error
	for _, s := range servers {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.dev.Close()
	d.log.Info("wireguard device closed")
	return errors.Join(errs...)
}

// set applies UAPI configuration text with one IpcSet. Addresses are
// redacted from its error.
func (d *Device) set(conf string) error {
	d.ipcSets.Add(1)
	if err := d.ipcSetFn(conf); err != nil {
		return fmt.Errorf("IpcSet: %w", redactErr(err))
	}
	return nil
}

// get reads and parses the device state with one IpcGet.
func (d *Device) get() (uapiState, error) {
	d.ipcGets.Add(1)
	s, err := d.dev.IpcGet()
	if err != nil {
		return uapiState{}, fmt.Errorf("IpcGet: %w", redactErr(err))
	}
	st, err := parseUAPI(s)
	if err != nil {
		return uapiState{}, fmt.Errorf("IpcGet: %w", err)
	}
	return st, nil
}
