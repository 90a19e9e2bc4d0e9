package pgproc_test

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/pgproc"
	"github.com/eddyrt/eddy/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// TestCrashKeepsCommitted crashes a server (immediate shutdown) with one
// transaction committed and one open: after the restart's WAL replay the
// committed row is there and the open one's is not, across a clean
// Stop and Restart too; Close then removes the server's directory.
func TestCrashKeepsCommitted(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := pgtest.New(t)
	if err := s.CreateDatabase(ctx, "crash"); err != nil {
		t.Fatal(err)
	}
	dsn := s.DSN("crash")

	conn := connect(t, ctx, dsn)
	mustExec(t, ctx, conn, "CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)")
	mustExec(t, ctx, conn, "INSERT INTO kv VALUES (1, 'committed')")
	open := connect(t, ctx, dsn)
	mustExec(t, ctx, open, "BEGIN")
	mustExec(t, ctx, open, "INSERT INTO kv VALUES (2, 'open')")

	// 1. Crash: no checkpoint, every process gone.
	start := time.Now()
	if err := s.Crash(); err != nil {
		t.Fatalf("crash: %v", err)
	}
	t.Logf("crash took %v", time.Since(start).Round(time.Millisecond))
	if s.Running() {
		t.Fatal("running after Crash")
	}
	if c, err := pgx.Connect(ctx, dsn); err == nil {
		c.Close(ctx)
		t.Fatal("connected to a crashed server")
	}
	if err := s.Crash(); !errors.Is(err, pgproc.ErrNotRunning) {
		t.Fatalf("second crash: got %v, want ErrNotRunning", err)
	}

	// 2. Restart replays the WAL: the committed row is back, the open one's not.
	start = time.Now()
	if err := s.Restart(); err != nil {
		t.Fatalf("restart after crash: %v", err)
	}
	t.Logf("restart after crash took %v", time.Since(start).Round(time.Millisecond))
	if log := s.LogTail(1 << 20); !strings.Contains(log, "automatic recovery in progress") {
		t.Fatalf("restart after Crash ran no crash recovery:\n%s", log)
	}
	checkRows(t, ctx, dsn, "committed")
	if err := s.Restart(); !errors.Is(err, pgproc.ErrRunning) {
		t.Fatalf("restart of a running server: got %v, want ErrRunning", err)
	}

	// 3. A clean Stop (twice: the second is a no-op) and Restart.
	for range 2 {
		if err := s.Stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
	}
	if err := s.Restart(); err != nil {
		t.Fatalf("restart after stop: %v", err)
	}
	checkRows(t, ctx, dsn, "committed")

	// 4. Close stops the server and removes its directory, once.
	dir := s.Dir()
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after Close: %v, want it gone", dir, err)
	}
	if s.Running() {
		t.Fatal("running after Close")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := s.Restart(); !errors.Is(err, pgproc.ErrClosed) {
		t.Fatalf("restart after close: got %v, want ErrClosed", err)
	}
}

// TestHungServerIsKilledWhole kills a server with a hung backend as Stop
// does once a shutdown has taken too long: the backend is killed too (it is
// in no process group of the postmaster's), or it would keep the shared
// memory attached and the restart would fail.
func TestHungServerIsKilledWhole(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := pgtest.New(t)
	conn := connect(t, ctx, s.DSN("postgres"))
	var backend int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(backend, syscall.SIGSTOP); err != nil {
		t.Fatalf("stop backend %d: %v", backend, err)
	}
	pgproc.KillAll(s)
	if s.Running() {
		t.Fatal("running after KillAll")
	}
	if err := s.Restart(); err != nil {
		t.Fatalf("restart after KillAll: %v", err)
	}
}

// TestStartFailureLeavesNothing starts a server on a port that is taken:
// Start fails with postgres's reason and leaves neither a process nor a
// directory behind.
func TestStartFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	pgtest.Require(t)
	// Not t.TempDir(): as root the server runs as the user postgres, which
	// must be able to search its parent (t.TempDir's is mode 0700).
	parent, err := os.MkdirTemp("", "pgproc-test-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	start := time.Now()
	s, err := pgproc.Start(pgproc.Config{Dir: parent, Port: l.Addr().(*net.TCPAddr).Port, Logf: t.Logf})
	if err == nil {
		s.Close()
		t.Fatal("started on a taken port")
	}
	t.Logf("failed in %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), "could not bind") {
		t.Errorf("error does not carry postgres's reason: %v", err)
	}
	if left, err := os.ReadDir(parent); err != nil || len(left) > 0 {
		t.Errorf("left in %s: %v (%v)", parent, left, err)
	}
}

func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func mustExec(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// checkRows asserts that table kv holds exactly the values want, by key.
func checkRows(t *testing.T, ctx context.Context, dsn string, want ...string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT v FROM kv ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("kv holds %q, want %q", got, want)
	}
}
