package canary

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// The canaries: recognisable values that exist nowhere but in this test.
const (
	sn1, hw1 = "CANARY-SN-7f3a91", "CANARY-HW-c0ffee42" // logs in over IPv4 from dev1; exported, then revoked
	sn2, hw2 = "CANARY-SN-2b8e64", "CANARY-HW-d00dfeed" // logs in over IPv6 from dev2; erased
	sn3, hw3 = "CANARY-SN-93c4d0", "CANARY-HW-5eed1e55" // never logs in; its export is scanned
	sn4, hw4 = "CANARY-SN-e51a07", "CANARY-HW-4ab1e9c3" // target of a wrong-HWID login over IPv6 from dev1

	hwWrong    = "CANARY-HW-bad0bad1"  // the wrong HWID presented for sn4
	hwConflict = "CANARY-HW-c0nf1c77"  // sn1 enrolled again with another HWID
	snUnknown  = "CANARY-SN-0ddba11e"  // never enrolled: login, revoke and export attempts
	account    = "canary-acct-5e1f9b"  // an end-user account
	password   = "CANARY-PW-9d2e77aa"  // its password
	pwWrong    = "CANARY-PW-wr0ng042"  // a wrong password for it
	acctNobody = "canary-acct-n0b0dy7" // an account that does not exist
	acctClient = "canary-acct-c1i3n7"  // the account of the remote-control client
	pwClient   = "CANARY-PW-c11e47b2"  // its password

	// Refused at validation: the gateway must not echo them in an error.
	snInvalid  = "CANARY-SN-inv@lid-91"
	hwInvalid  = "CANARY-HW-has space-55"
	snAdmin    = "CANARY-SN-adm1nbad"  // valid, but in a batch with hwAdminBad
	hwAdminBad = "CANARY-HW-adm in-77" // invalid: the whole batch is refused

	// The devices' source addresses (documentation ranges, inside the
	// test's namespaces only).
	dev1v4 = "198.51.100.23"
	dev1v6 = "2001:db8:0:1::23"
	dev2v4 = "198.51.100.171"
	dev2v6 = "2001:db8:0:2:c0de:cafe:0:17"
	// The remote-control client's source addresses.
	clientv4 = "198.51.100.77"
	clientv6 = "2001:db8:0:3::77"

	// The gateway's side of each link: dev1's is 198.51.100.0/26, the
	// client's 198.51.100.64/26, dev2's 198.51.100.128/25 (one /24, so the
	// truncated form the policy allows is the same for all three).
	gw1v4, gw1v6 = "198.51.100.1", "2001:db8:0:1::1"   // the gateway on dev1's link
	gw2v4, gw2v6 = "198.51.100.129", "2001:db8:0:2::1" // the gateway on dev2's link
	gw3v4, gw3v6 = "198.51.100.65", "2001:db8:0:3::1"  // the gateway on the client's link

	tunnelGW4 = "100.80.0.1" // the gateway inside the tunnel
)

// snTooLong is a serial number longer than any the gateway accepts.
var snTooLong = "CANARY-SN-long-" + strings.Repeat("5eaf00d", 40)

// canaries is every value the gateway must never write in any form.
func canaries() []Value {
	return []Value{
		{"sn1", Token, sn1}, {"hw1", Token, hw1},
		{"sn2", Token, sn2}, {"hw2", Token, hw2},
		{"sn3", Token, sn3}, {"hw3", Token, hw3},
		{"sn4", Token, sn4}, {"hw4", Token, hw4},
		{"hw-wrong", Token, hwWrong}, {"hw-conflict", Token, hwConflict},
		{"sn-unknown", Token, snUnknown},
		{"account", Token, account}, {"password", Token, password},
		{"account-client", Token, acctClient}, {"password-client", Token, pwClient},
		{"password-wrong", Token, pwWrong}, {"account-nobody", Token, acctNobody},
		{"sn-invalid", Token, snInvalid}, {"hw-invalid", Token, hwInvalid},
		{"sn-too-long", Token, snTooLong},
		{"sn-admin-batch", Token, snAdmin}, {"hw-admin-invalid", Token, hwAdminBad},
		{"dev1-ipv4", IP, dev1v4}, {"dev1-ipv6", IP, dev1v6},
		{"dev2-ipv4", IP, dev2v4}, {"dev2-ipv6", IP, dev2v6},
		{"client-ipv4", IP, clientv4}, {"client-ipv6", IP, clientv6},
	}
}

// TestCanary runs the real gateway in a network namespace, drives it through
// logins over IPv4 and IPv6 from canary source addresses, refused logins,
// non-gRPC connections, direct calls with invalid input naming canaries, the
// client API with a canary account, a full remote-control session (login,
// bind, session open, ping, close, unbind) from a client whose source
// addresses and account are canaries, a reveal, an export, an erasure, a
// revocation and a retention run, stops it, and then searches every byte it wrote (process output, the
// SQLite database with its -wal/-shm files, the audit log, the keystore, a
// /metrics body, another subject's export) for the canaries in every
// encoding of Patterns. Any finding fails the test with file, offset,
// encoding and the bytes around it.
func TestCanary(t *testing.T) {
	h := newHarness(t)
	start := time.Now()
	values := canaries()
	scanner, err := NewScanner(values)
	if err != nil {
		t.Fatal(err)
	}
	if n := proveScanner(t, scanner, values, filepath.Join(h.Dir, "proof")); !t.Failed() {
		t.Logf("scanner proven: found %d planted encodings, no false positive on allowed forms", n)
	} else {
		t.FailNow()
	}

	scanned := filepath.Join(h.Dir, "scanned") // what the gateway wrote, and only that
	outside := filepath.Join(h.Dir, "outside") // test inputs and the subject's own export
	for _, d := range []string{scanned, outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	gwNS, d1NS, d2NS, cNS := "cgw-"+h.Suffix, "cd1-"+h.Suffix, "cd2-"+h.Suffix, "ccl-"+h.Suffix
	for _, ns := range []string{gwNS, d1NS, d2NS, cNS} {
		h.Netns(ns)
	}
	h.link(gwNS, d1NS, "cv1", gw1v4+"/26", dev1v4+"/26", gw1v6+"/64", dev1v6+"/64")
	h.link(gwNS, d2NS, "cv2", gw2v4+"/25", dev2v4+"/25", gw2v6+"/64", dev2v6+"/64")
	h.link(gwNS, cNS, "cv3", gw3v4+"/26", clientv4+"/26", gw3v6+"/64", clientv6+"/64")

	g := h.newGateway(gwNS, scanned)
	g.start()
	g.WaitReady(30 * time.Second)
	fp, err := netnstest.CertFingerprint(filepath.Join(g.DataDir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}

	// Enrollment: a CSV batch (kept outside the scanned set), one by flags,
	// and sn1 again with another HWID (refused or unchanged: either way
	// hwConflict must not be kept).
	csv := filepath.Join(outside, "devices.csv")
	body := "serial_number,hardware_id\n" + sn1 + "," + hw1 + "\n" + sn2 + "," + hw2 + "\n" + sn3 + "," + hw3 + "\n"
	if err := os.WriteFile(csv, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	g.MustCtl("enroll", "--file", csv)
	g.MustCtl("enroll", "--serial", sn4, "--hwid", hw4)
	out, err := g.Ctl("enroll", "--serial", sn1, "--hwid", hwConflict)
	t.Logf("enroll sn1 with another hwid: %v %s", err, strings.TrimSpace(out))

	// Device 1 over IPv4, device 2 over IPv6; both reach the gateway
	// through the tunnel, so WireGuard sees their source addresses too.
	a1 := h.startAgent(d1NS, gw1v4+":8443", fp, sn1, hw1, "ca1x"+h.Suffix, "agent1")
	a2 := h.startAgent(d2NS, "["+gw2v6+"]:8443", fp, sn2, hw2, "ca2x"+h.Suffix, "agent2")
	a1v4 := strings.TrimSuffix(h.WaitAddr(a1, d1NS, "ca1x"+h.Suffix, 30*time.Second), "/32")
	h.WaitAddr(a2, d2NS, "ca2x"+h.Suffix, 30*time.Second)
	for _, ns := range []string{d1NS, d2NS} {
		if _, err := h.PingWithin(ns, 15*time.Second, "-c", "1", "-W", "1", tunnelGW4); err != nil {
			t.Fatalf("%s → %s through the tunnel: %v", ns, tunnelGW4, err)
		}
	}
	t.Logf("device 1 logged in over IPv4 from %s, device 2 over IPv6 from %s; both ping %s", dev1v4, dev2v6, tunnelGW4)

	// Refused logins: a wrong HWID over IPv6 from dev1, an unknown serial
	// over IPv4 from dev2.
	wrong := h.startAgent(d1NS, "["+gw1v6+"]:8443", fp, sn4, hwWrong, "cwx"+h.Suffix, "agent-wrong-hwid")
	unknown := h.startAgent(d2NS, gw2v4+":8443", fp, snUnknown, hw4, "cux"+h.Suffix, "agent-unknown-sn")
	h.expectRefused(wrong)
	h.expectRefused(unknown)

	// Connections that are not gRPC at all, from each device address.
	for _, c := range []struct{ ns, addr string }{
		{d1NS, "[" + gw1v6 + "]:8443"}, {d2NS, gw2v4 + ":8443"}, {d1NS, gw1v4 + ":8443"}, {d2NS, "[" + gw2v6 + "]:8443"},
	} {
		if _, err := h.SelfIn(c.ns, garbageEnv, c.addr); err != nil {
			t.Fatalf("garbage probe: %v", err)
		}
	}

	// Direct calls past the agent's and dassetctl's own checks: invalid
	// input naming canaries, a short key with a real serial, the client API
	// with the canary account (wrong and right password, an unknown account,
	// a session to a device it is not bound to); from both devices, over
	// IPv6 and IPv4.
	calls := []probeCall{
		{Name: "login-invalid-sn", Kind: "device-login", Serial: snInvalid, HWID: hw4, KeyLen: 32},
		{Name: "login-invalid-hwid", Kind: "device-login", Serial: sn4, HWID: hwInvalid, KeyLen: 32},
		{Name: "login-long-sn", Kind: "device-login", Serial: snTooLong, HWID: hw4, KeyLen: 32},
		{Name: "login-short-key", Kind: "device-login", Serial: sn1, HWID: hw1, KeyLen: 31},
		{Name: "client-nobody", Kind: "client-login", Account: acctNobody, Password: password},
		{Name: "client-wrong-pw", Kind: "client-login", Account: account, Password: pwWrong},
		{Name: "client-ok", Kind: "client-login", Account: account, Password: password},
		{Name: "session-unbound", Kind: "open-session", Serial: sn1},
		{Name: "session-unknown", Kind: "open-session", Serial: snUnknown},
	}
	code, err := adminEnroll(g.Sock, &gatewayv1.DeviceEnrollment{SerialNumber: snAdmin, HardwareId: hwAdminBad})
	if err != nil || code != "InvalidArgument" {
		t.Fatalf("EnrollDevices with an invalid hardware id: %s, %v; want InvalidArgument", code, err)
	}

	// An audited reveal: full serial numbers to the operator, not to disk.
	reveal, err := g.Ctl("-o", "json", "devices", "list", "--reveal", "--reason", "canary reveal check")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(reveal, sn1) || !strings.Contains(reveal, sn3) {
		t.Fatalf("devices list --reveal does not show the serial numbers: %s", reveal)
	}
	if !audited(t, filepath.Join(filepath.Dir(g.DataDir), "keystore", "audit.log"), "reveal_devices", "canary reveal check") {
		t.Fatalf("devices list --reveal left no audit entry with its reason")
	}

	// An account, and the same account again (refused).
	if _, err := g.CtlStdin(password+"\n", "accounts", "create", account, "--password-stdin"); err != nil {
		t.Fatal(err)
	}
	_, err = g.CtlStdin(password+"\n", "accounts", "create", account, "--password-stdin")
	if err == nil {
		t.Fatalf("accounts create %s twice succeeded", account)
	}

	for _, p := range []struct{ ns, addr string }{{d1NS, "[" + gw1v6 + "]:8443"}, {d2NS, gw2v4 + ":8443"}} {
		codes, err := h.probeIn(p.ns, p.addr, fp, calls)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range calls {
			ok := codes[c.Name] == "OK"
			if ok != (c.Name == "client-ok") {
				t.Errorf("probe from %s, %s: %s", p.ns, c.Name, codes[c.Name])
			}
		}
		t.Logf("probe from %s: %v", p.ns, codes)
	}

	// A full remote-control session from the client namespace, whose source
	// addresses are canaries too: an account with a canary name, login over
	// IPv6, bind device 1 by its code over IPv4, open a session (gRPC and
	// WireGuard over IPv6), ping device 1 through it, close it, unbind.
	h.remoteControl(g, remoteSpec{ns: cNS, pin: fp, devNS: d1NS, devAgent: a1, devV4: a1v4,
		devGateway: gw1v4 + ":8443", devStateDir: filepath.Join(h.Dir, "agent1"),
		login: "[" + gw3v6 + "]:8443", bind: gw3v4 + ":8443"})

	// The subject's own export may hold its own serial number: it stays
	// outside the scanned set, and proves the scanner on real output.
	exp1 := g.MustCtl("subject", "export", "--serial", sn1, "--reason", "canary subject request")
	if err := os.WriteFile(filepath.Join(outside, "export-dev1.json"), []byte(exp1), 0o600); err != nil {
		t.Fatal(err)
	}
	if fs := scanner.ScanBytes("export-dev1.json", []byte(exp1)); !hasFinding(fs, "sn1") {
		t.Fatalf("device 1's own export: the scanner does not find its serial number: %v\n%s", fs, exp1)
	}

	// Erasure of device 2, revocation of device 1, then refused calls about
	// a serial number the gateway never knew.
	g.MustCtl("subject", "erase", "--serial", sn2, "--reason", "canary erasure request", "--yes")
	if ok, _ := a2.Wait(10 * time.Second); !ok {
		t.Logf("agent 2 still runs 10s after its device was erased; stopping it")
	}
	a2.Stop(5 * time.Second)
	g.MustCtl("devices", "revoke", sn1)
	if ok, _ := a1.Wait(15 * time.Second); !ok {
		t.Errorf("agent 1 still runs 15s after revocation")
	}
	if out, err := g.Ctl("devices", "revoke", snUnknown); err == nil {
		t.Errorf("revoking a never-enrolled serial succeeded: %s", out)
	}
	if out, err := g.Ctl("subject", "export", "--serial", snUnknown, "--reason", "canary unknown subject"); err == nil {
		t.Errorf("exporting a never-enrolled serial succeeded: %s", out)
	}
	g.MustCtl("retention", "run")
	if out := g.MustCtl("audit", "verify"); out == "" {
		t.Fatal("audit verify printed nothing")
	}

	// Another subject's export is scanned (for everything but its own serial).
	exp3 := g.MustCtl("subject", "export", "--serial", sn3, "--reason", "canary other subject")
	export3 := filepath.Join(scanned, "export-dev3.json")
	if err := os.WriteFile(export3, []byte(exp3), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics, err := g.Get(netnstest.MetricsURL + "/metrics")
	if err != nil || !strings.Contains(string(metrics), "dasset_gateway_") {
		t.Fatalf("GET /metrics: %v\n%.300s", err, metrics)
	}
	if err := os.WriteFile(filepath.Join(scanned, "metrics.txt"), metrics, 0o600); err != nil {
		t.Fatal(err)
	}

	// The database as it is while the gateway runs, with its -wal and -shm
	// (a clean stop checkpoints and removes the WAL).
	live := snapshotDB(t, g.DataDir, filepath.Join(scanned, "live-db"))
	t.Logf("live database files: %s", strings.Join(live, ", "))

	for _, p := range []*netnstest.Proc{a1, a2, wrong, unknown} {
		p.Stop(5 * time.Second)
	}
	if graceful, err := g.Proc.Stop(15 * time.Second); !graceful {
		t.Errorf("gateway did not stop within 15s of SIGTERM (killed): %v", err)
	}

	if d := os.Getenv(keepEnv); d != "" {
		if _, err := h.Run("cp", "-a", scanned, d); err != nil {
			t.Errorf("%s: %v", keepEnv, err)
		}
	}
	// The scan.
	for _, must := range []string{g.log, filepath.Join(g.DataDir, "gateway.db"), filepath.Join(filepath.Dir(g.DataDir), "keystore", "audit.log")} {
		if st, err := os.Stat(must); err != nil || st.Size() == 0 {
			t.Fatalf("expected gateway output %s: %v (empty or missing)", must, err)
		}
	}
	// The logins and refusals did reach the gateway from the canary
	// addresses: it logged their allowed (truncated) form.
	gwLog, err := os.ReadFile(g.log)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"198.51.100.0/24", "2001:db8::/48"} {
		if !strings.Contains(string(gwLog), want) {
			t.Errorf("gateway log never mentions the truncated source %s: the canary addresses did not reach it as planned", want)
		}
	}
	for _, want := range []string{`"msg":"session opened"`, `"msg":"session closed"`, `"grpc.method":"UnbindDevice"`} {
		if !strings.Contains(string(gwLog), want) {
			t.Errorf("gateway log has no %s: the client's session did not reach it as planned", want)
		}
	}
	files, err := Files(scanned)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	var findings []Finding
	var total int
	var listing []string
	for _, f := range files {
		s := scanner
		if f == export3 {
			s = scanner.Without("sn3")
		}
		fs, n, err := s.ScanFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(scanned, f)
		listing = append(listing, fmt.Sprintf("%s (%d B)", rel, n))
		total += n
		findings = append(findings, fs...)
	}
	t.Logf("scanned %d files, %d bytes, for %d canaries in %d patterns: %s",
		len(files), total, len(values), len(scanner.Patterns()), strings.Join(listing, ", "))
	for i, f := range findings {
		if i == 50 {
			t.Errorf("… and %d more findings", len(findings)-50)
			break
		}
		rel, _ := filepath.Rel(scanned, f.File)
		f.File = rel
		t.Errorf("LEAK: %v", f)
	}
	if len(findings) > 0 {
		t.Fatalf("%d canary occurrences in what the gateway wrote", len(findings))
	}
	t.Logf("no canary found; whole run took %.1fs", time.Since(start).Seconds())
}

// keepEnv names a directory to copy the scanned set into, for a look by hand.
const keepEnv = "DASSET_CANARY_KEEP"

// snapshotDB copies gateway.db and its -wal/-shm files (those present) from
// dataDir into dst, and returns their names with sizes.
func snapshotDB(t *testing.T, dataDir, dst string) []string {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, name := range []string{"gateway.db", "gateway.db-wal", "gateway.db-shm"} {
		b, err := os.ReadFile(filepath.Join(dataDir, name))
		if os.IsNotExist(err) && name != "gateway.db" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s (%d B)", name, len(b)))
	}
	return got
}

// audited reports whether the audit log has an "ok" entry for action with
// reason.
func audited(t *testing.T, path, action, reason string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var e struct{ Action, Reason, Result string }
		if json.Unmarshal([]byte(line), &e) == nil && e.Action == action && e.Reason == reason && e.Result == "ok" {
			return true
		}
	}
	return false
}

func hasFinding(fs []Finding, value string) bool {
	for _, f := range fs {
		if f.Value == value {
			return true
		}
	}
	return false
}

// expectRefused waits for an agent that must be refused: it exits non-zero.
func (h *harness) expectRefused(p *netnstest.Proc) {
	h.T.Helper()
	h.ExpectFailure(p, 30*time.Second)
	h.T.Logf("%s refused: %s", p.Name, p.LastLine())
}
