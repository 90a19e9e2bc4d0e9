// Package pgproc runs throwaway PostgreSQL servers as child processes on
// loopback, for tests (through internal/pgtest) and for benchmarks, and
// subjects them to the faults eddy must survive: an immediate shutdown that
// loses everything not committed, and a restart that replays the WAL.
//
//	s, err := pgproc.Start(pgproc.DefaultConfig())
//	if err != nil { ... }
//	defer s.Close()
//	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
//
// Start runs initdb into a fresh directory and then the postgres binary
// itself (no pg_ctl), so that this package owns the postmaster's process:
// it signals it, reaps it and, on Linux, has the kernel kill it should the
// test binary die first. A server listens on 127.0.0.1 only, trusts every
// connection (no password) and is reached as the superuser postgres.
//
// When the process runs as root, as tests do on eddy's machines, initdb and
// postgres run as the user postgres, which must exist: PostgreSQL refuses to
// run as root.
//
// Measured here (PostgreSQL 15, Debian, as root, 2 noisy cores): Start takes
// 1.1-1.5 s, about 1 s of it initdb, Durable or not; Restart 0.15-0.3 s,
// after Crash too (a test's WAL replays in milliseconds); Stop 80 ms; Crash
// 20 ms.
//
// The package does not import testing, so that programs (benchmarks in
// cmd/node) can use it too. It needs a Unix: it signals processes.
package pgproc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/eddyrt/eddy/internal/procs"
)

// Sentinel errors of Server operations.
var (
	// ErrClosed: the Server was closed; it starts no more.
	ErrClosed = errors.New("pgproc: server closed")
	// ErrRunning: Restart of a server whose postmaster is running.
	ErrRunning = errors.New("pgproc: server is running")
	// ErrNotRunning: Crash of a server without a running postmaster.
	ErrNotRunning = errors.New("pgproc: server is not running")
	// ErrStopTimeout: the postmaster did not exit within 30 s of the signal
	// of Stop or Crash, and it and its children were SIGKILLed.
	ErrStopTimeout = errors.New("pgproc: server ignored its shutdown signal")
)

// maxSocketPath is the longest Unix socket path that fits sun_path
// everywhere (104 bytes with its NUL on BSD and macOS, 108 on Linux).
const maxSocketPath = 103

// Server is one PostgreSQL data directory on a fixed port, and its
// postmaster while it runs. Its methods are safe for concurrent use; Stop,
// Crash, Restart and Close are serialized, each finishing (the postmaster
// ready for connections, or exited and reaped) before the next begins.
type Server struct {
	bin     string // directory of initdb and postgres
	dir     string // this server's own directory, removed by Close
	dataDir string
	port    int
	durable bool
	cred    *syscall.Credential // whom to run as; nil: as this process
	log     *serverLog

	mu     sync.Mutex
	proc   *process // the latest postmaster; nil before the first
	closed bool
	wg     sync.WaitGroup // the wait goroutine of the postmaster
}

// Start creates a fresh directory under cfg.Dir, runs initdb into it and
// starts postgres, returning once a client can connect to the database
// postgres. If it fails, the error says why, with the end of the server's
// log, and nothing is left running or on disk.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("pgproc config: %w", err)
	}
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	cred, err := runAs()
	if err != nil {
		return nil, err
	}
	parent := cfg.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	if parent, err = filepath.Abs(parent); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "eddy-pg-*")
	if err != nil {
		return nil, fmt.Errorf("pgproc dir: %w", err)
	}
	s := &Server{bin: bin, dir: dir, dataDir: filepath.Join(dir, "data"), port: cfg.Port, durable: cfg.Durable, cred: cred}
	if err := s.prepare(cfg); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	if err := s.initdb(); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	if err := s.Restart(); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// prepare readies s.dir for initdb: owned by the user to run as, a port
// chosen, the socket path checked and the log opened. Close undoes it,
// however far it got.
func (s *Server) prepare(cfg Config) error {
	if s.cred != nil {
		if err := handOver(s.dir, s.cred); err != nil {
			return fmt.Errorf("pgproc dir: %w", err)
		}
	}
	if s.port == 0 {
		ps, err := procs.PickPorts(1)
		if err != nil {
			return fmt.Errorf("pgproc port: %w", err)
		}
		s.port = ps[0]
	}
	if sock := filepath.Join(s.dir, ".s.PGSQL."+strconv.Itoa(s.port)); len(sock) > maxSocketPath {
		return fmt.Errorf("pgproc: socket path %s is %d bytes, more than the %d a Unix socket takes: use a shorter Dir",
			sock, len(sock), maxSocketPath)
	}
	l, err := openLog(filepath.Join(s.dir, "postgres.log"), s.port, cfg.Logf)
	if err != nil {
		return fmt.Errorf("pgproc log: %w", err)
	}
	s.log = l
	return nil
}

// DSN is the URL of database db on the server, for pgx and libpq:
// postgres://postgres@127.0.0.1:PORT/DB?sslmode=disable.
func (s *Server) DSN(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     "127.0.0.1:" + strconv.Itoa(s.port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the loopback TCP port the server listens on, the same across
// restarts.
func (s *Server) Port() int { return s.port }

// Dir is the server's own directory: the data directory data/, the Unix
// socket (psql -h DIR -p PORT -U postgres) and the log postgres.log. Close
// removes it.
func (s *Server) Dir() string { return s.dir }

// LogTail returns up to limit bytes from the end of the server's log,
// headed by its path: the output of initdb and of every run of postgres,
// with a line of this package's at each start, signal and exit.
func (s *Server) LogTail(limit int) string { return s.log.tail(limit) }

// CreateDatabase creates database name (any string: it is quoted as an
// identifier). It fails if the database exists.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Running reports whether the postmaster runs: started, and neither stopped
// nor crashed nor exited by itself.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running()
}

// Restart starts postgres on the server's data directory and port, after
// Stop or Crash, and returns once a client can connect: after a Crash, once
// the WAL is replayed. It fails with ErrRunning if the postmaster runs and
// ErrClosed after Close; if postgres does not become ready it is stopped.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.running() {
		return ErrRunning
	}
	return s.launch()
}

// Stop shuts the server down fast (SIGINT): clients are disconnected, open
// transactions rolled back, a checkpoint written. It returns once the
// postmaster has exited and been reaped, and is a no-op if none runs. After
// 30 s it SIGKILLs the postmaster and its children and returns
// ErrStopTimeout.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stop(syscall.SIGINT)
}

// Crash shuts the server down immediately (SIGQUIT): every process exits
// at once, without a checkpoint, as after a crash of the server; the next
// start replays the WAL, and committed transactions survive. It returns once
// the postmaster has exited and been reaped, with ErrNotRunning if none ran
// and ErrStopTimeout as Stop does.
func (s *Server) Crash() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running() {
		return ErrNotRunning
	}
	return s.stop(syscall.SIGQUIT)
}

// Close stops the server as Stop does and removes its directory. After it
// the Server starts no more; closing again is a no-op.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.stop(syscall.SIGINT)
	if s.log != nil {
		err = errors.Join(err, s.log.close())
	}
	return errors.Join(err, os.RemoveAll(s.dir))
}
