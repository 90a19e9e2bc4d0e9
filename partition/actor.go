package partition

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// Messages the partition actor receives.
type (
	// inputBatch is a batch of input events read by the incarnation's reader.
	inputBatch struct {
		from *partitionActor
		msgs []jetstream.Msg
	}
	// readerFailed reports that the incarnation's input reader stopped.
	readerFailed struct {
		from *partitionActor
		err  error
	}
	// markTick asks an idle actor to commit its outbox forwarded mark.
	markTick struct{ from *partitionActor }
	// queryReq reads a committed value.
	queryReq struct {
		store string
		key   []byte
	}
)

// State says what a partition actor is doing.
type State string

const (
	// StateStarting: restoring its store and fencing older owners, before it
	// first reads input.
	StateStarting State = "starting"
	// StateRunning: processing input.
	StateRunning State = "running"
	// StateRetrying: failing for a reason that may pass (NATS away, a stream
	// without a leader, a commit whose outcome is being read back); it
	// retries without end, with capped backoff. Status.Err says why.
	StateRetrying State = "retrying"
	// StateFenced: another owner holds the partition at a newer epoch (or
	// at this actor's epoch): stopped for good. Status.Err names the owner.
	StateFenced State = "fenced"
	// StateStopped: stopped, or released to a new owner.
	StateStopped State = "stopped"
)

// Status is a partition actor's progress and health.
type Status struct {
	// Type and Partition name the partition.
	Type      string `json:"type"`
	Partition int    `json:"partition"`
	// State is what the actor does now; Running is State == StateRunning.
	State   State `json:"state"`
	Running bool  `json:"running"`
	// Err is why it is retrying, or what fenced or stopped it.
	Err string `json:"error,omitempty"`
	// Since is when State began; while retrying, the first failure of the series.
	Since time.Time `json:"since"`
	// Epoch is the epoch it fences with.
	Epoch uint64 `json:"epoch"`
	// Owner names the process it runs in (Config.Owner).
	Owner string `json:"owner,omitempty"`
	// Offset is the last input sequence whose effects are committed.
	Offset uint64 `json:"offset"`
	// ChangelogSeq is the last changelog sequence committed.
	ChangelogSeq uint64 `json:"changelog_seq"`
	// InputLag is how many events of the partition its input stream held
	// past the last event of the last committed batch, when that batch was
	// read: 0 when the partition has caught up.
	InputLag uint64 `json:"input_lag"`
	// LastCommit is when the last batch was committed (zero before the first).
	LastCommit time.Time `json:"last_commit,omitzero"`
	// Restarts counts supervised restarts after failures.
	Restarts int `json:"restarts"`
	// Snapshot is the newest snapshot this actor uploaded or restored
	// from (nil: none yet; Config.SnapshotEvery, SnapshotInterval).
	Snapshot *SnapshotStatus `json:"snapshot,omitempty"`
}

// statusBoard is a partition's Status: written on the actor's goroutine
// only, read by anyone (Actor.Status) without a round trip through the
// mailbox, which may be queued behind input batches or a commit that retries.
type statusBoard struct {
	p atomic.Pointer[Status]
	m *partitionMetrics
	// changed is closed, and replaced, at every update.
	changed atomic.Pointer[chan struct{}]
	// failingSince is the first failure of the current series: kept while
	// the actor stops and restarts, cleared once it runs again.
	failingSince time.Time
}

// update publishes a changed copy of the status.
func (b *statusBoard) update(f func(s *Status)) {
	s := *b.p.Load()
	prev := s.State
	f(&s)
	switch {
	case s.State == StateRunning:
		b.failingSince = time.Time{}
	case s.State == StateRetrying && b.failingSince.IsZero():
		b.failingSince = time.Now()
	}
	if s.State == StateRetrying {
		s.Since = b.failingSince
	} else if s.State != prev {
		s.Since = time.Now()
	}
	s.Running = s.State == StateRunning
	b.p.Store(&s)
	b.m.setState(s.State)
	next := make(chan struct{})
	if old := b.changed.Swap(&next); old != nil {
		close(*old)
	}
}

// init sets the first status.
func (b *statusBoard) init(s Status) {
	b.p.Store(&s)
	ch := make(chan struct{})
	b.changed.Store(&ch)
	b.m.setState(s.State)
}

// next returns a channel closed at the next update.
func (b *statusBoard) next() <-chan struct{} { return *b.changed.Load() }

// setState moves to state st, err being why (retrying, fenced).
func (b *statusBoard) setState(st State, err error) {
	b.update(func(s *Status) {
		s.State, s.Err = st, ""
		if err != nil {
			s.Err = err.Error()
		}
	})
}

// publishStatus makes the actor's progress visible to Actor.Status, in state st.
func (a *partitionActor) publishStatus(st State) {
	a.status.update(func(s *Status) {
		s.State, s.Err = st, ""
		a.progress(s)
	})
}

// publishProgress is publishStatus in the present state.
func (a *partitionActor) publishProgress() { a.status.update(a.progress) }

func (a *partitionActor) progress(s *Status) {
	s.Epoch, s.Owner, s.Offset = a.epoch, a.cfg.Owner, a.committedOffset
	if a.writer != nil {
		s.ChangelogSeq = a.writer.Last()
	}
	s.InputLag, s.LastCommit = a.inputLag, a.lastCommit
}

// partitionActor is one incarnation of a partition actor.
type partitionActor struct {
	cfg      *Config
	status   *statusBoard
	released *atomic.Bool // Actor.Release was called
	quiesce  func()       // tells Actor.Release that this released actor commits no more
	log      *slog.Logger
	m        *partitionMetrics
	subjects changelog.Subjects
	stores   map[string]bool

	store       statestore.Store
	cl          jetstream.Stream // the changelog stream
	changelogID []byte
	writer      *changelog.Writer
	epoch       uint64
	offset      uint64
	// forwarded: every outbox entry at or below this changelog sequence is forwarded.
	forwarded     uint64
	markCommitted uint64 // the forwarded mark the changelog holds
	trimmed       uint64 // a changelog without state is trimmed below it (maybeTrim)
	lastTrim      time.Time
	markTimer     *time.Timer
	fwd           forwarder // the outbox entries in flight (forward.go)
	pendingOut    []pending
	batchBytes    int // the bytes of the batch's records, estimated as its events ran (Txn.size)

	// The batch being built.
	ws      map[string]int
	writes  []write
	outbox  []changelog.Outbox
	replies []reply
	// committedOffset is the offset in the last committed meta record.
	committedOffset uint64
	epochWritten    bool
	self            *actor.Ref
	tx              Txn

	// tables read this partition of the co-partitioned tables (table.go).
	tables []*tableReader

	// The commits sent and not finished, oldest first (pipeline.go), a
	// finished one's buffers for the next, and the offset and forwarded
	// mark of the last one sent.
	flights              []*flight
	spare                *flight
	sentOffset, sentMark uint64

	readerCancel   context.CancelFunc
	readerDone     chan struct{}
	readerIt       jetstream.MessagesContext
	readerProgress *readerProgress
	input          jetstream.Stream // the input stream, once looked up (checkStall)
	early          *inputOpening    // the input consumer opened while fencing

	// stopping is closed when the actor is asked to stop: a commit that
	// retries gives up then (abandoned), leaving its batch's outcome to
	// whoever restores next.
	stopping <-chan struct{}
	// ctx is the incarnation's context (actor.Context.Context): handlers
	// see it as Txn.Context.
	ctx context.Context
	// targets are the streams publishes were found to reach (checkTarget).
	targets   map[string]target
	reconnect atomic.Pointer[chan struct{}] // closed and replaced at each reconnect to NATS
	abandoned bool
	started   bool // restored and fenced: commits show it running
	stopped   bool // in Stopped: commits that landed are applied, nothing more
	// inputLag and lastCommit are reported in Status; readLag is the input
	// lag as of the last event of the batch being built.
	inputLag, readLag uint64
	lastCommit        time.Time

	// rebuilding: the batch replays input into stores without a changelog
	// (Config.NoChangelog); commits go to the local store only, with rebuilt.
	rebuilding bool
	rebuilt    statestore.Meta

	// restorePath is how the store was restored (restoreLocal, ...).
	restorePath string
	snap        snapshots
	// ver is the state version the stores hold (version.go, migrate.go).
	ver versionState

	// ext is the partition's rows in the external store (external.go),
	// instead of store and the changelog; replayThrough is the offset up
	// to which events replayed after a reset have their side effects
	// suppressed.
	ext           *postgres.Partition
	replayThrough uint64
	// extFlight is the transaction in flight (external.go), sent by a
	// goroutine of extSending.
	extFlight  *extFlight
	extSending sync.WaitGroup
}

type reply struct {
	inbox string
	data  []byte
}

func (a *partitionActor) msgID(offset uint64, suffix string) string {
	return a.cfg.Type + "/" + strconv.Itoa(a.cfg.Partition) + "/" + strconv.FormatUint(offset, 10) + "/" + suffix
}

// get reads k as the batch being built sees it: its own writes, then those
// of the commits in flight, newest first, then the local store (or the
// external store's transaction in flight, then its committed rows).
func (a *partitionActor) get(k string) ([]byte, error) {
	ws, writes := a.ws, a.writes
	for i := len(a.flights); ; i-- {
		if j, ok := ws[k]; ok {
			if writes[j].del {
				return nil, statestore.ErrNotFound
			}
			return writes[j].value, nil
		}
		if i == 0 {
			if a.ext != nil {
				if x := a.extFlight; x != nil {
					if j, ok := x.f.ws[k]; ok {
						if x.f.writes[j].del {
							return nil, statestore.ErrNotFound
						}
						return x.f.writes[j].value, nil
					}
				}
				return a.getExternal(k)
			}
			return a.store.Get([]byte(k))
		}
		ws, writes = a.flights[i-1].ws, a.flights[i-1].writes
	}
}

// Started restores the store, fences older owners and starts reading input.
func (a *partitionActor) Started(c *actor.Context) error {
	ctx := c.Context()
	a.self = c.Self()
	a.ctx = ctx
	a.stopping = c.Stopping()
	a.ws = make(map[string]int)
	a.tx.a = a
	if a.cfg.External != nil {
		if h := a.cfg.Handoff; h != nil { // no replica holds an external store's state
			a.cfg.Handoff = nil
			_ = h.Close()
		}
		return a.startExternal(c)
	}
	start := time.Now()
	h := a.cfg.Handoff
	a.cfg.Handoff = nil
	if h != nil {
		a.store, a.cl = h.store, h.stream
	} else {
		st, err := openStore(a.cfg)
		if err != nil {
			return err
		}
		a.store = st
	}
	opened := time.Now()
	if a.cl == nil {
		cl, err := changelog.EnsureStream(ctx, a.cfg.JS, a.subjects, a.cfg.Changelog)
		if err != nil {
			return err
		}
		a.cl = cl
	}
	a.changelogID = changelogID(a.cl)
	ensured := time.Now()
	// The first trim of a changelog without state waits TrimEvery: it
	// costs a JetStream API call that a promotion or handover should not
	// wait for.
	a.lastTrim = ensured
	// A promoted replica's store is as current as the replica was: fence at
	// its sequence at once, and replay the tail only if that fails.
	if err := a.chooseRestore(ctx, h != nil); err != nil {
		return err
	}
	err := a.restoreAndFence(ctx, h != nil && a.cfg.Epoch != 0)
	if errors.Is(err, errStoreAhead) {
		// The changelog was reset (NATS's data was wiped), or lost records
		// the store holds (a server crash lost acknowledged writes): the
		// changelog is the truth, so the local store starts over from it
		// (from a snapshot of this changelog, if there is one).
		a.log.Warn("local store does not fit the changelog; discarding it and restoring", "err", err)
		a.m.storeDiscards.Inc()
		if err := a.reopenEmpty(); err != nil {
			return err
		}
		tried := a.restorePath == restoreSnapshot
		if err := a.chooseRestore(ctx, false); err != nil {
			return err
		}
		err = a.restoreAndFence(ctx, false)
		if errors.Is(err, errStoreAhead) && !tried && a.restorePath == restoreSnapshot {
			a.log.Warn("the snapshot's store does not fit the changelog; discarding it and restoring from the whole changelog", "err", err)
			a.m.storeDiscards.Inc()
			if err := a.reopenEmpty(); err != nil {
				return err
			}
			a.restorePath = restoreChangelog
			err = a.restoreAndFence(ctx, false)
		}
	}
	if errors.Is(err, errAbandoned) {
		a.abandoned = true // asked to stop while fencing: nothing to process
		return nil
	}
	if err != nil {
		return err
	}
	if !a.awaitReady() {
		a.abandoned = true // asked to stop first
		return nil
	}
	if err := a.openTables(ctx); err != nil {
		return err
	}
	a.started = true
	a.publishStatus(StateRunning)
	a.m.restores(a.restorePath).Inc()
	a.startSnapshots()
	a.log.Info("partition started", "restore_path", a.restorePath, "epoch", a.epoch, "offset", a.offset,
		"changelog_seq", a.writer.Last(), "took", time.Since(start).Round(time.Millisecond),
		"open", opened.Sub(start).Round(time.Millisecond), "stream", ensured.Sub(opened).Round(time.Millisecond),
		"restore_fence", time.Since(ensured).Round(time.Millisecond))
	err = a.forwardPending(ctx, a.pendingOut)
	if errors.Is(err, errAbandoned) {
		a.abandoned = true
		return nil
	}
	if err != nil {
		return err
	}
	a.pendingOut = nil
	return a.startReader(c)
}

// forwardPending forwards what a crash left unforwarded, before the actor
// takes new input. The forwarded mark goes with the next commit, or after
// MarkDelay. Entries older than their target's duplicate window may be
// there already: those found there are not forwarded again.
func (a *partitionActor) forwardPending(ctx context.Context, outs []pending) error {
	fwd, there, err := a.checkOutbox(ctx, outs)
	if err != nil {
		return err
	}
	a.markForwarded(there)
	return a.forward(ctx, fwd)
}

// awaitReady waits for Config.Ready, and reports false if the actor is
// asked to stop first.
func (a *partitionActor) awaitReady() bool {
	for _, ch := range a.cfg.Ready {
		select {
		case <-ch:
		default:
			a.log.Info("waiting for the node's global tables to catch up before taking input")
			select {
			case <-ch:
			case <-a.stopping:
				return false
			}
		}
	}
	return true
}

// chooseRestore sets restorePath to the path the restore takes: a promoted
// replica's store, the local store's tail, or, for a store without a
// changelog position (new, lost, discarded), the newest usable snapshot,
// which it installs in the store's place, else the whole changelog.
func (a *partitionActor) chooseRestore(ctx context.Context, handoff bool) error {
	if handoff {
		a.restorePath = restoreReplica
		return nil
	}
	meta, err := a.store.Meta()
	if err != nil {
		return err
	}
	switch {
	case meta.ChangelogSeq > 0:
		a.restorePath = restoreLocal
	case a.cfg.NoChangelog:
		a.restorePath = restoreChangelog // the meta records; restore says if it rebuilds
	default:
		a.restorePath = restoreChangelog
		ok, err := a.restoreSnapshot(ctx)
		if err != nil {
			return fmt.Errorf("restore snapshot: %w", err)
		}
		if ok {
			a.restorePath = restoreSnapshot
		}
	}
	return nil
}

// errStoreAhead means the local store does not fit the changelog: it was
// built from another changelog than the current one (deleted and created
// again), has seen records that the changelog no longer has, or is behind
// the changelog's trim point. The store is discarded and restored.
var errStoreAhead = errors.New("local store ahead of changelog")

// discontinuity is the errStoreAhead of a reader that holds the changelog
// up to the meta record at heldSeq and meets m, at seq, which does not
// continue it (see changelog.Meta.Continues).
func discontinuity(seq uint64, m changelog.Meta, heldSeq uint64) error {
	if m.Prev > heldSeq {
		return fmt.Errorf("%w: the batch ending at changelog sequence %d follows %d, but the store holds the changelog only to %d: the records between were trimmed (they are in a snapshot)",
			errStoreAhead, seq, m.Prev, heldSeq)
	}
	return fmt.Errorf("%w: the batch ending at changelog sequence %d follows %d, inside what the store holds (to %d): the changelog lost records and was written again",
		errStoreAhead, seq, m.Prev, heldSeq)
}

// errChangelogMoved means the changelog holds records after the sequence the
// actor knew, written by an owner that does not fence it: an earlier
// incarnation of the same owner whose commit landed late, or an older owner
// whose last batch landed before this one's epoch record. The actor reads
// the tail again and goes on.
var errChangelogMoved = errors.New("changelog moved")

// changelogIDKey holds the identity (creation time) of the changelog stream
// the local store was built from, in the internal key space.
const changelogIDKey = "\x00changelog-id"

// reopenEmpty deletes the local store and opens an empty one in its place.
func (a *partitionActor) reopenEmpty() error {
	if err := a.store.Close(); err != nil {
		return err
	}
	a.store = nil
	if err := removeStore(a.cfg.StoreDir); err != nil {
		return err
	}
	st, err := openStore(a.cfg)
	if err != nil {
		return err
	}
	a.store = st
	return nil
}

// removeStore deletes a local store directory.
func removeStore(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove store: %w", err)
	}
	return nil
}

// openStore opens the local store of the partition; actives and hot replicas
// of a partition on one node share it.
func openStore(cfg *Config) (*statestore.Pebble, error) {
	st, err := statestore.OpenPebble(statestore.Config{
		Dir:          cfg.StoreDir,
		Cache:        cfg.Cache,
		CacheSize:    cfg.StoreCacheSize,
		MemTableSize: 16 << 20,
		Sync:         cfg.StoreSync || cfg.NoChangelog, // without a changelog, a lost tail is a rebuild from the input
	})
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return st, nil
}

// restoreAndFence brings the local store up to the changelog's end, then writes
// this owner's epoch record, re-reading the tail if another writer got there
// first. With resume, it first trusts the store to be at the changelog's end
// (a promoted hot replica's): the epoch record's expected last sequence
// checks that, and the tail is replayed only if the check fails.
//
// Who holds the partition is decided by the owner identity of the newest
// meta record, never by the epoch alone: a newer epoch, or this epoch written
// by another owner, fences this actor (a *FenceError, for good); this epoch
// written by this owner — an earlier incarnation of this actor, whose commit
// may have landed after it failed — is resumed.
func (a *partitionActor) restoreAndFence(ctx context.Context, resume bool) error {
	for attempt := 0; ; attempt++ {
		var meta statestore.Meta
		var err error
		if resume && attempt == 0 {
			meta, err = a.resume(ctx)
		} else {
			meta, err = a.restore(ctx)
		}
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if err := a.checkVersion(meta); err != nil {
			return err // before the epoch record: it would fence the newer owner
		}
		epoch := a.cfg.Epoch
		if epoch == 0 {
			epoch = meta.Epoch + 1
		}
		if epoch < meta.Epoch || epoch == meta.Epoch && meta.Owner != a.cfg.Owner {
			a.m.fenced.Inc()
			return &FenceError{Epoch: epoch, Owner: a.cfg.Owner, By: changelog.Meta{Epoch: meta.Epoch, Owner: meta.Owner}, Seq: meta.MetaSeq}
		}
		a.epoch = epoch
		tail := changelog.Tail{Seq: meta.ChangelogSeq}
		if meta.MetaSeq == meta.ChangelogSeq {
			tail.Batch = meta.Batch
		}
		a.newWriter(tail)
		if resume && attempt == 0 {
			// The offset is known already: open the input consumer while
			// the epoch record commits (startReader takes it).
			a.early = a.openInput(ctx, a.offset)
		}
		err = a.commit(ctx)
		if err == nil {
			err = a.upgrade(ctx) // an older state version: migrate before any input
		}
		if err != nil {
			a.early.discard()
			a.early = nil
		}
		if (errors.Is(err, errChangelogMoved) || resume && attempt == 0 && errors.Is(err, changelog.ErrFenced)) && attempt < 10 {
			a.log.Info("changelog moved while fencing, re-reading the tail", "attempt", attempt+1, "store_seq", meta.ChangelogSeq, "err", err)
			continue
		}
		return err
	}
}

// newWriter starts a changelog writer at tail, which tells the actor when
// an answer to a commit arrives.
func (a *partitionActor) newWriter(tail changelog.Tail) {
	if a.writer != nil {
		a.writer.Close()
	}
	a.writer = changelog.NewWriter(a.conn(), a.subjects, tail, changelog.MaxBatch, changelog.MaxMessage(a.cfg.Conn.MaxPayload()))
	if a.cfg.CommitsInFlight > 1 {
		a.writer.Pipeline()
	}
	if self, from := a.self, a; self != nil {
		a.writer.Notify(func() { _ = self.TrySend(commitAnswered{from: from}) })
	}
}

// conn is the connection the changelog writer publishes on.
func (a *partitionActor) conn() changelog.Conn {
	if a.cfg.Hooks.Conn != nil {
		return a.cfg.Hooks.Conn
	}
	return a.cfg.Conn
}

// resume takes the local store's meta as the changelog's end, without
// reading the changelog: a promoted hot replica's store, which recorded the
// forwarded mark of the last meta record it applied.
func (a *partitionActor) resume(ctx context.Context) (statestore.Meta, error) {
	meta, err := a.store.Meta()
	if err != nil {
		return meta, err
	}
	if meta.Forwarded == 0 && meta.ChangelogSeq > 0 {
		// No mark recorded (nothing forwarded yet, or a store written before
		// marks were kept): the changelog's is the one not to go back on.
		m, ok, err := changelog.ReadLastMeta(ctx, a.conn(), a.subjects)
		if err != nil {
			return meta, err
		}
		if ok {
			meta.Forwarded = m.Forwarded
		}
	}
	a.offset, a.committedOffset, a.sentOffset = meta.Offset, meta.Offset, meta.Offset
	a.forwarded, a.markCommitted, a.sentMark = meta.Forwarded, meta.Forwarded, meta.Forwarded
	return meta, a.loadPending()
}

// restore replays the changelog past the local store's sequence into the local
// store, and loads the offset, epoch and unforwarded outbox entries. A
// changelog that does not continue the history the store holds (it ends
// before the store, or its first new batch starts inside what the store
// has: it lost records and was written again) is errStoreAhead.
func (a *partitionActor) restore(ctx context.Context) (statestore.Meta, error) {
	meta, err := a.store.Meta()
	if err != nil {
		return meta, err
	}
	if err := checkChangelogID(a.store, meta, a.changelogID); err != nil {
		return meta, err
	}
	var (
		last     changelog.Meta
		lastSeq  uint64
		haveMeta bool
		b        = a.store.NewBatch()
		applied  uint64
		full     = meta.ChangelogSeq == 0
		rebuilds = newRebuildCheck(meta)
	)
	defer func() { b.Close() }()
	start := time.Now()
	if full {
		a.log.Info("restoring from the whole changelog", "stream", a.subjects.Stream())
	}
	apply := func(seq uint64, r changelog.Record) error {
		if r.Kind == changelog.KindMeta {
			drop, err := rebuilds.meta(r.Meta, seq)
			if err != nil {
				return err
			}
			if drop { // a rebuild starts: what the store holds is not the state any more
				if b, err = dropStateMidway(a.store, b); err != nil {
					return err
				}
			}
			heldSeq, heldBatch := meta.MetaSeq, meta.Batch
			if haveMeta {
				heldSeq, heldBatch = lastSeq, last.Batch
			}
			// A changelog without state is trimmed below its forwarded
			// mark (maybeTrim): what a reader missed there was forwarded.
			trimmed := a.cfg.NoChangelog && r.Meta.Prev > heldSeq
			if !r.Meta.Continues(heldSeq, heldBatch) && !trimmed {
				return discontinuity(seq, r.Meta, heldSeq)
			}
			last, lastSeq, haveMeta = r.Meta, seq, true
		} else if err := applyRecord(b, seq, r); err != nil {
			return err
		} else if r.Kind == changelog.KindSet || r.Kind == changelog.KindDelete {
			rebuilds.record()
		}
		applied++
		if b.Len() >= 16384 {
			// Commit restore progress in chunks; the sequence is recorded only
			// at the end, so a crash here replays the same tail again.
			if err := b.Commit(); err != nil {
				return err
			}
			b.Close()
			b = a.store.NewBatch()
		}
		return nil
	}
	var end uint64
	for from := meta.ChangelogSeq + 1; ; {
		end, err = changelog.Replay(ctx, a.cfg.JS, a.subjects, changelog.ReplayConfig{
			From:          from,
			ProgressEvery: a.cfg.ProgressEvery,
			OnProgress: func(p changelog.Progress) {
				if p.Elapsed >= a.cfg.ProgressEvery {
					a.log.Info("restore progress", "records", p.Done, "percent", fmt.Sprintf("%.1f", p.Percent()),
						"rate", fmt.Sprintf("%.0f/s", p.Rate), "eta", p.ETA.Round(time.Second))
				}
			},
		}, apply)
		if err != nil {
			return meta, err
		}
		if end < meta.ChangelogSeq {
			return meta, fmt.Errorf("%w: local store at changelog sequence %d, changelog ends at %d",
				errStoreAhead, meta.ChangelogSeq, end)
		}
		if haveMeta {
			break
		}
		// No meta record in the tail read: either nothing new (the newest
		// meta record is the one the store holds, with the forwarded mark
		// and, for stores without a changelog, the committed offset), or
		// a batch landed after the replay's end while it was read: read on
		// to it.
		m, ok, err := changelog.ReadLastMeta(ctx, a.conn(), a.subjects)
		if err != nil {
			return meta, err
		}
		if ok && m.Seq > end {
			from = end + 1
			continue
		}
		if meta.MetaSeq != 0 && (!ok || m.Seq != meta.MetaSeq || meta.Batch != 0 && m.Batch != meta.Batch) {
			return meta, fmt.Errorf("%w: the changelog's newest meta record (sequence %d, batch %x) is not the one the local store holds (sequence %d, batch %x)",
				errStoreAhead, m.Seq, m.Batch, meta.MetaSeq, meta.Batch)
		}
		last = metaVersion(changelog.Meta{Offset: meta.Offset, Epoch: meta.Epoch, Owner: meta.Owner, Batch: meta.Batch}, meta)
		lastSeq = meta.MetaSeq
		if ok {
			last.Forwarded, last.Owner, last.Epoch, last.Batch, lastSeq = m.Forwarded, m.Owner, m.Epoch, m.Batch, m.Seq
			last = withVersionOf(last, m.Meta)
			if a.cfg.NoChangelog {
				last.Offset = m.Offset
			}
		}
		break
	}
	offset := last.Offset
	if a.cfg.NoChangelog {
		offset = meta.Offset // the store's own: rebuilt up to last.Offset below
	}
	meta = storeVersion(statestore.Meta{Offset: offset, ChangelogSeq: max(end, meta.ChangelogSeq), Epoch: last.Epoch,
		Forwarded: last.Forwarded, Owner: last.Owner, MetaSeq: lastSeq, Batch: last.Batch}, last)
	b.SetMeta(meta)
	if err := b.Commit(); err != nil {
		return meta, err
	}
	if err := a.checkVersion(meta); err != nil {
		return meta, err // before a rebuild runs this handler over newer state
	}
	if a.cfg.NoChangelog && last.Offset > meta.Offset {
		a.restorePath = restoreInput
		if err := a.rebuild(ctx, meta, last.Offset); err != nil {
			return meta, err
		}
		meta.Offset = last.Offset
	}
	a.m.restoreRecords.Add(float64(applied))
	if full {
		a.snap.records = applied // no snapshot holds them: see startSnapshots
	}
	if applied > 0 {
		el := time.Since(start)
		a.log.Info("restored from changelog", "records", applied, "full", full, "took", el.Round(time.Millisecond),
			"rate", fmt.Sprintf("%.0f/s", float64(applied)/max(el.Seconds(), 1e-9)))
	}
	a.offset, a.committedOffset, a.sentOffset = meta.Offset, meta.Offset, meta.Offset
	a.forwarded, a.markCommitted, a.sentMark = last.Forwarded, last.Forwarded, last.Forwarded
	return meta, a.loadPending()
}

// checkChangelogID makes sure the local store was built from the changelog
// whose identity is id (errStoreAhead if not), and records id in a new store.
func checkChangelogID(st statestore.Store, meta statestore.Meta, id []byte) error {
	have, err := st.Get([]byte(changelogIDKey))
	switch {
	case errors.Is(err, statestore.ErrNotFound):
		if meta.ChangelogSeq > 0 {
			return fmt.Errorf("%w: local store has no changelog identity", errStoreAhead)
		}
		return st.Set([]byte(changelogIDKey), id)
	case err != nil:
		return err
	case !bytes.Equal(have, id):
		return fmt.Errorf("%w: local store was built from an earlier changelog of the same name", errStoreAhead)
	}
	return nil
}

// applyRecord adds a changelog record other than a meta record to a local
// store batch: a write, a tombstone, or an outbox entry kept as pending until
// a forwarded mark covers it. Actives (restore) and hot replicas apply
// records the same way, so a replica's store is an active's store.
func applyRecord(b statestore.Batch, seq uint64, r changelog.Record) error {
	switch r.Kind {
	case changelog.KindSet:
		b.Set([]byte(storeKey(r.Store, r.Key)), r.Value)
	case changelog.KindDelete:
		b.Delete([]byte(storeKey(r.Store, r.Key)))
	case changelog.KindOutbox:
		o := r.Outbox // not &r.Outbox: r would go to the heap for every record
		v, err := encodePending(nil, &o, r.Time)
		if err != nil {
			return err
		}
		b.Set(pendingKey(seq, r.Index), v)
	}
	return nil
}

// changelogID is the identity of a changelog stream: its creation time.
func changelogID(st jetstream.Stream) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(st.CachedInfo().Created.UnixNano()))
}

// loadPending reads unforwarded outbox entries, dropping those the mark covers.
func (a *partitionActor) loadPending() error {
	a.pendingOut = a.pendingOut[:0]
	drop := a.store.NewBatch()
	defer drop.Close()
	err := a.store.Iterate([]byte(pendingKeyPrefix), func(k, v []byte) error {
		seq := pendingSeq(k)
		if seq <= a.forwarded {
			drop.Delete(k)
			return nil
		}
		out, at, err := decodePending(v)
		if err != nil {
			return fmt.Errorf("pending outbox entry %d: %w", seq, err)
		}
		a.pendingOut = append(a.pendingOut, pending{seq: seq, key: slices.Clone(k), out: out, at: at})
		return nil
	})
	if err != nil {
		return err
	}
	return drop.Commit()
}

// Stopped stops the reader and closes the store.
func (a *partitionActor) Stopped(c *actor.Context) {
	a.stopped = true
	if a.ext != nil && !a.abandoned {
		a.stopExternal()
	}
	a.extSending.Wait()
	landed := a.awaitFlights()
	// A failure that stops the incarnation shows as retrying or fenced once
	// the supervisor has decided (Start's OnFailure); until then, stopped.
	if a.writer != nil || a.ext != nil && a.started {
		a.publishStatus(StateStopped)
	} else {
		a.status.setState(StateStopped, nil)
	}
	if a.released.Load() {
		a.quiesce() // its last commit is in Status: the new owner need not wait for the store to close
	}
	for _, f := range landed { // to the local store, and forwarded
		if err := a.apply(context.Background(), f); err != nil {
			a.log.Warn("stopping: a commit that landed is left to the next restore", "err", err, "offset", f.offset)
			break
		}
	}
	if len(landed) > 0 {
		a.publishStatus(StateStopped) // with their offset
	}
	a.stopForward()
	if a.ext != nil && a.started && a.forwarded > a.markCommitted {
		// The outbox rows forwarded go now: the next owner would forward them again.
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.CommitTimeout)
		if err := a.ext.MarkForwarded(ctx, a.epoch, a.cfg.Owner, a.forwarded); err != nil {
			a.log.Warn("stopping: forwarded outbox rows are left to the next owner", "err", err)
		}
		cancel()
	}
	a.stopReader()
	a.closeTables()
	a.stopSnapshots()
	a.early.discard() // Started failed after fencing
	if a.markTimer != nil {
		a.markTimer.Stop()
	}
	if a.writer != nil {
		a.writer.Close()
	}
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			a.log.Warn("close store", "err", err)
		}
	}
}

// Receive handles one message. A commit abandoned because the actor is
// stopping is not a failure: the actor takes no more input and stops.
func (a *partitionActor) Receive(c *actor.Context, msg any) error {
	err := a.receive(c, msg)
	if errors.Is(err, errAbandoned) {
		a.abandoned = true
		a.log.Info("stopping while a commit retried: its outcome is left to the next owner's restore", "offset", a.committedOffset)
		return nil
	}
	return err
}

func (a *partitionActor) receive(c *actor.Context, msg any) error {
	if len(a.flights) > 0 && !a.abandoned {
		// Whatever the message, finish the commits answered first: their
		// notice may not have found room in the mailbox.
		if err := a.finishAnswered(c.Context()); err != nil {
			return err
		}
	}
	if a.extAnswered() && !a.abandoned {
		if err := a.finishExternal(c.Context()); err != nil {
			return err
		}
	}
	switch m := msg.(type) {
	case commitAnswered:
		return nil // finished above
	case inputBatch:
		if m.from != a || a.released.Load() || a.abandoned {
			// Read by an earlier incarnation: this one re-reads from its
			// offset. Or released, or stopping after a commit it gave up:
			// the next owner reads it from the committed offset.
			return nil
		}
		err := a.process(c.Context(), m.msgs)
		if err == nil && a.readerProgress != nil {
			a.readerProgress.batchDone()
		}
		return err
	case readerFailed:
		if m.from != a {
			return nil
		}
		return fmt.Errorf("input reader: %w", m.err)
	case stallCheck:
		if m.from != a || a.abandoned || a.released.Load() {
			return nil
		}
		return a.checkStall(c.Context(), m.p)
	case inputCheck:
		if m.from != a || a.abandoned || a.released.Load() {
			return nil
		}
		if err := a.checkInputEnd(c.Context()); err != nil {
			return err
		}
		return a.restartReader(c.Context())
	case forwardDone:
		if m.from != a || m.g != a.fwd.g || a.abandoned {
			return nil
		}
		return a.finishForward(c.Context())
	case markTick:
		if m.from != a || a.forwarded <= a.markCommitted || a.abandoned {
			return nil
		}
		return a.commit(c.Context())
	case snapshotTick:
		if m.from == a {
			a.maybeSnapshot()
			a.armSnapshotTimer() // ticks on while idle, or while an upload runs
		}
		return nil
	case snapshotDone:
		if m.from == a {
			a.snapshotFinished(m)
		}
		return nil
	case snapshotNow:
		up, err := a.snapshotRequested()
		if err != nil {
			c.RespondError(err)
			return nil
		}
		c.Respond(up)
		return nil
	case queryReq:
		var v []byte
		var err error
		if a.ext != nil {
			v, err = a.getExternal(storeKey(m.store, m.key))
		} else {
			v, err = a.store.Get([]byte(storeKey(m.store, m.key)))
		}
		if err != nil {
			c.RespondError(err)
			return nil
		}
		c.Respond(v)
		return nil
	}
	return fmt.Errorf("partition: unexpected message %T", msg)
}

// process runs the handler for each event and commits, cutting the batch early
// when the next event's records would not fit in one atomic changelog batch.
func (a *partitionActor) process(ctx context.Context, msgs []jetstream.Msg) error {
	if len(a.tables) > 0 {
		if err := a.refreshTables(ctx); err != nil {
			return err
		}
	}
	if a.ext != nil {
		if err := a.prefetchExternal(ctx, msgs); err != nil {
			return err
		}
		defer func() { a.rebuilding = false }()
	}
	for _, msg := range msgs {
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("input metadata: %w", err)
		}
		seq := md.Sequence.Stream
		if seq <= a.offset {
			continue // already committed (a redelivery after a reset)
		}
		if err := a.advanceTables(ctx, md.Timestamp); err != nil {
			return err
		}
		if a.ext != nil {
			// Replayed after a reset: its side effects took effect already.
			if a.rebuilding = seq <= a.replayThrough; a.rebuilding {
				a.m.rebuildEvents.Inc()
			}
		}
		if err := a.runEvent(ctx, msg, seq); err != nil {
			return err
		}
		a.offset = seq
		a.readLag = md.NumPending
	}
	return a.commitBatch(ctx)
}

// runEvent runs the handler with retries and merges its effects into the
// batch, or sends the event to the dead-letter stream.
func (a *partitionActor) runEvent(ctx context.Context, msg jetstream.Msg, seq uint64) error {
	ev := Event{Subject: msg.Subject(), Data: msg.Data(), Header: msg.Headers(), Offset: seq, Partition: a.cfg.Partition}
	var err error
	attempts := 0
	if len(ev.Data) > a.cfg.MaxEventSize {
		err = fmt.Errorf("event of %d bytes, limit %d: %w", len(ev.Data), a.cfg.MaxEventSize, ErrPermanent)
	} else if ev.Key, err = a.cfg.input().Key(a.cfg.Partition, ev.Subject, ev.Header); err == nil {
		for attempts < a.cfg.MaxAttempts {
			attempts++
			a.tx.reset(ev)
			if err = a.call(); err == nil {
				break
			}
			a.m.handlerFailures.Inc()
			if errors.Is(err, ErrPermanent) {
				break
			}
		}
	}
	need, size := 1, len(ev.Data) // a dead-letter entry
	if err == nil {
		need, size = a.newRecords(), a.tx.size()
	}
	if (a.records()+need > a.cfg.MaxBatchRecords || a.batchBytes+size > a.cfg.MaxBatchBytes) && (len(a.writes) > 0 || len(a.outbox) > 0) {
		// The event does not fit: commit the batch so far first. The event ran
		// against the batch's writes, which the commit makes the store's.
		if cerr := a.commitBatch(ctx); cerr != nil {
			return cerr
		}
		if err == nil {
			need = a.newRecords() // keys it shared with the batch are new records now
		}
	}
	if err == nil && (a.records()+need > a.cfg.MaxBatchRecords || size > a.cfg.MaxBatchBytes) {
		// Too many even on its own.
		err = fmt.Errorf("%d records of %d bytes (limits %d and %d a batch): %w", need, size, a.cfg.MaxBatchRecords, a.cfg.MaxBatchBytes, ErrTooManyWrites)
	}
	a.batchBytes += size
	if err != nil {
		a.toDeadLetter(ev, err, attempts)
		return nil
	}
	for _, w := range a.tx.writes {
		if i, ok := a.ws[w.key]; ok {
			a.writes[i] = w
		} else {
			a.ws[w.key] = len(a.writes)
			a.writes = append(a.writes, w)
		}
	}
	if a.rebuilding {
		// Rebuilt from the input stream: its emits and replies took
		// effect the first time.
		return nil
	}
	a.outbox = append(a.outbox, a.tx.outbox...)
	if a.tx.replied {
		if inbox := ev.Header.Get(HeaderReply); inbox != "" {
			a.replies = append(a.replies, reply{inbox: inbox, data: a.tx.reply})
		}
	}
	a.m.events.Inc() // a rebuild counts in rebuild_events_total
	return nil
}

// call runs the handler once, turning a panic into an error.
func (a *partitionActor) call() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v\n%s", r, debug.Stack())
		}
	}()
	return a.cfg.Handler(&a.tx)
}

// records is how many changelog records the batch holds, with its meta.
func (a *partitionActor) records() int {
	if a.cfg.NoChangelog {
		return len(a.outbox) + 1
	}
	return len(a.writes) + len(a.outbox) + 1
}

// newRecords is how many records the current event would add.
func (a *partitionActor) newRecords() int {
	n := len(a.tx.outbox)
	if a.cfg.NoChangelog {
		return n
	}
	for i, w := range a.tx.writes {
		if _, ok := a.ws[w.key]; ok {
			continue
		}
		if slices.ContainsFunc(a.tx.writes[:i], func(p write) bool { return p.key == w.key }) {
			continue
		}
		n++
	}
	return n
}

func (a *partitionActor) toDeadLetter(ev Event, cause error, attempts int) {
	if a.rebuilding {
		// It went to the dead-letter stream the first time.
		a.log.Debug("rebuild: event failed again", "offset", ev.Offset, "err", cause)
		return
	}
	a.m.deadLetters.Inc()
	a.log.Error("event to dead-letter stream", "offset", ev.Offset, "subject", ev.Subject, "attempts", attempts, "err", cause)
	h := map[string]string{
		"Eddy-Error":     cause.Error(),
		"Eddy-Type":      a.cfg.Type,
		"Eddy-Partition": strconv.Itoa(a.cfg.Partition),
		"Eddy-Offset":    strconv.FormatUint(ev.Offset, 10),
		"Eddy-Attempts":  strconv.Itoa(attempts),
		"Eddy-Subject":   ev.Subject,
	}
	if len(h["Eddy-Error"]) > 4096 {
		h["Eddy-Error"] = h["Eddy-Error"][:4096]
	}
	data := ev.Data
	if len(data) > a.cfg.MaxEventSize {
		// The event stays in its input stream at Eddy-Offset.
		h["Eddy-Truncated"] = strconv.Itoa(len(data))
		data = nil
	}
	if ev.Header != nil {
		for k := range ev.Header {
			if k != HeaderReply && k != "Nats-Msg-Id" {
				h["Eddy-Header-"+k] = ev.Header.Get(k)
			}
		}
	}
	// The event's own outbox entries were discarded, so index 0 is free.
	a.outbox = append(a.outbox, changelog.Outbox{
		Offset: ev.Offset, Index: 0, Subject: a.cfg.DLQSubject,
		MsgID: a.msgID(ev.Offset, "dlq"), Header: h, Data: data,
	})
}

// maybeTrim trims the changelog of stores without one (NoChangelog): it
// holds meta records and outbox entries only, and those below a committed
// forwarded mark are needed no more. (A changelog with state is trimmed
// below its snapshots: snapshot.go.)
func (a *partitionActor) maybeTrim(ctx context.Context) {
	if !a.cfg.NoChangelog || a.markCommitted <= a.trimmed || time.Since(a.lastTrim) < a.cfg.TrimEvery {
		return
	}
	if err := changelog.Trim(ctx, a.cfg.JS, a.subjects, a.markCommitted+1); err != nil {
		a.log.Warn("trim the changelog below the forwarded mark", "err", err)
		return
	}
	a.trimmed, a.lastTrim = a.markCommitted, time.Now()
}

// Retries of a commit whose outcome is unknown: from retryMinBackoff,
// doubling, to retryMaxBackoff, so that a partition commits again within a
// second of NATS coming back; each read back waits at most
// retryReadTimeout for an answer (a stream without a leader gives none);
// one log line every retryLogEvery.
const (
	retryMinBackoff  = 20 * time.Millisecond
	retryMaxBackoff  = time.Second
	retryReadTimeout = time.Second
	retryLogEvery    = 10 * time.Second
)

// errAbandoned means the actor was asked to stop while a commit retried:
// the batch's outcome is left to whoever restores the partition next.
var errAbandoned = errors.New("partition: stopping: commit abandoned")

// sleep waits *wait (then doubles it, up to retryMaxBackoff), or until the
// connection to NATS is established again; it returns false if the actor is
// asked to stop or ctx ends first.
func (a *partitionActor) sleep(ctx context.Context, wait *time.Duration) bool {
	t := time.NewTimer(*wait)
	defer t.Stop()
	*wait = min(2**wait, retryMaxBackoff)
	select {
	case <-t.C:
		return true
	case <-a.reconnected():
		return true
	case <-a.stopping:
		return false
	case <-ctx.Done():
		return false
	}
}

// reconnected returns a channel closed the next time the connection to NATS
// is established (see watchReconnects).
func (a *partitionActor) reconnected() <-chan struct{} {
	if ch := a.reconnect.Load(); ch != nil {
		return *ch
	}
	ch := make(chan struct{})
	if a.reconnect.CompareAndSwap(nil, &ch) {
		return ch
	}
	return *a.reconnect.Load()
}

// wakeRetries wakes the retries waiting in sleep.
func (a *partitionActor) wakeRetries() {
	next := make(chan struct{})
	if old := a.reconnect.Swap(&next); old != nil {
		close(*old)
	}
}

// FenceError says why a partition actor is fenced: the changelog's newest
// meta record was written by another owner, at a newer epoch or at this
// actor's own. errors.Is(err, ErrFenced) holds for it.
type FenceError struct {
	// Epoch and Owner are the fenced actor's.
	Epoch uint64
	Owner string
	// By is the newest meta record of the changelog: the epoch and owner
	// that hold the partition now.
	By changelog.Meta
	// Seq is By's changelog sequence (0 when unknown).
	Seq uint64
	// External: By is the runtime row of an external store, not a
	// changelog's meta record.
	External bool
}

func (e *FenceError) Error() string {
	where := "the changelog"
	if e.External {
		where = "the external store"
	}
	if e.By.Epoch == e.Epoch {
		return fmt.Sprintf("%v: epoch %d is held by another owner %q in %s (this owner is %q): the assignor must give a new epoch",
			ErrFenced, e.Epoch, e.By.Owner, where, e.Owner)
	}
	return fmt.Sprintf("%v: epoch %d, %s has epoch %d of owner %q", ErrFenced, e.Epoch, where, e.By.Epoch, e.By.Owner)
}

// Unwrap makes errors.Is(err, ErrFenced) hold.
func (e *FenceError) Unwrap() error { return ErrFenced }

// fenced decides, after a wrong-last-sequence (or after reading back an
// unknown commit and finding another batch there), who wrote after the
// sequence this actor knew. Another owner at a newer epoch, or at this
// actor's epoch, fences it for good (*FenceError). This owner's own earlier
// incarnation, or an older owner whose last batch landed just before this
// actor's epoch record, does not: errChangelogMoved, and the actor restores
// the tail and goes on. A changelog it cannot read leaves it to a retry.
func (a *partitionActor) fenced(ctx context.Context, cause error) error {
	m, ok, err := changelog.ReadLastMeta(ctx, a.conn(), a.subjects)
	if err != nil {
		return fmt.Errorf("%w (and reading the newest meta record: %v)", cause, err)
	}
	if ok && (m.Epoch > a.epoch || m.Epoch == a.epoch && m.Owner != a.cfg.Owner) {
		a.m.fenced.Inc()
		fe := &FenceError{Epoch: a.epoch, Owner: a.cfg.Owner, By: m.Meta, Seq: m.Seq}
		a.log.Warn("fenced by another owner; stopping", "epoch", a.epoch, "owner", a.cfg.Owner,
			"newer_epoch", m.Epoch, "newer_owner", m.Owner, "at", m.Seq)
		return fe
	}
	return fmt.Errorf("%w after sequence %d: the newest meta record (sequence %d) is epoch %d of owner %q, batch %x (this actor: epoch %d, owner %q): %w",
		errChangelogMoved, a.writer.Last(), m.Seq, m.Epoch, m.Owner, m.Batch, a.epoch, a.cfg.Owner, cause)
}
