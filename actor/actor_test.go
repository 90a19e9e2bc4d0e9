package actor_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/internal/testkit"
)

// recorder appends every int it receives and answers "get" with a copy.
type recorder struct{ got []int }

func (r *recorder) Receive(c *actor.Context, msg any) error {
	switch m := msg.(type) {
	case int:
		r.got = append(r.got, m)
	case string:
		if m == "get" {
			c.Respond(slices.Clone(r.got))
		}
	}
	return nil
}

func TestSendIsReceivedInOrder(t *testing.T) {
	ctx := testContext(t)
	ref := spawn(t, actor.Props{New: func() actor.Receiver { return &recorder{} }, MailboxSize: 8})

	const n = 500
	for i := range n {
		if err := ref.Send(ctx, i); err != nil {
			t.Fatalf("Send(%d): %v", i, err)
		}
	}
	v, err := ref.Ask(ctx, "get")
	if err != nil {
		t.Fatalf("Ask: %v", err)
	}
	got := v.([]int)
	if len(got) != n {
		t.Fatalf("received %d messages, want %d", len(got), n)
	}
	for i, m := range got {
		if m != i {
			t.Fatalf("message %d is %d: order not kept", i, m)
		}
	}
}

func TestOrderIsKeptPerSender(t *testing.T) {
	ctx := testContext(t)
	ref := spawn(t, actor.Props{New: func() actor.Receiver { return &recorder{} }, MailboxSize: 4})

	const senders, each = 4, 200
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				if err := ref.Send(ctx, s*each+i); err != nil {
					t.Errorf("sender %d: Send: %v", s, err)
					return
				}
			}
		})
	}
	wg.Wait()
	v, err := ref.Ask(ctx, "get")
	if err != nil {
		t.Fatalf("Ask: %v", err)
	}
	last := make([]int, senders)
	for s := range last {
		last[s] = -1
	}
	got := v.([]int)
	for _, m := range got {
		s, i := m/each, m%each
		if i <= last[s] {
			t.Fatalf("sender %d: message %d received after %d", s, i, last[s])
		}
		last[s] = i
	}
	if len(got) != senders*each {
		t.Fatalf("received %d messages, want %d", len(got), senders*each)
	}
}

func TestAskReturnsResponse(t *testing.T) {
	ctx := testContext(t)
	errNotFound := errors.New("not found")
	ref := spawn(t, actor.Props{New: func() actor.Receiver {
		return &probe{receive: func(c *actor.Context, msg any) error {
			switch msg {
			case "echo":
				c.Respond("echo!")
				c.Respond("ignored: only the first answer counts")
			case "missing":
				c.RespondError(errNotFound)
			}
			return nil
		}}
	}})

	if v, err := ref.Ask(ctx, "echo"); err != nil || v != "echo!" {
		t.Fatalf("Ask(echo) = %v, %v; want echo!, nil", v, err)
	}
	if v, err := ref.Ask(ctx, "silent"); err != nil || v != nil {
		t.Fatalf("Ask(silent) = %v, %v; want nil, nil", v, err)
	}
	if _, err := ref.Ask(ctx, "missing"); !errors.Is(err, errNotFound) {
		t.Fatalf("Ask(missing) error = %v; want %v", err, errNotFound)
	}
	if ref.Restarts() != 0 {
		t.Fatalf("RespondError restarted the actor (%d restarts)", ref.Restarts())
	}
}

func TestAskReturnsReceiveError(t *testing.T) {
	ctx := testContext(t)
	errBad := errors.New("bad message")
	ref := spawn(t, actor.Props{
		New:        func() actor.Receiver { return &counter{} },
		Supervisor: fastSupervisor(),
	})
	if _, err := ref.Ask(ctx, errBad); !errors.Is(err, errBad) {
		t.Fatalf("Ask error = %v; want %v", err, errBad)
	}
}

func TestAskHonoursContext(t *testing.T) {
	ctx := testContext(t)
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	ref := spawn(t, actor.Props{New: func() actor.Receiver { return &counter{entered: entered, gate: gate} }})

	if err := ref.Send(ctx, "block"); err != nil {
		t.Fatal(err)
	}
	recv(t, entered, "the actor to block")

	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := ref.Ask(short, "get"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ask on a blocked actor = %v; want DeadlineExceeded", err)
	}
	cancelled, cancelNow := context.WithCancel(ctx)
	cancelNow()
	if _, err := ref.Ask(cancelled, "get"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ask with a cancelled context = %v; want Canceled", err)
	}

	// The abandoned Asks are still processed, and the actor stays healthy.
	close(gate)
	if v, err := ref.Ask(ctx, "get"); err != nil || v != 0 {
		t.Fatalf("Ask after unblocking = %v, %v; want 0, nil", v, err)
	}
}

func TestSendBlocksOnFullMailbox(t *testing.T) {
	ctx := testContext(t)
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	ref := spawn(t, actor.Props{New: func() actor.Receiver { return &counter{entered: entered, gate: gate} }, MailboxSize: 2})

	// The actor takes "block" off the mailbox and stalls; two more fill the mailbox.
	if err := ref.Send(ctx, "block"); err != nil {
		t.Fatal(err)
	}
	recv(t, entered, "the actor to block")
	for range 2 {
		if err := ref.Send(ctx, "inc"); err != nil {
			t.Fatal(err)
		}
	}
	if ref.Len() != 2 {
		t.Fatalf("Len = %d; want 2", ref.Len())
	}

	if err := ref.TrySend("inc"); !errors.Is(err, actor.ErrMailboxFull) {
		t.Fatalf("TrySend on a full mailbox = %v; want ErrMailboxFull", err)
	}
	cancelled, cancelNow := context.WithCancel(ctx)
	cancelNow()
	if err := ref.Send(cancelled, "inc"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with a cancelled context on a full mailbox = %v; want Canceled", err)
	}

	sent := make(chan error, 1)
	go func() { sent <- ref.Send(ctx, "inc") }()
	select {
	case err := <-sent:
		t.Fatalf("Send returned %v while the mailbox was full", err)
	default:
	}

	close(gate) // the actor drains the mailbox, making room
	if err := recv(t, sent, "the blocked Send to proceed"); err != nil {
		t.Fatalf("blocked Send = %v; want nil", err)
	}
	if v, err := ref.Ask(ctx, "get"); err != nil || v != 3 {
		t.Fatalf("count = %v, %v; want 3 (nothing dropped, nothing from failed sends)", v, err)
	}
}

func TestStopDrainsQueuedMessages(t *testing.T) {
	ctx := testContext(t)
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	stopped := make(chan int, 1)
	ref := spawn(t, actor.Props{New: func() actor.Receiver {
		c := &counter{entered: entered, gate: gate}
		return &probe{
			receive: c.Receive,
			stopped: func(*actor.Context) { stopped <- c.n },
		}
	}})

	if err := ref.Send(ctx, "block"); err != nil {
		t.Fatal(err)
	}
	recv(t, entered, "the actor to block")
	const queued = 100
	for range queued {
		if err := ref.Send(ctx, "inc"); err != nil {
			t.Fatal(err)
		}
	}
	asked := make(chan error, 1)
	go func() {
		_, err := ref.Ask(ctx, "get")
		asked <- err
	}()
	testkit.WaitFor(t, timeout, "the Ask to be queued behind the incs", func() bool { return ref.Len() == queued+1 })

	// A Stop whose context is already done starts stopping and returns at once.
	expired, cancelNow := context.WithCancel(ctx)
	cancelNow()
	if err := ref.Stop(expired); !errors.Is(err, context.Canceled) {
		t.Fatalf("Stop with a cancelled context = %v; want Canceled", err)
	}
	if err := ref.Send(ctx, "inc"); !errors.Is(err, actor.ErrStopped) {
		t.Fatalf("Send while stopping = %v; want ErrStopped", err)
	}
	if _, err := ref.Ask(ctx, "get"); !errors.Is(err, actor.ErrStopped) {
		t.Fatalf("Ask while stopping = %v; want ErrStopped", err)
	}
	if err := ref.TrySend("inc"); !errors.Is(err, actor.ErrStopped) {
		t.Fatalf("TrySend while stopping = %v; want ErrStopped", err)
	}

	close(gate)
	if err := ref.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if n := recv(t, stopped, "Stopped"); n != queued {
		t.Fatalf("Stopped saw %d incs; want all %d queued before Stop", n, queued)
	}
	if err := recv(t, asked, "the queued Ask"); err != nil {
		t.Fatalf("Ask queued before Stop = %v; want it answered", err)
	}
	if err := ref.Err(); err != nil {
		t.Fatalf("Err after Stop = %v; want nil", err)
	}
	if err := ref.Stop(ctx); err != nil {
		t.Fatalf("second Stop = %v; want nil (idempotent)", err)
	}
}

func TestContextStopFromReceive(t *testing.T) {
	ctx := testContext(t)
	ref := spawn(t, actor.Props{New: func() actor.Receiver {
		return &probe{receive: func(c *actor.Context, msg any) error {
			if msg == "quit" {
				c.Stop()
			}
			return nil
		}}
	}})
	if err := ref.Send(ctx, "quit"); err != nil {
		t.Fatal(err)
	}
	waitDone(t, ref)
	if err := ref.Err(); err != nil {
		t.Fatalf("Err = %v; want nil", err)
	}
}

func TestSpawnRejectsInvalidProps(t *testing.T) {
	newRecv := func() actor.Receiver { return &recorder{} }
	for name, p := range map[string]actor.Props{
		"no name":          {New: newRecv},
		"no New":           {Name: "x"},
		"negative mailbox": {Name: "x", New: newRecv, MailboxSize: -1},
		"bad supervisor":   {Name: "x", New: newRecv, Supervisor: actor.SupervisorConfig{MinBackoff: -1}},
	} {
		if ref, err := actor.Spawn(p); err == nil {
			ref.Stop(context.Background())
			t.Errorf("%s: Spawn succeeded; want an error", name)
		}
	}
}

func ExampleRef_Ask() {
	ref, err := actor.Spawn(actor.Props{
		Name: "greeter",
		New: func() actor.Receiver {
			return &probe{receive: func(c *actor.Context, msg any) error {
				c.Respond(fmt.Sprintf("hello, %v", msg))
				return nil
			}}
		},
	})
	if err != nil {
		panic(err)
	}
	defer ref.Stop(context.Background())

	v, err := ref.Ask(context.Background(), "eddy")
	fmt.Println(v, err)
	// Output: hello, eddy <nil>
}
