package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runGateway(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestCheckConfigMatchesServe: a retention beyond the privacy policy is
// refused by check-config exactly as by serve (a config error, exit 2),
// and a configuration within it passes check-config.
func TestCheckConfigMatchesServe(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := "data_dir: " + filepath.Join(dir, "data") + "\nkeystore_dir: " + filepath.Join(dir, "keys") + "\n"
	over := write("over.yaml", base+"retention:\n  connection_log: 9000h\n")
	ok := write("ok.yaml", base)
	for _, cmd := range []string{"check-config", "serve"} {
		_, err := runGateway(t, cmd, "--config", over)
		var ce *configError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "privacy policy") || !strings.Contains(err.Error(), "connection_log") {
			t.Errorf("%s with retention beyond the policy: %v, want a config error naming the policy and connection_log", cmd, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("serve refused the config but made data_dir (%v)", err)
	}
	if out, err := runGateway(t, "check-config", "--config", ok); err != nil || !strings.Contains(out, "valid") {
		t.Fatalf("check-config within the policy: %q, %v", out, err)
	}
}
