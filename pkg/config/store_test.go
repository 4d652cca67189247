package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStoreDSNFromEnvironment: DASSET_STORE_DSN sets store.dsn (the way to
// keep a password out of the file), and a bad one is named by its key
// without repeating the secret.
func TestStoreDSNFromEnvironment(t *testing.T) {
	clearEnv(t)
	t.Setenv("DASSET_STORE_DRIVER", "postgres")
	t.Setenv("DASSET_STORE_DSN", "postgres://gateway:s3cret@db.example.net:5432/dasset")
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Store.Driver != DriverPostgres || c.Store.DSN != "postgres://gateway:s3cret@db.example.net:5432/dasset" {
		t.Fatalf("store from environment: %+v", c.Store)
	}
	dsn, err := c.Store.ResolveDSN()
	if err != nil || dsn != c.Store.DSN {
		t.Fatalf("ResolveDSN = %q, %v", dsn, err)
	}

	t.Setenv("DASSET_STORE_DSN", "postgres://gateway:s3cret@db:notaport/dasset")
	c, err = Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), "store.dsn: not a PostgreSQL connection string") {
		t.Fatalf("Validate with a bad DASSET_STORE_DSN: %v", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("the error repeats the password: %v", err)
	}
}

func TestResolveDSNFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "  host=/run/postgresql dbname=dasset password=s3cret\n", 0o640)
	dsn, err := Store{Driver: DriverPostgres, DSNFile: good}.ResolveDSN()
	if err != nil || dsn != "host=/run/postgresql dbname=dasset password=s3cret" {
		t.Fatalf("ResolveDSN(%s) = %q, %v", good, dsn, err)
	}
	for name, tc := range map[string]struct {
		path string
		want string
	}{
		"world readable": {write("open", "host=db password=s3cret", 0o644), "is accessible by others (mode 0644)"},
		"empty":          {write("empty", " \n", 0o600), "is empty"},
		"bad syntax":     {write("bad", "postgres://u:s3cret@db:notaport/x", 0o600), "not a PostgreSQL connection string"},
		"missing":        {filepath.Join(dir, "none"), "no such file"},
		"directory":      {dir, "not a regular file"},
	} {
		_, err := Store{Driver: DriverPostgres, DSNFile: tc.path}.ResolveDSN()
		if err == nil || !strings.HasPrefix(err.Error(), "store.dsn_file: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ResolveDSN error %v, want store.dsn_file: ... %s", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error repeats the password: %v", name, err)
		}
	}
}
