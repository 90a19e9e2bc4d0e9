package actor_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/internal/testkit"
)

func TestPanicRestartsWithFreshReceiver(t *testing.T) {
	ctx := testContext(t)
	const backoff = 20 * time.Millisecond
	var incarnations atomic.Int32
	restarted := make(chan error, 4)
	failedAt := make(chan time.Time, 4)
	startedAt := make(chan time.Time, 4)
	ownedGoroutineEnded := make(chan struct{}, 4)

	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			incarnations.Add(1)
			c := &counter{}
			return &probe{
				started: func(ac *actor.Context) error {
					startedAt <- time.Now()
					// A goroutine owned by the incarnation ends with its Context.
					go func() {
						<-ac.Context().Done()
						ownedGoroutineEnded <- struct{}{}
					}()
					return nil
				},
				receive: func(ac *actor.Context, msg any) error {
					if msg == "restarts" {
						ac.Respond(ac.Restarts())
						return nil
					}
					return c.Receive(ac, msg)
				},
				stopped: func(ac *actor.Context) {
					if ac.Context().Err() == nil {
						t.Error("Stopped ran with the incarnation's Context not cancelled")
					}
					failedAt <- time.Now()
				},
			}
		},
		Supervisor: actor.SupervisorConfig{MinBackoff: backoff, MaxBackoff: time.Second, ResetAfter: time.Hour},
		OnRestart:  func(err error) { restarted <- err },
	})
	recv(t, startedAt, "the first incarnation to start")

	for range 3 {
		if err := ref.Send(ctx, "inc"); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := ref.Ask(ctx, "get"); err != nil || v != 3 {
		t.Fatalf("count = %v, %v; want 3", v, err)
	}

	// The panicking message fails its Ask; the messages queued behind it wait for the
	// next incarnation.
	_, err := ref.Ask(ctx, "panic")
	var pe *actor.PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("Ask(panic) error = %v; want a *PanicError", err)
	}
	if pe.Value != "counter told to panic" || !strings.Contains(err.Error(), "counter told to panic") {
		t.Fatalf("panic error lost the panic value: %v", err)
	}
	if !strings.Contains(err.Error(), "goroutine") || !strings.Contains(string(pe.Stack), "(*counter).Receive") {
		t.Fatalf("panic error has no useful stack trace:\n%s", err)
	}
	if err := ref.Send(ctx, "inc"); err != nil {
		t.Fatal(err)
	}

	failed := recv(t, failedAt, "Stopped of the failed incarnation")
	recv(t, ownedGoroutineEnded, "the failed incarnation's goroutine to end")
	if cause := recv(t, restarted, "OnRestart"); !errors.As(cause, &pe) {
		t.Fatalf("OnRestart got %v; want the panic", cause)
	}
	if wait := recv(t, startedAt, "the second incarnation to start").Sub(failed); wait < backoff {
		t.Fatalf("restarted after %v; want at least the %v backoff", wait, backoff)
	}

	if v, err := ref.Ask(ctx, "get"); err != nil || v != 1 {
		t.Fatalf("count after restart = %v, %v; want 1 (fresh state plus the queued inc)", v, err)
	}
	if v, err := ref.Ask(ctx, "restarts"); err != nil || v != 1 {
		t.Fatalf("Context.Restarts = %v, %v; want 1", v, err)
	}
	if ref.Restarts() != 1 || incarnations.Load() != 2 {
		t.Fatalf("Restarts = %d, incarnations = %d; want 1 and 2", ref.Restarts(), incarnations.Load())
	}
	select {
	case <-ref.Done():
		t.Fatal("actor terminated after a restartable failure")
	default:
	}
}

func TestDecideStopEndsActor(t *testing.T) {
	ctx := testContext(t)
	errFatal := errors.New("corrupt state")
	errTransient := errors.New("connection reset")
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	stopped := make(chan struct{}, 4)
	var decided []error

	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			c := &counter{entered: entered, gate: gate}
			return &probe{receive: c.Receive, stopped: func(*actor.Context) { stopped <- struct{}{} }}
		},
		Supervisor: actor.SupervisorConfig{
			MinBackoff: time.Millisecond,
			Decide: func(err error) actor.Directive {
				decided = append(decided, err) // runs on the actor's goroutine only
				if errors.Is(err, errFatal) {
					return actor.Stop
				}
				return actor.Restart
			},
		},
	})

	if _, err := ref.Ask(ctx, errTransient); !errors.Is(err, errTransient) {
		t.Fatalf("Ask(transient) = %v", err)
	}
	recv(t, stopped, "Stopped after the transient failure")

	// Queue messages behind the fatal one: they must fail with the terminal error.
	if err := ref.Send(ctx, "block"); err != nil {
		t.Fatal(err)
	}
	recv(t, entered, "the actor to block")
	fatal := make(chan error, 1)
	go func() {
		_, err := ref.Ask(ctx, errFatal)
		fatal <- err
	}()
	queued := make(chan error, 1)
	testkit.WaitFor(t, timeout, "the fatal message to be queued", func() bool { return ref.Len() == 1 })
	go func() {
		_, err := ref.Ask(ctx, "get")
		queued <- err
	}()
	testkit.WaitFor(t, timeout, "a message to be queued behind the fatal one", func() bool { return ref.Len() == 2 })
	close(gate)

	if err := recv(t, fatal, "the fatal Ask"); !errors.Is(err, errFatal) {
		t.Fatalf("Ask(fatal) = %v; want %v", err, errFatal)
	}
	waitDone(t, ref)
	recv(t, stopped, "Stopped after the fatal failure")
	if err := ref.Err(); !errors.Is(err, errFatal) {
		t.Fatalf("Err = %v; want %v", err, errFatal)
	}
	if err := recv(t, queued, "the queued Ask"); !errors.Is(err, errFatal) {
		t.Fatalf("queued Ask = %v; want the terminal error %v", err, errFatal)
	}
	if err := ref.Send(ctx, "inc"); !errors.Is(err, actor.ErrStopped) {
		t.Fatalf("Send after termination = %v; want ErrStopped", err)
	}
	if _, err := ref.Ask(ctx, "get"); !errors.Is(err, actor.ErrStopped) {
		t.Fatalf("Ask after termination = %v; want ErrStopped", err)
	}
	if ref.Restarts() != 1 || len(decided) != 2 {
		t.Fatalf("Restarts = %d, Decide calls = %d; want 1 and 2", ref.Restarts(), len(decided))
	}
	if err := ref.Stop(ctx); err != nil {
		t.Fatalf("Stop after termination = %v; want nil", err)
	}
}

func TestMaxRestartsGivesUp(t *testing.T) {
	ctx := testContext(t)
	errBoom := errors.New("boom")
	var incarnations atomic.Int32
	restarts := make(chan error, 8)
	sup := fastSupervisor()
	sup.MaxRestarts = 2

	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			incarnations.Add(1)
			return &counter{}
		},
		Supervisor: sup,
		OnRestart:  func(err error) { restarts <- err },
	})
	for i := range 3 {
		if _, err := ref.Ask(ctx, errBoom); !errors.Is(err, errBoom) {
			t.Fatalf("failure %d: Ask = %v", i+1, err)
		}
		if i < 2 {
			recv(t, restarts, "a restart")
		}
	}
	waitDone(t, ref)
	if err := ref.Err(); !errors.Is(err, errBoom) {
		t.Fatalf("Err = %v; want %v", err, errBoom)
	}
	if ref.Restarts() != 2 || incarnations.Load() != 3 || len(restarts) != 0 {
		t.Fatalf("Restarts = %d, incarnations = %d, extra OnRestart calls = %d; want 2, 3, 0",
			ref.Restarts(), incarnations.Load(), len(restarts))
	}
}

func TestResetAfterForgivesOldFailures(t *testing.T) {
	ctx := testContext(t)
	errBoom := errors.New("boom")
	restarted := make(chan error, 8)
	// Every incarnation outlives ResetAfter, so each failure is the first of a series
	// and MaxRestarts is never reached.
	ref := spawn(t, actor.Props{
		New: func() actor.Receiver { return &counter{} },
		Supervisor: actor.SupervisorConfig{
			MinBackoff: time.Millisecond, ResetAfter: time.Nanosecond, MaxRestarts: 1,
		},
		OnRestart: func(err error) { restarted <- err },
	})
	for range 4 {
		if _, err := ref.Ask(ctx, errBoom); !errors.Is(err, errBoom) {
			t.Fatalf("Ask = %v", err)
		}
		recv(t, restarted, "a restart")
	}
	if ref.Restarts() != 4 {
		t.Fatalf("Restarts = %d; want 4", ref.Restarts())
	}
	select {
	case <-ref.Done():
		t.Fatalf("actor gave up: %v", ref.Err())
	default:
	}
}

func TestStartedFailureIsRestarted(t *testing.T) {
	ctx := testContext(t)
	errStart := errors.New("cannot open store")
	var incarnations atomic.Int32
	received := make(chan int32, 8)
	stopped := make(chan int32, 8)

	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			n := incarnations.Add(1)
			return &probe{
				started: func(*actor.Context) error {
					if n == 1 {
						return errStart
					}
					return nil
				},
				receive: func(c *actor.Context, msg any) error {
					received <- n
					c.Respond(n)
					return nil
				},
				stopped: func(*actor.Context) { stopped <- n },
			}
		},
		Supervisor: fastSupervisor(),
	})
	// Whatever the timing, the message is received by the second incarnation only.
	v, err := ref.Ask(ctx, "hello")
	if err != nil || v != int32(2) {
		t.Fatalf("Ask = %v, %v; want it answered by incarnation 2", v, err)
	}
	if n := recv(t, stopped, "Stopped of the failed incarnation"); n != 1 {
		t.Fatalf("Stopped ran for incarnation %d; want 1", n)
	}
	if len(received) != 1 || ref.Restarts() != 1 {
		t.Fatalf("messages received = %d, Restarts = %d; want 1 and 1", len(received), ref.Restarts())
	}
}

func TestStartedAlwaysFailingGivesUp(t *testing.T) {
	ctx := testContext(t)
	errStart := errors.New("cannot open store")
	sup := fastSupervisor()
	sup.MaxRestarts = 3
	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			return &probe{
				started: func(*actor.Context) error { return errStart },
				receive: func(*actor.Context, any) error {
					t.Error("a message was received although Started failed")
					return nil
				},
			}
		},
		Supervisor: sup,
	})
	// The Ask is queued and answered with the terminal error, never hangs.
	if _, err := ref.Ask(ctx, "hello"); !errors.Is(err, errStart) {
		t.Fatalf("Ask = %v; want %v", err, errStart)
	}
	waitDone(t, ref)
	if !errors.Is(ref.Err(), errStart) || ref.Restarts() != 3 {
		t.Fatalf("Err = %v, Restarts = %d; want %v and 3", ref.Err(), ref.Restarts(), errStart)
	}
}

func TestNewPanicIsAFailure(t *testing.T) {
	ctx := testContext(t)
	var calls atomic.Int32
	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			switch calls.Add(1) {
			case 1:
				panic("bad config")
			case 2:
				return nil
			}
			return &counter{}
		},
		Supervisor: fastSupervisor(),
	})
	if v, err := ref.Ask(ctx, "get"); err != nil || v != 0 {
		t.Fatalf("Ask = %v, %v; want 0, nil from the third incarnation", v, err)
	}
	if ref.Restarts() != 2 {
		t.Fatalf("Restarts = %d; want 2", ref.Restarts())
	}
}

func TestStopDuringBackoff(t *testing.T) {
	ctx := testContext(t)
	var incarnations atomic.Int32
	stopped := make(chan struct{}, 4)
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			incarnations.Add(1)
			c := &counter{entered: entered, gate: gate}
			return &probe{receive: c.Receive, stopped: func(*actor.Context) { stopped <- struct{}{} }}
		},
		// A backoff far longer than the test: only Stop can end it.
		Supervisor: actor.SupervisorConfig{MinBackoff: time.Hour},
		OnRestart:  func(error) { t.Error("restarted although Stop came during the backoff") },
	})

	// Fail with one more message queued, which no incarnation will receive.
	if err := ref.Send(ctx, "block"); err != nil {
		t.Fatal(err)
	}
	recv(t, entered, "the actor to block")
	if err := ref.Send(ctx, errors.New("boom")); err != nil {
		t.Fatal(err)
	}
	queued := make(chan error, 1)
	go func() {
		_, err := ref.Ask(ctx, "get")
		queued <- err
	}()
	testkit.WaitFor(t, timeout, "the Ask to be queued", func() bool { return ref.Len() == 2 })
	close(gate)
	recv(t, stopped, "Stopped of the failed incarnation")

	stopCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := ref.Stop(stopCtx); err != nil {
		t.Fatalf("Stop during backoff = %v", err)
	}
	if err := recv(t, queued, "the queued Ask"); !errors.Is(err, actor.ErrStopped) {
		t.Fatalf("queued Ask = %v; want ErrStopped", err)
	}
	if ref.Err() != nil || ref.Restarts() != 0 || incarnations.Load() != 1 {
		t.Fatalf("Err = %v, Restarts = %d, incarnations = %d; want nil, 0, 1",
			ref.Err(), ref.Restarts(), incarnations.Load())
	}
}

func TestSupervisorConfigValidate(t *testing.T) {
	if err := actor.DefaultSupervisorConfig().Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	if err := (actor.SupervisorConfig{}).Validate(); err != nil {
		t.Fatalf("zero config (all defaults) invalid: %v", err)
	}
	for name, c := range map[string]actor.SupervisorConfig{
		"negative MinBackoff":  {MinBackoff: -time.Second},
		"negative MaxBackoff":  {MaxBackoff: -time.Second},
		"Min above Max":        {MinBackoff: time.Minute, MaxBackoff: time.Second},
		"negative ResetAfter":  {ResetAfter: -time.Second},
		"negative MaxRestarts": {MaxRestarts: -1},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate = nil; want an error", name)
		}
	}
}

// OnFailure sees each failure with the supervisor's decision before the
// backoff, and a Receive blocked on something outside the actor gives up
// when Stopping is closed, so that Stop does not wait for it.
func TestOnFailureAndStopping(t *testing.T) {
	ctx := testContext(t)
	type failure struct {
		err error
		d   actor.Directive
	}
	failures := make(chan failure, 4)
	blocked := make(chan struct{})
	ref := spawn(t, actor.Props{
		New: func() actor.Receiver {
			return &probe{receive: func(ac *actor.Context, msg any) error {
				switch msg {
				case "fail":
					return errors.New("transient")
				case "fatal":
					return errFatal
				case "block":
					close(blocked)
					<-ac.Stopping() // a retry loop that ends when the actor stops
				}
				return nil
			}}
		},
		Supervisor: actor.SupervisorConfig{MinBackoff: time.Millisecond, Decide: func(err error) actor.Directive {
			if errors.Is(err, errFatal) {
				return actor.Stop
			}
			return actor.Restart
		}},
		OnFailure: func(err error, d actor.Directive) { failures <- failure{err, d} },
	})
	if err := ref.Send(ctx, "fail"); err != nil {
		t.Fatal(err)
	}
	if f := recv(t, failures, "the first failure"); f.d != actor.Restart || f.err.Error() != "transient" {
		t.Fatalf("OnFailure(%v, %v), want the transient error and Restart", f.err, f.d)
	}
	if err := ref.Send(ctx, "block"); err != nil {
		t.Fatal(err)
	}
	recv(t, blocked, "the receive to block")
	if err := ref.Stop(ctx); err != nil {
		t.Fatalf("Stop waited for a receive blocked on Stopping: %v", err)
	}

	fatal := spawn(t, actor.Props{
		New:        func() actor.Receiver { return &probe{receive: func(*actor.Context, any) error { return errFatal }} },
		Supervisor: actor.SupervisorConfig{Decide: func(error) actor.Directive { return actor.Stop }},
		OnFailure:  func(err error, d actor.Directive) { failures <- failure{err, d} },
	})
	if err := fatal.Send(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if f := recv(t, failures, "the fatal failure"); f.d != actor.Stop || !errors.Is(f.err, errFatal) {
		t.Fatalf("OnFailure(%v, %v), want errFatal and Stop", f.err, f.d)
	}
}

var errFatal = errors.New("fatal")
