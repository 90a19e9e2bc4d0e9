package partition

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
)

// Of returns the partition of a key among n partitions: FNV-1a of its subject
// token, mod n — the same function as the input stream's subject transform
// {{partition(n,1)}}, so clients and the server agree.
func Of(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(changelog.EncodeKey(key)))
	return int(h.Sum32() % uint32(n))
}

// InputSubject is the subject a client publishes an event for key to.
func InputSubject(typ, key string) string { return typ + "." + changelog.EncodeKey(key) }

// DLQStream is the name of the dead-letter stream of an actor type.
func DLQStream(typ string) string { return typ + "_dlq" }

// DLQSubject is the subject dead letters of typ are published to.
func DLQSubject(typ string) string { return "eddy.dlq." + typ }

// StreamOptions are the options of the streams eddy creates.
type StreamOptions struct {
	Replicas int
	// Duplicates is the deduplication window; it must cover the worst failover,
	// or an outbox forwarded before a crash could be forwarded again.
	Duplicates time.Duration
}

// EnsureInputStream creates the input stream typ (if missing) with subjects
// typ.* transformed to typ.<partition>.<key>, so that a publish to typ.<key> from
// any NATS client lands in the key's partition. An existing stream must have
// the same partition count.
func EnsureInputStream(ctx context.Context, js jetstream.JetStream, typ string, partitions int, opt StreamOptions) error {
	dest := fmt.Sprintf("%s.{{partition(%d,1)}}.{{wildcard(1)}}", typ, partitions)
	st, err := js.Stream(ctx, typ)
	if err == nil {
		cfg := st.CachedInfo().Config
		if cfg.SubjectTransform == nil || cfg.SubjectTransform.Destination != dest {
			return fmt.Errorf("input stream %s exists with another partitioning (%+v); eddy wants %d partitions",
				typ, cfg.SubjectTransform, partitions)
		}
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("input stream %s: %w", typ, err)
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:             typ,
		Description:      fmt.Sprintf("eddy input stream of actor type %s, %d partitions", typ, partitions),
		Subjects:         []string{typ + ".*"},
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: typ + ".*", Destination: dest},
		Storage:          jetstream.FileStorage,
		Replicas:         opt.Replicas,
		Duplicates:       opt.Duplicates,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create input stream %s: %w", typ, err)
	}
	return nil
}

// EnsureStream creates a plain stream (outputs, dead letters) if it is missing.
func EnsureStream(ctx context.Context, js jetstream.JetStream, name string, subjects []string, opt StreamOptions) error {
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       name,
		Subjects:   subjects,
		Storage:    jetstream.FileStorage,
		Replicas:   opt.Replicas,
		Duplicates: opt.Duplicates,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create stream %s: %w", name, err)
	}
	return nil
}
