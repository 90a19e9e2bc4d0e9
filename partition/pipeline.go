package partition

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
)

// Changelog commits may be pipelined (Config.CommitsInFlight 2): a partition
// then sends the next batch's commit while the changelog has not
// acknowledged the one before, so a commit's round trip need not wait behind
// the previous one's. With 1 (the default) each commit is finished before
// the next is sent, but the actor still takes other messages while one is
// in flight.
//
// A batch's commit is sent (step 1 of the protocol) as soon as the batch is
// processed, and finished when its acknowledgement comes: then (steps 2 and
// 3) its writes go to the local store and its outbox is forwarded, in the
// order the commits were sent. Until then its writes stay in memory, and the
// handlers of the next batch read through them (get). At most
// Config.CommitsInFlight commits are in flight. A commit sent behind another
// expects the sequence that one lands at, and that one's message id as the
// changelog's last (see changelog.Writer): it cannot land after any other
// owner's commit. A commit of more than one message is not sent behind
// another (JetStream does not check message ids in an atomic batch).
//
// A commit sent behind one that did not land is refused by the server
// (wrong last sequence): each commit carries the sequence its predecessor
// lands at. The first failure of a commit is therefore resolved by reading
// the changelog back, in order: the commit ahead first, then this one, which
// is published again, with the same expectation, if it did not land.
//
// What a crash leaves is what a crash left before: commits that landed but
// were not applied to the local store are replayed from the changelog by
// whoever restores the partition; commits that did not land are reprocessed.
// Queries read the local store, which holds what is finished.

// MaxCommitsInFlight is the most commits a partition may have in flight
// (Config.CommitsInFlight). Two let the next commit travel while the one
// ahead is acknowledged; more would only queue behind it on the same stream.
const MaxCommitsInFlight = 2

// flight is a batch whose changelog commit was sent and is not finished.
type flight struct {
	c       *changelog.Commit
	sendErr error // the publish failed (an unknown outcome)
	recs    []changelog.Record
	logged  int // how many of recs are state records (the outbox entries follow)
	ws      map[string]int
	writes  []write
	outbox  []changelog.Outbox
	replies []reply
	offset  uint64 // the input offset its meta record holds
	mark    uint64 // the forwarded mark its meta record holds
	readLag uint64
	start   time.Time
	// deadline is when the first attempt's outcome is unknown, lacking an answer.
	deadline time.Time
	// behind: sent while another commit was in flight. Its refusal says
	// nothing of fencing until the one ahead has landed.
	behind bool
	timer  *time.Timer
}

// commitAnswered tells the actor that the answer to a commit in flight
// arrived, or that it is overdue.
type commitAnswered struct{ from *partitionActor }

// pipelining tells whether the batch being built may be sent without
// waiting: not while restoring, fencing, migrating or rebuilding, whose
// steps read the store the commit writes; and never for stores without a
// changelog, whose writes must be in the local store before the changelog
// records their offset (nothing else could restore them).
func (a *partitionActor) pipelining() bool {
	return a.started && a.epochWritten && !a.cfg.NoChangelog && !a.rebuilding && !a.ver.rebuilding && !a.ver.dirty
}

// commitBatch commits the batch built so far: sent and left in flight when
// pipelining, else committed and finished before it returns (commit).
func (a *partitionActor) commitBatch(ctx context.Context) error {
	if a.ext != nil {
		return a.commitExternal(ctx)
	}
	if !a.pipelining() {
		return a.commit(ctx)
	}
	return a.send(ctx)
}

// commit commits the batch built so far and finishes every commit in flight.
func (a *partitionActor) commit(ctx context.Context) error {
	if a.ext != nil {
		return a.commitExternal(ctx)
	}
	if err := a.send(ctx); err != nil {
		return err
	}
	for len(a.flights) > 0 {
		if err := a.finishFlight(ctx); err != nil {
			return err
		}
	}
	return nil
}

// send builds the batch's changelog records and sends its commit (step 1),
// first finishing the commits ahead of it that the pipeline's rules make it
// wait for.
func (a *partitionActor) send(ctx context.Context) error {
	if len(a.writes) == 0 && len(a.outbox) == 0 && a.epochWritten &&
		a.offset == a.sentOffset && a.forwarded <= a.sentMark && !a.ver.dirty {
		return nil
	}
	if a.rebuilding && a.cfg.NoChangelog { // a version rebuild commits to the changelog
		if err := a.finishFlights(ctx); err != nil {
			return err
		}
		return a.commitRebuilt()
	}
	for len(a.flights) >= a.cfg.CommitsInFlight {
		if err := a.finishFlight(ctx); err != nil {
			return err
		}
	}
	f := a.takeBatch()
	recs := f.recs[:0]
	logged := f.writes
	if a.cfg.NoChangelog {
		logged = nil // the local store alone holds them
	}
	for _, w := range logged {
		store, key := splitStoreKey([]byte(w.key))
		if w.del {
			recs = append(recs, changelog.Record{Kind: changelog.KindDelete, Store: store, Key: key})
		} else {
			recs = append(recs, changelog.Record{Kind: changelog.KindSet, Store: store, Key: key, Value: w.value})
		}
	}
	for _, o := range f.outbox {
		recs = append(recs, changelog.Record{Kind: changelog.KindOutbox, Outbox: o})
	}
	recs = append(recs, changelog.Record{Kind: changelog.KindMeta,
		Meta: a.ver.stamp(changelog.Meta{Offset: f.offset, Epoch: a.epoch, Forwarded: f.mark, Owner: a.cfg.Owner})})
	f.recs, f.logged = recs, len(logged)
	c, err := a.writer.Frame(recs)
	if err != nil {
		return fmt.Errorf("commit changelog: %w", err)
	}
	err = a.writer.Send(c)
	if errors.Is(err, changelog.ErrNotPipelined) {
		// In parts: it waits for the commits ahead.
		if err := a.finishFlights(ctx); err != nil {
			return err
		}
		err = a.writer.Send(c)
	}
	if err != nil && !errors.Is(err, changelog.ErrCommitUnknown) {
		return fmt.Errorf("commit changelog: %w", err)
	}
	f.c, f.sendErr, f.behind = c, err, len(a.flights) > 0
	if f.behind {
		a.m.commitsPipelined.Inc()
	}
	f.deadline = time.Now().Add(a.cfg.CommitTimeout)
	if self, from := a.self, a; self != nil {
		f.timer = time.AfterFunc(a.cfg.CommitTimeout, func() { _ = self.TrySend(commitAnswered{from: from}) })
	}
	a.sentOffset, a.sentMark = f.offset, f.mark
	a.flights = append(a.flights, f)
	return nil
}

// takeBatch moves the batch built so far into a flight.
func (a *partitionActor) takeBatch() *flight {
	f := a.spare
	a.spare = nil
	if f == nil {
		f = &flight{ws: make(map[string]int)}
	}
	f.ws, a.ws = a.ws, f.ws
	f.writes, a.writes = a.writes, f.writes[:0]
	f.outbox, a.outbox = a.outbox, f.outbox[:0]
	f.replies, a.replies = a.replies, f.replies[:0]
	f.offset, f.mark, f.readLag, f.start = a.offset, a.forwarded, a.readLag, time.Now()
	a.batchBytes = 0
	return f
}

// finishAnswered finishes the commits in flight whose answer arrived or is
// overdue, oldest first, without waiting.
func (a *partitionActor) finishAnswered(ctx context.Context) error {
	for len(a.flights) > 0 {
		f := a.flights[0]
		if f.sendErr == nil && !f.c.Answered() && time.Now().Before(f.deadline) {
			return nil
		}
		if err := a.finishFlight(ctx); err != nil {
			return err
		}
	}
	return nil
}

// finishFlights finishes every commit in flight.
func (a *partitionActor) finishFlights(ctx context.Context) error {
	for len(a.flights) > 0 {
		if err := a.finishFlight(ctx); err != nil {
			return err
		}
	}
	return nil
}

// finishFlight waits for the oldest commit in flight to land (resolving
// and publishing it again when its outcome is unknown), then applies it
// to the local store and forwards its outbox. On an error the commits in
// flight are given up: whoever restores next finds what landed.
func (a *partitionActor) finishFlight(ctx context.Context) error {
	f := a.flights[0]
	a.flights = append(a.flights[:0], a.flights[1:]...)
	if f.timer != nil {
		f.timer.Stop()
	}
	err := f.sendErr
	if err == nil {
		wctx, cancel := context.WithDeadline(ctx, f.deadline)
		err = a.writer.Wait(wctx, f.c)
		cancel()
	}
	if err != nil {
		err = a.land(ctx, f, err)
	}
	if err == nil {
		err = a.apply(ctx, f)
	}
	if err != nil {
		a.dropFlights()
	}
	return err
}

// dropFlights gives up the commits in flight: their outcome is left to
// whoever restores the partition next.
func (a *partitionActor) dropFlights() {
	for _, f := range a.flights {
		if f.timer != nil {
			f.timer.Stop()
		}
	}
	a.flights = a.flights[:0]
}

// awaitFlights waits, as a stopping actor, for the acknowledgements of the
// commits in flight, each until its CommitTimeout, and returns those that
// landed, in order, for apply. It does not retry: whoever restores next
// resolves the others.
func (a *partitionActor) awaitFlights() []*flight {
	var landed []*flight
	for _, f := range a.flights {
		if f.timer != nil {
			f.timer.Stop()
		}
		err := f.sendErr
		if err == nil {
			ctx, cancel := context.WithDeadline(context.Background(), f.deadline)
			err = a.writer.Wait(ctx, f.c)
			cancel()
		}
		if err != nil {
			a.log.Info("stopping with commits in flight: their outcome is left to the next owner's restore", "err", err, "offset", f.offset)
			break
		}
		landed = append(landed, f)
	}
	a.dropFlights()
	return landed
}

// land resolves a commit whose answer was not an acknowledgement. An
// unknown outcome (no acknowledgement: NATS away, a stream leader moving, a
// timeout) is resolved by reading back what the changelog holds, from the
// stream leader, and the same commit is published again until its outcome
// is known; at most one of the attempts can land. It ends when the commit
// landed; when another commit is where this one expected to go (fenced
// decides whose); when the changelog lost records this owner committed
// (errStoreAhead: restore); or when the actor is asked to stop
// (errAbandoned: the commit's outcome is left to whoever restores next).
// While it retries, Status says retrying, with the last error.
func (a *partitionActor) land(ctx context.Context, f *flight, err error) error {
	var (
		unknown  error // the first unknown outcome of this commit
		since    time.Time
		lastLog  time.Time
		attempts = 1
		wait     = retryMinBackoff
	)
	for {
		switch {
		case err == nil:
			if unknown != nil {
				a.log.Info("commit landed after retries", "attempts", attempts, "took", time.Since(since).Round(time.Millisecond))
			}
			return nil
		case errors.Is(err, changelog.ErrFenced) && unknown == nil && !f.behind:
			return a.fenced(ctx, err)
		}
		// Unknown, or refused after an attempt whose outcome is unknown
		// (that attempt may be what is there), or refused behind a commit
		// that did not land first.
		if unknown == nil {
			unknown, since, lastLog = err, time.Now(), time.Now()
			if f.behind && errors.Is(err, changelog.ErrFenced) {
				a.log.Debug("commit refused behind one that landed late; reading the changelog back", "err", err)
			} else {
				a.log.Warn("commit outcome unknown; reading the changelog back", "err", err, "changelog_seq", a.writer.Last())
			}
		}
		a.status.setState(StateRetrying, fmt.Errorf("commit changelog: %w", err))
		for {
			rctx, cancel := context.WithTimeout(ctx, min(a.cfg.CommitTimeout, retryReadTimeout))
			var o changelog.Outcome
			o, err = a.writer.Resolve(rctx, f.c)
			cancel()
			if err == nil {
				switch o {
				case changelog.Landed:
					first, last := f.c.Landed()
					a.log.Info("commit landed (read back)", "attempts", attempts, "took", time.Since(since).Round(time.Millisecond),
						"first", first, "last", last)
					return nil
				case changelog.Moved:
					return a.fenced(ctx, unknown)
				case changelog.Behind:
					return fmt.Errorf("%w: the changelog ends before sequence %d, which this owner committed (did a NATS server lose acknowledged writes?)",
						errStoreAhead, a.writer.Last())
				}
				// Not landed: the stream answers again, so publish it again
				// now, backing off anew if that fails again.
				wait = retryMinBackoff
				break
			}
			a.status.setState(StateRetrying, fmt.Errorf("commit changelog: read back: %w", err))
			if time.Since(lastLog) >= retryLogEvery {
				lastLog = time.Now()
				a.log.Warn("commit outcome still unknown; retrying", "err", err, "attempts", attempts,
					"for", time.Since(since).Round(time.Second))
			}
			if !a.sleep(ctx, &wait) {
				return errAbandoned
			}
		}
		if !f.behind || attempts > 1 {
			if !a.sleep(ctx, &wait) {
				return errAbandoned
			}
		}
		attempts++
		if err = a.writer.Retry(f.c); err == nil {
			wctx, cancel := context.WithTimeout(ctx, a.cfg.CommitTimeout)
			err = a.writer.Wait(wctx, f.c)
			cancel()
		}
	}
}

// apply is steps 2 and 3 of a commit that landed: its writes, outbox entries
// and meta to the local store in one batch, then the outbox forwarded and
// the replies sent.
func (a *partitionActor) apply(ctx context.Context, f *flight) error {
	_, last := f.c.Landed()
	a.markCommitted, a.epochWritten, a.committedOffset = f.mark, true, f.offset
	if h := a.cfg.Hooks.AfterChangelog; h != nil {
		h()
	}
	b := a.store.NewBatch()
	for _, w := range f.writes {
		if w.del {
			b.Delete([]byte(w.key))
		} else {
			b.Set([]byte(w.key), w.value)
		}
	}
	outs := make([]pending, len(f.outbox))
	now := time.Now()
	var v []byte // one value buffer for every entry: Set copies it
	var err error
	for i := range f.outbox {
		seq, index := f.c.Position(f.logged + i)
		if v, err = encodePending(v[:0], &f.outbox[i], now); err != nil {
			b.Close()
			return err
		}
		k := pendingKey(seq, index)
		b.Set(k, v)
		outs[i] = pending{seq: seq, key: k, out: f.outbox[i], at: now}
	}
	for _, k := range a.fwd.forwardedKeys {
		b.Delete(k)
	}
	b.SetMeta(a.ver.stampStore(statestore.Meta{Offset: f.offset, ChangelogSeq: last, Epoch: a.epoch, Forwarded: f.mark,
		Owner: a.cfg.Owner, MetaSeq: last, Batch: f.recs[len(f.recs)-1].Meta.Batch}))
	err = b.Commit()
	b.Close()
	if err != nil {
		return fmt.Errorf("commit local store: %w", err)
	}
	a.fwd.forwardedKeys = a.fwd.forwardedKeys[:0]
	if h := a.cfg.Hooks.AfterLocal; h != nil {
		h()
	}
	a.m.changelogRecords.Add(float64(len(f.recs)))
	a.snap.records += uint64(len(f.recs))
	a.committed(f)
	err = a.startForward(ctx, outs, f.replies)
	a.recycle(f)
	if err != nil || a.stopped {
		return err
	}
	a.maybeTrim(ctx)
	a.maybeSnapshot()
	return nil
}

// committed records, in metrics and Status, that f's commit is done.
func (a *partitionActor) committed(f *flight) {
	a.m.commits.Inc()
	a.m.commitSeconds.Observe(time.Since(f.start).Seconds())
	a.m.offset.Set(float64(f.offset))
	a.inputLag, a.lastCommit = f.readLag, time.Now()
	a.m.inputLag.Set(float64(a.inputLag))
	a.m.lastCommit.Set(float64(a.lastCommit.UnixNano()) / 1e9)
	if a.started && !a.stopped {
		a.publishStatus(StateRunning)
	} else {
		a.publishProgress()
	}
}

// recycle keeps f's buffers for the next batch.
func (a *partitionActor) recycle(f *flight) {
	clear(f.ws)
	clear(f.writes) // values are the handlers': let them go
	*f = flight{ws: f.ws, writes: f.writes[:0], outbox: f.outbox[:0], replies: f.replies[:0], recs: f.recs[:0]}
	a.spare = f
}
