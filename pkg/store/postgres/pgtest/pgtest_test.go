package pgtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/planetxlabs/dasset-gateway/internal/poll"
	"github.com/planetxlabs/dasset-gateway/pkg/store/postgres/pgtest"
)

// TestCluster: a cluster starts, listens on its socket only, serves a new
// database, stops and restarts, and leaves nothing behind (no directory, no
// server process).
func TestCluster(t *testing.T) {
	ctx := context.Background()
	c, err := pgtest.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = c.Close()
		}
	}()
	if _, err := os.Stat(filepath.Join(c.Dir(), ".s.PGSQL."+strconv.Itoa(pgtest.Port))); err != nil {
		t.Fatalf("no socket in the cluster directory: %v", err)
	}
	dsn, err := c.CreateDatabase(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	query := func() (listen, dbname string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if err := conn.QueryRow(ctx, "SELECT current_setting('listen_addresses'), current_database()").Scan(&listen, &dbname); err != nil {
			t.Fatal(err)
		}
		return listen, dbname
	}
	if listen, db := query(); listen != "" || db != "probe" {
		t.Fatalf("listen_addresses %q (want none: socket only), database %q", listen, db)
	}

	pidFile := filepath.Join(c.DataDir(), "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil || pid <= 0 {
		t.Fatalf("postmaster.pid: %q", b)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, dsn); err == nil {
		t.Fatal("connected to a stopped cluster")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, db := query(); db != "probe" {
		t.Fatalf("after restart: database %q", db)
	}
	b, err = os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ = strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])

	closed = true
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir()); !os.IsNotExist(err) {
		t.Fatalf("cluster directory left behind: %v", err)
	}
	// pg_ctl stop returns once postmaster.pid is gone; the process itself
	// may take a moment longer to exit.
	poll.Must(t, 10*time.Second, "server process gone after Close", func() error { return exited(pid) })
}

// exited is nil once no process has the id pid.
func exited(pid int) error {
	if syscall.Kill(pid, 0) != syscall.ESRCH {
		return fmt.Errorf("process %d still there", pid)
	}
	return nil
}

// TestReapsOrphans: a cluster whose test process died without Close (here:
// an owner pid that no process has) is stopped and removed by the next New.
func TestReapsOrphans(t *testing.T) {
	ctx := context.Background()
	orphan, err := pgtest.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer orphan.Close()
	pidFile := filepath.Join(orphan.DataDir(), "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	server, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	// An owner that is gone: a child process that has exited and been reaped.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(orphan.Dir(), "owner.pid"), []byte(strconv.Itoa(gone.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	c := pgtest.Start(t)
	if _, err := os.Stat(orphan.Dir()); !os.IsNotExist(err) {
		t.Fatalf("orphan cluster directory still there: %v", err)
	}
	poll.Must(t, 10*time.Second, "orphan server stopped", func() error { return exited(server) })
	if _, err := os.Stat(c.Dir()); err != nil {
		t.Fatalf("the new cluster: %v", err)
	}
}
