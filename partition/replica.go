package partition

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
)

// Lag is how far a hot replica is behind its partition's changelog.
type Lag struct {
	// Applied is the changelog sequence the replica's store holds.
	Applied uint64
	// Records is how many changelog records the replica has not applied yet.
	Records uint64
	// Behind is the age of the oldest record not applied yet; 0 when caught up.
	Behind time.Duration
	// At is when the replica measured the lag; zero until it first did.
	At time.Time
}

// Known reports whether the replica has measured its lag.
func (l Lag) Known() bool { return !l.At.IsZero() }

// Staleness bounds how old the replica's copy may be at now: how far behind
// it was when last measured, plus the time since. A caught-up replica
// renews its measurement every replicaIdleMark while nothing arrives.
func (l Lag) Staleness(now time.Time) time.Duration {
	if !l.Known() {
		return time.Duration(1<<63 - 1)
	}
	return l.Behind + now.Sub(l.At)
}

// Get returns the replica's copy of key in store (statestore.ErrNotFound if
// absent) with the replica's lag at the time of the read. The copy is
// committed state, possibly behind the active's by Lag.Staleness.
func (r *Replica) Get(ctx context.Context, store string, key []byte) ([]byte, Lag, error) {
	lag := r.Lag()
	v, err := r.ref.Ask(ctx, queryReq{store: store, key: key})
	if err != nil {
		return nil, lag, err
	}
	return v.([]byte), lag, nil
}

// Replica is a running hot replica: it tails a partition's changelog into a
// local store in the same format as the active's, so that the partition
// actor started on the same store directory (a promotion, or the end of a
// warm-up move) restores only the few records the replica had not applied.
//
// The replica records its applied changelog sequence in the store with every
// batch it applies, so it resumes from there after a restart of its own.
type Replica struct {
	ref *actor.Ref
	lag atomic.Pointer[Lag]
	// failing is the replica's current series of failures, nil while it
	// applies the changelog.
	failing atomic.Pointer[replicaFailure]
	// applied gets a signal (dropped when one is pending) each time the
	// replica publishes its lag, for Handoff to wait on.
	applied chan struct{}
}

// StartReplica spawns a hot replica of cfg's partition in sys. It uses the
// partition's identity, connection, store and changelog settings of cfg; the
// handler and input settings are not used. Failures restart it with backoff.
func StartReplica(sys *actor.System, cfg Config, sup actor.SupervisorConfig) (*Replica, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("type", cfg.Type, "partition", cfg.Partition, "role", "replica")
	m := cfg.Metrics.forPartition(cfg.Type, cfg.Partition)
	sup.Decide = func(err error) actor.Directive {
		if errors.Is(err, ErrStateVersion) {
			return actor.Stop // the changelog holds a newer state version: see Err
		}
		return actor.Restart
	}
	r := &Replica{applied: make(chan struct{}, 1)}
	r.lag.Store(&Lag{})
	ref, err := sys.Spawn(actor.Props{
		Name:        fmt.Sprintf("%s/%d/replica", cfg.Type, cfg.Partition),
		MailboxSize: 16, // stale reads queue here
		Supervisor:  sup,
		Logger:      log,
		OnRestart:   func(error) { m.restarts.Inc() },
		OnFailure: func(err error, _ actor.Directive) {
			f := replicaFailure{since: time.Now(), err: err.Error()}
			if old := r.failing.Load(); old != nil {
				f.since = old.since
			}
			r.failing.Store(&f)
		},
		New: func() actor.Receiver {
			c := cfg
			return &replicaActor{cfg: &c, lag: &r.lag, failing: &r.failing, applied: r.applied, log: log, m: m,
				subjects: changelog.NewSubjects(cfg.Type, cfg.Partition)}
		},
	})
	if err != nil {
		return nil, err
	}
	r.ref = ref
	return r, nil
}

// replicaFailure is a series of failures of a hot replica.
type replicaFailure struct {
	since time.Time // the first failure of the series
	err   string    // the last
}

// Failing reports whether the replica is failing (restarting after errors
// without applying the changelog in between), since when, and the last
// error.
func (r *Replica) Failing() (since time.Time, err string, failing bool) {
	f := r.failing.Load()
	if f == nil {
		return time.Time{}, "", false
	}
	return f.since, f.err, true
}

// Lag returns the replica's lag as last measured.
func (r *Replica) Lag() Lag { return *r.lag.Load() }

// Stop stops tailing, commits what was applied and closes the store; the
// store directory is then free for the partition actor.
func (r *Replica) Stop(ctx context.Context) error { return r.ref.Stop(ctx) }

// Handoff is a hot replica's open store and changelog stream, handed to
// the partition actor the replica is promoted to (Config.Handoff): the actor
// neither reopens the store nor looks the stream up again, and it fences
// right away at the sequence the store holds; only if the changelog has
// moved past that does it replay the tail first.
type Handoff struct {
	store  *statestore.Pebble
	stream jetstream.Stream
}

// Close closes the handed-over store, for a caller that does not start the
// partition actor after all.
func (h *Handoff) Close() error { return h.store.Close() }

// handoffWait bounds how long Handoff waits for the replica to apply the
// sequence it is asked for; past it the promoted actor replays what is left.
const handoffWait = time.Second

// Handoff stops tailing and hands the replica's store and stream over to the
// partition actor that the replica is promoted to. With through > 0 (the
// last changelog sequence the previous owner committed, in a handover) it
// first waits, up to handoffWait, until the replica has applied that
// sequence, so the new owner starts without replaying anything. The replica
// stops; the caller owns the store.
func (r *Replica) Handoff(ctx context.Context, through uint64) (*Handoff, error) {
	if through > 0 {
		wait := time.NewTimer(handoffWait)
		defer wait.Stop()
	waiting:
		for r.Lag().Applied < through {
			select {
			case <-r.applied:
			case <-wait.C:
				break waiting
			case <-r.ref.Done():
				break waiting
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	v, err := r.ref.Ask(ctx, handoffReq{})
	if err != nil {
		return nil, err
	}
	h := v.(*Handoff)
	if err := r.ref.Stop(ctx); err != nil {
		_ = h.Close()
		return nil, err
	}
	return h, nil
}

// Done is closed when the replica has stopped.
func (r *Replica) Done() <-chan struct{} { return r.ref.Done() }

// handoffReq asks the replica actor for its store (Replica.Handoff).
type handoffReq struct{}

// tailFailed tells the replica actor that its tail goroutine stopped with an error.
type tailFailed struct{ err error }

// replicaActor is one incarnation of a hot replica.
type replicaActor struct {
	cfg      *Config
	lag      *atomic.Pointer[Lag]
	failing  *atomic.Pointer[replicaFailure]
	applied  chan struct{}
	log      *slog.Logger
	m        *partitionMetrics
	subjects changelog.Subjects

	store   *statestore.Pebble
	cl      jetstream.Stream // the changelog stream
	cancel  context.CancelFunc
	done    chan struct{}
	it      jetstream.MessagesContext // the tail's
	pending []pending                 // the outbox entries kept as pending (seq and key only)
}

// Started opens the store, checks that it belongs to the changelog, and
// starts the tail.
func (r *replicaActor) Started(c *actor.Context) error {
	ctx := c.Context()
	if h := r.cfg.Hooks.ReplicaStarting; h != nil {
		if err := h(); err != nil {
			return err
		}
	}
	st, err := openStore(r.cfg)
	if err != nil {
		return err
	}
	r.store = st
	cl, err := changelog.EnsureStream(ctx, r.cfg.JS, r.subjects, r.cfg.Changelog)
	if err != nil {
		return err
	}
	r.cl = cl
	meta, err := r.checkStore(ctx, cl)
	if errors.Is(err, errStoreAhead) {
		r.log.Warn("hot replica's store does not fit the changelog; discarding it", "err", err)
		r.m.storeDiscards.Inc()
		if err := r.discardStore(); err != nil {
			return err
		}
		if r.store, err = openStore(r.cfg); err != nil {
			return err
		}
		meta, err = r.checkStore(ctx, cl)
	}
	if err == nil && meta.ChangelogSeq == 0 {
		meta, err = r.restoreSnapshot(ctx, cl)
	}
	if err != nil {
		return err
	}
	if err := r.refuses(changelog.Meta{Version: meta.Version, Migrating: meta.Migrating, Epoch: meta.Epoch, Owner: meta.Owner}, meta.MetaSeq); err != nil {
		return err
	}
	if err := r.loadPending(); err != nil {
		return err
	}
	info, err := cl.Info(ctx)
	if err != nil {
		return err
	}
	behind := uint64(0)
	if info.State.LastSeq > meta.ChangelogSeq {
		behind = info.State.LastSeq - meta.ChangelogSeq
	}
	r.publish(Lag{Applied: meta.ChangelogSeq, Records: behind, At: time.Now()})
	r.log.Info("hot replica started", "applied", meta.ChangelogSeq, "behind", behind)
	return r.startTail(c.Self(), meta)
}

// startTail starts tailing the changelog past meta.ChangelogSeq, and
// watching for reconnects: after one, the replica checks that the changelog
// still holds what its store applied (a server that crashed may have come
// back without its tail) and tails again with a new consumer (a consumer
// lost with its server must not leave the replica waiting for good).
func (r *replicaActor) startTail(self *actor.Ref, meta statestore.Meta) error {
	tctx, cancel := context.WithCancel(context.Background())
	cons, err := r.cl.OrderedConsumer(tctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       meta.ChangelogSeq + 1,
		InactiveThreshold: changelog.ConsumerInactiveThreshold,
	})
	if err != nil {
		cancel()
		return fmt.Errorf("tail changelog: consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(replicaBatch), jetstream.PullHeartbeat(changelog.ConsumerHeartbeat))
	if err != nil {
		cancel()
		return fmt.Errorf("tail changelog: consume: %w", err)
	}
	done := make(chan struct{})
	r.cancel, r.done, r.it = cancel, done, it
	var wg sync.WaitGroup
	wg.Go(func() {
		err := r.tail(tctx, it, meta)
		if err != nil && tctx.Err() == nil {
			// Restart through the supervisor; TrySend: a full mailbox means a
			// stop or an earlier failure is already on its way.
			_ = self.TrySend(tailFailed{err})
		}
	})
	wg.Go(func() {
		ch := r.cfg.Conn.StatusChanged(nats.CONNECTED)
		defer r.cfg.Conn.RemoveStatusListener(ch)
		for {
			select {
			case <-tctx.Done():
				return
			case _, ok := <-ch:
				if !ok {
					return
				}
				_ = self.TrySend(checkChangelog{})
			}
		}
	})
	go func() {
		wg.Wait()
		close(done)
	}()
	return nil
}

// restoreSnapshot puts the newest usable snapshot in the place of the
// replica's empty store, so that the replica tails only the records after
// it: all it can do when the changelog was trimmed, and faster than a
// replay of the whole changelog otherwise. Without a usable snapshot the
// store stays empty.
func (r *replicaActor) restoreSnapshot(ctx context.Context, cl jetstream.Stream) (statestore.Meta, error) {
	info, err := cl.Info(ctx)
	if err != nil {
		return statestore.Meta{}, err
	}
	if info.State.LastSeq == 0 {
		return r.store.Meta()
	}
	got, err := fetchSnapshot(ctx, r.cfg, r.log, changelogID(cl), info.State)
	if err != nil || got == nil {
		if err != nil {
			return statestore.Meta{}, err
		}
		return r.store.Meta()
	}
	if err := r.store.Close(); err != nil {
		return statestore.Meta{}, err
	}
	r.store = nil
	if r.store, err = got.install(r.cfg); err != nil {
		return statestore.Meta{}, err
	}
	return r.checkStore(ctx, cl)
}

// checkChangelog asks the replica actor to check, after a reconnect, that
// the changelog has everything its store has applied.
type checkChangelog struct{}

// discardStore closes and deletes the replica's store.
func (r *replicaActor) discardStore() error {
	r.stopTail()
	if r.store != nil {
		if err := r.store.Close(); err != nil {
			return err
		}
		r.store = nil
	}
	return removeStore(r.cfg.StoreDir)
}

// checkStore verifies the store's changelog identity and that the changelog
// has everything the store has seen: it does not end before the store, and
// its newest meta record is not older than the store's, nor another batch
// at the same sequence.
func (r *replicaActor) checkStore(ctx context.Context, cl jetstream.Stream) (statestore.Meta, error) {
	meta, err := r.store.Meta()
	if err != nil {
		return meta, err
	}
	if err := checkChangelogID(r.store, meta, changelogID(cl)); err != nil {
		return meta, err
	}
	info, err := cl.Info(ctx)
	if err != nil {
		return meta, err
	}
	if info.State.LastSeq < meta.ChangelogSeq {
		return meta, fmt.Errorf("%w: local store at changelog sequence %d, changelog ends at %d",
			errStoreAhead, meta.ChangelogSeq, info.State.LastSeq)
	}
	if meta.MetaSeq == 0 {
		return meta, nil
	}
	m, ok, err := changelog.ReadLastMeta(ctx, r.cfg.Conn, r.subjects)
	if err != nil {
		return meta, err
	}
	if !ok || m.Seq < meta.MetaSeq || m.Seq == meta.MetaSeq && meta.Batch != 0 && m.Batch != meta.Batch {
		return meta, fmt.Errorf("%w: the changelog's newest meta record (sequence %d, batch %x) is older than the store's (sequence %d, batch %x), or another",
			errStoreAhead, m.Seq, m.Batch, meta.MetaSeq, meta.Batch)
	}
	return meta, nil
}

// loadPending finds the outbox entries the store keeps as pending.
func (r *replicaActor) loadPending() error {
	r.pending = r.pending[:0]
	return r.store.Iterate([]byte(pendingKeyPrefix), func(k, _ []byte) error {
		r.pending = append(r.pending, pending{seq: pendingSeq(k), key: slices.Clone(k)})
		return nil
	})
}

// Receive handles a failure of the tail goroutine and a handoff.
func (r *replicaActor) Receive(c *actor.Context, msg any) error {
	switch m := msg.(type) {
	case checkChangelog:
		if r.store == nil || r.cancel == nil {
			return nil // handed over
		}
		r.stopTail()
		meta, err := r.checkStore(c.Context(), r.cl)
		if err != nil {
			return r.Receive(c, tailFailed{err})
		}
		if err := r.loadPending(); err != nil {
			return err
		}
		return r.startTail(c.Self(), meta)
	case tailFailed:
		if errors.Is(m.err, errStoreAhead) {
			// The store holds records the changelog lost: start it over.
			r.log.Warn("hot replica's store does not fit the changelog; discarding it", "err", m.err)
			r.m.storeDiscards.Inc()
			if err := r.discardStore(); err != nil {
				return err
			}
		}
		return fmt.Errorf("tail changelog: %w", m.err)
	case queryReq:
		if r.store == nil {
			c.RespondError(errors.New("replica: store handed over"))
			return nil
		}
		v, err := r.store.Get([]byte(storeKey(m.store, m.key)))
		if err != nil {
			c.RespondError(err)
			return nil
		}
		c.Respond(v)
		return nil
	case handoffReq:
		r.stopTail()
		if r.store == nil {
			return errors.New("replica: no store to hand off")
		}
		c.Respond(&Handoff{store: r.store, stream: r.cl})
		r.store = nil // the caller's now
		return nil
	}
	return fmt.Errorf("replica: unexpected message %T", msg)
}

// stopTail stops the tail goroutine and waits for it.
func (r *replicaActor) stopTail() {
	if r.cancel != nil {
		r.cancel()
		r.it.Stop() // ends a Next that is recreating a lost consumer
		<-r.done
		r.cancel, r.it = nil, nil
	}
}

// Stopped stops the tail and closes the store.
func (r *replicaActor) Stopped(*actor.Context) {
	r.stopTail()
	if r.store != nil {
		if err := r.store.Close(); err != nil {
			r.log.Warn("close store", "err", err)
		}
	}
}

// replicaBatch is the most records applied to the store in one batch.
const replicaBatch = 4096

// replicaIdleMark is how often an idle, caught-up replica renews the time it
// was last known current (Lag.At), which bounds the staleness of its reads.
const replicaIdleMark = 200 * time.Millisecond

// tail applies changelog records past meta.ChangelogSeq until ctx ends. It
// commits a batch to the store whenever it has caught up or holds
// replicaBatch records, with the applied sequence and the newest meta record
// (offset, epoch) in the batch's Meta, as a restore would leave them.
func (r *replicaActor) tail(ctx context.Context, it jetstream.MessagesContext, meta statestore.Meta) error {
	defer it.Stop()
	var err error
	b := r.store.NewBatch()
	defer func() { b.Close() }()
	caughtUp := false
	rebuilds := newRebuildCheck(meta)
	for {
		var msg jetstream.Msg
		if caughtUp {
			// Wait a bounded time, so that an idle replica renews its mark.
			nctx, cancel := context.WithTimeout(ctx, replicaIdleMark)
			msg, err = it.Next(jetstream.NextContext(nctx))
			cancel()
		} else {
			msg, err = it.Next(jetstream.NextContext(ctx)) // more records are due: no timer per record
		}
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// Nothing new for a while: if the replica had caught up, it is
			// still current now (see Lag.Staleness).
			if caughtUp {
				r.publish(Lag{Applied: meta.ChangelogSeq, At: time.Now()})
			}
			continue
		}
		if err != nil {
			return err
		}
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		seq := md.Sequence.Stream
		err = r.subjects.Records(msg.Subject(), msg.Data(), func(rec changelog.Record) error {
			rec.Time = md.Timestamp
			switch rec.Kind {
			case changelog.KindMeta:
				drop, err := rebuilds.meta(rec.Meta, seq)
				if err != nil {
					return err // the store holds state from before a rebuild: start over
				}
				if drop { // a rebuild starts: what the store holds is not the state any more
					if b, err = dropStateMidway(r.store, b); err != nil {
						return err
					}
				}
				if err := r.refuses(rec.Meta, seq); err != nil {
					// Not applied: the batch in hand (this record's batch) is
					// dropped, and the replica stops with the error.
					r.log.Error("the changelog holds state of a newer version than this replica's: stopped tailing", "err", err)
					return err
				}
				if !rec.Meta.Continues(meta.MetaSeq, meta.Batch) {
					return discontinuity(seq, rec.Meta, meta.MetaSeq)
				}
				meta.Offset, meta.Epoch = rec.Meta.Offset, max(meta.Epoch, rec.Meta.Epoch)
				meta.Forwarded = max(meta.Forwarded, rec.Meta.Forwarded)
				meta.Owner, meta.MetaSeq, meta.Batch = rec.Meta.Owner, seq, rec.Meta.Batch
				meta = storeVersion(meta, rec.Meta)
			case changelog.KindOutbox:
				r.pending = append(r.pending, pending{seq: seq, key: pendingKey(seq, rec.Index)})
			case changelog.KindSet, changelog.KindDelete:
				rebuilds.record()
			}
			r.m.replicaRecords.Inc()
			return applyRecord(b, seq, rec)
		})
		if err != nil {
			return err
		}
		meta.ChangelogSeq = seq
		if md.NumPending > 0 && b.Len() < replicaBatch {
			continue
		}
		// Drop pending outbox entries the forwarded mark covers, as the
		// active's restore would.
		n := 0
		for _, p := range r.pending {
			if p.seq <= meta.Forwarded {
				b.Delete(p.key)
				continue
			}
			r.pending[n] = p
			n++
		}
		r.pending = r.pending[:n]
		b.SetMeta(meta)
		if err := b.Commit(); err != nil {
			return err
		}
		b.Close()
		b = r.store.NewBatch()
		lag := Lag{Applied: seq, Records: md.NumPending, At: time.Now()}
		if md.NumPending > 0 {
			lag.Behind = time.Since(md.Timestamp)
		}
		caughtUp = md.NumPending == 0
		r.publish(lag)
	}
}

func (r *replicaActor) publish(l Lag) {
	r.lag.Store(&l)
	r.failing.Store(nil) // it applies the changelog: a failure series is over
	select {
	case r.applied <- struct{}{}:
	default:
	}
	r.m.replicaLag.Set(float64(l.Records))
}
