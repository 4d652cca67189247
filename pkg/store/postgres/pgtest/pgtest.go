// Package pgtest runs throw-away PostgreSQL clusters for tests: initdb and
// pg_ctl from the installed PostgreSQL (Debian's postgresql package, in
// /usr/lib/postgresql/VERSION/bin, or on PATH) in a temporary directory,
// listening only on a unix socket in that directory (no TCP port), removed
// afterwards.
//
// initdb refuses to run as root: as root, the cluster runs as the postgres
// user (the directory is handed to it); otherwise as the current user.
// A missing PostgreSQL is a test failure with the fix in its message, never
// a skip.
package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Port only names the socket file (.s.PGSQL.5432): the cluster opens no
// TCP port.
const Port = 5432

// Cluster is one running throw-away PostgreSQL cluster.
type Cluster struct {
	bin  string // directory of initdb, pg_ctl, postgres
	dir  string // socket directory; data in dir/data, log in dir/log
	cred *syscall.Credential
	user string // database superuser
}

// binDir finds the newest installed PostgreSQL's binaries.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) })
	for _, d := range dirs {
		if fileExists(filepath.Join(d, "initdb")) && fileExists(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(p)
		if fileExists(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", errors.New("pgtest: PostgreSQL is not installed (no initdb and pg_ctl in /usr/lib/postgresql/*/bin or on PATH): run scripts/install-deps.sh as root, or apt-get install postgresql")
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// New initialises and starts a cluster. Close stops it and removes its
// directory.
func New(ctx context.Context) (*Cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root, initdb needs the postgres user (made by the postgresql package): %w", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		c.user = "postgres"
	} else {
		u, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("pgtest: %w", err)
		}
		c.user = u.Username
	}
	c.reapOrphans(ctx)
	// Not t.TempDir: its parents are private to the test's user, and the
	// server may run as another one. The socket path must stay short.
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c.dir = dir
	// The test process that owns the cluster: a later New stops a cluster
	// whose owner died without Close (a test binary killed at its timeout).
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if c.cred != nil {
		if err := os.Chown(dir, uid, gid); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: hand %s to postgres: %w", dir, err)
		}
	}
	if err := c.run(ctx, "initdb", "--pgdata", c.DataDir(), "--username", c.user, "--auth", "trust",
		"--encoding", "UTF8", "--locale", "C", "--no-sync", "--no-instructions"); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

const (
	dirPrefix = "dasset-pg-"
	ownerFile = "owner.pid"
)

// reapOrphans stops and removes the clusters left in the temporary
// directory by test processes that are gone.
func (c *Cluster) reapOrphans(ctx context.Context) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // being set up, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // its owner is alive
		}
		orphan := &Cluster{bin: c.bin, dir: dir, cred: c.cred, user: c.user}
		if fileExists(filepath.Join(orphan.DataDir(), "postmaster.pid")) {
			_ = orphan.run(ctx, "pg_ctl", "stop", "--pgdata", orphan.DataDir(), "--wait", "--timeout", "30", "--mode", "immediate")
		}
		_ = os.RemoveAll(dir)
	}
}

// Start starts the (stopped) cluster and waits until it accepts
// connections.
func (c *Cluster) Start(ctx context.Context) error {
	opts := strings.Join([]string{
		"-c listen_addresses=''",
		"-c unix_socket_directories=" + c.dir,
		"-c unix_socket_permissions=0700",
		"-p " + strconv.Itoa(Port),
		// A throw-away cluster: durability buys nothing.
		"-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
		"-c max_connections=200", "-c shared_buffers=32MB",
	}, " ")
	return c.run(ctx, "pg_ctl", "start", "--pgdata", c.DataDir(), "--wait", "--timeout", "60",
		"--log", filepath.Join(c.dir, "log"), "-o", opts)
}

// Stop stops the cluster (fast shutdown: sessions are disconnected).
func (c *Cluster) Stop(ctx context.Context) error {
	return c.run(ctx, "pg_ctl", "stop", "--pgdata", c.DataDir(), "--wait", "--timeout", "60", "--mode", "fast")
}

// Close stops the cluster and removes its directory.
func (c *Cluster) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	if fileExists(filepath.Join(c.DataDir(), "postmaster.pid")) {
		if err := c.Stop(ctx); err != nil {
			// Stop asked nicely; make sure no server outlives the test.
			errs = append(errs, err, c.run(ctx, "pg_ctl", "stop", "--pgdata", c.DataDir(), "--wait", "--mode", "immediate"))
		}
	}
	errs = append(errs, os.RemoveAll(c.dir))
	return errors.Join(errs...)
}

// Dir is the cluster's directory, holding its unix socket.
func (c *Cluster) Dir() string { return c.dir }

// DataDir is the cluster's data directory.
func (c *Cluster) DataDir() string { return filepath.Join(c.dir, "data") }

// Log is what the server has logged so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "log"))
	return string(b)
}

// DSN is the connection string of database db, over the cluster's socket.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", c.dir, Port, c.user, db)
}

// CreateDatabase creates an empty database and returns its DSN.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return c.DSN(name), nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if log := c.Log(); name == "pg_ctl" && log != "" {
			msg += "\nserver log:\n" + log
		}
		return fmt.Errorf("pgtest: %s: %w: %s", name, err, msg)
	}
	return nil
}

// Start starts a cluster for the test and stops and removes it when the
// test ends. A missing PostgreSQL fails the test.
func Start(t testing.TB) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("pgtest: close: %v", err)
		}
	})
	return c
}

func randomName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t_" + hex.EncodeToString(b[:])
}

// NewDatabase creates a database with a fresh random name in the cluster
// and returns its DSN.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	dsn, err := c.CreateDatabase(context.Background(), randomName())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// NewSchema creates a schema with a fresh random name in database db
// (which must exist) and returns a DSN whose connections use it
// (search_path): an empty namespace of its own for a test, ten times
// cheaper than a new database. Advisory locks stay shared by the whole
// database.
func (c *Cluster) NewSchema(t testing.TB, db string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.DSN(db))
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	name := randomName()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	return c.DSN(db) + " search_path=" + name
}
