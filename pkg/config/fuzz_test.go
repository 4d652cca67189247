package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad: any configuration file either loads (and then Validate answers,
// without panicking) or is refused with an error; nothing crashes the loader.
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{"testdata/good", "testdata/bad"} {
		names, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for _, n := range names {
			if b, err := os.ReadFile(n); err == nil {
				f.Add(b)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join("..", "..", "configs", "gateway.yaml")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("a: [1\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(p, nil)
		if err != nil {
			return
		}
		_ = cfg.Validate()
	})
}
