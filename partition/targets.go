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

// checkTarget makes sure a stream captures subject before the handler's
// publish joins the outbox: an outbox entry that no stream takes would be
// retried without end and hold the partition up. The streams named in
// Config.KnownStreams pass at once; any other stream, named by the
// subject's first token, is looked up in JetStream once per incarnation. A
// lookup that fails (NATS away, a timeout) lets the publish through, and
// the forward retries as for any NATS fault; only JetStream answering twice
// that no stream captures the subject refuses it, with ErrUnknownStream.
func (a *partitionActor) checkTarget(subject string) error {
	stream, _, _ := strings.Cut(subject, ".")
	if a.targets == nil {
		a.targets = make(map[string]bool, len(a.cfg.KnownStreams))
		for _, s := range a.cfg.KnownStreams {
			a.targets[s] = true
		}
	}
	if a.targets[stream] || a.cfg.JS == nil {
		return nil
	}
	for attempt := range 2 {
		if attempt > 0 {
			select {
			case <-time.After(targetRecheck):
			case <-a.ctx.Done():
				return nil // stopping: the batch is not committed anyway
			}
		}
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.CommitTimeout)
		_, err := a.cfg.JS.StreamNameBySubject(ctx, subject)
		cancel()
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			if err == nil {
				a.targets[stream] = true
			}
			return nil
		}
	}
	return fmt.Errorf("%w: %s: declare the stream %q in the actor type's Outputs, or register an actor type of that name", ErrUnknownStream, subject, stream)
}
