package natsproc

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config describes the servers a Cluster runs. The zero value of every field
// but Dir means its default; DefaultConfig spells the defaults out.
type Config struct {
	// Servers is how many nats-server processes to run: 1 runs a standalone
	// JetStream server (no cluster block), 2 or more a JetStream cluster in
	// which every server routes to all the others. 3 is the smallest cluster
	// that keeps a JetStream quorum when one server is lost.
	Servers int

	// Dir holds everything of the servers: per server i (name n<i+1>) its
	// config file n1.conf, its JetStream store n1/ and its log n1.log, all
	// kept across restarts. Required; t.TempDir() in tests.
	Dir string

	// ClusterName is the name in the cluster block (unused for one server).
	ClusterName string

	// SyncAlways writes `sync_interval: always` into the jetstream block: the
	// server fsyncs every write before acknowledging it, the production
	// setting against losing acknowledged writes when a host crashes. Off, the
	// server's default applies (fsync every 2 minutes; acknowledged writes are
	// safe against a process kill, since they reach the OS, but not against a
	// host crash).
	SyncAlways bool

	// ExtraConfig are raw config lines added at the top level of every
	// server's config file, e.g. "debug: true" or "max_payload: 8MB".
	ExtraConfig []string

	// Binary is the nats-server executable. Empty means the one Binary
	// returns: $EDDY_NATS_SERVER, or the module's pinned version built once
	// and cached.
	Binary string

	// StartTimeout bounds how long Start(i) waits for the new process to
	// accept client connections.
	StartTimeout time.Duration

	// StopTimeout is how long Stop(i) waits after SIGTERM before it sends
	// SIGKILL.
	StopTimeout time.Duration
}

// DefaultConfig is a 3-server JetStream cluster. Dir must still be set.
func DefaultConfig() Config {
	return Config{
		// The smallest cluster in which R3 streams survive losing a member.
		Servers:     3,
		ClusterName: "eddy",
		// Starting to listen takes well under a second on an idle machine;
		// recovering a store first and a loaded 2-core CI machine can make it
		// many times that.
		StartTimeout: 30 * time.Second,
		// A graceful shutdown flushes the JetStream stores, which takes
		// milliseconds here; 10 s leaves room for a loaded machine and still
		// ends a hung server in bounded time.
		StopTimeout: 10 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Servers == 0 {
		c.Servers = d.Servers
	}
	if c.ClusterName == "" {
		c.ClusterName = d.ClusterName
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = d.StartTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = d.StopTimeout
	}
	return c
}

// Validate reports what makes c unusable, after defaults are applied.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Servers < 1 {
		errs = append(errs, fmt.Errorf("servers must be at least 1, not %d", c.Servers))
	}
	if c.Servers > 9 {
		// Nothing in the format stops more, but no test needs it and every
		// server costs a process and three ports.
		errs = append(errs, fmt.Errorf("servers must be at most 9, not %d", c.Servers))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("dir is required"))
	} else if err := checkConfString(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("dir: %w", err))
	}
	if !isConfName(c.ClusterName) {
		errs = append(errs, fmt.Errorf("cluster name %q: use letters, digits, '-' and '_'", c.ClusterName))
	}
	for _, l := range c.ExtraConfig {
		if strings.ContainsAny(l, "\n\r") {
			errs = append(errs, fmt.Errorf("extra config line %q spans lines; give one line each", l))
		}
	}
	if c.StartTimeout < 0 || c.StopTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	return errors.Join(errs...)
}

// isConfName reports whether s can be written unquoted as a config value.
func isConfName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// checkConfString reports whether s can be written in double quotes in a
// config file as it is: the format treats '\' as an escape and '"' as the end.
func checkConfString(s string) error {
	if strings.ContainsAny(s, "\"\\\n\r") {
		return fmt.Errorf("%q: a path with '\"', '\\' or a line break cannot be written into a nats-server config", s)
	}
	return nil
}
