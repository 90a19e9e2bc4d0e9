package snapshot

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config says how a snapshot bucket is created and pruned.
type Config struct {
	// Replicas is the JetStream replication of the bucket's stream (1 for a
	// single NATS server, 3 for a production NATS cluster), like the other
	// streams eddy creates. An existing bucket keeps its own.
	Replicas int
	// Keep is how many manifests of each partition Prune keeps, the newest.
	// Two or more let a restore fall back when the newest snapshot is damaged.
	Keep int
	// GCGrace is the least age of a file that Prune deletes when no kept
	// manifest references it: an upload still under way (a zombie owner's)
	// references its files only when its manifest lands.
	GCGrace time.Duration
	// Logger receives fallbacks and pruning (nil: discarded).
	Logger *slog.Logger
}

// DefaultConfig suits a single NATS server.
func DefaultConfig() Config {
	return Config{
		Replicas: 1,
		Keep:     2,                // the newest and one to fall back to
		GCGrace:  10 * time.Minute, // far longer than an upload of a multi-GiB store on a LAN
	}
}

// Validate checks the config.
func (c Config) Validate() error {
	var errs []error
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("Replicas must be 1..5, got %d", c.Replicas))
	}
	if c.Keep < 1 {
		errs = append(errs, fmt.Errorf("Keep must be at least 1, got %d", c.Keep))
	}
	if c.GCGrace < 0 {
		errs = append(errs, fmt.Errorf("GCGrace %v is negative", c.GCGrace))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("snapshot: invalid config: %w", err)
	}
	return nil
}
