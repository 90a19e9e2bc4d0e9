package actor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Receiver processes the messages of one actor incarnation, one at a time: calls to
// Started, Receive and Stopped of one incarnation never overlap, and each sees the
// effects of the previous ones. A Receiver needs no locks for state only it touches.
//
// Returning an error from Receive is a failure: the incarnation ends and the
// supervisor decides what happens next (see SupervisorConfig). An Ask that delivered
// msg gets the error. To answer an Ask with an error without failing, use
// Context.RespondError.
type Receiver interface {
	Receive(c *Context, msg any) error
}

// Starter is implemented by a Receiver that needs to set up before its first message.
// Started runs on the actor's goroutine before the first message of each incarnation.
// An error (or panic) is a failure: the incarnation processes no message, Stopped
// runs, and the supervisor decides.
type Starter interface {
	Started(c *Context) error
}

// Stopper is implemented by a Receiver that needs to clean up. Stopped runs on the
// actor's goroutine once per incarnation, after its last message, whether it ends by
// Stop, by failure or for a restart, and also when Started failed (so it must cope
// with a partial setup). The incarnation's Context is already cancelled when Stopped
// runs. A panic in Stopped is logged and otherwise ignored.
type Stopper interface {
	Stopped(c *Context)
}

// DefaultMailboxSize is the mailbox bound used when Props.MailboxSize is 0: enough to
// absorb a burst of a fetch batch without blocking producers, small enough that a
// stalled actor pushes back within milliseconds instead of buffering unboundedly.
const DefaultMailboxSize = 1024

// Props describes an actor to spawn.
type Props struct {
	// Name identifies the actor in logs and errors. Required. Names need not be unique.
	Name string

	// New makes the Receiver of an incarnation. It is called on the actor's goroutine
	// for the first incarnation and again for each restart, so every incarnation starts
	// from fresh state. Required. A panic or a nil result is a failure.
	New func() Receiver

	// MailboxSize bounds how many messages wait to be processed. Send blocks and
	// TrySend fails while it is reached. 0 means DefaultMailboxSize.
	MailboxSize int

	// Supervisor says how failures are handled. Zero fields take their defaults (see
	// SupervisorConfig).
	Supervisor SupervisorConfig

	// Logger receives the actor's logs, tagged with actor=Name. nil means the
	// System's logger, or slog.Default() for Spawn.
	Logger *slog.Logger

	// OnRestart, if set, is called on the actor's goroutine at each restart, after
	// the backoff and before the new incarnation, with the failure that caused it
	// (for example to count restarts in a metric). It must not block.
	OnRestart func(err error)

	// OnFailure, if set, is called on the actor's goroutine as soon as an
	// incarnation has failed, before the supervisor's backoff, with the failure
	// and what the supervisor decided (for example to show the failure in a
	// status while the actor waits to restart). It must not block.
	OnFailure func(err error, d Directive)
}

// Validate reports missing or out-of-range fields.
func (p Props) Validate() error {
	var errs []error
	if p.Name == "" {
		errs = append(errs, errors.New("Name is empty"))
	}
	if p.New == nil {
		errs = append(errs, errors.New("New is nil"))
	}
	if p.MailboxSize < 0 {
		errs = append(errs, fmt.Errorf("MailboxSize %d is negative", p.MailboxSize))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("actor: invalid Props %q: %w", p.Name, err)
	}
	return p.Supervisor.Validate()
}

// errNilReceiver is the failure recorded when Props.New returns nil.
var errNilReceiver = errors.New("actor: Props.New returned a nil Receiver")

// Ref is the handle to a spawned actor. It stays valid across restarts and after the
// actor terminates, and all of its methods may be called from any goroutine.
type Ref struct {
	name   string
	props  Props
	sup    SupervisorConfig
	logger *slog.Logger
	mbox   *mailbox

	stopOnce sync.Once
	stopping chan struct{} // closed by the first Stop

	done     chan struct{} // closed when the goroutine ends
	err      error         // written before done is closed
	restarts atomic.Int64
	failures failureLog // the current series of failures, for readable logs

	onExit func(*Ref) // called on the actor's goroutine just before done is closed
}

// Spawn validates p and starts the actor's goroutine. The first incarnation is made
// on that goroutine, so Spawn returns without waiting for New or Started; messages
// sent meanwhile are queued.
func Spawn(p Props) (*Ref, error) {
	r, err := newRef(p, slog.Default())
	if err != nil {
		return nil, err
	}
	go r.run()
	return r, nil
}

// newRef validates p and builds an unstarted Ref; logger is used if p.Logger is nil.
func newRef(p Props, logger *slog.Logger) (*Ref, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.MailboxSize == 0 {
		p.MailboxSize = DefaultMailboxSize
	}
	if p.Logger != nil {
		logger = p.Logger
	}
	return &Ref{
		name:     p.Name,
		props:    p,
		sup:      p.Supervisor.withDefaults(),
		logger:   logger.With("actor", p.Name),
		mbox:     newMailbox(p.MailboxSize),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}, nil
}

// Name returns Props.Name.
func (r *Ref) Name() string { return r.name }

// Send queues msg. While the mailbox is full it blocks (backpressure) until there is
// room or ctx is done, in which case it returns ctx.Err() and msg is not queued. It
// returns ErrStopped once the actor is stopping or terminated. A nil error means msg
// will be received, unless the actor terminates first without draining (its
// supervisor gave up, or Stop interrupted a restart backoff). Messages sent by one
// goroutine are received in the order sent.
func (r *Ref) Send(ctx context.Context, msg any) error {
	return r.mbox.push(ctx, envelope{msg: msg}, true)
}

// TrySend is Send without waiting: it returns ErrMailboxFull if the mailbox is full.
func (r *Ref) TrySend(msg any) error {
	return r.mbox.push(context.Background(), envelope{msg: msg}, false)
}

// Ask sends msg like Send and waits for its answer: the value given to Respond (nil
// if Receive returned nil without responding), the error given to RespondError or
// returned by Receive for msg, or ctx.Err() if ctx is done first. If the actor
// terminates before receiving msg, Ask returns the error that ended it (ErrStopped
// after Stop). Ask never waits past the actor's termination.
//
// Asking an actor from its own Receive deadlocks until ctx is done.
func (r *Ref) Ask(ctx context.Context, msg any) (any, error) {
	reply := make(chan result, 1)
	if err := r.mbox.push(ctx, envelope{msg: msg, reply: reply}, true); err != nil {
		return nil, err
	}
	select {
	case res := <-reply:
		return res.value, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.done:
		// Queued messages are answered before done is closed.
		select {
		case res := <-reply:
			return res.value, res.err
		default:
			return nil, r.terminalErr()
		}
	}
}

// Stop makes the actor stop accepting messages, process the ones already queued,
// run Stopped and terminate; it waits for that until ctx is done. If the actor is
// waiting out a restart backoff, it terminates at once without another restart; if a
// message fails while draining, it terminates after that incarnation's Stopped. In
// both cases the messages still queued fail with ErrStopped. Stop returns nil once the actor has
// terminated, for whatever reason, and ctx.Err() if ctx ended first, in which case
// the actor still terminates in the background. Stop is idempotent.
//
// Calling Stop from the actor's own Receive waits until ctx is done; use
// Context.Stop there.
func (r *Ref) Stop(ctx context.Context) error {
	r.stop()
	select {
	case <-r.done:
		return nil
	default:
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// StopNoWait starts stopping the actor, as Stop does, and returns at once;
// Done is closed when it has terminated.
func (r *Ref) StopNoWait() { r.stop() }

// stop starts stopping the actor without waiting.
func (r *Ref) stop() {
	r.stopOnce.Do(func() {
		close(r.stopping)
		r.mbox.close()
	})
}

// Done returns a channel closed when the actor has terminated: after Stop, or when
// its supervisor gave up or Decide said Stop. The actor's goroutine has ended by
// then, and every message it accepted has been processed or answered with an error.
func (r *Ref) Done() <-chan struct{} { return r.done }

// Err returns nil before Done is closed and after a termination caused by Stop.
// Otherwise it returns the failure that ended the actor, wrapped with the actor's
// name and the reason (errors.Is and errors.As see the original).
func (r *Ref) Err() error {
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// Restarts returns how many times the actor has been restarted.
func (r *Ref) Restarts() int { return int(r.restarts.Load()) }

// Len returns how many messages are queued and not yet received.
func (r *Ref) Len() int { return r.mbox.len() }

// terminalErr is what a message that was never received fails with; done is closed.
func (r *Ref) terminalErr() error {
	if r.err != nil {
		return r.err
	}
	return ErrStopped
}

func (r *Ref) stopRequested() bool {
	select {
	case <-r.stopping:
		return true
	default:
		return false
	}
}

// run is the actor's goroutine: it runs incarnations and supervises them until Stop
// or until the supervisor gives up.
func (r *Ref) run() {
	var endErr error
	defer func() { r.finish(endErr) }()

	consecutive := 0 // restarts in the current series of failures
	for {
		began := time.Now()
		err := r.incarnation()
		if err == nil {
			return // stopped and drained
		}
		if r.stopRequested() {
			r.logger.Error("actor failed while stopping; not restarting", "err", err)
			return
		}
		if time.Since(began) >= r.sup.ResetAfter {
			consecutive = 0
		}
		directive := Stop
		if perr := protect(func() error { directive = r.sup.decide(err); return nil }); perr != nil {
			r.logger.Error("actor supervisor Decide panicked; stopping the actor", "err", err, "panic", perr)
			directive = Stop
		}
		if f := r.props.OnFailure; f != nil {
			if perr := protect(func() error { f(err, directive); return nil }); perr != nil {
				r.logger.Error("actor OnFailure panicked", "err", perr)
			}
		}
		if directive == Stop {
			endErr = fmt.Errorf("actor %q: supervisor stopped it: %w", r.name, err)
			r.logger.Error("actor failed; supervisor stops it", "err", err, "restarts", r.Restarts())
			return
		}
		if limit := r.sup.MaxRestarts; limit > 0 && consecutive >= limit {
			endErr = fmt.Errorf("actor %q: gave up after %d consecutive restarts: %w", r.name, consecutive, err)
			r.logger.Error("actor failed; restart limit reached, giving up", "err", err, "restarts", r.Restarts(), "max_restarts", limit)
			return
		}
		delay := r.sup.backoff(consecutive)
		if consecutive == 0 {
			r.failures.begin()
		}
		consecutive++
		r.failures.failed(r.logger, err, r.Restarts()+1, delay)
		if !r.wait(delay) {
			r.logger.Info("actor stopped during restart backoff")
			return
		}
		r.restarts.Add(1)
		if f := r.props.OnRestart; f != nil {
			if perr := protect(func() error { f(err); return nil }); perr != nil {
				r.logger.Error("actor OnRestart panicked", "err", perr)
			}
		}
	}
}

// wait sleeps for d; it returns false if Stop interrupted it.
func (r *Ref) wait(d time.Duration) bool {
	if r.stopRequested() {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return !r.stopRequested()
	case <-r.stopping:
		return false
	}
}

// finish terminates the actor: it answers every message still queued with the error
// that ended the actor (ErrStopped after Stop), publishes endErr and closes done.
func (r *Ref) finish(endErr error) {
	r.err = endErr
	fail := r.terminalErr()
	for _, e := range r.mbox.drainClosed() {
		e.answer(result{err: fail})
	}
	if r.onExit != nil {
		r.onExit(r)
	}
	close(r.done)
}

// incarnation runs one Receiver from New to Stopped. It returns nil when the
// mailbox was closed by Stop and fully processed, and the failure otherwise.
func (r *Ref) incarnation() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &Context{ref: r, ctx: ctx, restarts: r.Restarts()}

	var recv Receiver
	if err := protect(func() error {
		recv = r.props.New()
		if recv == nil {
			return errNilReceiver
		}
		return nil
	}); err != nil {
		return err
	}
	defer func() {
		cancel()
		if s, ok := recv.(Stopper); ok {
			if perr := protect(func() error { s.Stopped(c); return nil }); perr != nil {
				r.logger.Error("actor Stopped panicked", "err", perr)
			}
		}
	}()

	if s, ok := recv.(Starter); ok {
		if err := protect(func() error { return s.Started(c) }); err != nil {
			return err
		}
	}
	for {
		e, ok, closed := r.mbox.pop()
		if !ok {
			if closed {
				return nil
			}
			<-r.mbox.ready
			continue
		}
		if err := r.deliver(c, recv, e); err != nil {
			return err
		}
	}
}

// deliver hands one message to Receive and answers its Ask, if any.
func (r *Ref) deliver(c *Context, recv Receiver, e envelope) error {
	c.begin(e.reply != nil)
	err := protect(func() error { return recv.Receive(c, e.msg) })
	res := c.reply()
	if err != nil {
		res = result{err: err}
	}
	e.answer(res)
	return err
}

// protect calls fn and turns a panic into a *PanicError.
func protect(fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return fn()
}
