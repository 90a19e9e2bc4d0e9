package changelog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/internal/streams"
)

// StreamConfig says how changelog streams are created.
type StreamConfig struct {
	// Replicas is the JetStream replication of each changelog stream (1 for a
	// single NATS server, 3 for a production NATS cluster).
	Replicas int
	// MaxBytes caps one changelog stream; -1 is unlimited. A changelog is
	// a log trimmed below its partition's snapshots (Trim), so its size
	// follows the changes since the older kept snapshot.
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

// streamSpec is the changelog stream of s as eddy creates it, and what an
// existing one must keep: no limit of messages per subject (a log, not
// compacted: its subjects are per partition, not per key), atomic batch
// publish (a commit is one batch), file storage, limits retention (a
// restore replays it), the subjects of s. Its duplicate window is short:
// only pipelined commits carry message ids (Writer), and a commit is
// retried within seconds; a longer window costs the server memory per
// commit.
func streamSpec(s Subjects, cfg StreamConfig) streams.Spec {
	return streams.Spec{
		Role: "changelog",
		Config: jetstream.StreamConfig{
			Name:               s.Stream(),
			Description:        "eddy changelog of " + s.Type + " partition " + fmt.Sprint(s.Partition),
			Subjects:           []string{s.All()},
			Storage:            jetstream.FileStorage,
			Replicas:           cfg.Replicas,
			MaxBytes:           cfg.MaxBytes,
			MaxMsgsPerSubject:  -1,
			Discard:            jetstream.DiscardOld,
			Duplicates:         duplicateWindow,
			AllowAtomicPublish: true,
			AllowDirect:        true,
		},
		Replayed: true,
	}
}

// duplicateWindow is the duplicate window of the changelogs eddy creates.
const duplicateWindow = 10 * time.Second

// EnsureStream returns the changelog stream of s, in one attempt: it creates
// a missing stream; an existing one with fewer replicas than cfg or without
// direct gets is updated; one that eddy cannot use (a MaxMsgsPerSubject,
// such as the 1 of an earlier eddy's compacted changelogs, no atomic
// publish, other storage or subjects) is an
// error naming the field and both values, wrapping
// eddy.ErrIncompatibleStream, that retrying does not cure. A JetStream
// cluster electing its leaders makes it fail with a timeout or 10008
// "temporarily unavailable"; its caller, a supervised partition actor,
// retries by restarting.
func EnsureStream(ctx context.Context, js jetstream.JetStream, s Subjects, cfg StreamConfig) (jetstream.Stream, error) {
	st, _, err := streams.Ensure(ctx, js, streamSpec(s, cfg))
	return st, err
}

// CheckStreams compares the changelog streams of actor type typ that
// already exist with what EnsureStream wants, in one attempt: it returns
// the first that eddy cannot use as an error, and applies and logs the safe
// changes (more replicas, direct gets). Missing changelogs are left to
// EnsureStream. A node runs it at start, so that a changelog it cannot use
// fails the start rather than a partition actor after it. A nil log logs
// nothing.
func CheckStreams(ctx context.Context, js jetstream.JetStream, typ string, partitions int, cfg StreamConfig, log *slog.Logger) error {
	for p := range partitions {
		spec := streamSpec(NewSubjects(typ, p), cfg)
		st, err := js.Stream(ctx, spec.Config.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("changelog %s: %w", spec.Config.Name, err)
		}
		plan, err := streams.Diff(spec, st.CachedInfo().Config)
		if err != nil {
			return err
		}
		if plan.Update != nil {
			if _, err := js.UpdateStream(ctx, *plan.Update); err != nil {
				return fmt.Errorf("update changelog %s (%v): %w", spec.Config.Name, plan.Changes, err)
			}
		}
		streams.LogPlan(log, spec, plan)
	}
	return nil
}
