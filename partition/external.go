package partition

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// An actor type may keep its state in an external store, PostgreSQL
// (Config.External), instead of the local store and its changelog. Its
// handlers do not know the difference: reads see the committed rows plus
// the batch's writes, writes go to the batch's write set.
//
// The commit protocol there (postgres.Partition.Commit):
//
//  1. the handler runs for each event of the batch (as with a local store);
//  2. one PostgreSQL transaction: the fence and offset statement first (the
//     new offset and this owner's epoch, only where the stored epoch is not
//     newer and the stored offset is older: zero rows means fenced or
//     committed already, and it rolls back), then the write set and the
//     outbox rows, then COMMIT;
//  3. the outbox is forwarded with Nats-Msg-Id (forward.go), and the rows
//     forwarded are deleted with the next transaction (or after MarkDelay
//     when idle).
//
// A commit whose answer is lost (the server restarted, the connection
// broke) has an unknown outcome: the runtime row says whether it landed
// (this owner's epoch, an offset at or past the commit's), and it is run
// again if not. The conditional update makes the retry safe even when the
// first attempt is still in flight on the server: the retry waits for its
// row lock, then finds the offset moved and updates nothing.
//
// There is no restore: a new owner claims the partition (raising the
// stored epoch, which fences every older owner) and reads input from the
// stored offset. Hence no hot replicas and no snapshots: the data is where
// every node can read it.
//
// Restore paths for such a type (docs/external-store.md):
//   - from the database itself: every start, failover and move;
//   - from the changelog, when the type keeps one (external_changelog.go):
//     a database found behind it (restored from a backup) is brought
//     forward by applying the commits it missed;
//   - from the source stream: postgres.DB.Reset (node reset) sets the
//     offsets to 0 and deletes the rows; the replay suppresses the side
//     effects of the events up to the offset committed before
//     (Position.ReplayThrough).

// ErrInputRecreated means the external store's committed offset belongs to
// another input stream than the one of the type's name now (deleted and
// created again): reading the new stream from that offset would skip its
// events. The partition does not run; reset the type (node reset) to
// process the new stream from its start.
var ErrInputRecreated = errors.New("eddy: input stream recreated")

// startExternal claims the partition in the external store, forwards what
// a crash left in the outbox, and starts reading input from the stored
// offset.
func (a *partitionActor) startExternal(c *actor.Context) error {
	ctx := c.Context()
	start := time.Now()
	if err := a.cfg.External.EnsureType(ctx, a.cfg.Type); err != nil {
		return err
	}
	a.ext = a.cfg.External.Partition(a.cfg.Type, a.cfg.Partition)
	a.restorePath = restoreExternal
	ensured := time.Now()
	in, err := a.cfg.JS.Stream(ctx, a.cfg.Type)
	if err != nil {
		return fmt.Errorf("input stream %s: %w", a.cfg.Type, err)
	}
	looked := time.Now()
	created := in.CachedInfo().Created.Truncate(time.Microsecond) // PostgreSQL keeps microseconds
	pos, _, err := a.ext.Position(ctx)
	if err != nil {
		return err
	}
	if err := a.checkExternal(pos, created); err != nil {
		return err
	}
	pos, ok, err := a.ext.Claim(ctx, postgres.Claim{Epoch: a.cfg.Epoch, Owner: a.cfg.Owner,
		InputStream: a.cfg.Type, InputCreated: created, StateVersion: a.cfg.StateVersion})
	if err != nil {
		return err
	}
	if !ok {
		if err := a.checkExternal(pos, created); err != nil {
			return err
		}
		a.m.fenced.Inc()
		return &FenceError{Epoch: a.cfg.Epoch, Owner: a.cfg.Owner, By: changelog.Meta{Epoch: pos.Epoch, Owner: pos.Owner}, External: true}
	}
	a.epoch, a.epochWritten, a.replayThrough = pos.Epoch, true, pos.ReplayThrough
	if a.cfg.ExternalChangelog {
		if err := a.ensureExternalChangelog(ctx); err != nil {
			return err
		}
		// A commit's changelog entry is one message: its writes fit in half of one.
		a.cfg.MaxBatchBytes = min(a.cfg.MaxBatchBytes, int(a.cfg.Conn.MaxPayload()/2))
		if pos.Offset, err = a.restoreFromExternalChangelog(ctx, pos); err != nil {
			return err
		}
	}
	a.offset, a.committedOffset = pos.Offset, pos.Offset
	if pos.Offset == 0 {
		a.ext.StartsEmpty() // a new partition, or one reset: no read finds anything
	}
	rows, err := a.ext.Pending(ctx)
	if err != nil {
		return err
	}
	outs := make([]pending, len(rows))
	for i, r := range rows {
		outs[i] = pending{seq: r.Offset, at: r.At, out: changelog.Outbox{Offset: r.Offset, Index: r.Index,
			Subject: r.Subject, MsgID: r.MsgID, Header: r.Header, Data: r.Data}}
	}
	claimed := time.Now()
	if !a.awaitReady() {
		a.abandoned = true
		return nil
	}
	a.started = true
	a.publishStatus(StateRunning)
	a.m.restores(a.restorePath).Inc()
	a.log.Info("partition started", "store", "postgres", "epoch", a.epoch, "offset", a.offset,
		"replay_through", a.replayThrough, "pending_outbox", len(outs),
		"took", time.Since(start).Round(time.Millisecond), "tables", ensured.Sub(start).Round(time.Millisecond),
		"stream", looked.Sub(ensured).Round(time.Millisecond), "claim", claimed.Sub(looked).Round(time.Millisecond))
	if a.replayThrough > a.offset {
		a.log.Info("replaying the input stream after a reset: side effects are suppressed up to the offset committed before",
			"from", a.offset+1, "through", a.replayThrough)
	}
	err = a.forwardPending(ctx, outs)
	if errors.Is(err, errAbandoned) {
		a.abandoned = true
		return nil
	}
	if err != nil {
		return err
	}
	return a.startReader(c)
}

// checkExternal refuses a partition whose stored state is of a newer
// version, or whose offset belongs to another input stream.
func (a *partitionActor) checkExternal(pos postgres.Position, created time.Time) error {
	if v := normVersion(pos.StateVersion); v > a.cfg.stateVersion() {
		return &VersionError{Type: a.cfg.Type, Partition: a.cfg.Partition, Version: a.cfg.stateVersion(), Found: v,
			Epoch: pos.Epoch, Owner: pos.Owner}
	}
	if (pos.Offset > 0 || pos.ReplayThrough > 0) && (pos.InputStream != a.cfg.Type || !pos.InputCreated.Equal(created)) {
		return fmt.Errorf("%w: %s/%d committed offset %d of input stream %s created at %s, but stream %s was created at %s: reset the type (node reset) to process the new stream from its start",
			ErrInputRecreated, a.cfg.Type, a.cfg.Partition, max(pos.Offset, pos.ReplayThrough), pos.InputStream,
			pos.InputCreated.UTC().Format(time.RFC3339Nano), a.cfg.Type, created.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// getExternal reads a committed value of the external store (k is a
// storeKey).
func (a *partitionActor) getExternal(k string) ([]byte, error) {
	store, key := splitStoreKey([]byte(k))
	v, ok, err := a.ext.Get(a.ctx, store, key)
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, statestore.ErrNotFound
	}
	return v, nil
}

// prefetchExternal reads the batch's keys from the external store in one
// query, so that handlers reading their event's own state find it in
// memory.
func (a *partitionActor) prefetchExternal(ctx context.Context, msgs []jetstream.Msg) error {
	if a.ext.Complete() {
		return nil // nothing to read: every key not in memory is absent
	}
	keys := make([][]byte, 0, len(msgs))
	in := a.cfg.input()
	for _, m := range msgs {
		if k, err := in.Key(a.cfg.Partition, m.Subject(), m.Headers()); err == nil {
			keys = append(keys, []byte(k))
		}
	}
	return a.ext.Prefetch(ctx, DefaultStore, keys)
}

// extFlight is a transaction sent to the external store whose outcome the
// actor has not taken yet: the next batch's handlers run meanwhile, reading
// through its writes (get).
type extFlight struct {
	f    *flight
	c    *postgres.Commit
	outs []pending
	done chan struct{} // closed when Commit returned
	err  error         // Commit's error; read after done
}

// commitExternal sends the batch built so far as one transaction of the
// external store (step 2 above), after taking the outcome of the one in
// flight, and returns without waiting for it: the actor processes the next
// batch while it travels, and finishes it (finishExternal) when its answer
// comes or before it sends the next. An idle partition's forwarded mark
// goes alone.
func (a *partitionActor) commitExternal(ctx context.Context) error {
	if err := a.finishExternal(ctx); err != nil {
		return err
	}
	if len(a.writes) == 0 && len(a.outbox) == 0 && a.offset == a.committedOffset {
		if a.forwarded <= a.markCommitted {
			return nil
		}
		if err := a.ext.MarkForwarded(ctx, a.epoch, a.cfg.Owner, a.forwarded); err != nil {
			a.log.Warn("delete forwarded outbox rows; the next commit does", "err", err)
			return nil
		}
		a.markCommitted = a.forwarded
		return nil
	}
	f := a.takeBatch()
	c := &postgres.Commit{Epoch: a.epoch, Owner: a.cfg.Owner, Offset: f.offset, Forwarded: f.mark,
		BeforeCommit: a.cfg.Hooks.BeforeExternalCommit}
	for _, w := range f.writes {
		store, key := splitStoreKey([]byte(w.key))
		c.Writes = append(c.Writes, postgres.Write{Store: store, Key: key, Value: w.value, Delete: w.del})
	}
	if a.cfg.ExternalChangelog {
		e, err := a.xclEntry(c, a.committedOffset)
		if err != nil {
			return fmt.Errorf("changelog entry: %w", err)
		}
		f.outbox = append(f.outbox, e) // forwarded after the commit's own entries
	}
	outs := make([]pending, len(f.outbox))
	for i, o := range f.outbox {
		c.Outbox = append(c.Outbox, postgres.Outbox{Offset: o.Offset, Index: o.Index, Subject: o.Subject,
			MsgID: o.MsgID, Header: o.Header, Data: o.Data})
		outs[i] = pending{seq: o.Offset, out: o, at: f.start}
	}
	x := &extFlight{f: f, c: c, outs: outs, done: make(chan struct{})}
	a.extFlight = x
	self, from, pt := a.self, a, a.ext
	// Not cancelled with the actor: a stopping owner takes the outcome of
	// what it sent (stopExternal), within CommitTimeout.
	cctx := context.WithoutCancel(ctx)
	a.extSending.Go(func() {
		x.err = pt.Commit(cctx, c)
		close(x.done)
		if self != nil {
			_ = self.TrySend(commitAnswered{from: from})
		}
	})
	return nil
}

// extAnswered tells whether the transaction in flight has its answer.
func (a *partitionActor) extAnswered() bool {
	if a.extFlight == nil {
		return false
	}
	select {
	case <-a.extFlight.done:
		return true
	default:
		return false
	}
}

// finishExternal waits for the transaction in flight, resolves its outcome
// if unknown (landExternal), then does step 3: the cache takes its writes,
// the status its offset, and its outbox is forwarded.
func (a *partitionActor) finishExternal(ctx context.Context) error {
	x := a.extFlight
	if x == nil {
		return nil
	}
	<-x.done // Commit gives up after CommitTimeout
	a.extFlight = nil
	if x.err != nil {
		if err := a.landExternal(ctx, x.c, x.err); err != nil {
			return err
		}
	}
	a.ext.Landed(x.c)
	f := x.f
	a.markCommitted, a.committedOffset, a.sentOffset, a.sentMark = f.mark, f.offset, f.offset, f.mark
	if h := a.cfg.Hooks.AfterChangelog; h != nil {
		h()
	}
	a.committed(f)
	err := a.startForward(ctx, x.outs, f.replies)
	a.recycle(f)
	return err
}

// stopExternal takes, as a stopping actor, the outcome of the transaction
// in flight: finished if it landed, else left to whoever claims the
// partition next (it reads the outcome from the database).
func (a *partitionActor) stopExternal() {
	x := a.extFlight
	if x == nil {
		return
	}
	<-x.done
	if x.err != nil {
		a.extFlight = nil
		a.log.Info("stopping with a transaction whose outcome is unknown: it is left to the next owner", "err", x.err, "offset", x.f.offset)
		return
	}
	if err := a.finishExternal(context.Background()); err != nil {
		a.log.Warn("stopping: a commit that landed is left to the next owner's forward", "err", err, "offset", x.f.offset)
	}
}

// landExternal resolves commit c, whose attempt failed with err: an error
// leaves its outcome unknown, and the runtime row tells whether it landed
// (this owner's epoch and an offset at or past c's), was fenced (another
// owner's epoch), or is to run again. It retries without end, with capped
// backoff, while PostgreSQL does not answer, and gives up only when the
// actor is asked to stop (errAbandoned).
func (a *partitionActor) landExternal(ctx context.Context, c *postgres.Commit, err error) error {
	var (
		since, lastLog time.Time
		attempts       = 1
		wait           = retryMinBackoff
	)
	for ; ; attempts++ {
		if attempts > 1 {
			err = a.ext.Commit(ctx, c)
		}
		if err == nil {
			if !since.IsZero() {
				a.log.Info("commit landed after retries", "attempts", attempts, "took", time.Since(since).Round(time.Millisecond))
			}
			return nil
		}
		if since.IsZero() {
			since, lastLog = time.Now(), time.Now()
			if !errors.Is(err, postgres.ErrNotApplied) {
				a.log.Warn("commit outcome unknown; reading the runtime row back", "err", err, "offset", c.Offset)
			}
		} else if time.Since(lastLog) >= retryLogEvery {
			lastLog = time.Now()
			a.log.Warn("commit outcome still unknown; retrying", "err", err, "attempts", attempts, "for", time.Since(since).Round(time.Second))
		}
		for {
			pos, _, perr := a.ext.Position(ctx)
			if perr == nil {
				switch {
				case pos.Epoch > a.epoch || pos.Epoch == a.epoch && pos.Owner != a.cfg.Owner:
					a.m.fenced.Inc()
					a.log.Warn("fenced by another owner; stopping", "epoch", a.epoch, "owner", a.cfg.Owner,
						"newer_epoch", pos.Epoch, "newer_owner", pos.Owner)
					return &FenceError{Epoch: a.epoch, Owner: a.cfg.Owner, By: changelog.Meta{Epoch: pos.Epoch, Owner: pos.Owner}, External: true}
				case pos.Offset >= c.Offset:
					a.log.Info("commit landed (read back)", "attempts", attempts, "offset", c.Offset,
						"took", time.Since(since).Round(time.Millisecond))
					return nil
				case pos.Offset < a.committedOffset:
					// The actor restarts and resumes from the store's offset.
					return fmt.Errorf("the external store's offset %d is behind %d, which this owner committed (was the database restored from a backup?)",
						pos.Offset, a.committedOffset)
				}
				break // not landed: run it again
			}
			a.status.setState(StateRetrying, fmt.Errorf("commit postgres: read back: %w", perr))
			if !a.sleep(ctx, &wait) {
				return errAbandoned
			}
		}
		a.status.setState(StateRetrying, fmt.Errorf("commit postgres: %w", err))
		if !a.sleep(ctx, &wait) {
			return errAbandoned
		}
	}
}
