// Package importrules enforces the layering of docs/ARCHITECTURE.md with `go list`:
// the data plane imports nothing of the gateway, the domain knows nothing of
// gRPC, protobuf, the tunnel or viper, and only pkg/config reads config.
package importrules

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const mod = "github.com/planetxlabs/dasset-gateway/"

type pkg struct {
	ImportPath string
	Imports    []string // direct, non-test
}

func list(t *testing.T) []pkg {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 15 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// deps is the transitive closure of in-module and direct external imports.
func deps(t *testing.T, pkgs []pkg) map[string]map[string]bool {
	direct := map[string][]string{}
	for _, p := range pkgs {
		direct[p.ImportPath] = p.Imports
	}
	out := map[string]map[string]bool{}
	var walk func(root, p string)
	walk = func(root, p string) {
		for _, imp := range direct[p] {
			if out[root][imp] {
				continue
			}
			out[root][imp] = true
			if strings.HasPrefix(imp, mod) {
				walk(root, imp)
			}
		}
	}
	for _, p := range pkgs {
		out[p.ImportPath] = map[string]bool{}
		walk(p.ImportPath, p.ImportPath)
	}
	return out
}

func TestImportRules(t *testing.T) {
	pkgs := list(t)
	all := deps(t, pkgs)
	type rule struct {
		what      string
		applies   func(p string) bool
		forbidden func(imp string) bool
		direct    bool // only direct imports count
	}
	directOf := map[string]map[string]bool{}
	for _, p := range pkgs {
		directOf[p.ImportPath] = map[string]bool{}
		for _, imp := range p.Imports {
			directOf[p.ImportPath][imp] = true
		}
	}
	under := func(prefix string) func(string) bool {
		return func(p string) bool { return p == mod+prefix || strings.HasPrefix(p, mod+prefix+"/") }
	}
	is := func(names ...string) func(string) bool {
		return func(p string) bool {
			for _, n := range names {
				if p == mod+n {
					return true
				}
			}
			return false
		}
	}
	not := func(f func(string) bool) func(string) bool { return func(p string) bool { return !f(p) } }
	rules := []rule{
		{"tunnel/* imports nothing of pkg/ or proto/", under("tunnel"),
			func(imp string) bool { return under("pkg")(imp) || under("proto")(imp) }, false},
		{"the domain knows no gRPC, protobuf, tunnel, viper or prometheus", is("pkg/gateway"),
			func(imp string) bool {
				return under("proto")(imp) || under("tunnel")(imp) || under("pkg/api")(imp) ||
					strings.HasPrefix(imp, "google.golang.org/grpc") || strings.HasPrefix(imp, "google.golang.org/protobuf") ||
					strings.HasPrefix(imp, "github.com/spf13/viper") || strings.HasPrefix(imp, "github.com/prometheus/")
			}, false},
		{"only pkg/config uses viper", not(is("pkg/config")),
			func(imp string) bool { return imp == "github.com/spf13/viper" }, true},
		{"gRPC status codes only at the edge (pkg/api) and in clients", func(p string) bool {
			return under("pkg")(p) && !is("pkg/api", "pkg/agent", "pkg/ctl", "pkg/daemon")(p)
		}, func(imp string) bool {
			return imp == "google.golang.org/grpc/status" || imp == "google.golang.org/grpc/codes"
		}, true},
		{"identity, ipam, privacy, store, connlog, retention know nothing of gRPC or the tunnel",
			is("pkg/identity", "pkg/ipam", "pkg/privacy", "pkg/store", "pkg/connlog", "pkg/retention", "pkg/audit"),
			func(imp string) bool {
				return under("proto")(imp) || under("tunnel")(imp) || strings.HasPrefix(imp, "google.golang.org/grpc")
			}, false},
	}
	checked := 0
	for _, r := range rules {
		src := all
		if r.direct {
			src = directOf
		}
		for p, ds := range src {
			if !r.applies(p) {
				continue
			}
			checked++
			for imp := range ds {
				if r.forbidden(imp) {
					t.Errorf("%s: %s imports %s", r.what, strings.TrimPrefix(p, mod), imp)
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("rules applied to only %d packages", checked)
	}
}

// TestRulesCatchViolations proves the checker sees a forbidden import: the
// tunnel must not reach pkg/, and pkg/daemon (which may) does.
func TestRulesCatchViolations(t *testing.T) {
	all := deps(t, list(t))
	if !all[mod+"pkg/daemon"][mod+"tunnel/wg"] || !all[mod+"pkg/daemon"][mod+"pkg/gateway"] {
		t.Fatal("dependency closure misses pkg/daemon's own imports: the rules would check nothing")
	}
}
