// Package restore holds the end-to-end test of erasure across a restore:
// the real dasset-gateway, dassetctl and dasset-agent processes, with the
// gateway on its userspace network stack (tunnel.mode: netstack) so it runs
// without root, on loopback only.
package restore

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

const (
	snKept, hwKept     = "RESTORE-SN-KEPT-01", "RESTORE-HW-KEPT-01"
	snErased, hwErased = "RESTORE-SN-GONE-02", "RESTORE-HW-GONE-02"
	acctKept, acctGone = "restore-kept", "restore-gone"
	password           = "restore test password 1"
	passphrase         = "restore test passphrase"
)

// TestErasureSurvivesRestore: two devices and two accounts enrolled and
// logged in; a copy of the data directory; one device erased and one
// account deleted; a keystore backup; everything wiped; the OLD data
// directory and the keystore backup restored. At start the gateway erases
// them again: no device row, no peer, logins refused, exports NotFound,
// while the others still work, and the audit log verifies.
func TestErasureSurvivesRestore(t *testing.T) {
	bin := netnstest.FindBinaries(context.Background(), t)
	work := t.TempDir()
	dataDir, keysDir := filepath.Join(work, "data"), filepath.Join(work, "keys")
	g := &gateway{t: t, bin: bin, dir: work, dataDir: dataDir, keysDir: keysDir}
	g.writeConfig()

	g.start("gateway-1")
	csv := filepath.Join(work, "devices.csv")
	if err := os.WriteFile(csv, []byte("serial_number,hardware_id\n"+snKept+","+hwKept+"\n"+snErased+","+hwErased+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.ctl("", "enroll", "--file", csv)
	for _, a := range []string{acctKept, acctGone} {
		g.ctl(password+"\n", "accounts", "create", a, "--password-stdin")
	}
	// Both devices log in (their tunnels come up as peers), both accounts
	// log in.
	kept := g.agentUp("agent-kept", snKept, hwKept)
	gone := g.agentUp("agent-gone", snErased, hwErased)
	g.waitDevicePeers(2)
	for _, p := range []*netnstest.Proc{kept, gone} {
		p.Stop(netnstest.StopGrace)
	}
	for _, a := range []string{acctKept, acctGone} {
		if out, err := g.clientLogin(a); err != nil {
			t.Fatalf("login %s: %v\n%s", a, err, out)
		}
	}
	g.stop()

	// The copy of the data directory, taken before the erasures.
	old := filepath.Join(work, "data-old")
	copyDir(t, dataDir, old)

	g.start("gateway-2")
	g.ctl("", "subject", "erase", "--serial", snErased, "--reason", "user asked", "--yes")
	del := g.ctl("", "-o", "json", "accounts", "delete", acctGone)
	var receipt struct {
		Removed map[string]string `json:"removed"`
	}
	if err := json.Unmarshal([]byte(del), &receipt); err != nil {
		t.Fatalf("accounts delete -o json: %v\n%s", err, del)
	}
	if receipt.Removed["accounts"] != "1" || receipt.Removed["wal_checkpointed"] != "1" || receipt.Removed["connection_log"] == "0" {
		t.Fatalf("account deletion receipt %v: want the account, its connection-log rows and the WAL checkpoint", receipt.Removed)
	}
	backup := filepath.Join(work, "keystore.backup")
	g.ctl(passphrase+"\n", "keys", "backup", "--keystore", keysDir, "--out", backup, "--passphrase-stdin")
	g.stop()

	// Wipe; restore the OLD data directory and the keystore backup.
	for _, d := range []string{dataDir, keysDir} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	copyDir(t, old, dataDir)
	g.ctl(passphrase+"\n", "keys", "restore", "--keystore", keysDir, "--in", backup, "--passphrase-stdin")

	g.start("gateway-3")
	if log := g.p.LogText(); !strings.Contains(log, "erased again") {
		t.Fatalf("the gateway did not report erasing the restored subjects again:\n%s", log)
	}
	// No row.
	list := g.ctl("", "devices", "list", "--reveal", "--reason", "restore test")
	if !strings.Contains(list, snKept) || strings.Contains(list, snErased) {
		t.Fatalf("devices after restore: want %s and not %s:\n%s", snKept, snErased, list)
	}
	for _, subj := range [][]string{{"--serial", snErased}, {"--account", acctGone}} {
		_, err := g.ctlErr("", append(append([]string{"subject", "export"}, subj...), "--reason", "restore test")...)
		if err == nil || !strings.Contains(err.Error(), "NotFound") {
			t.Fatalf("export of erased %v after restore: %v, want NotFound", subj, err)
		}
	}
	// No peer: only the kept device is back.
	g.waitDevicePeers(1)
	// Logins refused (unknown), while the kept ones work.
	// (An unknown account and a wrong password get one answer, by design.)
	if out, err := g.clientLogin(acctGone); err == nil || !strings.Contains(out, "wrong account or password") {
		t.Fatalf("login of the deleted account after restore: %v\n%s", err, out)
	}
	if out, err := g.clientLogin(acctKept); err != nil {
		t.Fatalf("login of the kept account after restore: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "dasset-agent"), g.agentArgs("agent-gone-again", snErased, hwErased)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not enrolled") {
		t.Fatalf("the erased device's login after restore: %v\n%s", err, out)
	}
	// The audit log (kept with the keys) verifies and holds the erasures.
	if v := g.ctl("", "audit", "verify"); !strings.Contains(v, "audit log verifies") {
		t.Fatalf("audit verify: %s", v)
	}
	audit, err := os.ReadFile(filepath.Join(keysDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"action":"erase_subject"`, `"action":"delete_account"`} {
		if !strings.Contains(string(audit), want) {
			t.Fatalf("restored audit log lacks %s:\n%s", want, audit)
		}
	}

	// The user's own rights, from the client: access, then cancellation.
	state := filepath.Join(g.dir, "client-"+acctKept)
	export, err := g.agent("", "export-data", "--state-dir", state)
	if err != nil || !strings.Contains(export, `"name": "`+acctKept+`"`) {
		t.Fatalf("export-data: %v\n%s", err, export)
	}
	if out, err := g.agent(password+"\n", "delete-account", "--password-stdin", "--state-dir", state); err == nil || !strings.Contains(out, "--yes") {
		t.Fatalf("delete-account without --yes: %v\n%s", err, out)
	}
	deleted, err := g.agent(password+"\n", "delete-account", "--yes", "--password-stdin", "--state-dir", state)
	if err != nil || !strings.Contains(deleted, "accounts=1") || !strings.Contains(deleted, "wal_checkpointed=1") {
		t.Fatalf("delete-account: %v\n%s", err, deleted)
	}
	if out, err := g.clientLogin(acctKept); err == nil {
		t.Fatalf("login after the user's own cancellation succeeded:\n%s", out)
	}
	g.stop()
}

type gateway struct {
	t                     *testing.T
	bin, dir              string
	dataDir, keysDir      string
	config, sock          string
	grpcAddr, metricsAddr string
	wgPort                int
	p                     *netnstest.Proc
}

func (g *gateway) writeConfig() {
	g.config, g.sock = filepath.Join(g.dir, "gateway.yaml"), filepath.Join(g.dir, "admin.sock")
	g.grpcAddr, g.metricsAddr, g.wgPort = netnstest.FreeTCP(g.t), netnstest.FreeTCP(g.t), netnstest.FreeUDPPort(g.t)
	yaml := fmt.Sprintf(`# written by scripts/restore
data_dir: %s
keystore_dir: %s
log:
  level: info
  format: json
tunnel:
  mode: netstack
  interface: rst%d
  listen_port: %d
  uapi: false
grpc:
  listen: %s
  insecure: true
admin:
  socket: %s
  operators:
    - uid: %d
      name: restore-test
      roles: [operator, privacy]
metrics:
  listen: %s
`, g.dataDir, g.keysDir, os.Getpid()%100000, g.wgPort, g.grpcAddr, g.sock, os.Getuid(), g.metricsAddr)
	if err := os.WriteFile(g.config, []byte(yaml), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// start runs the gateway and waits (bounded) until its admin socket answers.
func (g *gateway) start(name string) {
	g.t.Helper()
	g.p = g.startProc(name, "dasset-gateway", "serve", "--config", g.config)
	err := poll.Until(context.Background(), 60*time.Second, 100*time.Millisecond, func() error {
		if g.p.Exited() {
			return fmt.Errorf("exited: %s", g.p.LogText())
		}
		_, err := g.ctlErr("", "status")
		return err
	})
	if err != nil {
		g.t.Fatalf("%s not ready: %v", name, err)
	}
}

func (g *gateway) stop() {
	g.t.Helper()
	if graceful, _ := g.p.Stop(netnstest.StopGrace); !graceful {
		g.t.Fatalf("%s did not stop on SIGTERM", g.p.Name)
	}
}

func (g *gateway) ctlErr(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(g.bin, "dassetctl"), append([]string{"--socket", g.sock}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("dassetctl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (g *gateway) ctl(stdin string, args ...string) string {
	g.t.Helper()
	out, err := g.ctlErr(stdin, args...)
	if err != nil {
		g.t.Fatal(err)
	}
	return out
}

func (g *gateway) agentArgs(name, sn, hw string) []string {
	return []string{"up", "--gateway", g.grpcAddr, "--insecure", "--serial", sn, "--hwid", hw, "--netstack",
		"--interface", "rst" + name[len(name)-4:], "--state-dir", filepath.Join(g.dir, name)}
}

func (g *gateway) agentUp(name, sn, hw string) *netnstest.Proc {
	return g.startProc(name, "dasset-agent", g.agentArgs(name, sn, hw)...)
}

// startProc runs one of the binaries in the background, its output in
// NAME.log; the test's cleanup stops it.
func (g *gateway) startProc(name, bin string, args ...string) *netnstest.Proc {
	g.t.Helper()
	return netnstest.StartProc(g.t, filepath.Join(g.dir, name+".log"), append([]string{filepath.Join(g.bin, bin)}, args...)...)
}

// agent runs dasset-agent with args and stdin, returning its combined output.
func (g *gateway) agent(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(g.bin, "dasset-agent"), args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (g *gateway) clientLogin(account string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(g.bin, "dasset-agent"), "login", "--gateway", g.grpcAddr, "--insecure",
		"--account", account, "--password-stdin", "--state-dir", filepath.Join(g.dir, "client-"+account))
	cmd.Stdin = strings.NewReader(password + "\n")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitDevicePeers waits (bounded) until the gateway has exactly n device
// peers.
func (g *gateway) waitDevicePeers(n int) {
	g.t.Helper()
	err := poll.Until(context.Background(), 30*time.Second, 100*time.Millisecond, func() error {
		var resp struct {
			Peers []struct {
				Kind string `json:"kind"`
			} `json:"peers"`
		}
		out := g.ctl("", "-o", "json", "peers")
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			g.t.Fatalf("peers -o json: %v\n%s", err, out)
		}
		got := 0
		for _, p := range resp.Peers {
			if p.Kind == "device" {
				got++
			}
		}
		if got != n {
			return fmt.Errorf("%d device peers, want %d:\n%s", got, n, out)
		}
		return nil
	})
	if err != nil {
		g.t.Fatal(err)
	}
}

// copyDir copies the regular files of a directory tree, keeping their modes.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(dst, fi.Mode().Perm())
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
