package fleet

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/agent"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// The driver is the test binary re-executed inside the devices' namespace
// (driverEnv names its configuration file): it runs every device as an
// in-process netstack agent given all the gateways, and the two accounts'
// client apps, and answers the test's requests (state, pings through the
// tunnels, binding, client logins, sessions) as JSON over HTTP on a unix
// socket in the test's directory, which the test reaches through the shared
// file system from outside the namespace.
const driverEnv = "DASSET_FLEET_DRIVER"

// driverConfig is what the driver is told to run.
type driverConfig struct {
	Socket   string     `json:"socket"`
	Gateways []string   `json:"gateways"` // HOST:PORT of each gateway's gRPC listener
	Pin      string     `json:"pin"`      // SHA-256 of the fleet's certificate
	StateDir string     `json:"state_dir"`
	Devices  []identity `json:"devices"`
}

type identity struct {
	Serial string `json:"serial"`
	HWID   string `json:"hwid"`
}

// deviceState is one agent as the driver sees it.
type deviceState struct {
	Serial   string   `json:"serial"`
	Key      string   `json:"key"`      // WireGuard public key, base64 (as dassetctl -o json)
	Instance string   `json:"instance"` // gateway instance of its last login
	Addrs    []string `json:"addrs"`    // virtual addresses while up
	Ended    string   `json:"ended"`    // why Run returned ("" while it runs)
}

// pingRequest asks for a ping to Dst through each listed device's tunnel
// (every device when Serials is empty), retried for up to WithinMS each.
type pingRequest struct {
	Serials  []string `json:"serials"`
	Dst      string   `json:"dst"`
	WithinMS int      `json:"within_ms"`
}

// pingResult lists the devices whose ping got no reply, with why.
type pingResult struct {
	OK     int               `json:"ok"`
	Failed map[string]string `json:"failed"`
}

type clientRequest struct {
	Gateway  string `json:"gateway"`
	Account  string `json:"account"`
	Password string `json:"password,omitempty"`
	Serial   string `json:"serial,omitempty"`
	Code     string `json:"code,omitempty"`
	ID       string `json:"id,omitempty"`
	WithinMS int    `json:"within_ms,omitempty"`
}

type clientResult struct {
	Code    string   `json:"code,omitempty"` // gRPC code of a call ("OK" on success)
	Error   string   `json:"error,omitempty"`
	Binding string   `json:"binding,omitempty"`
	ID      string   `json:"id,omitempty"`
	Device  []string `json:"device,omitempty"`
	// PeerKey and Moves are a session's current gateway peer (base64) and
	// how often it changed (the device moved to another gateway).
	PeerKey string `json:"peer_key,omitempty"`
	Moves   int    `json:"moves,omitempty"`
}

type runningAgent struct {
	a     *agent.Agent
	id    identity
	state string
	mu    sync.Mutex
	ended string
}

type driver struct {
	cfg      driverConfig
	log      *slog.Logger
	agents   map[string]*runningAgent
	order    []string
	mu       sync.Mutex
	tokens   map[string]string // account → access token
	sessions map[string]*agent.Session
}

// runDriver is the driver's main: it returns the process's exit code.
func runDriver(path string) int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := driverMain(path, log); err != nil {
		log.Error("driver failed", "error", err)
		return 1
	}
	return 0
}

func driverMain(path string, log *slog.Logger) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg driverConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	d := &driver{cfg: cfg, log: log, agents: map[string]*runningAgent{},
		tokens: map[string]string{}, sessions: map[string]*agent.Session{}}
	var wg sync.WaitGroup
	defer wg.Wait()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, id := range cfg.Devices {
		a, err := agent.New(agent.Config{
			Gateway: strings.Join(cfg.Gateways, ","), Serial: id.Serial, HardwareID: id.HWID,
			StateDir: filepath.Join(cfg.StateDir, fmt.Sprint(i)), Pin: cfg.Pin, Netstack: true,
			Logger:     log.With("device", i),
			MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second,
		})
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		ra := &runningAgent{a: a, id: id, state: filepath.Join(cfg.StateDir, fmt.Sprint(i))}
		d.agents[id.Serial] = ra
		d.order = append(d.order, id.Serial)
		wg.Go(func() {
			err := a.Run(actx)
			ra.mu.Lock()
			ra.ended = fmt.Sprintf("run ended: %v", err)
			ra.mu.Unlock()
			log.Info("agent ended", "device", i, "error", err)
		})
	}
	_ = os.Remove(cfg.Socket)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /devices", d.devices)
	mux.HandleFunc("POST /ping", d.ping)
	mux.HandleFunc("POST /bindcode", d.bindCode)
	mux.HandleFunc("POST /client/login", d.clientLogin)
	mux.HandleFunc("POST /device/login", d.deviceLogin)
	mux.HandleFunc("POST /client/bind", d.bind)
	mux.HandleFunc("POST /session/open", d.openSession)
	mux.HandleFunc("POST /session/ping", d.pingSession)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Println("driver ready")
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	cancel()
	d.mu.Lock()
	for _, s := range d.sessions {
		cctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.Close(cctx)
		c()
	}
	d.mu.Unlock()
	return nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(v); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func (d *driver) devices(w http.ResponseWriter, _ *http.Request) {
	out := make([]deviceState, 0, len(d.order))
	for _, sn := range d.order {
		ra := d.agents[sn]
		pub := ra.a.PublicKey()
		st := deviceState{Serial: sn, Key: base64.StdEncoding.EncodeToString(pub[:]), Instance: ra.a.GatewayInstance()}
		for _, p := range ra.a.Addresses() {
			st.Addrs = append(st.Addrs, p.String())
		}
		ra.mu.Lock()
		st.Ended = ra.ended
		ra.mu.Unlock()
		out = append(out, st)
	}
	reply(w, out)
}

// pingParallel is how many pings are in flight at once.
const pingParallel = 32

func (d *driver) ping(w http.ResponseWriter, r *http.Request) {
	var req pingRequest
	if !decode(w, r, &req) {
		return
	}
	dst, err := netip.ParseAddr(req.Dst)
	if err != nil {
		http.Error(w, "dst: "+err.Error(), http.StatusBadRequest)
		return
	}
	serials := req.Serials
	if len(serials) == 0 {
		serials = d.order
	}
	within := time.Duration(req.WithinMS) * time.Millisecond
	res := pingResult{Failed: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, pingParallel)
	for _, sn := range serials {
		ra, ok := d.agents[sn]
		if !ok {
			http.Error(w, "no device "+sn, http.StatusBadRequest)
			return
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			err := poll.Until(r.Context(), within, 200*time.Millisecond, func() error {
				return pingFrom(ra.a.Net(), ra.a.Addresses(), dst)
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed[sn] = err.Error()
			} else {
				res.OK++
			}
		})
	}
	wg.Wait()
	reply(w, res)
}

func (d *driver) tls() agent.TLSOptions { return agent.TLSOptions{Pin: d.cfg.Pin} }

func (d *driver) bindCode(w http.ResponseWriter, r *http.Request) {
	var req clientRequest
	if !decode(w, r, &req) {
		return
	}
	ra, ok := d.agents[req.Serial]
	if !ok {
		http.Error(w, "no such device", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	code, _, _, err := agent.BindCode(ctx, agent.Config{Gateway: strings.Join(d.cfg.Gateways, ","), StateDir: ra.state, Pin: d.cfg.Pin})
	if err != nil {
		reply(w, clientResult{Error: err.Error()})
		return
	}
	reply(w, clientResult{Code: "OK", Binding: code})
}

// clientLogin logs an account in on one gateway with a plain gRPC call, so
// that the answer's code is exactly the gateway's (Unavailable during a
// registry outage).
func (d *driver) clientLogin(w http.ResponseWriter, r *http.Request) {
	var req clientRequest
	if !decode(w, r, &req) {
		return
	}
	conn, err := agent.Dial(req.Gateway, d.tls())
	if err != nil {
		reply(w, clientResult{Error: err.Error()})
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	resp, err := gatewayv1.NewClientServiceClient(conn).Login(ctx, &gatewayv1.ClientLoginRequest{Account: req.Account, Password: req.Password})
	if err != nil {
		st := status.Convert(err)
		reply(w, clientResult{Code: st.Code().String(), Error: st.Message()})
		return
	}
	d.mu.Lock()
	d.tokens[req.Account] = resp.GetAccessToken()
	d.mu.Unlock()
	reply(w, clientResult{Code: "OK"})
}

// deviceLogin sends one DeviceService.Login of a device the driver does not
// run (its serial number and hardware id in the request) with a fresh key,
// so that the answer's code is exactly the gateway's.
func (d *driver) deviceLogin(w http.ResponseWriter, r *http.Request) {
	var req clientRequest
	if !decode(w, r, &req) {
		return
	}
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	conn, err := agent.Dial(req.Gateway, d.tls())
	if err != nil {
		reply(w, clientResult{Error: err.Error()})
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	_, err = gatewayv1.NewDeviceServiceClient(conn).Login(ctx, &gatewayv1.DeviceLoginRequest{
		SerialNumber: req.Serial, HardwareId: req.Password, PublicKey: key.PublicKey().Bytes(), AgentVersion: "fleet-e2e"})
	if err != nil {
		st := status.Convert(err)
		reply(w, clientResult{Code: st.Code().String(), Error: st.Message()})
		return
	}
	reply(w, clientResult{Code: "OK"})
}

func (d *driver) clientConfig(req clientRequest) (agent.ClientConfig, error) {
	d.mu.Lock()
	tok := d.tokens[req.Account]
	d.mu.Unlock()
	if tok == "" {
		return agent.ClientConfig{}, fmt.Errorf("account %s: not logged in", req.Account)
	}
	return agent.ClientConfig{Gateway: req.Gateway, TLS: d.tls(), Token: tok, Netstack: true,
		Logger: d.log.With("account", req.Account), PollInterval: time.Second}, nil
}

func (d *driver) bind(w http.ResponseWriter, r *http.Request) {
	var req clientRequest
	if !decode(w, r, &req) {
		return
	}
	cfg, err := d.clientConfig(req)
	if err == nil {
		ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
		defer cancel()
		_, err = agent.Bind(ctx, cfg, req.Code)
	}
	if err != nil {
		reply(w, clientResult{Error: err.Error()})
		return
	}
	reply(w, clientResult{Code: "OK"})
}

func (d *driver) openSession(w http.ResponseWriter, r *http.Request) {
	var req clientRequest
	if !decode(w, r, &req) {
		return
	}
	cfg, err := d.clientConfig(req)
	var s *agent.Session
	if err == nil {
		ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
		defer cancel()
		s, err = agent.OpenSession(ctx, cfg, req.Serial)
	}
	if err != nil {
		reply(w, clientResult{Error: err.Error()})
		return
	}
	d.mu.Lock()
	d.sessions[s.ID()] = s
	d.mu.Unlock()
	key, _, _ := s.GatewayPeer()
	res := clientResult{Code: "OK", ID: s.ID(), PeerKey: base64.StdEncoding.EncodeToString(key[:])}
	for _, p := range s.DeviceAddresses() {
		res.Device = append(res.Device, p.String())
	}
	reply(w, res)
}

// pingSession pings the session's device (its IPv4 address) through the
// session's own tunnel.
func (d *driver) pingSession(w http.ResponseWriter, r *http.Request) {
	var req clientRequest
	if !decode(w, r, &req) {
		return
	}
	d.mu.Lock()
	s := d.sessions[req.ID]
	d.mu.Unlock()
	if s == nil {
		http.Error(w, "no such session", http.StatusBadRequest)
		return
	}
	var dst netip.Addr
	for _, p := range s.DeviceAddresses() {
		if p.Addr().Is4() {
			dst = p.Addr()
		}
	}
	err := poll.Until(r.Context(), time.Duration(req.WithinMS)*time.Millisecond, 200*time.Millisecond, func() error {
		return pingFrom(s.Net(), s.ClientAddresses(), dst)
	})
	key, _, moves := s.GatewayPeer()
	res := clientResult{PeerKey: base64.StdEncoding.EncodeToString(key[:]), Moves: moves}
	if err != nil {
		res.Error = err.Error()
		reply(w, res)
		return
	}
	res.Code = "OK"
	reply(w, res)
}

// pingFrom sends one ICMP echo from the netstack n (source: its IPv4
// address among addrs) to the IPv4 address dst and waits up to a second
// for the reply.
func pingFrom(n *netstack.Net, addrs []netip.Prefix, dst netip.Addr) error {
	if n == nil {
		return errors.New("tunnel down")
	}
	var src netip.Addr
	for _, p := range addrs {
		if p.Addr().Is4() {
			src = p.Addr()
		}
	}
	c, err := n.DialPingAddr(src, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 4242, Seq: 1, Data: []byte("dasset-fleet")}}).Marshal(nil)
	if err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(b); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	nr, err := c.Read(buf)
	if err != nil {
		return err
	}
	m, err := icmp.ParseMessage(1, buf[:nr])
	if err != nil {
		return err
	}
	if m.Type != ipv4.ICMPTypeEchoReply {
		return fmt.Errorf("got ICMP %v, want echo reply", m.Type)
	}
	return nil
}

// driverClient is the test's side of the driver.
type driverClient struct {
	http *http.Client
}

func newDriverClient(socket string) *driverClient {
	return &driverClient{http: &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", socket)
		}},
	}}
}

// call sends in (nil: a GET) to path and decodes the answer into out.
func (c *driverClient) call(path string, in, out any) error {
	var resp *http.Response
	var err error
	if in == nil {
		resp, err = c.http.Get("http://driver" + path)
	} else {
		b, merr := json.Marshal(in)
		if merr != nil {
			return merr
		}
		resp, err = c.http.Post("http://driver"+path, "application/json", bytes.NewReader(b))
	}
	if err != nil {
		return fmt.Errorf("driver %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("driver %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("driver %s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, out)
}
