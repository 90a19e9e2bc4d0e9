package changelog

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig says how changelog streams are created.
type StreamConfig struct {
	// Replicas is the JetStream replication of each changelog stream (1 for a
	// single NATS server, 3 for a production NATS cluster).
	Replicas int
	// MaxBytes caps one changelog stream; -1 is unlimited. Compaction keeps one
	// record per key, so a stream's size follows the store's size, not its history.
	MaxBytes int64
}

// DefaultStreamConfig suits a single NATS server.
func DefaultStreamConfig() StreamConfig { return StreamConfig{Replicas: 1, MaxBytes: -1} }

// Validate checks the config.
func (c StreamConfig) Validate() error {
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("changelog: replicas must be 1..5, got %d", c.Replicas)
	}
	if c.MaxBytes == 0 || c.MaxBytes < -1 {
		return fmt.Errorf("changelog: max bytes must be -1 or positive, got %d", c.MaxBytes)
	}
	return nil
}

// EnsureStream creates the changelog stream of s if it does not exist and
// returns it. An existing stream is used as it is.
func EnsureStream(ctx context.Context, js jetstream.JetStream, s Subjects, cfg StreamConfig) (jetstream.Stream, error) {
	st, err := js.Stream(ctx, s.Stream())
	if err == nil {
		return st, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("changelog %s: %w", s.Stream(), err)
	}
	st, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:               s.Stream(),
		Description:        "eddy changelog of " + s.Type + " partition " + fmt.Sprint(s.Partition),
		Subjects:           []string{s.All()},
		Storage:            jetstream.FileStorage,
		Replicas:           cfg.Replicas,
		MaxBytes:           cfg.MaxBytes,
		MaxMsgsPerSubject:  1,
		Discard:            jetstream.DiscardOld,
		AllowAtomicPublish: true,
		AllowDirect:        true,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, fmt.Errorf("create changelog %s: %w", s.Stream(), err)
	}
	if err != nil {
		return js.Stream(ctx, s.Stream())
	}
	return st, nil
}
