package pkgtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testUID stands in for the dasset user: an unused uid and gid.
const testUID = 64123

// unprivilegedRun is the shell run in a private mount namespace by
// checkRunsUnprivileged. It gives the namespace a 0666 /dev/net/tun (as on
// a stock Debian host; some build machines have 0600) and a private
// /run/wireguard prepared as the unit's ExecStartPre does, starts the
// packaged gateway in network namespace $NS as $ID with CAP_NET_ADMIN as
// its only capability (what User= and AmbientCapabilities= give it), waits
// (bounded) for its admin and UAPI sockets, asks it for its status with
// dassetctl and `wg show` as root, and stops it with SIGTERM.
const unprivilegedRun = `
set -e
mount -t tmpfs -o mode=0755 none "$DEV"
mknod -m 0666 "$DEV/tun" c 10 200
mount --bind "$DEV/tun" /dev/net/tun
mount -t tmpfs -o mode=0755 none /run/wireguard
chgrp "$ID" /run/wireguard && chmod 1775 /run/wireguard
ip netns exec "$NS" setpriv --reuid="$ID" --regid="$ID" --clear-groups \
	--inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin \
	"$GW" serve --config "$CONF" >"$LOG" 2>&1 &
pid=$!
i=0
until [ -S "$SOCK" ] && [ -S "/run/wireguard/$IF.sock" ]; do
	i=$((i + 1))
	if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then
		echo "NOT READY after $i polls"; kill $pid 2>/dev/null || true; exit 1
	fi
	sleep 0.1
done
echo READY
grep -E '^(Uid|CapEff|CapAmb|CapBnd):' /proc/$pid/status
ip netns exec "$NS" wg show "$IF"
"$CTL" --socket "$SOCK" status
stat -c 'SOCKET %u %a' "/run/wireguard/$IF.sock"
kill -TERM $pid
rc=0; wait $pid || rc=$?
echo "EXIT $rc"
`

// checkRunsUnprivileged runs the packaged gateway, with the packaged
// configuration, the way its unit does: as an unprivileged user with
// CAP_NET_ADMIN only. It needs root (namespaces, setpriv) and skips
// without.
func checkRunsUnprivileged(t *testing.T, root string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Log("skipped the unprivileged run of the packaged gateway: needs root")
		return
	}
	for _, n := range []string{"ip", "setpriv", "unshare", "wg", "mknod"} {
		if _, err := exec.LookPath(n); err != nil {
			t.Logf("skipped the unprivileged run of the packaged gateway: no %s (%v)", n, err)
			return
		}
	}
	work := t.TempDir()
	// Let the test uid reach its directories and the binaries.
	for _, d := range []string{filepath.Dir(work), work, filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	data, keys, rundir := filepath.Join(work, "data"), filepath.Join(work, "keys"), filepath.Join(work, "run")
	for _, d := range []string{data, keys, rundir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, testUID, testUID); err != nil {
			t.Fatal(err)
		}
	}
	dev := filepath.Join(work, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	suffix := fmt.Sprint(os.Getpid() % 100000)
	ns, ifname := "pkpk-"+suffix, "pkw"+suffix
	_, _ = run1(t, "ip", "netns", "del", ns)
	if _, err := run1(t, "ip", "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = run1(t, "ip", "netns", "del", ns) })
	if _, err := run1(t, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/run/wireguard", 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(rundir, "admin.sock")
	log := filepath.Join(work, "gateway.log")
	env := []string{
		"DEV=" + dev, "NS=" + ns, "IF=" + ifname, "ID=" + fmt.Sprint(testUID), "SOCK=" + sock, "LOG=" + log,
		"GW=" + filepath.Join(root, "usr/bin/dasset-gateway"), "CTL=" + filepath.Join(root, "usr/bin/dassetctl"),
		"CONF=" + filepath.Join(root, "etc/dasset-gateway/gateway.yaml"),
		// The packaged configuration, with the paths of this test.
		"DASSET_DATA_DIR=" + data, "DASSET_KEYSTORE_DIR=" + keys, "DASSET_ADMIN_SOCKET=" + sock,
		"DASSET_TUNNEL_INTERFACE=" + ifname,
	}
	out, err := run(t, 2*time.Minute, "", env, "unshare", "--mount", "--propagation", "private", "sh", "-c", unprivilegedRun)
	gwLog, _ := os.ReadFile(log)
	if err != nil {
		t.Fatalf("packaged gateway as uid %d with CAP_NET_ADMIN: %v\ngateway log:\n%s", testUID, err, gwLog)
	}
	for _, want := range []string{
		"READY\n",
		fmt.Sprintf("Uid:\t%d\t%d", testUID, testUID),
		"CapEff:\t0000000000001000\n", "CapAmb:\t0000000000001000\n", "CapBnd:\t0000000000001000\n",
		"interface: " + ifname + "\n",
		fmt.Sprintf("SOCKET %d 700\n", testUID),
		"EXIT 0\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("packaged gateway as uid %d: output lacks %q:\n%s\ngateway log:\n%s", testUID, want, out, gwLog)
		}
	}
	for _, d := range []string{data, keys} {
		ents, err := os.ReadDir(d)
		if err != nil || len(ents) == 0 {
			t.Errorf("%s: the gateway wrote nothing there (%v)", d, err)
		}
	}
	if !t.Failed() {
		t.Logf("packaged gateway ran as uid %d with CAP_NET_ADMIN only: TUN %s, UAPI socket, admin socket, clean stop", testUID, ifname)
	}
}

func run1(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return run(t, 30*time.Second, "", nil, name, args...)
}
