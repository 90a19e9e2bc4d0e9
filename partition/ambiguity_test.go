package partition

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eddyrt/eddy/internal/testkit"
)

// fault is what faultyConn does to one changelog commit request.
type fault int

const (
	pass         fault = iota
	loseAck            // the batch is published and lands; its acknowledgement is lost
	drop               // nothing is published; the request times out
	halfBatch          // the first half of the batch is published, not its commit message
	hold               // the batch is kept back (released by the test later); the request times out
	noResponders       // nothing is published; no responders
	unavailable        // the stream answers 503, JetStream temporarily unavailable
	crash              // the batch is kept back and the actor's incarnation panics (a restart)
)

// faultyConn is a real NATS connection that loses, drops or holds changelog
// batches as a test plans, to make commit outcomes unknown at each point.
// Commit requests are counted from 1 across the actor's incarnations (the
// first is the epoch record); the faults map says what happens to which.
type faultyConn struct {
	*nats.Conn
	mu     sync.Mutex
	faults map[int]fault
	// failReads JetStream API reads fail after each faulted commit request
	// (reading the outcome back fails too, for a while).
	failReads, readsToFail int
	n                      int
	pending                []*nats.Msg   // batch messages published before the commit message
	held                   [][]*nats.Msg // batches kept back
	// release, when set, runs before commit request n: a test uses it to
	// let held batches land at a chosen point.
	release map[int]bool
	log     []string
}

// PublishMsg takes a commit's parts, and applies the plan to the commit
// when its commit message (the one with a reply subject) comes.
func (c *faultyConn) PublishMsg(m *nats.Msg) error {
	c.mu.Lock()
	if m.Reply == "" {
		c.pending = append(c.pending, m)
		c.mu.Unlock()
		return nil
	}
	c.n++
	n := c.n
	batch := append(c.pending, m)
	c.pending = nil
	f := c.faults[n]
	if f != pass {
		c.readsToFail = c.failReads
	}
	if c.release[n] {
		for _, h := range c.held {
			c.publishLocked(h) // their answers go to attempts given up on
		}
		c.log = append(c.log, fmt.Sprintf("commit %d: released %d held batches", n, len(c.held)))
		c.held = nil
	}
	c.log = append(c.log, fmt.Sprintf("commit %d (%d messages): fault %d", n, len(batch), f))
	c.mu.Unlock()
	switch f {
	case loseAck:
		lost := *m
		lost.Reply = ""
		c.publish(append(batch[:len(batch)-1], &lost))
	case drop:
	case halfBatch:
		c.publish(batch[:len(batch)/2])
	case hold, crash:
		c.mu.Lock()
		c.held = append(c.held, batch)
		c.mu.Unlock()
		if f == crash {
			panic("test: the incarnation dies with its batch in flight")
		}
	case noResponders:
		return c.Conn.PublishMsg(&nats.Msg{Subject: m.Reply, Header: nats.Header{"Status": []string{"503"}}})
	case unavailable:
		return c.Conn.Publish(m.Reply, []byte(`{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}`))
	default:
		c.publish(batch)
	}
	return nil
}

func (c *faultyConn) publish(msgs []*nats.Msg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.publishLocked(msgs)
}

func (c *faultyConn) publishLocked(msgs []*nats.Msg) {
	for _, m := range msgs {
		_ = c.Conn.PublishMsg(m)
	}
}

func (c *faultyConn) RequestWithContext(ctx context.Context, subject string, data []byte) (*nats.Msg, error) {
	c.mu.Lock()
	fail := c.readsToFail > 0
	if fail {
		c.readsToFail--
	}
	c.mu.Unlock()
	if fail {
		return nil, nats.ErrTimeout
	}
	return c.Conn.RequestWithContext(ctx, subject, data)
}

// TestAmbiguousCommitNeverFencesItself runs a partition actor at a fixed
// epoch, as a cluster assigns it, and makes one changelog commit's outcome
// unknown at each point: the epoch record or a batch whose acknowledgement is
// lost after it landed, that never left, that left half-published, that
// the stream refused for the moment, that is held back and lands while the
// actor retries; and an incarnation that dies with its batch in flight and
// restarts at the same epoch, its old batch landing before or after the new
// incarnation's epoch record. Each time the actor must resolve the outcome
// by reading the changelog back, never fence itself, and end with every
// event's effects exactly once: the counts and outputs of a sequential run.
// Each case runs again with commits pipelined (Config.CommitsInFlight 2),
// where the commit after the faulted one is sent behind it.
func TestAmbiguousCommitNeverFencesItself(t *testing.T) {
	type testCase = struct {
		name      string
		faults    map[int]fault
		failReads int
		release   map[int]bool
		restarts  bool
	}
	cases := []testCase{
		{name: "EpochRecordAckLost", faults: map[int]fault{1: loseAck}},
		{name: "EpochRecordDropped", faults: map[int]fault{1: drop}},
		{name: "BatchAckLost", faults: map[int]fault{3: loseAck}},
		{name: "BatchDropped", faults: map[int]fault{3: drop}},
		{name: "BatchHalfPublished", faults: map[int]fault{3: halfBatch}},
		{name: "NoResponders", faults: map[int]fault{3: noResponders, 4: noResponders}},
		{name: "StreamUnavailable", faults: map[int]fault{3: unavailable}},
		{name: "AckLostAndReadsFail", faults: map[int]fault{3: loseAck}, failReads: 3},
		{name: "HeldBatchLandsDuringRetry", faults: map[int]fault{3: hold}, release: map[int]bool{4: true}},
		{name: "AckLostTwice", faults: map[int]fault{3: loseAck, 5: loseAck}},
		{name: "RestartOldBatchLandsBeforeEpochRecord", faults: map[int]fault{3: crash}, release: map[int]bool{4: true}, restarts: true},
		{name: "RestartOldBatchLandsAfterEpochRecord", faults: map[int]fault{3: crash}, release: map[int]bool{5: true}, restarts: true},
	}
	for _, inFlight := range []int{1, 2} {
		for _, tc := range cases {
			name := tc.name
			if inFlight > 1 {
				name = "Pipelined/" + name
			}
			t.Run(name, func(t *testing.T) { ambiguousCommit(t, tc.faults, tc.failReads, tc.release, tc.restarts, inFlight) })
		}
	}
}

func ambiguousCommit(t *testing.T, faults map[int]fault, failReads int, release map[int]bool, restarts bool, inFlight int) {
	h := newHarness(t, "amb", 1)
	const events, keys = 200, 5
	out := "out.amb"
	ensureOutput(t, h.ctx, h.js, "amb_out", out)
	counts := map[string]uint64{}
	outputs := map[uint64]string{}
	for i := range events {
		key := "k" + strconv.Itoa(i%keys)
		ack, err := h.js.PublishMsg(h.ctx, h.msg(key, nil))
		if err != nil {
			t.Fatal(err)
		}
		counts[key]++
		outputs[ack.Sequence] = fmt.Sprintf("%s=%d", key, counts[key])
	}
	fc := &faultyConn{Conn: h.nc, faults: faults, failReads: failReads, release: release}
	cfg := h.config(0, countAndEmit(out, 1))
	cfg.Epoch, cfg.Owner = 5, "n1/test"
	cfg.BatchSize = 20
	cfg.CommitTimeout = time.Second
	cfg.Hooks.Conn = fc
	cfg.CommitsInFlight = inFlight
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	a := h.start(cfg)
	h.waitOffset(a, 0)
	st := a.Status()
	fc.mu.Lock()
	t.Logf("commits: %v", fc.log)
	fc.mu.Unlock()
	if st.State != StateRunning || st.Epoch != 5 {
		t.Fatalf("status %+v: want running at epoch 5", st)
	}
	if got := a.Restarts(); (got > 0) != restarts {
		t.Errorf("%d restarts, want restarts: %v", got, restarts)
	}
	for key, want := range counts {
		if got := count(h.ctx, a, key); got != want {
			t.Errorf("%s = %d, want %d", key, got, want)
		}
	}
	testkit.WaitFor(t, waitTimeout, "every output forwarded", func() bool { return len(streamMsgs(t, h.ctx, h.js, "amb_out")) >= events })
	ids := byMsgID(t, streamMsgs(t, h.ctx, h.js, "amb_out"))
	if len(ids) != events {
		t.Errorf("%d outputs, want %d", len(ids), events)
	}
	for off, want := range outputs {
		if m := ids[fmt.Sprintf("amb/0/%d/0", off)]; m == nil || string(m.Data) != want {
			t.Errorf("output of event %d: %v, want %q", off, m, want)
		}
	}
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	if errors.Is(a.Err(), ErrFenced) {
		t.Fatalf("fenced itself: %v", a.Err())
	}
	if n := testutil.ToFloat64(cfg.Metrics.commitsPipelined.WithLabelValues("amb", "0")); (n > 0) != (inFlight > 1) {
		t.Errorf("%.0f commits sent behind another with %d in flight", n, inFlight)
	}
}
