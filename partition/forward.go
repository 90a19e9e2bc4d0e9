package partition

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Forwarding the outbox (step 3 of a commit) overlaps the next batch.
//
// Once a batch is committed to the changelog and the local store, its outbox
// entries are published at once, without waiting for their
// acknowledgements: the next batch is processed and committed to the
// changelog and the local store while they come back. Before the next
// batch's own entries are published, the earlier ones must all be
// acknowledged (and are published again, in order, until they are), so the
// outputs of a partition reach their streams in commit order, as they did
// when each commit waited for its forward. At most one batch's entries are
// in flight.
//
// Nothing of effectively-once depends on when an acknowledgement arrives: an
// entry is committed before it is published, the forwarded mark covers only
// acknowledged entries, and whoever restores the partition publishes again
// the entries above the mark, which their targets drop by message id.
//
// A batch's replies are sent once its entries, and every earlier batch's,
// are acknowledged.

// forwardGroup is the outbox entries of one commit, published and waiting
// for their acknowledgements, and the replies that wait for them.
type forwardGroup struct {
	outs    []pending
	replies []reply
	done    chan struct{} // closed once every acknowledgement came, or one failed
	err     error         // why the group failed; read after done
}

// forwardDone tells the actor that the group in flight is acknowledged or failed.
type forwardDone struct {
	from *partitionActor
	g    *forwardGroup
}

// forwarder is what an incarnation keeps of the group in flight.
type forwarder struct {
	g      *forwardGroup
	ctx    context.Context // cancelled when the incarnation stops
	cancel context.CancelFunc
	wg     sync.WaitGroup // the goroutine that waits for the group's acknowledgements
	// forwardedKeys are the pending entries forwarded since the last commit:
	// deleted from the local store with the next one.
	forwardedKeys [][]byte
}

// startForward publishes outs and returns without waiting for their
// acknowledgements (see above); replies are sent once they are all in. A
// failure to publish falls back to forward, which retries in place.
func (a *partitionActor) startForward(ctx context.Context, outs []pending, replies []reply) error {
	if len(outs) == 0 {
		if g := a.fwd.g; g != nil {
			g.replies = append(g.replies, replies...) // after the outputs before them
		} else {
			a.sendReplies(replies)
		}
		return nil
	}
	if err := a.finishForward(ctx); err != nil { // the group before, in order
		return err
	}
	futures, err := a.publishOutbox(outs)
	if err != nil {
		a.log.Warn("forwarding the outbox failed; retrying", "err", err, "entries", len(outs))
		if err := a.forward(ctx, outs); err != nil {
			return err
		}
		a.sendReplies(replies)
		return nil
	}
	g := &forwardGroup{outs: outs, replies: append([]reply(nil), replies...), done: make(chan struct{})}
	a.fwd.g = g
	if a.fwd.ctx == nil {
		a.fwd.ctx, a.fwd.cancel = context.WithCancel(context.Background())
	}
	a.fwd.wg.Add(1)
	stop, self := a.fwd.ctx, a.self
	go func() {
		defer a.fwd.wg.Done()
		g.err = a.awaitAcks(stop, outs, futures)
		close(g.done)
		if self != nil { // nil when a test drives the actor's methods directly
			_ = self.Send(stop, forwardDone{from: a, g: g}) // ErrStopped: Stopped collects it
		}
	}()
	return nil
}

// finishForward waits for the group in flight, if any: once its entries
// are acknowledged it marks them forwarded and sends its replies; if one
// failed, it publishes the group again until every entry is acknowledged
// (forward).
func (a *partitionActor) finishForward(ctx context.Context) error {
	g := a.fwd.g
	if g == nil {
		return nil
	}
	<-g.done // CommitTimeout at most: a stopping actor forwards what it committed, unless NATS fails
	a.fwd.g = nil
	if g.err != nil {
		a.log.Warn("forwarding the outbox failed; retrying", "err", g.err, "entries", len(g.outs))
		if err := a.forward(ctx, g.outs); err != nil {
			a.fwd.g = g // not forwarded: whoever restores next forwards it
			return err
		}
	} else {
		a.m.forwarded.Add(float64(len(g.outs)))
		a.markForwarded(g.outs)
	}
	a.sendReplies(g.replies)
	return nil
}

// stopForward collects the group in flight once its acknowledgements are in
// (it waits CommitTimeout at most) and stops the goroutine waiting for
// them. Entries not acknowledged are forwarded again by whoever restores the
// partition next.
func (a *partitionActor) stopForward() {
	if g := a.fwd.g; g != nil {
		<-g.done // awaitAcks gives up after CommitTimeout
		if g.err == nil {
			a.m.forwarded.Add(float64(len(g.outs)))
			a.markForwarded(g.outs)
			a.sendReplies(g.replies)
		}
		a.fwd.g = nil
	}
	if a.fwd.cancel != nil {
		a.fwd.cancel()
	}
	a.fwd.wg.Wait()
	a.dropForwarded()
}

func (a *partitionActor) sendReplies(replies []reply) {
	for _, r := range replies {
		if err := a.cfg.Conn.Publish(r.inbox, r.data); err != nil {
			a.log.Warn("reply lost; the client will time out", "err", err)
		}
	}
}

// forward publishes outbox entries with their message ids and waits for every
// acknowledgement; the targets deduplicate entries forwarded before a crash.
// A failure (NATS away, a target stream without a leader) is retried in
// place, publishing the same entries again, until they are all acknowledged
// or the actor is asked to stop (errAbandoned).
func (a *partitionActor) forward(ctx context.Context, outs []pending) error {
	if len(outs) == 0 {
		return nil
	}
	var since, lastLog time.Time
	wait := retryMinBackoff
	for {
		futures, err := a.publishOutbox(outs)
		if err == nil {
			err = a.awaitAcks(ctx, outs, futures)
		}
		if err == nil {
			break
		}
		switch {
		case since.IsZero():
			since, lastLog = time.Now(), time.Now()
			a.log.Warn("forwarding the outbox failed; retrying", "err", err, "entries", len(outs))
		case time.Since(lastLog) >= retryLogEvery:
			lastLog = time.Now()
			a.log.Warn("forwarding the outbox still fails; retrying", "err", err, "for", time.Since(since).Round(time.Second))
		}
		a.status.setState(StateRetrying, err)
		if !a.sleep(ctx, &wait) {
			return errAbandoned
		}
	}
	if !since.IsZero() {
		a.log.Info("outbox forwarded after retries", "took", time.Since(since).Round(time.Millisecond))
		if a.started {
			a.publishStatus(StateRunning)
		}
	}
	a.m.forwarded.Add(float64(len(outs)))
	a.markForwarded(outs)
	return nil
}

// publishOutbox publishes outs once, asynchronously, and returns their
// acknowledgements to wait for (awaitAcks).
func (a *partitionActor) publishOutbox(outs []pending) ([]jetstream.PubAckFuture, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(outs))
	for i, p := range outs {
		m := &nats.Msg{Subject: p.out.Subject, Data: p.out.Data, Header: nats.Header{}}
		for k, v := range p.out.Header {
			m.Header.Set(k, v)
		}
		m.Header.Set(jetstream.MsgIDHeader, p.out.MsgID)
		f, err := a.cfg.JS.PublishMsgAsync(m, jetstream.WithStallWait(a.cfg.CommitTimeout))
		if err != nil {
			return nil, fmt.Errorf("forward outbox to %s: %w", p.out.Subject, err)
		}
		futures = append(futures, f)
		if i == 0 && len(outs) > 1 {
			if h := a.cfg.Hooks.MidForward; h != nil {
				// A future delivers its ack once: take it here, and do not wait
				// for it again in awaitAcks.
				select {
				case <-f.Ok():
				case err := <-f.Err():
					return nil, fmt.Errorf("forward outbox to %s: %w", p.out.Subject, err)
				}
				futures[0] = nil
				h()
			}
		}
	}
	return futures, nil
}

// awaitAcks waits for the acknowledgements of outs, CommitTimeout at most.
func (a *partitionActor) awaitAcks(ctx context.Context, outs []pending, futures []jetstream.PubAckFuture) error {
	timeout := time.NewTimer(a.cfg.CommitTimeout)
	defer timeout.Stop()
	for i, f := range futures {
		if f == nil {
			continue // acknowledged already
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("forward outbox to %s: %w", outs[i].out.Subject, err)
		case <-timeout.C:
			return fmt.Errorf("forward outbox to %s: timed out", outs[i].out.Subject)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// markForwarded moves the forwarded mark over outs, which are in their
// target streams (acknowledged, or found there). The mark reaches the
// changelog with the next commit, or after MarkDelay when idle; the entries
// leave the local store with that commit (or when the actor stops).
func (a *partitionActor) markForwarded(outs []pending) {
	if len(outs) == 0 {
		return
	}
	for _, p := range outs {
		a.fwd.forwardedKeys = append(a.fwd.forwardedKeys, p.key)
		a.forwarded = max(a.forwarded, p.seq)
	}
	a.armMark()
}

// dropForwarded deletes the forwarded entries from the local store now.
// Their deletion may be lost in a crash: the store's mark, committed with
// its meta, tells a restore to drop them (loadPending).
func (a *partitionActor) dropForwarded() {
	if len(a.fwd.forwardedKeys) == 0 || a.store == nil {
		return
	}
	b := a.store.NewBatch()
	defer b.Close()
	for _, k := range a.fwd.forwardedKeys {
		b.Delete(k)
	}
	if err := b.Commit(); err != nil {
		a.log.Warn("drop forwarded outbox entries", "err", err)
		return
	}
	a.fwd.forwardedKeys = a.fwd.forwardedKeys[:0]
}

func (a *partitionActor) armMark() {
	if a.self == nil {
		return
	}
	if a.markTimer == nil {
		self, from := a.self, a
		a.markTimer = time.AfterFunc(a.cfg.MarkDelay, func() { _ = self.TrySend(markTick{from: from}) })
		return
	}
	a.markTimer.Reset(a.cfg.MarkDelay)
}
