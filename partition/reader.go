package partition

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
)

// startReader starts the incarnation's input reader: an ordered consumer of
// the partition from offset+1, batching up to BatchSize events or Linger. It
// takes the consumer opened early (openInput) when that one starts at the
// same offset.
func (a *partitionActor) startReader(c *actor.Context) error {
	ctx := c.Context()
	early := a.early
	a.early = nil
	var it jetstream.MessagesContext
	var err error
	if early != nil && early.from == a.offset {
		it, err = early.wait()
	} else {
		early.discard()
		it, err = a.consumeInput(ctx, a.offset)
	}
	if err != nil {
		return err
	}
	a.runReader(ctx, it)
	return nil
}

// runReader starts the goroutines that read it from offset+1, watch for
// reconnects and for a reader that stalls; stopReader stops them.
func (a *partitionActor) runReader(ctx context.Context, it jetstream.MessagesContext) {
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	p := newReaderProgress(a.offset)
	a.readerCancel, a.readerDone, a.readerIt, a.readerProgress = cancel, done, it, p
	var wg sync.WaitGroup
	wg.Go(func() { a.read(rctx, it, p) })
	wg.Go(func() { a.watchReconnects(rctx) })
	wg.Go(func() { a.watchStall(rctx, p) })
	go func() {
		wg.Wait()
		close(done)
	}()
}

// readerProgress is where a reader stands: written by the reader, read by
// the actor and watchStall.
type readerProgress struct {
	pos          atomic.Uint64 // the last input sequence it delivered
	waitingSince atomic.Int64  // unix ns since when it waits in Next; 0: not waiting
	// ready holds a token while the actor can take a batch: the reader
	// takes it to send one, the actor puts it back once it has processed
	// it (batchDone). One batch is in the actor at a time.
	ready chan struct{}
}

// newReaderProgress returns the progress of a reader that starts after
// offset, with the actor ready for its first batch.
func newReaderProgress(offset uint64) *readerProgress {
	p := &readerProgress{ready: make(chan struct{}, 1)}
	p.pos.Store(offset)
	p.ready <- struct{}{}
	return p
}

// take takes the token if the actor is ready.
func (p *readerProgress) take() bool {
	select {
	case <-p.ready:
		return true
	default:
		return false
	}
}

// batchDone gives the token back: the actor is ready for the next batch.
func (p *readerProgress) batchDone() {
	select {
	case p.ready <- struct{}{}:
	default:
	}
}

// readerStallAfter is how long a reader may wait for input, while the input
// stream holds events of its partition past the last one it delivered,
// before it is replaced by a new consumer. nats.go recreates a consumer
// lost with its server itself, but with its own backoff (1 s doubling to
// 10 s) and a 10 s timeout per attempt; a stream whose leader was killed
// answers again after one election (4-9 s here), and the partition should
// read again within a couple of seconds of that.
const readerStallAfter = 2 * time.Second

// stallCheck asks the actor whether its reader stalls (watchStall).
type stallCheck struct {
	from *partitionActor
	p    *readerProgress
}

// watchStall asks the actor every readerStallAfter, while the reader has
// been waiting for input that long, to check whether input is there.
func (a *partitionActor) watchStall(ctx context.Context, p *readerProgress) {
	t := time.NewTicker(readerStallAfter)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if w := p.waitingSince.Load(); w != 0 && time.Since(time.Unix(0, w)) >= readerStallAfter {
				_ = a.self.TrySend(stallCheck{from: a, p: p})
			}
		}
	}
}

// checkStall replaces the reader with a new consumer when it has waited
// for input for readerStallAfter while its partition's input holds events
// past the last one it delivered.
func (a *partitionActor) checkStall(ctx context.Context, p *readerProgress) error {
	if p != a.readerProgress {
		return nil // an earlier reader's
	}
	w := p.waitingSince.Load()
	if w == 0 || time.Since(time.Unix(0, w)) < readerStallAfter {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, retryReadTimeout)
	defer cancel()
	if a.input == nil {
		st, err := a.cfg.JS.Stream(rctx, a.cfg.Type)
		if err != nil {
			return nil // NATS cannot tell now; the next check asks again
		}
		a.input = st
	}
	msg, err := a.input.GetLastMsgForSubject(rctx, a.cfg.input().Filter(a.cfg.Partition))
	if err != nil || msg.Sequence <= p.pos.Load() {
		return nil // nothing to read, or NATS cannot tell now
	}
	a.log.Info("input reader got nothing while its partition has input: reading again with a new consumer",
		"waited", time.Since(time.Unix(0, w)).Round(time.Millisecond), "read_up_to", p.pos.Load(), "input_last", msg.Sequence)
	return a.restartReader(ctx)
}

// readerStopWait bounds how long stopReader waits for the reader's
// goroutines to end.
const readerStopWait = 500 * time.Millisecond

// stopReader stops the reader and waits for it, readerStopWait at most.
// Stopping the iterator, not only cancelling the reader's context, ends a
// Next that is recreating a lost consumer (nats.go retries that with its
// own timeouts). But nats.go holds the iterator's lock across that
// consumer request, 10 s at most, and Stop waits for the lock: after a
// connection lost and back, the request in flight went out on the dead
// connection and waits out its timeout. The actor does not wait that long
// (the store it closes next is what a hot replica or the next owner on
// this node waits for): Stop is left to run, and the reader's goroutines
// end when the request does. A batch they still deliver is dropped: it is
// from an incarnation that has ended.
func (a *partitionActor) stopReader() {
	if a.readerCancel == nil {
		return
	}
	a.readerCancel()
	it, stopped := a.readerIt, make(chan struct{})
	go func() {
		it.Stop()
		close(stopped)
	}()
	wait := time.NewTimer(readerStopWait)
	defer wait.Stop()
	select {
	case <-a.readerDone:
		<-stopped // Stop returns once Next has
	case <-wait.C:
		a.log.Info("the input reader is re-creating its consumer in nats.go; it stops once that request ends", "waited", readerStopWait)
	}
	a.readerCancel, a.readerDone, a.readerIt, a.readerProgress = nil, nil, nil, nil
}

// restartReader reads the input again from the committed offset with a new
// consumer, after a reconnect: nats.go's ordered consumer recreates its
// consumer after a reconnect itself, but a reader that stopped hearing from
// its consumer then (seen once in the NATS chaos test: a partition that
// never read again after its server was killed) would wait for good.
// Batches the old reader queued are still processed; what the new reader
// delivers again is skipped by offset.
func (a *partitionActor) restartReader(ctx context.Context) error {
	a.stopReader()
	it, err := a.consumeInput(ctx, a.offset)
	if err != nil {
		return err
	}
	a.runReader(ctx, it)
	return nil
}

// inputCheck asks the actor to check its input stream after NATS reconnected.
type inputCheck struct{ from *partitionActor }

// watchReconnects asks the actor to check its input stream each time the
// connection to NATS is established again: a server that crashed may have
// come back without the tail of the input stream (acknowledged writes it had
// not synced to disk), and the ordered consumer would then wait past the
// stream's end for sequences that will be taken by other events.
func (a *partitionActor) watchReconnects(ctx context.Context) {
	ch := a.cfg.Conn.StatusChanged(nats.CONNECTED)
	defer a.cfg.Conn.RemoveStatusListener(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				return // the connection closed
			}
			a.wakeRetries()
			_ = a.self.TrySend(inputCheck{from: a})
		}
	}
}

// errInputRewound means the input stream ends before events this
// partition has read: the actor restarts and restores from the changelog.
var errInputRewound = errors.New("input stream lost events this partition has read")

// checkInputEnd fails with errInputRewound when the input stream ends before
// the last event this actor processed.
func (a *partitionActor) checkInputEnd(ctx context.Context) error {
	st, err := a.cfg.JS.Stream(ctx, a.cfg.Type)
	if err != nil {
		return nil // the reader reports a stream that went away
	}
	if last := st.CachedInfo().State.LastSeq; last < a.offset { // fetched by js.Stream just now
		a.m.inputGaps.Inc()
		return fmt.Errorf("%w: it ends at sequence %d, this partition has processed up to %d (did a NATS server lose acknowledged writes?)",
			errInputRewound, last, a.offset)
	}
	return nil
}

// consumeInput opens an ordered consumer of the partition from offset+1.
func (a *partitionActor) consumeInput(ctx context.Context, offset uint64) (jetstream.MessagesContext, error) {
	// Straight to the consumer, without looking the stream up first: one
	// round trip less before a promoted or moved partition reads again.
	cons, err := a.cfg.JS.OrderedConsumer(ctx, a.cfg.Type, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{a.cfg.input().Filter(a.cfg.Partition)},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    offset + 1,
		// A killed node's consumer goes once its pull requests lose interest.
		InactiveThreshold: changelog.ConsumerInactiveThreshold,
	})
	if err != nil {
		return nil, fmt.Errorf("input consumer %s: %w", a.cfg.Type, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2*a.cfg.BatchSize), jetstream.PullHeartbeat(changelog.ConsumerHeartbeat))
	if err != nil {
		return nil, fmt.Errorf("input consumer %s: %w", a.cfg.Type, err)
	}
	return it, nil
}

// inputOpening is an input consumer being opened in the background while
// the epoch record commits (openInput): a promotion then waits for one round
// trip less before it reads.
type inputOpening struct {
	from uint64 // the offset it reads after
	done chan struct{}
	it   jetstream.MessagesContext
	err  error
}

// openInput starts opening the input consumer from offset+1 in the background.
func (a *partitionActor) openInput(ctx context.Context, offset uint64) *inputOpening {
	o := &inputOpening{from: offset, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		o.it, o.err = a.consumeInput(ctx, offset)
	}()
	return o
}

// wait returns the opened consumer.
func (o *inputOpening) wait() (jetstream.MessagesContext, error) {
	<-o.done
	return o.it, o.err
}

// discard waits for the opening to end and stops the consumer it opened; a
// nil opening is fine.
func (o *inputOpening) discard() {
	if o == nil {
		return
	}
	if it, err := o.wait(); err == nil {
		it.Stop()
	}
}

// checkRetention reports, as an error and a metric, when the input stream's
// retention removed events past the committed offset: some may have been
// this partition's, unprocessed.
func (a *partitionActor) checkRetention(ctx context.Context, offset uint64) {
	if offset == 0 {
		return
	}
	st, err := a.cfg.JS.Stream(ctx, a.cfg.Type)
	if err != nil {
		return // the reader reports a stream that went away
	}
	info := st.CachedInfo() // fetched by js.Stream just now
	if info.State.FirstSeq > offset+1 {
		a.m.inputGaps.Inc()
		a.log.Error("input stream no longer holds events this partition has not processed: possible data loss",
			"offset", offset, "stream_first_seq", info.State.FirstSeq)
	}
	if info.State.LastSeq < offset {
		a.m.inputGaps.Inc()
		a.log.Error("input stream ends before the committed offset: it lost events this partition processed "+
			"(a NATS server lost acknowledged writes?); the events it stores at sequences up to the offset will be skipped",
			"offset", offset, "stream_last_seq", info.State.LastSeq)
	}
}

func (a *partitionActor) read(ctx context.Context, it jetstream.MessagesContext, p *readerProgress) {
	defer it.Stop()
	a.checkRetention(ctx, p.pos.Load())
	fail := func(err error) {
		if ctx.Err() == nil {
			_ = a.self.Send(ctx, readerFailed{from: a, err: err})
		}
	}
	for {
		p.waitingSince.Store(time.Now().UnixNano())
		msg, err := it.Next(jetstream.NextContext(ctx))
		p.waitingSince.Store(0)
		if err != nil {
			fail(err)
			return
		}
		batch := make([]jetstream.Msg, 1, a.cfg.BatchSize)
		batch[0] = msg
		// Fill the batch until Linger has passed and the actor is done
		// with the previous one: while it commits, the events that
		// arrive join this batch, so that batches grow with the commit
		// time instead of queueing behind it one commit each.
		deadline := time.Now().Add(a.cfg.Linger)
		ready := false
		for len(batch) < a.cfg.BatchSize {
			wait := time.Until(deadline)
			if wait <= 0 {
				if ready = p.take(); ready {
					break
				}
				wait = readerBusyPoll
			}
			msg, err := it.Next(jetstream.NextMaxWait(wait))
			if errors.Is(err, nats.ErrTimeout) {
				continue
			}
			if err != nil {
				fail(err)
				return
			}
			batch = append(batch, msg)
		}
		if !ready {
			select {
			case <-p.ready:
			case <-ctx.Done():
				return
			}
		}
		if md, err := batch[len(batch)-1].Metadata(); err == nil {
			p.pos.Store(md.Sequence.Stream)
		}
		if err := a.self.Send(ctx, inputBatch{from: a, msgs: batch}); err != nil {
			return
		}
	}
}

// readerBusyPoll is how long the reader waits for one more event while its
// actor processes the previous batch, before it looks again whether the
// actor is done: a small fraction of a commit (several ms).
const readerBusyPoll = time.Millisecond
