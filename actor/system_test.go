package actor_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/internal/testkit"
)

func TestSystemStopsAllActorsAndLeaksNoGoroutine(t *testing.T) {
	ctx := testContext(t)
	baseline := runtime.NumGoroutine()

	sys := actor.NewSystem(testkit.Logger(t))
	const actors, messages = 200, 20
	var received, stopped atomic.Int64
	refs := make([]*actor.Ref, 0, actors)
	for i := range actors {
		ref, err := sys.Spawn(actor.Props{
			Name: fmt.Sprintf("worker-%d", i),
			New: func() actor.Receiver {
				return &probe{
					started: func(c *actor.Context) error {
						// Each incarnation owns a goroutine that must end with it.
						go func() { <-c.Context().Done() }()
						return nil
					},
					receive: func(c *actor.Context, msg any) error {
						if msg == "panic" {
							panic("worker failure")
						}
						received.Add(1)
						return nil
					},
					stopped: func(*actor.Context) { stopped.Add(1) },
				}
			},
			MailboxSize: 4,
			Supervisor:  fastSupervisor(),
		})
		if err != nil {
			t.Fatalf("Spawn: %v", err)
		}
		refs = append(refs, ref)
	}
	for i, ref := range refs {
		if i%10 == 0 {
			if err := ref.Send(ctx, "panic"); err != nil {
				t.Fatal(err)
			}
		}
		for range messages {
			if err := ref.Send(ctx, "work"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := sys.Len(); n != actors {
		t.Fatalf("system holds %d actors; want %d", n, actors)
	}

	if err := sys.Stop(ctx); err != nil {
		t.Fatalf("System.Stop: %v", err)
	}
	for _, ref := range refs {
		select {
		case <-ref.Done():
		default:
			t.Fatalf("%s still running after System.Stop", ref.Name())
		}
		if err := ref.Err(); err != nil {
			t.Fatalf("%s: Err = %v; want nil after Stop", ref.Name(), err)
		}
	}
	if got := received.Load(); got != actors*messages {
		t.Fatalf("received %d messages; want %d (Stop drains)", got, actors*messages)
	}
	if got, want := stopped.Load(), int64(actors+actors/10); got != want {
		t.Fatalf("Stopped ran %d times; want %d (one per incarnation)", got, want)
	}
	if n := sys.Len(); n != 0 {
		t.Fatalf("system still holds %d terminated actors", n)
	}
	if _, err := sys.Spawn(actor.Props{Name: "late", New: func() actor.Receiver { return &probe{} }}); !errors.Is(err, actor.ErrStopped) {
		t.Fatalf("Spawn after Stop = %v; want ErrStopped", err)
	}
	if err := sys.Stop(ctx); err != nil {
		t.Fatalf("second System.Stop = %v; want nil", err)
	}

	testkit.WaitFor(t, timeout, fmt.Sprintf("goroutines to return to the baseline of %d", baseline), func() bool {
		return runtime.NumGoroutine() <= baseline
	})
}

func TestSystemStopHonoursContext(t *testing.T) {
	sys := actor.NewSystem(testkit.Logger(t))
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	ref, err := sys.Spawn(actor.Props{Name: "stuck", New: func() actor.Receiver { return &counter{entered: entered, gate: gate} }})
	if err != nil {
		t.Fatal(err)
	}
	if err := ref.Send(testContext(t), "block"); err != nil {
		t.Fatal(err)
	}
	recv(t, entered, "the actor to block")

	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sys.Stop(expired); !errors.Is(err, context.Canceled) {
		t.Fatalf("System.Stop with a stuck actor = %v; want Canceled", err)
	}
	close(gate)
	waitDone(t, ref)
	if err := sys.Stop(testContext(t)); err != nil {
		t.Fatalf("System.Stop after the actor ended = %v", err)
	}
}
