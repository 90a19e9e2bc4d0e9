package pgproc

import (
	"fmt"
	"time"
)

// Config describes a throwaway server. Its zero value is DefaultConfig.
type Config struct {
	// Dir is where Start makes the server's own fresh directory (see
	// Server.Dir), which holds the data directory, the Unix socket and the
	// log, and which Close removes. Empty means os.TempDir(). When the
	// process runs as root, every directory above must be searchable by
	// the user postgres (t.TempDir() is not: it is mode 0700).
	Dir string

	// Port is the loopback TCP port to listen on, kept across Restart. 0
	// means a port free when Start picks it, below the kernel's ephemeral
	// range so that no outgoing connection takes it while the server is
	// down between Stop and Restart.
	Port int

	// Durable keeps PostgreSQL's defaults: WAL and data are fsynced, and
	// committed transactions survive a host crash. Off, the server runs
	// with fsync=off and full_page_writes=off and initdb with --no-sync:
	// committed transactions still survive Crash and any other death of
	// the server's processes (every commit is written to the OS before it
	// is acknowledged; synchronous_commit stays on), but not a host crash.
	// Tests leave it off; benchmarks of the real cost of a commit turn it on.
	Durable bool

	// Logf, if not nil, receives every line the server and initdb write
	// (they are also kept in the log file, see Server.LogTail) and a line
	// for each start, signal and exit. It is called from the Server's
	// methods and goroutines, never after Close has returned.
	Logf func(format string, a ...any)
}

// Timeouts, not Config fields while no caller needs to change them.
const (
	// startTimeout bounds Start and Restart from launching postgres to its
	// first accepted connection: 0.1-0.3 s here, a WAL replay after Crash
	// seconds more, and a loaded 2-core CI machine many times that.
	startTimeout = 30 * time.Second
	// initdbTimeout bounds initdb: about 1 s here, fsync or not, and 4 s
	// while two test binaries start servers at once on this 2-core machine.
	initdbTimeout = 2 * time.Minute
	// stopTimeout is how long Stop and Crash wait for the postmaster to
	// exit before they SIGKILL it and its children. A fast shutdown writes a
	// checkpoint of at most shared_buffers (128 MB by default), well under a
	// second here even when Durable; 30 s still ends a hung server.
	stopTimeout = 30 * time.Second
)

// DefaultConfig is a server for tests: in a fresh directory under
// os.TempDir(), on a free port, without fsync.
func DefaultConfig() Config { return Config{} }

// Validate reports what makes c unusable.
func (c Config) Validate() error {
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port %d is not a TCP port", c.Port)
	}
	return nil
}
