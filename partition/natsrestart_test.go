package partition

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// publishUntilStored publishes an input event with a message id until the
// stream acknowledges it: a retry after a lost ack is deduplicated, so each
// event is stored once however often NATS goes away.
func (h *harness) publishUntilStored(js jetstream.JetStream, key, id string) error {
	for {
		ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
		_, err := js.Publish(ctx, InputSubject(h.typ, key), nil, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return nil
		}
		if h.ctx.Err() != nil {
			return errors.Join(err, h.ctx.Err())
		}
		select { // NATS is restarting: back off a little before the retry
		case <-time.After(20 * time.Millisecond):
		case <-h.ctx.Done():
		}
	}
}

// TestNATSRestartLosesNothing takes NATS away while a batch is being committed
// and while a client publishes, then brings it back on the same port and store:
// the partition fails its commit, recovers on its own, and counts every event once.
func TestNATSRestartLosesNothing(t *testing.T) {
	h := newHarness(t, "restart", 1)
	const events, keys, stallAt = 600, 7, 200

	// The handler stalls on event stallAt, the first time, so that its batch
	// commits only once NATS is gone.
	var stalled atomic.Bool
	atStall, resume := make(chan struct{}), make(chan struct{})
	handler := func(tx *Txn) error {
		if tx.Event().Offset == stallAt && stalled.CompareAndSwap(false, true) {
			close(atStall)
			<-resume
		}
		return counter(tx)
	}
	// The partition's connection: reconnect forever, and do not buffer while
	// reconnecting, so that a commit fails fast instead of stalling.
	nc, js := h.srv.Connect(t, nats.ReconnectBufSize(-1))
	cfg := h.config(0, handler)
	cfg.Conn, cfg.JS = nc, js
	cfg.CommitTimeout = 2 * time.Second
	a := h.start(cfg)

	// A client publishes half the events, then the rest while NATS is away.
	down, done := make(chan struct{}), make(chan error, 1)
	go func() {
		for i := range events {
			if i == events/2 {
				<-down
			}
			if err := h.publishUntilStored(h.js, "k"+strconv.Itoa(i%keys), "e-"+strconv.Itoa(i)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case <-atStall:
	case <-time.After(30 * time.Second):
		t.Fatal("the partition never reached event", stallAt)
	}

	h.srv.Shutdown()
	close(down)
	close(resume)
	waitFor(t, "the commit to retry while NATS is away", func() bool { return a.Status().State == StateRetrying })
	if st := a.Status(); st.Err == "" || st.Running {
		t.Fatalf("status while NATS is away: %+v", st)
	}
	if _, err := a.Get(h.ctx, DefaultStore, []byte("k0")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a query while the partition retries: %v, want ErrUnavailable at once", err)
	}
	h.srv.Restart()

	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("publisher stuck after the restart")
	}
	h.waitOffset(a, 0)

	// Once more while the partition is idle: its input reader follows on its own.
	restarts := a.Restarts()
	h.srv.Restart()
	const more = 70
	for i := range more {
		if err := h.publishUntilStored(h.js, "k"+strconv.Itoa(i%keys), "more-"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	h.waitOffset(a, 0)
	t.Logf("the idle partition restarted %d times", a.Restarts()-restarts)

	if st, err := h.js.Stream(h.ctx, h.typ); err != nil || st.CachedInfo().State.Msgs != events+more {
		t.Fatalf("input stream: %v, want %d events stored once each", err, events+more)
	}
	for k := range keys {
		want := uint64(events/keys + more/keys)
		if k < events%keys {
			want++
		}
		key := "k" + strconv.Itoa(k)
		if got := count(h.ctx, a, key); got != want {
			t.Errorf("%s = %d, want %d", key, got, want)
		}
	}
	t.Logf("the partition restarted %d times in all", a.Restarts())
}
