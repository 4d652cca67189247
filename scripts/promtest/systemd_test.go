package promtest

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// maxExposure is the highest `systemd-analyze security` exposure allowed,
// in its internal tenths (25 = 2.5, "OK").
const maxExposure = "25"

// unitDirectives reads a unit file into its [Service] directives (a key
// given more than once keeps every value).
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && section == "[Service]" {
			out[k] = append(out[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSystemdUnits runs `systemd-analyze verify` and an offline
// `systemd-analyze security` on both units. verify needs the ExecStart
// programs to exist, so the units are checked as copies whose
// /usr/local/bin/ programs are stand-in scripts in a temporary directory.
func TestSystemdUnits(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "systemd-analyze is in Debian's systemd package")
	root := netnstest.RepoRoot(t)
	dir := t.TempDir()
	binDir := filepath.Join(dir, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"dasset-gateway", "dasset-agent"} {
		if err := os.WriteFile(filepath.Join(binDir, n), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, unit := range []string{"dasset-gateway.service", "dasset-agent.service"} {
		src := filepath.Join(root, "configs", "systemd", unit)
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "/usr/local/bin/") {
			t.Errorf("%s: ExecStart does not run a program from /usr/local/bin/", unit)
		}
		copyPath := filepath.Join(dir, unit)
		if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/", binDir+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		// verify exits 0 even for unknown keys and bad values: any output
		// is a finding.
		out, err := run(60*time.Second, "", analyze, "verify", copyPath)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
		out, err = run(60*time.Second, "", analyze, "security", "--offline=true", "--threshold="+maxExposure, copyPath)
		last := out
		if i := strings.LastIndex(strings.TrimSpace(out), "\n"); i >= 0 {
			last = strings.TrimSpace(out[i:])
		}
		if err != nil {
			t.Errorf("systemd-analyze security %s: %v (exposure above %s/10)\n%s", unit, err, maxExposure, out)
		} else {
			t.Logf("%s: %s", unit, last)
		}
	}
}

// TestGatewayUnitMatchesConfig checks that the directories the gateway unit
// makes writable are the ones configs/gateway.yaml uses by default.
func TestGatewayUnitMatchesConfig(t *testing.T) {
	root := netnstest.RepoRoot(t)
	u := unitDirectives(t, filepath.Join(root, "configs", "systemd", "dasset-gateway.service"))
	b, err := os.ReadFile(filepath.Join(root, "configs", "gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		DataDir     string `yaml:"data_dir"`
		KeystoreDir string `yaml:"keystore_dir"`
		Admin       struct {
			Socket string `yaml:"socket"`
		} `yaml:"admin"`
		Tunnel struct {
			UAPI bool `yaml:"uapi"`
		} `yaml:"tunnel"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("gateway.yaml: %v", err)
	}
	one := func(k string) string {
		if len(u[k]) != 1 {
			t.Fatalf("dasset-gateway.service: %s set %d times, want once", k, len(u[k]))
		}
		return u[k][0]
	}
	// StateDirectory makes data_dir and, apart from it, keystore_dir
	// (empty: <data_dir>-keys).
	keys := cfg.KeystoreDir
	if keys == "" {
		keys = cfg.DataDir + "-keys"
	}
	if got, want := one("StateDirectory"), strings.TrimPrefix(cfg.DataDir, "/var/lib/")+" "+strings.TrimPrefix(keys, "/var/lib/"); got != want {
		t.Errorf("StateDirectory is %q; data_dir %s and keystore_dir %s want %q", got, cfg.DataDir, keys, want)
	}
	if strings.HasPrefix(keys, cfg.DataDir+"/") {
		t.Errorf("keystore_dir %s is inside data_dir", keys)
	}
	if got, want := "/run/"+one("RuntimeDirectory"), filepath.Dir(cfg.Admin.Socket); got != want {
		t.Errorf("RuntimeDirectory gives %s, admin.socket is in %s", got, want)
	}
	if cfg.Tunnel.UAPI && one("ReadWritePaths") != "/run/wireguard" {
		t.Errorf("tunnel.uapi is on but ReadWritePaths is %v, want /run/wireguard", u["ReadWritePaths"])
	}
	want := map[string]string{
		"ExecStart":               "/usr/local/bin/dasset-gateway serve --config /etc/dasset-gateway/gateway.yaml",
		"CapabilityBoundingSet":   "CAP_NET_ADMIN",
		"AmbientCapabilities":     "CAP_NET_ADMIN",
		"ProtectSystem":           "strict",
		"DevicePolicy":            "closed",
		"DeviceAllow":             "/dev/net/tun rw",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
		"NoNewPrivileges":         "yes",
		"Restart":                 "on-failure",
		"User":                    "dasset",
		"Group":                   "dasset",
	}
	for k, v := range want {
		if got := one(k); got != v {
			t.Errorf("%s=%s, want %s", k, got, v)
		}
	}
}
