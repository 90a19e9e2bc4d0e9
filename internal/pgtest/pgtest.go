// Package pgtest gives tests throwaway PostgreSQL servers (see
// internal/pgproc): one of a test's own, or a fresh database on a server that
// the whole test binary shares.
//
// Where no PostgreSQL is installed (pgproc.ErrNoBinaries), the tests that
// ask for one are skipped, naming where it was looked for; with
// EDDY_PG_REQUIRED=1 they fail instead, so that in CI a missing install
// cannot pass as a green run.
//
// A package that calls DB stops the shared server in its TestMain:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pgtest.StopShared()
//		os.Exit(code)
//	}
//
// Without it, the server dies with the test binary on Linux (the kernel
// kills it) but its directory stays in os.TempDir().
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/pgproc"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/jackc/pgx/v5"
)

// EnvRequired names the environment variable that, set to 1, makes a
// missing PostgreSQL fail the tests that need it rather than skip them.
const EnvRequired = "EDDY_PG_REQUIRED"

// dbTimeout bounds creating or dropping a test's database: milliseconds
// here, seconds on a loaded CI machine.
const dbTimeout = 30 * time.Second

// New starts a server of the test's own, closed (stopped and its directory
// removed) when the test ends. Its output goes to t.Log, shown when the test
// fails or runs with -v. Crash, Stop and Restart are the test's to call.
func New(t testing.TB) *pgproc.Server {
	t.Helper()
	// Before Start, so that the writer is closed after the server's Close
	// (cleanups run last-registered first) and the server's last lines show.
	w := testkit.LogWriter(t)
	cfg := pgproc.DefaultConfig()
	cfg.Logf = func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	s, err := pgproc.Start(cfg)
	if err != nil {
		fail(t, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("pgtest: close server: %v", err)
		}
	})
	return s
}

// shared is the server that DB hands out databases on: started by the first
// DB of the test binary, stopped by StopShared.
var shared struct {
	sync.Mutex
	srv *pgproc.Server
	err error // why it could not start; every later DB reports it too
	n   int   // databases created, for unique names
}

// DB creates a database of a unique name on the test binary's shared server
// and returns its DSN. The database is dropped when the test ends, ending
// any session still connected to it. The server's output stays in its log;
// when the test fails, the end of it goes to t.Log. DB is safe to call from
// parallel tests. The server is not the test's to stop or crash: New gives
// one that is.
func DB(t testing.TB) string {
	t.Helper()
	s, name, err := sharedDB(t.Name())
	if err != nil {
		fail(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
	defer cancel()
	if err := s.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.LogTail(8 << 10))
		}
		ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
		defer cancel()
		if err := dropDatabase(ctx, s, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return s.DSN(name)
}

// sharedDB starts the shared server if none runs and picks a new database
// name for test.
func sharedDB(test string) (*pgproc.Server, string, error) {
	shared.Lock()
	defer shared.Unlock()
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.err = pgproc.Start(pgproc.DefaultConfig())
	}
	if shared.err != nil {
		return nil, "", shared.err
	}
	shared.n++
	return shared.srv, dbName(shared.n, test), nil
}

// dbName is t<n>_<test>, the test's name lower-cased with every other
// character than a-z and 0-9 made '_', cut to PostgreSQL's 63 bytes.
func dbName(n int, test string) string {
	name := fmt.Sprintf("t%d_%s", n, strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '_'
	}, test))
	return name[:min(len(name), 63)]
}

// dropDatabase drops database name, ending the sessions still connected.
func dropDatabase(ctx context.Context, s *pgproc.Server, name string) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// StopShared stops the shared server and removes its directory, if DB
// started one; a later DB would start another. Call it in TestMain after
// m.Run; it reports a failure to stop on stderr, there being no test left to
// fail.
func StopShared() {
	shared.Lock()
	defer shared.Unlock()
	s := shared.srv
	shared.srv, shared.err = nil, nil
	if s == nil {
		return
	}
	if err := s.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stop shared server: %v\n", err)
	}
}

// Require skips or fails the test, by the rule of New, unless PostgreSQL is
// installed: for tests that call pgproc.Start themselves.
func Require(t testing.TB) {
	t.Helper()
	if _, err := pgproc.Binaries(); err != nil {
		fail(t, err)
	}
}

// fail skips the test if PostgreSQL is not installed and EDDY_PG_REQUIRED is
// not 1, and fails it otherwise.
func fail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, pgproc.ErrNoBinaries) && os.Getenv(EnvRequired) != "1" {
		t.Skipf("pgtest: %v (set %s=1 to fail instead)", err, EnvRequired)
	}
	t.Fatalf("pgtest: %v", err)
}
