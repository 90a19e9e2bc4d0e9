// Package partition runs partition actors: the single active processor of one
// partition of an input stream, with its local state store and its changelog.
//
// A partition actor restores its store (local store + changelog tail, or the
// whole changelog), writes its epoch record to fence older owners, then reads
// its input partition from the committed offset. For each batch of events it
// runs the handler per event against a write set, then commits: one fenced
// atomic changelog batch holding the writes, the outbox and {offset, epoch};
// then the same to the local store; then it forwards the outbox with message-id
// deduplication. A crash anywhere reprocesses exactly the events whose effects
// were not committed, so every event's effects land once.
//
// The actor does not know how it was assigned: it is started with a type, a
// partition and an epoch.
package partition

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
)

// Actor is a running partition actor.
type Actor struct {
	cfg      Config
	ref      *actor.Ref
	status   statusBoard
	released atomic.Bool
	// quiet is closed once a released actor has committed for the last time.
	quiet     chan struct{}
	quietOnce sync.Once
}

// Start spawns the partition actor in sys. It restores and starts reading in
// its own goroutine; failures restart it with backoff, and ErrFenced or
// ErrStateVersion stops it for good.
func Start(sys *actor.System, cfg Config, sup actor.SupervisorConfig) (*Actor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("type", cfg.Type, "partition", cfg.Partition)
	m := cfg.Metrics.forPartition(cfg.Type, cfg.Partition)
	stores := map[string]bool{}
	for _, s := range cfg.Stores {
		stores[s] = true
	}
	subjects := changelog.NewSubjects(cfg.Type, cfg.Partition)
	if cfg.Owner == "" {
		cfg.Owner = nuid.Next()
	}
	sup.Decide = func(err error) actor.Directive {
		if stopsForGood(err) { // fenced, or state of a newer version
			return actor.Stop
		}
		return actor.Restart
	}
	adopt := cfg.Handoff
	cfg.Handoff = nil
	a := &Actor{cfg: cfg, quiet: make(chan struct{})}
	a.status.m = m
	a.status.init(Status{Type: cfg.Type, Partition: cfg.Partition, State: StateStarting, Since: time.Now(),
		Epoch: cfg.Epoch, Owner: cfg.Owner})
	ref, err := sys.Spawn(actor.Props{
		Name:        fmt.Sprintf("%s/%d", cfg.Type, cfg.Partition),
		MailboxSize: 4,
		Supervisor:  sup,
		Logger:      log,
		OnRestart:   func(error) { m.restarts.Inc() },
		OnFailure: func(err error, d actor.Directive) {
			switch {
			case errors.Is(err, ErrFenced):
				a.status.setState(StateFenced, err)
			case d == actor.Restart:
				a.status.setState(StateRetrying, err)
			default:
				a.status.setState(StateStopped, err)
			}
		},
		New: func() actor.Receiver {
			c := cfg
			c.Handoff, adopt = adopt, nil // only the first incarnation: a restart reopens the directory
			return &partitionActor{cfg: &c, status: &a.status, released: &a.released, quiesce: a.quiesce,
				log: log, m: m, subjects: subjects, stores: stores}
		},
	})
	if err != nil {
		return nil, err
	}
	a.ref = ref
	return a, nil
}

// ErrUnavailable means a partition actor does not answer queries now: it is
// starting, retrying after a failure, fenced or stopped. The error says
// which, and why.
var ErrUnavailable = errors.New("eddy: partition not running")

// Get returns the committed value of key in store (statestore.ErrNotFound if
// absent). A partition actor that is starting answers once it runs (or
// fails, or ctx ends); one that is retrying, fenced or stopped answers at
// once with ErrUnavailable and the reason.
func (a *Actor) Get(ctx context.Context, store string, key []byte) ([]byte, error) {
	for {
		changed := a.status.next()
		s := a.Status()
		if s.Running {
			break
		}
		if s.State != StateStarting {
			return nil, s.unavailable()
		}
		select {
		case <-changed:
		case <-a.ref.Done():
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%v)", s.unavailable(), ctx.Err())
		}
	}
	v, err := a.ref.Ask(ctx, queryReq{store: store, key: key})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// Snapshot takes a snapshot of the partition's store now (or waits for the
// upload in progress), whether or not periodic snapshots are configured,
// and returns it once uploaded. A store with nothing new since the last
// snapshot returns that one. It fails with ErrUnavailable when the actor
// does not run.
func (a *Actor) Snapshot(ctx context.Context) (SnapshotStatus, error) {
	v, err := a.ref.Ask(ctx, snapshotNow{})
	if err != nil {
		return SnapshotStatus{}, err
	}
	up := v.(*uploadDone)
	if up == nil {
		if s := a.Status().Snapshot; s != nil {
			return *s, nil
		}
		return SnapshotStatus{}, fmt.Errorf("%w: no snapshot", ErrUnavailable)
	}
	select {
	case <-up.done:
		return up.res.st, up.res.err
	case <-ctx.Done():
		return SnapshotStatus{}, ctx.Err()
	}
}

// Status returns the actor's progress as of its last commit. It does not wait
// for the actor: a partition still restoring reports Running false.
func (a *Actor) Status() Status {
	s := *a.status.p.Load()
	s.Restarts = a.ref.Restarts()
	select {
	case <-a.ref.Done():
		s.Running = false
		if s.State == StateRunning || s.State == StateStarting || s.State == StateRetrying {
			s.State = StateStopped
		}
	default:
	}
	return s
}

// unavailable is the ErrUnavailable of a partition that is not running.
func (s Status) unavailable() error {
	if s.Err != "" {
		return fmt.Errorf("%w: %s/%d is %s since %s: %s", ErrUnavailable, s.Type, s.Partition, s.State,
			s.Since.Format(time.RFC3339), s.Err)
	}
	return fmt.Errorf("%w: %s/%d is %s", ErrUnavailable, s.Type, s.Partition, s.State)
}

// Stop finishes the batch in hand and stops the actor.
func (a *Actor) Stop(ctx context.Context) error { return a.ref.Stop(ctx) }

// Release stops the actor for a new owner with the least delay: the batch
// being processed is committed, input read but not processed yet is dropped
// (the new owner reads it again from the committed offset), and the store is
// closed. Stop, in contrast, processes and commits all input already read.
// Release returns as soon as the actor has committed for the last time,
// without waiting for its store to close; Done tells when it has stopped,
// and Status then has the last changelog sequence it committed.
func (a *Actor) Release(ctx context.Context) error {
	a.released.Store(true)
	a.ref.StopNoWait()
	select {
	case <-a.quiet:
		return nil
	case <-a.ref.Done():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Actor) quiesce() { a.quietOnce.Do(func() { close(a.quiet) }) }

// Done is closed when the actor has stopped (Stop, or fenced).
func (a *Actor) Done() <-chan struct{} { return a.ref.Done() }

// Err is why the actor stopped, after Done: nil for Stop, ErrFenced when fenced.
func (a *Actor) Err() error { return a.ref.Err() }

// Restarts is how often the actor was restarted after a failure.
func (a *Actor) Restarts() int { return a.ref.Restarts() }
