package partition

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
)

// rebuildFlush is the most events whose writes one local batch of a rebuild holds.
const rebuildFlush = 1000

// rebuild brings stores without a changelog (Config.NoChangelog) from
// meta.Offset up to the committed offset target by replaying the input
// partition through the handler: the writes go to the local store, in
// batches that record how far the rebuild got (a crash resumes from there);
// the outbox, replies and dead letters are dropped, as they took effect the
// first time. The events past meta.Offset up to target must all still be in
// the input stream, else ErrInputGone.
func (a *partitionActor) rebuild(ctx context.Context, meta statestore.Meta, target uint64) error {
	from := meta.Offset + 1
	st, err := a.cfg.JS.Stream(ctx, a.cfg.Type)
	if err != nil {
		return fmt.Errorf("rebuild: input stream %s: %w", a.cfg.Type, err)
	}
	if first := st.CachedInfo().State.FirstSeq; first > from { // fetched by js.Stream just now
		return fmt.Errorf("%w: needs events %d to %d of %s, the stream starts at %d",
			ErrInputGone, from, target, a.cfg.Type, first)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{a.cfg.input().Filter(a.cfg.Partition)},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		InactiveThreshold: changelog.ConsumerInactiveThreshold,
	})
	if err != nil {
		return fmt.Errorf("rebuild: input consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096), jetstream.PullHeartbeat(changelog.ConsumerHeartbeat))
	if err != nil {
		return fmt.Errorf("rebuild: input consumer: %w", err)
	}
	defer it.Stop()

	a.log.Info("rebuilding stores without a changelog from the input stream (slow: every event runs again)",
		"from_offset", from, "to_offset", target)
	a.rebuilding, a.rebuilt, a.offset = true, meta, meta.Offset
	defer func() { a.rebuilding = false }()
	start := time.Now()
	lastReport := start
	events := 0
	for a.offset < target {
		msg, seq, pending, err := a.nextRebuildEvent(ctx, it, target)
		if err != nil {
			return err
		}
		if err := a.runEvent(ctx, msg, seq); err != nil {
			return err
		}
		a.offset = seq
		a.outbox, a.replies = a.outbox[:0], a.replies[:0]
		a.m.rebuildEvents.Inc()
		events++
		if events%rebuildFlush == 0 {
			if err := a.commitRebuilt(); err != nil {
				return err
			}
		}
		if pending == 0 && seq < target {
			return fmt.Errorf("%w: %s ends at %d, before the committed offset %d", ErrInputGone, a.cfg.Type, seq, target)
		}
		if now := time.Now(); now.Sub(lastReport) >= a.cfg.ProgressEvery {
			lastReport = now
			done := float64(seq-meta.Offset) / float64(target-meta.Offset)
			rate := float64(events) / now.Sub(start).Seconds()
			eta := time.Duration(float64(now.Sub(start)) * (1 - done) / max(done, 1e-9))
			a.log.Info("rebuild progress", "events", events, "offset", seq, "percent", fmt.Sprintf("%.1f", 100*done),
				"rate", fmt.Sprintf("%.0f/s", rate), "eta", eta.Round(time.Second))
		}
	}
	if err := a.commitRebuilt(); err != nil {
		return err
	}
	el := time.Since(start)
	a.log.Info("rebuilt stores from the input stream", "events", events, "offset", a.offset,
		"took", el.Round(time.Millisecond), "rate", fmt.Sprintf("%.0f/s", float64(events)/max(el.Seconds(), 1e-9)))
	return nil
}

// commitRebuilt writes the rebuild's batch to the local store with the
// offset it reached; nothing goes to the changelog, nothing is forwarded.
func (a *partitionActor) commitRebuilt() error {
	b := a.store.NewBatch()
	defer b.Close()
	for _, w := range a.writes {
		if w.del {
			b.Delete([]byte(w.key))
		} else {
			b.Set([]byte(w.key), w.value)
		}
	}
	a.rebuilt.Offset = a.offset
	b.SetMeta(a.rebuilt)
	if err := b.Commit(); err != nil {
		return fmt.Errorf("rebuild: commit local store: %w", err)
	}
	clear(a.ws)
	a.writes, a.batchBytes = a.writes[:0], 0
	a.outbox, a.replies = a.outbox[:0], a.replies[:0]
	return nil
}

// nextRebuildEvent reads the next event of a rebuild from the input, with
// its sequence and how many events the input holds past it. The sequence
// must not pass target (the offset committed before): past it, the event at
// target is gone from the input stream (ErrInputGone).
func (a *partitionActor) nextRebuildEvent(ctx context.Context, it jetstream.MessagesContext, target uint64) (msg jetstream.Msg, seq, pending uint64, err error) {
	if msg, err = it.Next(jetstream.NextContext(ctx)); err != nil {
		return nil, 0, 0, fmt.Errorf("rebuild: %w", err)
	}
	md, err := msg.Metadata()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("rebuild: input metadata: %w", err)
	}
	if seq = md.Sequence.Stream; seq > target {
		return nil, 0, 0, fmt.Errorf("%w: the event at committed offset %d is missing from %s", ErrInputGone, target, a.cfg.Type)
	}
	return msg, seq, md.NumPending, nil
}
