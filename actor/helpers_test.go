package actor_test

import (
	"context"
	"testing"
	"time"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/internal/testkit"
)

// timeout bounds every wait in these tests; hitting it fails the test loudly.
const timeout = 5 * time.Second

// testContext returns a context bounded by timeout and cancelled when the test ends.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// fastSupervisor restarts after 1ms, so restart tests take no noticeable time.
func fastSupervisor() actor.SupervisorConfig {
	return actor.SupervisorConfig{MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, ResetAfter: time.Hour}
}

// spawn starts an actor logging to t and stops it (failing the test if it hangs)
// when the test ends.
func spawn(t testing.TB, p actor.Props) *actor.Ref {
	t.Helper()
	if p.Logger == nil {
		p.Logger = testkit.Logger(t)
	}
	if p.Name == "" {
		p.Name = t.Name()
	}
	ref, err := actor.Spawn(p)
	if err != nil {
		t.Fatalf("Spawn: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := ref.Stop(ctx); err != nil {
			t.Errorf("stop %s at cleanup: %v", ref.Name(), err)
		}
	})
	return ref
}

// recv waits for a value on ch, failing the test after timeout.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
		var zero T
		return zero
	}
}

// waitDone waits for the actor to terminate.
func waitDone(t testing.TB, ref *actor.Ref) {
	t.Helper()
	recv(t, ref.Done(), "actor "+ref.Name()+" to terminate")
}

// probe is a Receiver whose behaviour each test plugs in; nil hooks do nothing.
type probe struct {
	started func(c *actor.Context) error
	receive func(c *actor.Context, msg any) error
	stopped func(c *actor.Context)
}

var (
	_ actor.Receiver = (*probe)(nil)
	_ actor.Starter  = (*probe)(nil)
	_ actor.Stopper  = (*probe)(nil)
)

func (p *probe) Started(c *actor.Context) error {
	if p.started == nil {
		return nil
	}
	return p.started(c)
}

func (p *probe) Receive(c *actor.Context, msg any) error {
	if p.receive == nil {
		return nil
	}
	return p.receive(c, msg)
}

func (p *probe) Stopped(c *actor.Context) {
	if p.stopped != nil {
		p.stopped(c)
	}
}

// counter is a stateful Receiver: "inc" adds one, "get" answers the count, "panic"
// panics, an error value is returned as a failure, and "block" waits on gate.
type counter struct {
	n       int
	entered chan<- struct{} // optional: told when "block" starts
	gate    <-chan struct{} // "block" waits for it
}

func (c *counter) Receive(ctx *actor.Context, msg any) error {
	switch m := msg.(type) {
	case string:
		switch m {
		case "inc":
			c.n++
		case "get":
			ctx.Respond(c.n)
		case "panic":
			panic("counter told to panic")
		case "block":
			if c.entered != nil {
				c.entered <- struct{}{}
			}
			<-c.gate
		}
	case error:
		return m
	}
	return nil
}
