package agent

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun/netstack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/planetxlabs/dasset-gateway/internal/atomicfile"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// Client mode defaults.
const (
	// DefaultClientStateDir holds the client's access token and gateway settings.
	DefaultClientStateDir = "/var/lib/dasset-agent-client"
	// DefaultClientInterface is the kernel TUN of a client session.
	DefaultClientInterface = "dasset-c0"
	// DefaultPollInterval is how often an open session checks with the gateway.
	DefaultPollInterval = 2 * time.Second

	accessTokenFileName   = "access-token"
	clientGatewayFileName = "gateway.json"
	clientCallTimeout     = 15 * time.Second
	// handshakeStaleAfter: WireGuard rejects a keypair 180 s after its
	// handshake (RejectAfterTime) and a live peer with a persistent
	// keepalive re-handshakes every 120 s, so no handshake for longer than
	// this means the gateway no longer has our peer.
	handshakeStaleAfter = 180*time.Second + 15*time.Second
)

// Errors of the client mode; the error returned wraps one of these together
// with the gateway's message.
var (
	// ErrNotLoggedIn: no access token, or the gateway no longer accepts it.
	ErrNotLoggedIn = errors.New("not logged in or the access token expired (run `dasset-agent login`)")
	// ErrNotFound: unknown, used or expired binding code; unknown session or device.
	ErrNotFound = errors.New("not found")
	// ErrPermissionDenied: the device is not bound to this account, or revoked.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrInvalidArgument: the gateway refused the request's content.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnavailable: the gateway cannot serve the call now (device offline,
	// limits reached, gateway down); trying again later may work.
	ErrUnavailable = errors.New("unavailable")
	// ErrSessionEnded is wrapped by Session.Wait when the session ended
	// without Close: the gateway closed it, the device was unbound, the
	// session expired, or the gateway stopped answering.
	ErrSessionEnded = errors.New("session ended")
)

// ClientConfig configures the client mode (an end user's machine opening
// remote-control sessions to its devices).
type ClientConfig struct {
	// Gateway is the gateway's gRPC address, host:port, or several
	// gateways of one fleet, comma-separated: calls go to the first that
	// answers, and an open session moves its calls to the next when its
	// gateway stops answering.
	Gateway string
	// TLS says how to authenticate the gateway.
	TLS TLSOptions
	// Account and Password are used by ClientLogin only.
	Account, Password string
	// Token is the access token; when empty it is read from StateDir.
	Token string
	// Netstack runs session tunnels on a userspace netstack (no root).
	Netstack bool
	// NoTunnel opens sessions without a tunnel of their own: another
	// WireGuard (a stock app, given Session.WGQuick) carries the traffic,
	// and the session is only watched.
	NoTunnel bool
	// Interface is the kernel TUN of a session (default dasset-c0).
	Interface string
	// StateDir, when set, is where ClientLogin stores the access token
	// (0600) and the gateway settings, and where Token is read from.
	StateDir string
	// Logger receives the log (default slog.Default()).
	Logger *slog.Logger
	// PollInterval is how often an open session checks with the gateway
	// that it still stands and which gateway serves it (default 2s; each
	// wait is jittered by ±25% so that many clients do not poll in step).
	PollInterval time.Duration
	// OnGatewayPeer, when set, is called (from the session's watcher) with
	// the session's new WireGuard configuration each time the gateway that
	// serves the session changes (the device moved to another gateway of
	// the fleet). A session with a tunnel of its own has already replaced
	// its peer by then; with NoTunnel this is how the app's configuration
	// learns the new peer.
	OnGatewayPeer func(WGQuick)
}

func (c ClientConfig) withDefaults() (ClientConfig, error) {
	if _, err := ParseGateways(c.Gateway); err != nil {
		return c, err
	}
	if err := c.TLS.Validate(); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.NoTunnel && c.Netstack {
		return c, errors.New("no tunnel and netstack: choose one")
	}
	if c.NoTunnel {
		c.Interface = ""
	}
	if !c.Netstack && !c.NoTunnel && c.Interface == "" {
		c.Interface = DefaultClientInterface
	}
	if len(c.Interface) > 15 {
		return c, fmt.Errorf("interface %q: longer than 15 bytes", c.Interface)
	}
	return c, nil
}

// clientGateway is what ClientLogin remembers besides the token.
type clientGateway struct {
	Gateway  string `json:"gateway"`
	CAFile   string `json:"ca_file,omitempty"`
	Pin      string `json:"pin,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
}

// LoadClientConfig returns the gateway address and TLS settings the last
// ClientLogin stored in dir, with StateDir set to dir. The token is read
// when a call needs it.
func LoadClientConfig(dir string) (ClientConfig, error) {
	cfg := ClientConfig{StateDir: dir}
	data, err := os.ReadFile(filepath.Join(dir, clientGatewayFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, fmt.Errorf("%s: no gateway stored: %w", dir, ErrNotLoggedIn)
	}
	if err != nil {
		return cfg, fmt.Errorf("client state: %w", err)
	}
	var g clientGateway
	if err := json.Unmarshal(data, &g); err != nil {
		return cfg, fmt.Errorf("client state %s: %w", filepath.Join(dir, clientGatewayFileName), err)
	}
	cfg.Gateway = g.Gateway
	cfg.TLS = TLSOptions{CAFile: g.CAFile, Pin: g.Pin, Insecure: g.Insecure}
	return cfg, nil
}

func (c ClientConfig) token() (string, error) {
	if c.Token != "" {
		return c.Token, nil
	}
	if c.StateDir == "" {
		return "", ErrNotLoggedIn
	}
	path := filepath.Join(c.StateDir, accessTokenFileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s: %w", path, ErrNotLoggedIn)
	}
	if err != nil {
		return "", fmt.Errorf("access token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("%s is empty: %w", path, ErrNotLoggedIn)
	}
	return tok, nil
}

// clientError turns a ClientService error into one wrapping a package
// sentinel, naming op and keeping the gateway's message.
func clientError(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", op, err)
	}
	st := status.Convert(err)
	if h := retryHint(err); h > 0 {
		// Throttled: the gateway answers as for wrong credentials and adds
		// when to come back.
		return fmt.Errorf("%s: refused for now (%s); the gateway asks to retry in %v", op, st.Message(), h.Round(time.Second))
	}
	var kind error
	switch st.Code() {
	case codes.Unauthenticated:
		if op == "login" {
			return fmt.Errorf("login: wrong account or password (gateway said: %s)", st.Message())
		}
		kind = ErrNotLoggedIn
	case codes.NotFound:
		kind = ErrNotFound
	case codes.PermissionDenied:
		kind = ErrPermissionDenied
	case codes.InvalidArgument, codes.AlreadyExists:
		kind = ErrInvalidArgument
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: %w", op, context.DeadlineExceeded)
	case codes.Canceled:
		return fmt.Errorf("%s: %w", op, context.Canceled)
	case codes.Unimplemented:
		return fmt.Errorf("%s: this gateway has no ClientService (is the address right?)", op)
	case codes.Unavailable:
		return &unavailableError{msg: fmt.Sprintf("%s: %v: %s", op, ErrUnavailable, st.Message())}
	default:
		kind = ErrUnavailable
	}
	return fmt.Errorf("%s: %w: %s", op, kind, st.Message())
}

// unavailableError is a call a gateway could not take (codes.Unavailable:
// unreachable, stopping, or its registry away): another gateway of the
// fleet may take it. It is an ErrUnavailable.
type unavailableError struct{ msg string }

func (e *unavailableError) Error() string        { return e.msg }
func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }

// gatewayDown reports whether err says that the gateway could not take the
// call, so that the next gateway should be asked.
func gatewayDown(err error) bool {
	var ue *unavailableError
	return errors.As(err, &ue) || status.Code(err) == codes.Unavailable
}

// call runs f with a ClientService client of the first gateway in
// cfg.Gateway that takes the call (the next one is asked when one is
// unavailable) and a context carrying the access token (none for login).
func call(ctx context.Context, cfg ClientConfig, withToken bool, f func(context.Context, gatewayv1.ClientServiceClient) error) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if withToken {
		tok, err := cfg.token()
		if err != nil {
			return err
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	gws, _ := ParseGateways(cfg.Gateway) // withDefaults checked them
	sc := newAddrScrubber(gws...)
	for i, gw := range gws {
		conn, err := dialWith(gw, cfg.TLS, sc)
		if err != nil {
			return err
		}
		err = f(ctx, gatewayv1.NewClientServiceClient(conn))
		conn.Close()
		if i < len(gws)-1 && gatewayDown(err) && ctx.Err() == nil {
			continue
		}
		return sc.err(err)
	}
	return nil // not reached: gws is never empty
}

// ClientLogin logs in with cfg.Account and cfg.Password and returns the
// access token. With cfg.StateDir set it also stores the token (0600) and
// the gateway settings there, for later calls and LoadClientConfig.
func ClientLogin(ctx context.Context, cfg ClientConfig) (token string, expires time.Time, err error) {
	if cfg.Account == "" {
		return "", time.Time{}, errors.New("account: empty")
	}
	if cfg.Password == "" {
		return "", time.Time{}, errors.New("password: empty")
	}
	err = call(ctx, cfg, false, func(ctx context.Context, c gatewayv1.ClientServiceClient) error {
		resp, err := c.Login(ctx, &gatewayv1.ClientLoginRequest{Account: cfg.Account, Password: cfg.Password})
		if err != nil {
			return clientError("login", err)
		}
		if resp.GetAccessToken() == "" {
			return errors.New("login: the gateway sent an empty access token")
		}
		token, expires = resp.GetAccessToken(), resp.GetExpiresAt().AsTime()
		return nil
	})
	if err != nil {
		return "", time.Time{}, err
	}
	if cfg.StateDir != "" {
		if err := saveClientState(cfg, token); err != nil {
			return "", time.Time{}, err
		}
	}
	return token, expires, nil
}

func saveClientState(cfg ClientConfig, token string) error {
	if err := ensureStateDir(cfg.StateDir); err != nil {
		return err
	}
	g, err := json.Marshal(clientGateway{Gateway: cfg.Gateway, CAFile: cfg.TLS.CAFile, Pin: cfg.TLS.Pin, Insecure: cfg.TLS.Insecure})
	if err != nil {
		return fmt.Errorf("client state: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(cfg.StateDir, clientGatewayFileName), append(g, '\n'), 0o600); err != nil {
		return fmt.Errorf("client state: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(cfg.StateDir, accessTokenFileName), []byte(token+"\n"), 0o600); err != nil {
		return fmt.Errorf("access token: %w", err)
	}
	return nil
}

// Bind redeems a binding code shown by a device and returns the serial
// number of the device now bound to the account.
func Bind(ctx context.Context, cfg ClientConfig, code string) (serial string, err error) {
	if strings.TrimSpace(code) == "" {
		return "", errors.New("code: empty")
	}
	err = call(ctx, cfg, true, func(ctx context.Context, c gatewayv1.ClientServiceClient) error {
		resp, err := c.BindDevice(ctx, &gatewayv1.BindDeviceRequest{Code: strings.TrimSpace(code)})
		if err != nil {
			return clientError("bind", err)
		}
		serial = resp.GetSerialNumber()
		return nil
	})
	return serial, err
}

// Unbind removes the binding of the device with serial number serial from
// the account (closing its open sessions) and returns the gateway's erasure
// receipt: rows removed per table.
func Unbind(ctx context.Context, cfg ClientConfig, serial string) (removed map[string]int64, err error) {
	if _, err := privacy.ParseSerialNumber(serial); err != nil {
		return nil, err
	}
	err = call(ctx, cfg, true, func(ctx context.Context, c gatewayv1.ClientServiceClient) error {
		resp, err := c.UnbindDevice(ctx, &gatewayv1.UnbindDeviceRequest{SerialNumber: serial})
		if err != nil {
			return clientError("unbind", err)
		}
		removed = resp.GetRemoved()
		return nil
	})
	return removed, err
}

// BoundDevice is a device bound to the account.
type BoundDevice struct {
	Serial    string
	Online    bool
	Addresses []netip.Prefix
}

// ListDevices lists the devices bound to the account.
func ListDevices(ctx context.Context, cfg ClientConfig) ([]BoundDevice, error) {
	var out []BoundDevice
	err := call(ctx, cfg, true, func(ctx context.Context, c gatewayv1.ClientServiceClient) error {
		var err error
		out, err = listDevices(ctx, c)
		return err
	})
	return out, err
}

func listDevices(ctx context.Context, c gatewayv1.ClientServiceClient) ([]BoundDevice, error) {
	resp, err := c.ListDevices(ctx, &gatewayv1.ListBoundDevicesRequest{})
	if err != nil {
		return nil, clientError("list devices", err)
	}
	out := make([]BoundDevice, 0, len(resp.GetDevices()))
	for i, d := range resp.GetDevices() {
		bd := BoundDevice{Serial: d.GetSerialNumber(), Online: d.GetOnline()}
		for j, s := range d.GetAddresses() {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("list devices: devices[%d].addresses[%d]: %w", i, j, err)
			}
			bd.Addresses = append(bd.Addresses, p)
		}
		out = append(out, bd)
	}
	return out, nil
}

// CloseSession closes one of the account's sessions by id (for a session
// opened by another process; a *Session closes itself with Close).
func CloseSession(ctx context.Context, cfg ClientConfig, id string) error {
	if id == "" {
		return errors.New("session id: empty")
	}
	return call(ctx, cfg, true, func(ctx context.Context, c gatewayv1.ClientServiceClient) error {
		if _, err := c.CloseSession(ctx, &gatewayv1.CloseSessionRequest{SessionId: id}); err != nil {
			return clientError("close session", err)
		}
		return nil
	})
}

// Session is an open remote-control session: a wireguard-go device of its
// own, with a fresh key, whose one peer is the gateway (none with
// ClientConfig.NoTunnel). The gateway lets it reach only the session's
// device.
type Session struct {
	cfg   ClientConfig
	log   *slog.Logger
	scrub *addrScrubber
	// gateways are the gRPC addresses of cfg.Gateway; conn is a connection
	// to gateways[gwIdx], replaced by the watcher when that gateway stops
	// answering (before the watcher starts and after it stops, only one
	// goroutine uses them).
	gateways []string
	gwIdx    int
	conn     *grpc.ClientConn
	token    string
	serial   privacy.SerialNumber
	id       string
	client   []netip.Prefix
	device   []netip.Prefix
	expires  time.Time
	opened   time.Time
	tun      *tunnel // nil with NoTunnel

	// peerMu guards the gateway peer, which the watcher replaces when the
	// device moves to another gateway: wgQuick, tun.peer, peerSince, peerMsg.
	peerMu    sync.Mutex
	wgQuick   WGQuick
	peerSince time.Time              // when the gateway peer was last set
	peerMsg   *gatewayv1.GatewayPeer // the peer as last applied, to notice a change
	peerBad   *gatewayv1.GatewayPeer // the last peer refused (warned about once)
	moves     int                    // gateway peer changes applied

	ended     chan struct{} // closed when the watcher saw the session end
	endErr    error         // why; set before ended is closed
	stopWatch context.CancelFunc
	watchDone chan struct{}

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

// OpenSession opens a session to the bound device with serial number
// serial: it makes a fresh WireGuard key, asks the gateway for the session,
// brings up a tunnel (kernel TUN cfg.Interface routed to the gateway's
// allowed IPs, a netstack, or none with cfg.NoTunnel) and starts watching
// that the session still stands. Call Close when done.
func OpenSession(ctx context.Context, cfg ClientConfig, serial string) (*Session, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	sn, err := privacy.ParseSerialNumber(serial)
	if err != nil {
		return nil, err
	}
	tok, err := cfg.token()
	if err != nil {
		return nil, err
	}
	var priv [32]byte
	if _, err := rand.Read(priv[:]); err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	clamp(&priv)
	pub, err := publicKey(priv)
	if err != nil {
		return nil, err
	}
	gws, _ := ParseGateways(cfg.Gateway) // withDefaults checked them
	sc := newAddrScrubber(gws...)
	s := &Session{
		cfg: cfg, log: cfg.Logger, scrub: sc, gateways: gws, token: tok, serial: sn,
		ended: make(chan struct{}), watchDone: make(chan struct{}), closed: make(chan struct{}),
	}
	var (
		resp *gatewayv1.OpenSessionResponse
		conn *grpc.ClientConn
	)
	for i, gw := range gws {
		conn, err = dialWith(gw, cfg.TLS, sc)
		if err != nil {
			return nil, err
		}
		resp, err = gatewayv1.NewClientServiceClient(conn).OpenSession(s.authCtx(ctx),
			&gatewayv1.OpenSessionRequest{SerialNumber: serial, ClientPublicKey: pub[:]})
		if err == nil {
			s.gwIdx = i
			break
		}
		conn.Close()
		if i == len(gws)-1 || !gatewayDown(err) || ctx.Err() != nil {
			return nil, sc.err(clientError("open session", err))
		}
	}
	s.conn = conn
	s.id, s.expires, s.opened = resp.GetSessionId(), resp.GetExpiresAt().AsTime(), time.Now()
	fail := func(err error) (*Session, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), clientCallTimeout)
		defer cancel()
		if _, cerr := gatewayv1.NewClientServiceClient(conn).CloseSession(s.authCtx(cctx), &gatewayv1.CloseSessionRequest{SessionId: s.id}); cerr != nil {
			s.log.Warn("closing the session after a failed start", "session", s.id, "error", sc.message(cerr))
		}
		conn.Close()
		return nil, err
	}
	if s.id == "" {
		conn.Close()
		return nil, errors.New("open session: the gateway sent an empty session id")
	}
	lc, err := parseTunnelConfig(ctx, s.gateways[s.gwIdx], resp.GetClientAddresses(), resp.GetMtu(), resp.GetGateway())
	if err != nil {
		return fail(fmt.Errorf("gateway sent an unusable session: %w", err))
	}
	for i, a := range resp.GetDeviceAddresses() {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return fail(fmt.Errorf("gateway sent an unusable session: device_addresses[%d]: %w", i, err))
		}
		s.device = append(s.device, p)
	}
	s.client = lc.addrs
	s.peerSince, s.peerMsg = s.opened, resp.GetGateway()
	s.wgQuick = WGQuick{
		SessionID: s.id, Expires: s.expires, PrivateKey: priv, Addresses: lc.addrs, MTU: lc.mtu,
		PeerPublicKey: lc.peer.publicKey, Endpoint: lc.endpointName,
		AllowedIPs: hostPrefixes(s.device), PersistentKeepalive: lc.peer.keepalive,
	}
	mode := "tun"
	switch {
	case cfg.NoTunnel:
		mode = "none"
	case cfg.Netstack:
		mode = "netstack"
	}
	if !cfg.NoTunnel {
		t, err := newTunnel(lc, priv, cfg.Netstack, cfg.Interface, s.log, sc)
		if err != nil {
			return fail(fmt.Errorf("session tunnel: %w", err))
		}
		s.tun = t
	}
	s.log.Info("session open", "session", s.id, "mode", mode, "interface", cfg.Interface,
		"client_addresses", s.client, "device_addresses", s.device, "expires_at", s.expires)
	wctx, cancel := context.WithCancel(context.Background())
	s.stopWatch = cancel
	go s.watch(wctx)
	return s, nil
}

func (s *Session) authCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.token)
}

// ID returns the session id.
func (s *Session) ID() string { return s.id }

// ClientAddresses returns this end's virtual addresses.
func (s *Session) ClientAddresses() []netip.Prefix { return slices.Clone(s.client) }

// DeviceAddresses returns the device's virtual addresses.
func (s *Session) DeviceAddresses() []netip.Prefix { return slices.Clone(s.device) }

// ExpiresAt is when the gateway ends the session.
func (s *Session) ExpiresAt() time.Time { return s.expires }

// Net returns the userspace network stack in netstack mode (nil otherwise).
func (s *Session) Net() *netstack.Net {
	if s.tun == nil {
		return nil
	}
	return s.tun.net
}

// WGQuick is the session's WireGuard configuration for a stock WireGuard
// app: the session's private key and addresses, the gateway as the peer,
// the device's addresses routed into the tunnel. Meant for NoTunnel
// sessions; two WireGuard ends with one key fight over the gateway peer.
func (s *Session) WGQuick() WGQuick {
	s.peerMu.Lock()
	w := s.wgQuick
	s.peerMu.Unlock()
	w.Addresses, w.AllowedIPs = slices.Clone(w.Addresses), slices.Clone(w.AllowedIPs)
	return w
}

// Wait blocks until the session ends without Close (it returns an error
// wrapping ErrSessionEnded with the reason), Close is called (nil), or ctx
// is done (ctx.Err()).
//
// How the end is noticed: every PollInterval the session asks the gateway
// (GetSession: NotFound once closed by anyone, expired, idle or unbound) and
// lists the account's devices, which also catches a revoked or expired
// access token; the expiry time is checked locally; and a session whose gateway peer has had
// no WireGuard handshake for longer than WireGuard accepts a key (about 3
// minutes, with the gateway's persistent keepalive on) has been closed by
// the gateway (CloseSession from elsewhere, an operator, the idle reaper)
// or lost the gateway (with a tunnel of its own only: with NoTunnel the
// handshakes are the app's, and the session outwaits a gateway that stopped
// answering until it answers again or the session expires).
func (s *Session) Wait(ctx context.Context) error {
	select {
	case <-s.closed:
		return nil
	default:
	}
	select {
	case <-s.closed:
		return nil
	case <-s.ended:
		return s.endErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes the session on the gateway (a session the gateway already
// ended is not an error) and tears the tunnel down. It is safe to call more
// than once; later calls return the first result.
func (s *Session) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.stopWatch()
		<-s.watchDone
		var err error
		_, rerr := gatewayv1.NewClientServiceClient(s.conn).CloseSession(s.authCtx(ctx), &gatewayv1.CloseSessionRequest{SessionId: s.id})
		if rerr != nil && status.Code(rerr) != codes.NotFound {
			err = clientError("close session", rerr)
		}
		if s.tun != nil {
			s.tun.close()
		}
		s.conn.Close()
		s.log.Info("session closed", "session", s.id)
		s.closeErr = err
		close(s.closed)
	})
	return s.closeErr
}

// GatewayPeer returns the session's current gateway peer: its WireGuard
// public key and endpoint (host:port as the gateway sent it), and how many
// times it has changed since the session opened (the device moved to
// another gateway).
func (s *Session) GatewayPeer() (key [32]byte, endpoint string, changes int) {
	s.peerMu.Lock()
	defer s.peerMu.Unlock()
	return s.wgQuick.PeerPublicKey, s.wgQuick.Endpoint, s.moves
}

// handshakeStaleFollow: with a persistent keepalive, a peer that answers
// re-handshakes every 2 minutes (WireGuard's RekeyAfterTime) within a few
// seconds (RekeyTimeout); no handshake for longer means the gateway no
// longer answers, perhaps because the device moved to another gateway, so
// the watcher asks the gateway at once instead of at its next poll.
const handshakeStaleFollow = 120*time.Second + 15*time.Second

// pollWait is the wait before the next poll: interval ±25%, at random.
func pollWait(interval time.Duration) time.Duration {
	return interval*3/4 + mrand.N(interval/2+1)
}

// watch polls until the session ends or stopWatch is called: every
// PollInterval (jittered), and at once when the gateway peer's handshake
// goes stale.
func (s *Session) watch(ctx context.Context) {
	defer close(s.watchDone)
	timer := time.NewTimer(pollWait(s.cfg.PollInterval))
	defer timer.Stop()
	staleSeen := false // the current stale spell has had its immediate poll
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if why := s.check(ctx, gatewayv1.NewClientServiceClient(s.conn)); why != "" {
			s.endErr = fmt.Errorf("%w: %s", ErrSessionEnded, why)
			s.log.Warn("session ended", "session", s.id, "reason", why)
			close(s.ended)
			return
		}
		wait := pollWait(s.cfg.PollInterval)
		if staleIn, ok := s.staleIn(time.Now()); ok {
			switch {
			case staleIn > 0:
				staleSeen = false
				wait = min(wait, staleIn)
			case !staleSeen:
				staleSeen = true
				wait = 0
			}
		}
		timer.Reset(wait)
	}
}

// staleIn says how long until the gateway peer's handshake counts as stale
// (<= 0: it is); ok is false without a tunnel of its own or a keepalive.
func (s *Session) staleIn(now time.Time) (time.Duration, bool) {
	if s.tun == nil {
		return 0, false
	}
	s.peerMu.Lock()
	keepalive, since := s.tun.peer.keepalive, s.peerSince
	s.peerMu.Unlock()
	if keepalive == 0 {
		return 0, false
	}
	last := lastHandshake(s.tun)
	if last.Before(since) {
		last = since
	}
	return last.Add(handshakeStaleFollow).Sub(now), true
}

// nextGateway moves the session's calls to the next gateway of
// cfg.Gateway; it reports whether it did.
func (s *Session) nextGateway() bool {
	i := (s.gwIdx + 1) % len(s.gateways)
	conn, err := dialWith(s.gateways[i], s.cfg.TLS, s.scrub)
	if err != nil {
		s.log.Warn("session: dialling the next gateway failed", "session", s.id, "gateway", i+1, "error", s.scrub.message(err))
		return false
	}
	s.conn.Close()
	s.conn, s.gwIdx = conn, i
	s.log.Info("session: its gateway does not answer; asking the next one", "session", s.id, "gateway", i+1, "of", len(s.gateways))
	return true
}

// follow replaces the session's gateway peer when GetSession names another
// one than the session uses (the device moved to another gateway): same
// key, same addresses, the new gateway's key and endpoint. A peer the
// session cannot use (or whose endpoint does not resolve now) is logged
// once and tried again at the next poll; the old one stays meanwhile.
func (s *Session) follow(ctx context.Context, gw *gatewayv1.GatewayPeer) {
	if gw == nil {
		return // a gateway that does not say: keep the peer
	}
	s.peerMu.Lock()
	same := proto.Equal(gw, s.peerMsg)
	s.peerMu.Unlock()
	if same {
		return
	}
	pc, name, err := parseGatewayPeer(ctx, s.gateways[s.gwIdx], gw)
	if err != nil {
		if !proto.Equal(gw, s.peerBad) { // only the watcher reads and writes peerBad
			s.peerBad = gw
			s.log.Warn("the gateway named an unusable gateway peer for the session; keeping the old one", "session", s.id, "error", s.scrub.text(err.Error()))
		}
		return
	}
	s.scrub.add(pc.endpoint.Addr()) // a gateway's address, as the dialled one
	if s.tun != nil {
		if err := s.tun.dev.IpcSet("replace_peers=true\n" + pc.uapi()); err != nil {
			s.log.Warn("replacing the session's gateway peer failed; retrying at the next poll", "session", s.id, "error", err)
			return
		}
	}
	s.peerMu.Lock()
	s.peerMsg = gw
	if s.tun != nil {
		s.tun.peer = pc
	}
	s.peerSince = time.Now()
	s.wgQuick.PeerPublicKey, s.wgQuick.Endpoint, s.wgQuick.PersistentKeepalive = pc.publicKey, name, pc.keepalive
	s.moves++
	w := s.wgQuick
	s.peerMu.Unlock()
	if s.tun != nil {
		startHandshake(s.tun, s.log)
	}
	s.log.Info("session follows its device to another gateway", "session", s.id, "gateway_key", base64.StdEncoding.EncodeToString(pc.publicKey[:]))
	if s.cfg.OnGatewayPeer != nil {
		w.Addresses, w.AllowedIPs = slices.Clone(w.Addresses), slices.Clone(w.AllowedIPs)
		s.cfg.OnGatewayPeer(w)
	}
}

// check returns why the session has ended, or "" while it stands.
func (s *Session) check(ctx context.Context, client gatewayv1.ClientServiceClient) string {
	now := time.Now()
	if !s.expires.IsZero() && !now.Before(s.expires) {
		return "expired"
	}
	cctx, cancel := context.WithTimeout(ctx, min(clientCallTimeout, max(s.cfg.PollInterval, time.Second)))
	info, gerr := client.GetSession(s.authCtx(cctx), &gatewayv1.GetSessionRequest{SessionId: s.id})
	cancel()
	if gerr == nil {
		s.follow(ctx, info.GetGateway())
	}
	switched := false
	if (status.Code(gerr) == codes.Unavailable || status.Code(gerr) == codes.DeadlineExceeded) && ctx.Err() == nil && len(s.gateways) > 1 {
		// This gateway does not answer: the next poll asks the next one
		// (any gateway of the fleet answers for any session).
		switched = s.nextGateway()
	}
	if status.Code(gerr) == codes.NotFound && ctx.Err() == nil {
		// Closed elsewhere, expired, idle or unbound: say which when we can.
		cctx, cancel := context.WithTimeout(ctx, min(clientCallTimeout, max(s.cfg.PollInterval, time.Second)))
		devs, err := listDevices(s.authCtx(cctx), client)
		cancel()
		if err == nil && !slices.ContainsFunc(devs, func(d BoundDevice) bool { return d.Serial == s.serial.Reveal() }) {
			return "the device is no longer bound to this account"
		}
		return "the gateway closed the session"
	}
	var (
		devs []BoundDevice
		err  error
	)
	if !switched {
		cctx, cancel = context.WithTimeout(ctx, min(clientCallTimeout, max(s.cfg.PollInterval, time.Second)))
		devs, err = listDevices(s.authCtx(cctx), client)
		cancel()
	}
	switch {
	case ctx.Err() != nil:
		return ""
	case switched:
		// The next gateway is asked at the next poll.
	case errors.Is(err, ErrNotLoggedIn):
		return "the gateway no longer accepts the access token"
	case err != nil:
		s.log.Debug("session check", "session", s.id, "error", err)
	default:
		bound := false
		for _, d := range devs {
			if d.Serial == s.serial.Reveal() {
				bound = true
			}
		}
		if !bound {
			return "the device is no longer bound to this account"
		}
	}
	s.peerMu.Lock()
	var keepalive uint32
	if s.tun != nil {
		keepalive = s.tun.peer.keepalive
	}
	since := s.peerSince
	s.peerMu.Unlock()
	if keepalive != 0 {
		last := lastHandshake(s.tun)
		if last.Before(since) {
			last = since
		}
		if now.Sub(last) > handshakeStaleAfter {
			return fmt.Sprintf("no WireGuard handshake with the gateway for %v: the gateway closed the session or is unreachable", now.Sub(last).Round(time.Second))
		}
	}
	return ""
}

// lastHandshake reads the gateway peer's last handshake time (zero if none).
func lastHandshake(t *tunnel) time.Time {
	conf, err := t.dev.IpcGet()
	if err != nil {
		return time.Time{}
	}
	var sec, nsec int64
	for _, line := range strings.Split(conf, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if sec == 0 && nsec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, nsec)
}

// ExportMyData returns everything the gateway stores about the logged-in
// account (the user's right of access), as the gateway's JSON document.
func ExportMyData(ctx context.Context, cfg ClientConfig) (doc string, err error) {
	err = call(ctx, cfg, true, func(ctx context.Context, c gatewayv1.ClientServiceClient) error {
		resp, err := c.ExportMyData(ctx, &gatewayv1.ExportMyDataRequest{})
		if err != nil {
			return clientError("export", err)
		}
		doc = resp.GetJson()
		return nil
	})
	return doc, err
}

// DeleteAccount cancels the logged-in account, confirmed with its
// password: the gateway erases every row of it and returns the receipt
// (rows removed per table). The stored access token, now useless, is
// removed from cfg.StateDir.
func DeleteAccount(ctx context.Context, cfg ClientConfig, password string) (removed map[string]int64, err error) {
	if password == "" {
		return nil, errors.New("password: empty")
	}
	err = call(ctx, cfg, true, func(ctx context.Context, c gatewayv1.ClientServiceClient) error {
		resp, err := c.DeleteAccount(ctx, &gatewayv1.DeleteMyAccountRequest{Password: password})
		if err != nil {
			return clientError("delete account", err)
		}
		removed = resp.GetRemoved()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if cfg.StateDir != "" {
		if rerr := os.Remove(filepath.Join(cfg.StateDir, accessTokenFileName)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return removed, fmt.Errorf("account deleted, but removing the stored token failed: %w", rerr)
		}
	}
	return removed, nil
}
