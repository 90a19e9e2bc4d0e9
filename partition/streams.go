package partition

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/streams"
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

// Input addresses the events of one actor type's input stream: what a
// producer needs to publish an event for a key.
type Input struct {
	// Type is the actor type, which names its input stream.
	Type string
	// Partitions is the type's partition count.
	Partitions int
	// KeyedSubjects is the input layout with one subject per key.
	KeyedSubjects bool
}

// Msg returns the message that carries data as an event for key.
func (in Input) Msg(key string, data []byte) *nats.Msg {
	return &nats.Msg{Subject: InputSubject(in.Type, key), Data: data, Header: nats.Header{}}
}

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

// EnsureInputStream makes the input stream typ exist, in one attempt, with
// subjects typ.* transformed to typ.<partition>.<key>, so that a publish to
// typ.<key> from any NATS client lands in the key's partition. An existing
// stream with another partition count (subject transform), subjects that do
// not cover typ.*, other storage or a retention other than limits is an
// error wrapping ErrIncompatibleStream; one with fewer replicas or a shorter
// duplicate window is updated. Timeouts, 10008 "temporarily unavailable"
// and 10023 "insufficient resources" (a JetStream cluster electing its
// leaders, a member down) are worth retrying; Node.Start does.
func EnsureInputStream(ctx context.Context, js jetstream.JetStream, typ string, partitions int, opt StreamOptions) error {
	dest := fmt.Sprintf("%s.{{partition(%d,1)}}.{{wildcard(1)}}", typ, partitions)
	return ensure(ctx, js, opt, streams.Spec{
		Role: "input stream",
		Config: jetstream.StreamConfig{
			Name:             typ,
			Description:      fmt.Sprintf("eddy input stream of actor type %s, %d partitions", typ, partitions),
			Subjects:         []string{typ + ".*"},
			SubjectTransform: &jetstream.SubjectTransformConfig{Source: typ + ".*", Destination: dest},
			Storage:          jetstream.FileStorage,
			Replicas:         opt.Replicas,
			Duplicates:       opt.Duplicates,
		},
		Replayed: true,
	})
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
