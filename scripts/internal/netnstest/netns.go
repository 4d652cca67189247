package netnstest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Netns creates a network namespace with its loopback up, deleted when the
// test ends (after the processes in it are stopped: cleanups run in
// reverse). A leftover of a crashed run with the same name is removed first.
func (h *Harness) Netns(name string) {
	h.T.Helper()
	_, _ = h.Run("ip", "netns", "del", name)
	h.MustRun("ip", "netns", "add", name)
	h.T.Cleanup(func() {
		if _, err := h.Run("ip", "netns", "del", name); err != nil {
			h.T.Errorf("cleanup: %v", err)
		}
	})
	h.MustRun("ip", "-n", name, "link", "set", "lo", "up")
}

// Veth is one veth pair between a gateway namespace and a peer namespace,
// with the addresses of each side (IPv6 ones without duplicate address
// detection, so they are usable at once).
type Veth struct {
	GwNS, PeerNS       string
	GwIf, PeerIf       string
	GwAddrs, PeerAddrs []netip.Prefix
}

// Link creates v and returns once the peer side pings every gateway side
// address.
func (h *Harness) Link(v Veth) {
	h.T.Helper()
	h.MustRun("ip", "-n", v.GwNS, "link", "add", v.GwIf, "type", "veth", "peer", "name", v.PeerIf, "netns", v.PeerNS)
	for _, side := range []struct {
		ns, ifname string
		addrs      []netip.Prefix
	}{{v.GwNS, v.GwIf, v.GwAddrs}, {v.PeerNS, v.PeerIf, v.PeerAddrs}} {
		for _, a := range side.addrs {
			h.MustRun("ip", AddrArgs(side.ns, side.ifname, a)...)
		}
	}
	h.MustRun("ip", "-n", v.GwNS, "link", "set", v.GwIf, "up")
	h.MustRun("ip", "-n", v.PeerNS, "link", "set", v.PeerIf, "up")
	for _, a := range v.GwAddrs {
		dst := a.Addr().String()
		if err := h.Poll(10*time.Second, 100*time.Millisecond, func() error {
			_, err := h.NsRun(v.PeerNS, "ping", "-c", "1", "-W", "1", dst)
			return err
		}); err != nil {
			h.T.Fatalf("veth %s→%s (%s): %v", v.PeerNS, v.GwNS, dst, err)
		}
	}
}

// AddrArgs are the `ip` arguments that put address a on ifname in ns
// (IPv6 with nodad).
func AddrArgs(ns, ifname string, a netip.Prefix) []string {
	if a.Addr().Is4() {
		return []string{"-n", ns, "addr", "add", a.String(), "dev", ifname}
	}
	return []string{"-n", ns, "-6", "addr", "add", a.String(), "dev", ifname, "nodad"}
}

// AgentSpec says how to run one `dasset-agent up`.
type AgentSpec struct {
	NS        string
	Gateway   string // HOST:PORT of the gateway's gRPC listener
	Pin       string // SHA-256 of the gateway's certificate, hex
	Serial    string
	HWID      string
	Interface string
	StateDir  string
	LogPath   string // relative to the harness's Dir unless absolute
}

// StartAgent runs `dasset-agent up` as s says, logging JSON. The serial
// number and hardware id reach it in files (0600, beside its state
// directory), as on a device: never on its command line.
func (h *Harness) StartAgent(s AgentSpec) *Proc {
	h.T.Helper()
	dir, err := os.MkdirTemp(h.Dir, "identity-")
	if err != nil {
		h.T.Fatal(err)
	}
	serialFile, hwidFile := filepath.Join(dir, "serial"), filepath.Join(dir, "hwid")
	for f, v := range map[string]string{serialFile: s.Serial, hwidFile: s.HWID} {
		if err := os.WriteFile(f, []byte(v+"\n"), 0o600); err != nil {
			h.T.Fatal(err)
		}
	}
	return h.Start(s.NS, s.LogPath, h.Path("dasset-agent"), "up",
		"--gateway", s.Gateway, "--serial-file", serialFile, "--hwid-file", hwidFile,
		"--interface", s.Interface, "--state-dir", s.StateDir, "--pin", s.Pin,
		"--log-format", "json")
}

// BindCode runs `dasset-agent bind-code` for the device whose state is in
// stateDir, inside ns, and returns the binding code it printed.
func (h *Harness) BindCode(ns, gateway, pin, stateDir string) string {
	h.T.Helper()
	out, err := h.NsRun(ns, h.Path("dasset-agent"), "bind-code", "--gateway", gateway, "--pin", pin,
		"--state-dir", stateDir, "--no-qr")
	if err != nil {
		h.T.Fatal(err)
	}
	code := Field(out, "Binding code")
	if code == "" {
		h.T.Fatalf("bind-code printed no code: %q", out)
	}
	return code
}

// WaitAddr waits until ifname in ns carries a virtual IPv4 address (in
// 100.64.0.0/10) while p runs, and returns it with its prefix length.
func (h *Harness) WaitAddr(p *Proc, ns, ifname string, within time.Duration) string {
	h.T.Helper()
	var addr string
	err := h.Poll(within, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v: %s", p.Name, p.Err(), p.LastLine())
		}
		out, err := h.Run("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", ifname)
		if err != nil {
			return err
		}
		if addr = VirtualAddr(out); addr != "" {
			return nil
		}
		return fmt.Errorf("%s in %s: no virtual address yet: %s", ifname, ns, strings.TrimSpace(out))
	})
	if err != nil {
		h.T.Fatalf("%s: %v", p.Name, err)
	}
	return addr
}

// VirtualAddr is the first field of `ip -o -4 addr show` output that is a
// prefix in 100.64.0.0/10 (the gateway's virtual addresses), or "".
func VirtualAddr(ipOutput string) string {
	cgnat := netip.MustParsePrefix("100.64.0.0/10")
	for _, f := range strings.Fields(ipOutput) {
		if p, err := netip.ParsePrefix(f); err == nil && cgnat.Contains(p.Addr()) {
			return f
		}
	}
	return ""
}

// CertFingerprint is the SHA-256 (lower-case hex) of the DER certificate in
// a PEM file, as the gateway logs it and agents pin it.
func CertFingerprint(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return "", fmt.Errorf("%s: no PEM certificate", path)
	}
	sum := sha256.Sum256(blk.Bytes)
	return hex.EncodeToString(sum[:]), nil
}

// HTTPGetEnv, set to a URL, tells a re-executed test binary to run HTTPGet
// on it and exit (a TestMain calls HTTPGet; see Gateway.Get).
const HTTPGetEnv = "DASSET_NETNSTEST_HTTPGET"

// HTTPGet fetches url (within 3s), writes the body to stdout and returns the
// exit code: 0 only for a 200, 1 for a failed or refused request, 2 for a
// bad URL. What went wrong goes to stderr.
func HTTPGet(url string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer resp.Body.Close()
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, resp.Status)
		return 1
	}
	return 0
}
