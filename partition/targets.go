package partition

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrUnknownStream means a handler published to a subject that no stream
// captures, so the publish could never be forwarded. It is permanent: the
// event goes to the dead-letter stream, saying which subject.
var ErrUnknownStream = fmt.Errorf("eddy: no stream for the subject: %w", ErrPermanent)

// targetRecheck is how long a publish waits before it asks JetStream a
// second time whether a stream captures its subject, so that an answer
// given while JetStream was still recovering its streams is not taken for
// the truth.
const targetRecheck = 500 * time.Millisecond

// target is what the actor knows of a stream it publishes to.
type target struct {
	// input is set when the stream is an actor type's input stream.
	input *Input
}

// checkTarget makes sure a stream captures subject before the handler's
// publish joins the outbox: an outbox entry that no stream takes would be
// retried without end and hold the partition up. It returns what it knows
// of the stream named by the subject's first token. The streams named in
// Config.KnownStreams and Config.Inputs pass at once; any other stream is
// looked up in JetStream once per incarnation. A lookup that fails (NATS
// away, a timeout) lets the publish through, and the forward retries as for
// any NATS fault; only JetStream answering twice that no stream captures the
// subject refuses it, with ErrUnknownStream.
func (a *partitionActor) checkTarget(subject string) (target, error) {
	stream, _, _ := strings.Cut(subject, ".")
	if a.targets == nil {
		a.targets = make(map[string]target, len(a.cfg.KnownStreams)+len(a.cfg.Inputs))
		for _, s := range a.cfg.KnownStreams {
			a.targets[s] = target{}
		}
		for name, in := range a.cfg.Inputs {
			a.targets[name] = target{input: &in}
		}
	}
	if t, ok := a.targets[stream]; ok || a.cfg.JS == nil {
		return t, nil
	}
	for attempt := range 2 {
		if attempt > 0 {
			select {
			case <-time.After(targetRecheck):
			case <-a.ctx.Done():
				return target{}, nil // stopping: the batch is not committed anyway
			}
		}
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.CommitTimeout)
		// An actor type's input stream with one subject per partition
		// does not take <stream>.<key>: it is found by its name.
		st, err := a.cfg.JS.Stream(ctx, stream)
		if err == nil {
			if in, ok := InputOf(st.CachedInfo().Config); ok {
				cancel()
				a.targets[stream] = target{input: &in}
				return a.targets[stream], nil
			}
		}
		var name string
		if name, err = a.cfg.JS.StreamNameBySubject(ctx, subject); err == nil {
			st, err = a.cfg.JS.Stream(ctx, name)
		}
		cancel()
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			var t target
			if err == nil {
				if in, ok := InputOf(st.CachedInfo().Config); ok {
					t.input = &in
				}
				a.targets[stream] = t
			}
			return t, nil
		}
	}
	return target{}, fmt.Errorf("%w: %s: declare the stream %q in the actor type's Outputs, or register an actor type of that name", ErrUnknownStream, subject, stream)
}
