package pkgtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/planetxlabs/dasset-gateway/scripts/internal/netnstest"
)

// entry is one line of `dpkg-deb --contents`.
type entry struct {
	mode, owner string
}

// want describes one package.
type want struct {
	name      string
	files     map[string]entry // every regular file, exactly
	conffiles []string
	depends   string
	unit      string
}

var packages = []want{
	{
		name: "dasset-gateway",
		files: map[string]entry{
			"/usr/bin/dasset-gateway":                     {"-rwxr-xr-x", "root/root"},
			"/usr/bin/dassetctl":                          {"-rwxr-xr-x", "root/root"},
			"/lib/systemd/system/dasset-gateway.service":  {"-rw-r--r--", "root/root"},
			"/etc/dasset-gateway/gateway.yaml":            {"-rw-r--r--", "root/root"},
			"/etc/dasset-gateway/policy.yaml":             {"-rw-r--r--", "root/root"},
			"/usr/share/doc/dasset-gateway/copyright":     {"-rw-r--r--", "root/root"},
			"/usr/share/doc/dasset-gateway/changelog.gz":  {"-rw-r--r--", "root/root"},
			"/usr/share/lintian/overrides/dasset-gateway": {"-rw-r--r--", "root/root"},
		},
		conffiles: []string{"/etc/dasset-gateway/gateway.yaml", "/etc/dasset-gateway/policy.yaml"},
		depends:   "adduser",
		unit:      "dasset-gateway.service",
	},
	{
		name: "dasset-agent",
		files: map[string]entry{
			"/usr/bin/dasset-agent":                     {"-rwxr-xr-x", "root/root"},
			"/lib/systemd/system/dasset-agent.service":  {"-rw-r--r--", "root/root"},
			"/usr/share/doc/dasset-agent/copyright":     {"-rw-r--r--", "root/root"},
			"/usr/share/doc/dasset-agent/changelog.gz":  {"-rw-r--r--", "root/root"},
			"/usr/share/lintian/overrides/dasset-agent": {"-rw-r--r--", "root/root"},
		},
		unit: "dasset-agent.service",
	},
}

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found on PATH (%v): run `make deps` (scripts/install-deps.sh)", name, err)
	}
	return p
}

// run runs a command with a bound and returns its combined output.
func run(t *testing.T, timeout time.Duration, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %v", name, timeout)
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, time.Minute, "", nil, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDebianPackages builds both packages and checks them. The first build
// on a cold Go cache compiles the PIE binaries (minutes); with a warm cache
// the test takes about half a minute, most of it lintian.
func TestDebianPackages(t *testing.T) {
	for _, n := range []string{"dpkg-deb", "lintian", "systemd-analyze"} {
		tool(t, n)
	}
	root := netnstest.RepoRoot(t)
	out := t.TempDir()
	const version = "1.2.3~test4"
	built, err := run(t, 20*time.Minute, root, []string{"PKG_VERSION=" + version}, "bash", "scripts/package.sh", out)
	if err != nil {
		t.Fatal(err)
	}
	debs := map[string]string{}
	for _, line := range strings.Split(built, "\n") {
		if strings.HasSuffix(line, ".deb") {
			debs[strings.SplitN(filepath.Base(line), "_", 2)[0]] = line
		}
	}
	extracted := t.TempDir()
	for _, w := range packages {
		deb := debs[w.name]
		if deb == "" {
			t.Fatalf("scripts/package.sh built no %s package:\n%s", w.name, built)
		}
		if want := fmt.Sprintf("%s/%s_%s_%s.deb", out, w.name, version, runtime.GOARCH); deb != want {
			t.Errorf("package file %s, want %s", deb, want)
		}
		t.Run(w.name, func(t *testing.T) { checkPackage(t, deb, w, version) })
		mustRun(t, "dpkg-deb", "-x", deb, extracted)
	}

	// lintian on both: no error or warning (the few overrides each carry
	// their reason in packaging/*/lintian-overrides).
	lint, err := run(t, 10*time.Minute, "", nil, "lintian", "--pedantic", "--fail-on", "error,warning",
		debs["dasset-gateway"], debs["dasset-agent"])
	if err != nil {
		t.Errorf("lintian: %v", err)
	}
	for _, line := range strings.Split(lint, "\n") {
		if strings.HasPrefix(line, "E:") || strings.HasPrefix(line, "W:") {
			t.Errorf("lintian: %s", line)
		} else if line != "" {
			t.Logf("lintian: %s", line)
		}
	}

	checkInstalledUnits(t, extracted)
	checkInstalledConfig(t, extracted, version)
	checkRunsUnprivileged(t, extracted)
}

func checkPackage(t *testing.T, deb string, w want, version string) {
	// Control fields.
	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Maintainer", "Section", "Priority", "Depends", "Description", "Homepage"} {
		v, _ := run(t, time.Minute, "", nil, "dpkg-deb", "--field", deb, f)
		fields[f] = strings.TrimSpace(v)
	}
	for k, v := range map[string]string{"Package": w.name, "Version": version, "Architecture": runtime.GOARCH,
		"Section": "net", "Priority": "optional", "Depends": w.depends} {
		if fields[k] != v {
			t.Errorf("control %s: %q, want %q", k, fields[k], v)
		}
	}
	if !regexp.MustCompile(`^[^<>]+ <[^@<>\s]+@[^@<>\s]+>$`).MatchString(fields["Maintainer"]) {
		t.Errorf("control Maintainer: %q, want \"Name <address>\"", fields["Maintainer"])
	}
	if desc := strings.Split(fields["Description"], "\n"); len(desc) < 3 || len(desc[0]) > 80 {
		t.Errorf("control Description: want a synopsis of at most 80 characters and a long description, got %q", fields["Description"])
	}

	// Contents: exactly the files expected, with their modes and owners;
	// nothing under /var (data directories are made by postinst, so that
	// dpkg never removes them).
	got := map[string]entry{}
	for _, line := range strings.Split(mustRun(t, "dpkg-deb", "--contents", deb), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		path := strings.TrimPrefix(f[5], ".")
		if strings.HasPrefix(path, "/var") || strings.HasPrefix(path, "/run") {
			t.Errorf("package ships %s", path)
		}
		if f[0][0] == '-' {
			got[path] = entry{f[0], f[1]}
		} else if f[0][0] != 'd' {
			t.Errorf("unexpected non-regular entry %s", line)
		}
	}
	for p, e := range w.files {
		if g, ok := got[p]; !ok {
			t.Errorf("%s: missing", p)
		} else if g != e {
			t.Errorf("%s: %s %s, want %s %s", p, g.mode, g.owner, e.mode, e.owner)
		}
	}
	for p := range got {
		if _, ok := w.files[p]; !ok {
			t.Errorf("%s: not expected in the package", p)
		}
	}

	// Control archive: conffiles and maintainer scripts.
	ctl := t.TempDir()
	mustRun(t, "dpkg-deb", "--control", deb, ctl)
	conf, _ := os.ReadFile(filepath.Join(ctl, "conffiles"))
	gotConf := strings.Fields(string(conf))
	slices.Sort(gotConf)
	if !slices.Equal(gotConf, w.conffiles) {
		t.Errorf("conffiles %v, want %v", gotConf, w.conffiles)
	}
	for p := range got {
		if strings.HasPrefix(p, "/etc/") && !slices.Contains(gotConf, p) {
			t.Errorf("%s is under /etc but not a conffile", p)
		}
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		checkScript(t, filepath.Join(ctl, s))
	}
	if w.name == "dasset-gateway" {
		// postinst makes the user the unit runs as and the directories its
		// StateDirectory= and the packaged keystore_dir name (checked below
		// on the extracted files), 0700.
		post, _ := os.ReadFile(filepath.Join(ctl, "postinst"))
		for _, want := range []string{"adduser --system --group", "--quiet dasset\n",
			"for d in /var/lib/dasset-gateway /var/lib/dasset-gateway-keys; do", `install -d -m 0700 -o dasset -g dasset "$d"`} {
			if !strings.Contains(string(post), want) {
				t.Errorf("postinst lacks %q", want)
			}
		}
	}
	if ents, err := os.ReadDir(ctl); err == nil {
		for _, e := range ents {
			if !slices.Contains([]string{"control", "md5sums", "conffiles", "postinst", "prerm", "postrm"}, e.Name()) {
				t.Errorf("unexpected control file %s", e.Name())
			}
		}
	}
}

// deleting matches a command that deletes files or users.
var deleting = regexp.MustCompile(`(^|[;&|(\s])(rm|rmdir|unlink|shred|find|deluser|delgroup|userdel|groupdel|deb-systemd-helper\s+purge)(\s|$)`)

// checkScript checks one maintainer script: executable, POSIX sh that
// parses, `set -e`, and no command that deletes anything (data and the
// user that owns it are kept on remove and on purge).
func checkScript(t *testing.T, path string) {
	t.Helper()
	name := filepath.Base(path)
	st, err := os.Stat(path)
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("%s: mode %v, want 0755", name, st.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if !bytes.HasPrefix(b, []byte("#!/bin/sh\n")) {
		t.Errorf("%s: does not start with #!/bin/sh", name)
	}
	if _, err := run(t, time.Minute, "", nil, "sh", "-n", path); err != nil {
		t.Errorf("%s: %v", name, err)
	}
	setE := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line == "set -e" {
			setE = true
		}
		if m := deleting.FindStringSubmatch(line); m != nil {
			t.Errorf("%s:%d: %q deletes (%s); maintainer scripts must never delete data", name, n, line, m[2])
		}
	}
	if !setE {
		t.Errorf("%s: no `set -e`", name)
	}
}

// checkInstalledUnits runs `systemd-analyze verify --root` on the units as
// extracted from the packages, with the host's own units beside them (for
// the targets they name) and /bin/sh (ExecStartPre), and checks that the
// gateway unit runs as the user postinst makes, in the directories it
// makes and the packaged configuration names.
func checkInstalledUnits(t *testing.T, root string) {
	t.Helper()
	unitDir := filepath.Join(root, "lib", "systemd", "system")
	hostUnits, err := filepath.Glob("/lib/systemd/system/*.target")
	if err != nil || len(hostUnits) == 0 {
		t.Fatalf("no host targets in /lib/systemd/system (%v)", err)
	}
	for _, u := range hostUnits {
		dst := filepath.Join(unitDir, filepath.Base(u))
		if target, err := os.Readlink(u); err == nil {
			err = os.Symlink(target, dst)
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "sh"), sh, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, w := range packages {
		// verify exits 0 on unknown keys and bad values: any output is a
		// finding.
		out, err := run(t, time.Minute, "", nil, "systemd-analyze", "verify", "--root="+root, w.unit)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify --root %s: %v\n%s", w.unit, err, out)
		}
	}
	// The check can fail: a unit whose program is missing is refused.
	if err := os.Rename(filepath.Join(root, "usr/bin/dasset-agent"), filepath.Join(root, "agent.moved")); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, time.Minute, "", nil, "systemd-analyze", "verify", "--root="+root, "dasset-agent.service"); err == nil && !strings.Contains(out, "/usr/bin/dasset-agent") {
		t.Errorf("systemd-analyze verify passed a unit whose program is missing: %s", out)
	}
	if err := os.Rename(filepath.Join(root, "agent.moved"), filepath.Join(root, "usr/bin/dasset-agent")); err != nil {
		t.Fatal(err)
	}

	unit, err := os.ReadFile(filepath.Join(unitDir, "dasset-gateway.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"User=dasset", "Group=dasset",
		"ExecStart=/usr/bin/dasset-gateway serve --config /etc/dasset-gateway/gateway.yaml",
		"StateDirectory=dasset-gateway dasset-gateway-keys", "StateDirectoryMode=0700",
		"CapabilityBoundingSet=CAP_NET_ADMIN", "AmbientCapabilities=CAP_NET_ADMIN",
	} {
		if !slices.Contains(strings.Split(string(unit), "\n"), line) {
			t.Errorf("installed dasset-gateway.service lacks the line %q", line)
		}
	}
	if strings.Contains(string(unit), "/usr/local/") {
		t.Error("installed dasset-gateway.service names /usr/local")
	}
}

// checkInstalledConfig loads the packaged configuration with the packaged
// binary, checks that it puts data and keys in the directories postinst
// makes, and that the binaries carry the version.
func checkInstalledConfig(t *testing.T, root, version string) {
	t.Helper()
	gw := filepath.Join(root, "usr/bin/dasset-gateway")
	conf := filepath.Join(root, "etc/dasset-gateway/gateway.yaml")
	if out, err := run(t, time.Minute, "", nil, gw, "check-config", "--config", conf); err != nil {
		t.Errorf("packaged gateway.yaml: %v", err)
	} else {
		t.Logf("packaged gateway.yaml: %s", strings.TrimSpace(out))
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	// It is configs/gateway.yaml, whose data_dir and keystore_dir (empty:
	// <data_dir>-keys) are the unit's StateDirectory= (scripts/promtest)
	// and the directories postinst makes (checked above).
	src, err := os.ReadFile(filepath.Join(netnstest.RepoRoot(t), "configs", "gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, src) {
		t.Error("packaged gateway.yaml differs from configs/gateway.yaml")
	}
	lines := strings.Split(string(b), "\n")
	for _, l := range []string{"data_dir: /var/lib/dasset-gateway", `keystore_dir: ""`} {
		if !slices.Contains(lines, l) {
			t.Errorf("packaged gateway.yaml lacks %q (the directories postinst makes)", l)
		}
	}
	for _, bin := range []string{"dasset-gateway", "dasset-agent"} {
		out, err := run(t, time.Minute, "", nil, filepath.Join(root, "usr/bin", bin), "version")
		if err != nil || !strings.Contains(out, version) {
			t.Errorf("%s version: %q, %v; want %s", bin, out, err, version)
		}
	}
	// The binaries are stripped, position-independent and need no library
	// besides the dynamic loader.
	if _, err := exec.LookPath("readelf"); err == nil {
		for _, bin := range []string{"dasset-gateway", "dassetctl", "dasset-agent"} {
			out := mustRun(t, "readelf", "-h", "-d", "-S", filepath.Join(root, "usr/bin", bin))
			if !strings.Contains(out, "DYN (Position-Independent Executable file)") && !strings.Contains(out, "DYN (Shared object file)") {
				t.Errorf("%s: not position-independent", bin)
			}
			if strings.Contains(out, "(NEEDED)") {
				t.Errorf("%s: needs shared libraries", bin)
			}
			if strings.Contains(out, ".symtab") {
				t.Errorf("%s: not stripped", bin)
			}
		}
	}
}
