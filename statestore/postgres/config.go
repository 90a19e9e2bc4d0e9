package postgres

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Config configures the connection pool of a node to PostgreSQL.
type Config struct {
	// DSN is the connection string (postgres://user:password@host:port/db
	// or "host=... password=..."). It holds credentials: eddy logs it only
	// through Redact.
	DSN string
	// MaxConns is the most connections the node's pool opens. A partition
	// actor holds one for each commit (two round trips) and each read that
	// misses its cache.
	MaxConns int32
	// CommitTimeout bounds one commit transaction or read: past it the
	// outcome is unknown and read back from the runtime table.
	CommitTimeout time.Duration
	// IdleInTransaction is the server's idle_in_transaction_session_timeout
	// for eddy's sessions: a paused or cut-off owner that holds the
	// runtime row of its partition inside a transaction is disconnected
	// after it, so the new owner's claim waits at most that long.
	IdleInTransaction time.Duration
	// CacheBytes bounds the values a partition keeps in memory (approximately:
	// keys and values). The partition owner is the only writer of its rows,
	// so what it cached stays true until it stops.
	CacheBytes int
	// ApplicationName is shown in pg_stat_activity.
	ApplicationName string
}

// DefaultConfig returns a working Config for dsn.
func DefaultConfig(dsn string) Config {
	return Config{
		DSN:               dsn,
		MaxConns:          16,              // a commit holds a connection for two round trips (~1 ms): 16 partitions commit at once without waiting for one
		CommitTimeout:     5 * time.Second, // a commit takes ms; past this its outcome is read back
		IdleInTransaction: 5 * time.Second, // a failover waits at most this for a paused owner's open transaction (a killed one's socket closes at once)
		CacheBytes:        32 << 20,        // a bank partition of ~200 k accounts stays in memory; a miss costs one round trip
		ApplicationName:   "eddy",
	}
}

// ErrInvalidConfig wraps every Validate failure.
var ErrInvalidConfig = errors.New("postgres: invalid config")

// Validate checks the fields of c.
func (c Config) Validate() error {
	var errs []error
	if c.DSN == "" {
		errs = append(errs, errors.New("DSN is required"))
	}
	if c.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("MaxConns %d", c.MaxConns))
	}
	if c.CommitTimeout <= 0 {
		errs = append(errs, fmt.Errorf("CommitTimeout %v", c.CommitTimeout))
	}
	if c.IdleInTransaction < time.Millisecond {
		errs = append(errs, fmt.Errorf("IdleInTransaction %v: at least 1ms (0 would let a paused owner block its partition for good)", c.IdleInTransaction))
	}
	if c.CacheBytes < 0 {
		errs = append(errs, fmt.Errorf("CacheBytes %d", c.CacheBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// kvPassword matches a password in a key/value DSN (password=secret or
// password='se cret').
var kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// Redact returns dsn with its password replaced by "xxxxx", in either form
// (URL or key/value), for logs and errors. A DSN it cannot parse is
// replaced whole.
func Redact(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "(unparsable DSN, redacted)"
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return kvPassword.ReplaceAllString(dsn, "${1}xxxxx")
}
