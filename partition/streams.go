package partition

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/internal/streams"
)

// DLQStream is the name of the dead-letter stream of an actor type.
func DLQStream(typ string) string { return typ + "_dlq" }

// DLQSubject is the subject dead letters of typ are published to.
func DLQSubject(typ string) string { return "eddy.dlq." + typ }

// StreamOptions are the options of the streams eddy creates.
type StreamOptions struct {
	// Replicas is the JetStream replication; an existing stream with fewer
	// replicas is scaled up to it (never down).
	Replicas int
	// Duplicates is the deduplication window; it must cover the worst failover,
	// or an outbox forwarded before a crash could be forwarded again. An
	// existing stream with a shorter window gets this one (at most its MaxAge).
	Duplicates time.Duration
	// Log receives a line for each change made to an existing stream, and
	// for a stream that keeps more replicas than Replicas; nil logs nothing.
	Log *slog.Logger
}

// Input stream metadata: what a producer that is not a node (eddy's
// Client, another actor type's emit) reads to address events.
const (
	// MetaPartitions holds the partition count.
	MetaPartitions = "eddy.partitions"
	// MetaSubjects holds the layout: "partition" (one subject per
	// partition, the key in a header) or "key" (one subject per key).
	MetaSubjects = "eddy.subjects"
)

// EnsureInputStream makes the input stream of in exist, in one attempt,
// with the subjects of its layout (Input.Subjects) and, for keyed subjects,
// the transform of typ.<key> to typ.<partition>.<key>. Its metadata records
// the partition count and the layout (MetaPartitions, MetaSubjects). An
// existing stream with another partition count or layout, subjects that do
// not cover the layout's, other storage or a retention other than limits is
// an error wrapping ErrIncompatibleStream; one with fewer replicas or a
// shorter duplicate window is updated. Timeouts, 10008 "temporarily
// unavailable" and 10023 "insufficient resources" (a JetStream cluster
// electing its leaders, a member down) are worth retrying; Node.Start does.
func EnsureInputStream(ctx context.Context, js jetstream.JetStream, in Input, opt StreamOptions) error {
	spec := inputSpec(in, opt, fmt.Sprintf("eddy input stream of actor type %s, %d partitions", in.Type, in.Partitions))
	spec.Role = "input stream"
	return ensure(ctx, js, opt, spec)
}

// inputSpec is a stream laid out as in says.
func inputSpec(in Input, opt StreamOptions, description string) streams.Spec {
	cfg := jetstream.StreamConfig{
		Name:        in.Type,
		Description: description,
		Subjects:    in.Subjects(),
		Storage:     jetstream.FileStorage,
		Replicas:    opt.Replicas,
		Duplicates:  opt.Duplicates,
		Metadata:    map[string]string{MetaPartitions: strconv.Itoa(in.Partitions), MetaSubjects: "partition"},
	}
	if in.KeyedSubjects {
		dest := fmt.Sprintf("%s.{{partition(%d,1)}}.{{wildcard(1)}}", in.Type, in.Partitions)
		cfg.SubjectTransform = &jetstream.SubjectTransformConfig{Source: in.Type + ".*", Destination: dest}
		cfg.Metadata[MetaSubjects] = "key"
	}
	return streams.Spec{Config: cfg, Replayed: true}
}

// EnsureTableStream makes the stream of a table exist, in one attempt: laid
// out like an input stream (in), so that a table is read by key as an
// input is, and written by any client or by an actor type's Emit. With one
// subject per key a stream eddy creates is compacted (MaxMsgsPerSubject 1:
// the latest record of each key is kept, so the stream is the table's
// changelog); an existing stream that keeps more works, and whoever reads
// it all (a node's first start) reads more. With one subject per partition
// nothing can be compacted: the stream keeps every record.
func EnsureTableStream(ctx context.Context, js jetstream.JetStream, in Input, opt StreamOptions) error {
	spec := inputSpec(in, opt, fmt.Sprintf("eddy table stream %s, %d partitions", in.Type, in.Partitions))
	spec.Role, spec.Compacted = "table stream", in.KeyedSubjects
	return ensure(ctx, js, opt, spec)
}

// InputOf reads the addressing of an eddy input stream from its config
// (its metadata, written by EnsureInputStream); ok is false for a stream
// that is not one.
func InputOf(cfg jetstream.StreamConfig) (in Input, ok bool) {
	n, err := strconv.Atoi(cfg.Metadata[MetaPartitions])
	if err != nil || n < 1 {
		return Input{}, false
	}
	return Input{Type: cfg.Name, Partitions: n, KeyedSubjects: cfg.Metadata[MetaSubjects] == "key"}, true
}

// EnsureStream makes a plain stream (outputs, dead letters) exist, in one
// attempt, as EnsureInputStream does. An existing one must cover subjects;
// its retention is the user's.
func EnsureStream(ctx context.Context, js jetstream.JetStream, name string, subjects []string, opt StreamOptions) error {
	return ensure(ctx, js, opt, streams.Spec{
		Role: "stream",
		Config: jetstream.StreamConfig{
			Name:       name,
			Subjects:   subjects,
			Storage:    jetstream.FileStorage,
			Replicas:   opt.Replicas,
			Duplicates: opt.Duplicates,
		},
	})
}

// ErrIncompatibleStream marks a stream that exists with a config eddy
// cannot use and does not change (streams.ErrIncompatible).
var ErrIncompatibleStream = streams.ErrIncompatible

func ensure(ctx context.Context, js jetstream.JetStream, opt StreamOptions, spec streams.Spec) error {
	_, plan, err := streams.Ensure(ctx, js, spec)
	if err != nil {
		return err
	}
	streams.LogPlan(opt.Log, spec, plan)
	return nil
}
