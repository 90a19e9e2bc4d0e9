package partition

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/natsproc"
	"github.com/eddyrt/eddy/internal/testkit"
)

// publishUntilStored publishes an input event with a message id until the
// stream acknowledges it: a retry after a lost ack is deduplicated, so each
// event is stored once however often NATS goes away.
func (h *harness) publishUntilStored(js jetstream.JetStream, key, id string) error {
	for {
		ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
		_, err := js.PublishMsg(ctx, h.msg(key, nil), jetstream.WithMsgID(id))
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
	testkit.WaitFor(t, waitTimeout, "the commit to retry while NATS is away", func() bool { return a.Status().State == StateRetrying })
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

// killConn SIGKILLs the nats-server process while chosen changelog commits
// are in flight: after the batch and its commit message were written to the
// socket, before the acknowledgement is read, so the batch may or may not
// have landed. The server is started again on its store shortly after.
type killConn struct {
	*nats.Conn
	srv    *natsproc.Cluster
	kills  map[int]bool // commit requests (counted from 1) to kill the server during
	mu     sync.Mutex
	n      int
	killed chan int // receives the commit request a kill happened at
}

// PublishMsg kills the server after a planned commit's commit message (the
// one with a reply subject) has left.
func (c *killConn) PublishMsg(m *nats.Msg) error {
	if m.Reply == "" {
		return c.Conn.PublishMsg(m)
	}
	c.mu.Lock()
	c.n++
	kill := c.kills[c.n]
	n := c.n
	c.mu.Unlock()
	if err := c.Conn.PublishMsg(m); err != nil || !kill {
		return err
	}
	_ = c.Conn.Flush() // the commit message has left; its ack has not come back
	if err := c.srv.Kill(0); err != nil {
		return err
	}
	c.killed <- n
	return nil
}

// TestNATSServerKilledMidCommit runs a partition actor at a fixed epoch, as a
// cluster assigns it, against a nats-server process that is SIGKILLed three
// times in the middle of a commit and started again on its store, while a
// client keeps publishing (with message ids, retried until acknowledged).
// The actor must resolve each commit by reading the changelog back, never
// fence itself, and count every event once.
func TestNATSServerKilledMidCommit(t *testing.T) {
	killedMidCommit(t, "killed", nil, 1)
}

// TestNATSServerKilledMidPipelinedCommit is TestNATSServerKilledMidCommit
// with commits pipelined (Config.CommitsInFlight 2): the commit after the
// one killed may be on its way too.
func TestNATSServerKilledMidPipelinedCommit(t *testing.T) {
	killedMidCommit(t, "killedpipe", nil, 2)
}

// TestNATSServerKilledMidLargeCommit is TestNATSServerKilledMidCommit on a
// server that takes messages of at most 2 KiB: every commit is an atomic
// batch of parts and its commit message, killed after all of them left.
func TestNATSServerKilledMidLargeCommit(t *testing.T) {
	killedMidCommit(t, "killedparts", []string{"max_payload: 2048"}, 1)
}

func killedMidCommit(t *testing.T, typ string, extraConfig []string, inFlight int) {
	if testing.Short() {
		t.Skip("runs nats-server processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := startNATSProcess(t, ctx, extraConfig)
	h := newHarnessOn(t, ctx, srv.ConnectURL(), typ, 1)
	const events, keys = 600, 7
	out := "out." + typ
	ensureOutput(t, ctx, h.js, typ+"_out", out)

	kc := &killConn{Conn: h.nc, srv: srv, kills: map[int]bool{3: true, 8: true, 13: true}, killed: make(chan int, 3)}
	cfg := h.config(0, countAndEmit(out, 1))
	cfg.Epoch, cfg.Owner = 7, "n1/"+typ
	cfg.BatchSize = 20
	cfg.CommitTimeout = 2 * time.Second
	cfg.Hooks.Conn = kc
	cfg.CommitsInFlight = inFlight
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	a := h.start(cfg)

	published := h.publishCycling(events, keys)
	restartAfterKills(t, ctx, srv, kc.killed, 3, "commit")
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	h.waitOffset(a, 0)
	if st := a.Status(); st.State != StateRunning || st.Epoch != 7 {
		t.Fatalf("status %+v: want running at epoch 7", st)
	}
	for k := range keys {
		key := "k" + strconv.Itoa(k)
		want := uint64(events / keys)
		if k < events%keys {
			want++
		}
		if got := count(ctx, a, key); got != want {
			t.Errorf("%s = %d, want %d", key, got, want)
		}
	}
	testkit.WaitFor(t, waitTimeout, "every output forwarded", func() bool { return len(streamMsgs(t, ctx, h.js, typ+"_out")) >= events })
	if ids := byMsgID(t, streamMsgs(t, ctx, h.js, typ+"_out")); len(ids) != events {
		t.Errorf("%d outputs, want %d", len(ids), events)
	}
	if extraConfig != nil {
		checkParts(t, ctx, h.js, changelog.NewSubjects(typ, 0))
	}
	if err := a.Stop(ctx); err != nil || a.Err() != nil {
		t.Fatalf("stop: %v, actor ended with %v", err, a.Err())
	}
	t.Logf("the actor restarted %d times", a.Restarts())
	if n := testutil.ToFloat64(cfg.Metrics.commitsPipelined.WithLabelValues(typ, "0")); (n > 0) != (inFlight > 1) {
		t.Errorf("%.0f commits sent behind another with %d in flight", n, inFlight)
	}
}
