package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// wireguardGoEnv names a wireguard-go binary built from the module in
// go.mod (`make e2e` builds .bin/wireguard-go); without it the test builds
// one into a temporary directory.
const wireguardGoEnv = "DASSET_WIREGUARD_GO"

// wireguardGo returns the path of a wireguard-go binary.
func wireguardGo(h *harness) string {
	t := h.T
	t.Helper()
	if p := os.Getenv(wireguardGoEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", wireguardGoEnv, p, err)
		}
		return p
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := netnstest.ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "wireguard-go")
	ctx, cancel := context.WithTimeout(h.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "golang.zx2c4.com/wireguard")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build wireguard-go: %v\n%s", err, b)
	}
	return out
}

// TestWGQuickSession joins a session from a stock WireGuard: `dasset-agent
// session open --wg-quick FILE --qr` in a technician's namespace writes the
// configuration, the real `wg-quick up FILE` brings it up there (on
// wireguard-go through WG_QUICK_USERSPACE_IMPLEMENTATION where the host has
// no WireGuard kernel module), and the technician pings the device through
// the gateway over IPv4 and IPv6. Then `wg-quick down`, and Ctrl-C on the
// session command closes the session: the gateway drops the key and the
// same configuration no longer reaches the device.
func TestWGQuickSession(t *testing.T) {
	began := time.Now()
	h := &harness{netnstest.New(t, netnstest.Options{Who: "wg-quick session test", Tools: []string{"wg", "wg-quick", "ping"}})}
	wgGo := wireguardGo(h)
	gwNS, devNS, techNS := "pkgw-"+h.Suffix, "pkdv-"+h.Suffix, "pktc-"+h.Suffix
	for _, ns := range []string{gwNS, devNS, techNS} {
		h.Netns(ns)
	}
	gwDev, gwTech := h.link(gwNS, devNS, 1), h.link(gwNS, techNS, 2)
	g := h.newGatewayNamed(gwNS, "pkg"+h.Suffix)
	g.start()
	g.WaitReady(30 * time.Second)
	fp := g.fingerprint()
	g.MustCtl("enroll", "--serial", sn1, "--hwid", hw1)
	dev := netnstest.AgentSpec{NS: devNS, Gateway: gwDev + ":8443", Pin: fp, Serial: sn1, HWID: hw1,
		Interface: "pka" + h.Suffix, StateDir: filepath.Join(h.Dir, "device"), LogPath: "device.log"}
	a := h.StartAgent(dev)
	devV4 := strings.TrimSuffix(h.WaitAddr(a, devNS, dev.Interface, 30*time.Second), "/32")

	const password = "tech-e2e-password"
	if _, err := h.RunStdin(password+"\n", h.Path("dassetctl"), "--socket", g.Sock, "accounts", "create", "tech", "--password-stdin"); err != nil {
		t.Fatal(err)
	}
	c := client{h: h, ns: techNS, stateDir: filepath.Join(h.Dir, "tech")}
	if _, err := h.RunStdin(password+"\n", "ip", "netns", "exec", techNS, h.Path("dasset-agent"), "login", "--gateway", gwTech+":8443",
		"--pin", fp, "--account", "tech", "--password-stdin", "--state-dir", c.stateDir); err != nil {
		t.Fatal(err)
	}
	c.mustAgent("bind", "--code", h.BindCode(devNS, dev.Gateway, fp, dev.StateDir))

	// The session, handed to a stock WireGuard.
	ifname := "pkq" + h.Suffix
	conf := filepath.Join(h.Dir, ifname+".conf")
	sess := h.Start(techNS, "session.log", h.Path("dasset-agent"), "session", "open", "--serial", sn1,
		"--wg-quick", conf, "--qr", "--state-dir", c.stateDir, "--poll", "250ms", "--log-format", "json")
	out := h.WaitOutput(sess, 30*time.Second, "everything", func(out string) bool { return strings.Contains(out, "Ctrl-C closes it") })
	id, device := netnstest.Field(out, "Session"), netnstest.Field(out, "Device")
	if id == "" || firstV4(device) != devV4 || netnstest.Field(out, "Config") != conf || netnstest.Field(out, "Interface") != "" {
		t.Fatalf("session open printed:\n%s", out)
	}
	if !strings.Contains(out, "▀") && !strings.Contains(out, "▄") {
		t.Fatalf("session open --qr printed no QR code:\n%s", out)
	}
	if _, err := h.Run("ip", "-n", techNS, "link", "show", "dev", "dasset-c0"); err == nil {
		t.Fatal("session open --wg-quick brought up a tunnel of its own")
	}
	st, err := os.Stat(conf)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v; want mode 0600", conf, st, err)
	}
	data, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	var priv string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PrivateKey = "); ok {
			priv = v
		}
	}
	if priv == "" {
		t.Fatalf("%s has no PrivateKey:\n%s", conf, data)
	}
	pubOut, _, err := h.Output(priv+"\n", "wg", "pubkey")
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(pubOut)
	gwPeers := func() []string {
		t.Helper()
		out, err := h.NsRun(gwNS, "wg", "show", g.Interface, "peers")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(out)
	}
	if !slices.Contains(gwPeers(), pub) {
		t.Fatalf("the gateway has no peer with the configuration's key %s: %v", pub, gwPeers())
	}

	// The real wg-quick, in the technician's namespace.
	sock := "/var/run/wireguard/" + ifname + ".sock"
	wgQuick := func(verb string) (string, error) {
		return h.NsRun(techNS, "env", "WG_QUICK_USERSPACE_IMPLEMENTATION="+wgGo, "wg-quick", verb, conf)
	}
	t.Cleanup(func() {
		// After a failure: take the tunnel down; removing the UAPI socket
		// also ends a wireguard-go left behind.
		_, _ = wgQuick("down")
		_ = os.Remove(sock)
	})
	upOut, err := wgQuick("up")
	if err != nil {
		t.Fatalf("wg-quick up: %v", err)
	}
	if strings.Contains(upOut, "world accessible") {
		t.Fatalf("wg-quick warns about the file's mode:\n%s", upOut)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Logf("wg-quick up brought up %s on wireguard-go (%s)", ifname, wgGo)
	} else if _, err := os.Stat("/sys/module/wireguard"); err == nil {
		// wg-quick takes the kernel module whenever the host has one.
		t.Logf("wg-quick up brought up %s on the host's WireGuard kernel module", ifname)
	} else {
		t.Fatalf("wg-quick up: no kernel module and no wireguard-go UAPI socket %s:\n%s", sock, upOut)
	}
	took, err := h.PingWithin(techNS, 15*time.Second, "-c", "1", "-W", "1", devV4)
	if err != nil {
		t.Fatalf("technician → device %s through wg-quick: %v\n%s", devV4, err, upOut)
	}
	t.Logf("technician pings device %s through wg-quick (first reply within %v)", devV4, took.Round(time.Millisecond))
	var devV6 string
	for _, f := range strings.Fields(device) {
		if a, _, _ := strings.Cut(f, "/"); strings.Contains(a, ":") {
			devV6 = a
		}
	}
	if devV6 == "" {
		t.Fatalf("session printed no IPv6 device address: %q", device)
	}
	if _, err := h.PingWithin(techNS, 10*time.Second, "-6", "-c", "1", "-W", "1", devV6); err != nil {
		t.Fatalf("technician → device %s through wg-quick: %v", devV6, err)
	}
	if _, err := h.waitRecord(a, 5*time.Second, "session opened", map[string]string{"session_id": id}); err != nil {
		t.Fatal(err)
	}
	if sess.Exited() {
		t.Fatalf("session open stopped while the app was connected: %v: %s", sess.Err(), sess.LastLine())
	}

	down := func() {
		t.Helper()
		if out, err := wgQuick("down"); err != nil {
			t.Fatalf("wg-quick down: %v\n%s", err, out)
		}
		if err := h.Poll(5*time.Second, 50*time.Millisecond, func() error {
			if _, err := h.Run("ip", "-n", techNS, "link", "show", "dev", ifname); err == nil {
				return fmt.Errorf("interface %s still in %s after wg-quick down", ifname, techNS)
			}
			if _, err := os.Stat(sock); err == nil {
				return fmt.Errorf("%s still there after wg-quick down", sock)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	down()

	// Ctrl-C closes the session: exit 0, the gateway forgets the key, the
	// device hears of it, and the configuration no longer gets through.
	if err := sess.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if ok, err := sess.Wait(15 * time.Second); !ok || err != nil {
		t.Fatalf("session open after SIGINT: ended=%v, %v: %s", ok, err, sess.LastLine())
	}
	if _, err := h.waitRecord(a, 5*time.Second, "session closed", map[string]string{"session_id": id}); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(gwPeers(), pub) {
		t.Fatalf("the gateway still has the closed session's key %s", pub)
	}
	if _, err := wgQuick("up"); err != nil {
		t.Fatalf("wg-quick up again: %v", err)
	}
	if out, err := h.NsRun(techNS, "ping", "-c", "2", "-W", "1", devV4); err == nil {
		t.Fatalf("the closed session's configuration still reaches the device: %s", out)
	}
	down()
	t.Logf("wg-quick session flow done in %.1fs", time.Since(began).Seconds())
}
