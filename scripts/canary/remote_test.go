package canary

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// remoteSpec says where the remote-control client runs and which device it
// controls (device 1, with sn1).
type remoteSpec struct {
	ns  string // the client's namespace
	pin string // the gateway's certificate fingerprint
	// login and bind are the gateway addresses (HOST:PORT) the client logs
	// in over (and keeps for its session) and binds over.
	login, bind string
	// The device: its namespace, running agent, virtual IPv4 address, and
	// how its own `bind-code` reaches the gateway.
	devNS, devV4, devGateway, devStateDir string
	devAgent                              *netnstest.Proc
}

// remoteControl runs one full remote-control session with the dasset-agent
// client commands: an account (acctClient) created by the operator, a
// login, device 1 bound by the code it shows, a session opened on a kernel
// TUN, device 1 pinged through it (IPv4 and IPv6), the session closed, the
// device unbound. The client's state and output stay outside the scanned
// set; what the gateway wrote about it is scanned with the rest.
func (h *harness) remoteControl(g *gateway, s remoteSpec) {
	t := h.T
	t.Helper()
	began := time.Now()
	agent := h.Path("dasset-agent")
	stateDir := filepath.Join(h.Dir, "client")
	cli := func(args ...string) string {
		t.Helper()
		out, err := h.NsRun(s.ns, append(append([]string{agent}, args...), "--state-dir", stateDir)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	if _, err := g.CtlStdin(pwClient+"\n", "accounts", "create", acctClient, "--password-stdin"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.RunStdin(pwClient+"\n", "ip", "netns", "exec", s.ns, agent, "login", "--gateway", s.login,
		"--pin", s.pin, "--account", acctClient, "--password-stdin", "--state-dir", stateDir); err != nil {
		t.Fatal(err)
	}

	code := h.BindCode(s.devNS, s.devGateway, s.pin, s.devStateDir)
	if out := cli("bind", "--code", code, "--gateway", s.bind); !strings.Contains(out, "Bound device "+sn1) {
		t.Fatalf("client bind: %q", out)
	}
	if out := cli("devices"); !strings.Contains(out, sn1) || !strings.Contains(out, s.devV4) {
		t.Fatalf("client devices: want device 1 with %s:\n%s", s.devV4, out)
	}

	// The session, on its own TUN in the client namespace.
	ifname := "ccx" + h.Suffix
	p := h.Start(s.ns, "client-session.log", agent, "session", "open", "--serial", sn1,
		"--interface", ifname, "--state-dir", stateDir, "--poll", "250ms", "--log-format", "json")
	printed := h.WaitOutput(p, 30*time.Second, "its addresses", func(out string) bool { return netnstest.Field(out, "Expires") != "" })
	id, device := netnstest.Field(printed, "Session"), strings.Fields(netnstest.Field(printed, "Device"))
	if id == "" || len(device) == 0 {
		t.Fatalf("session open printed %q", printed)
	}
	h.WaitAddr(p, s.ns, ifname, 10*time.Second)
	for _, prefix := range device {
		dst, _, _ := strings.Cut(prefix, "/")
		if _, err := h.PingWithin(s.ns, 10*time.Second, "-c", "1", "-W", "1", dst); err != nil {
			t.Fatalf("client → device 1 %s through the session: %v", dst, err)
		}
	}
	// The session's WireGuard reached the gateway from the client's canary
	// IPv6 address (the gateway knows it as the peer's endpoint).
	if _, err := exec.LookPath("wg"); err == nil {
		eps, err := h.NsRun(g.NS, "wg", "show", g.Interface, "endpoints")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(eps, "["+clientv6+"]:") {
			t.Fatalf("gateway's WireGuard endpoints during the session lack [%s]:\n%s", clientv6, eps)
		}
	}
	if err := h.Poll(5*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(s.devAgent.LogText(), id) {
			return fmt.Errorf("device 1 never heard of session %s", id)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	if out := cli("session", "close", "--id", id); !strings.Contains(out, "Session "+id+" closed.") {
		t.Fatalf("session close: %q", out)
	}
	if ok, err := p.Wait(10 * time.Second); ok {
		t.Logf("session open ended after the close: %v: %s", err, p.LastLine())
	} else {
		t.Logf("session open still ran 10s after the close; stopping it")
	}
	p.Stop(5 * time.Second)

	if out := cli("unbind", "--serial", sn1); !strings.Contains(out, "Unbound device "+sn1) {
		t.Fatalf("client unbind: %q", out)
	}
	if out := cli("devices"); strings.Contains(out, sn1) {
		t.Fatalf("client still lists device 1 after unbind:\n%s", out)
	}
	t.Logf("remote control from %s / %s as %s: bound, session %s to %s pinged, closed, unbound (%.1fs)",
		clientv6, clientv4, acctClient, id, strings.Join(device, " "), time.Since(began).Seconds())
}
