package partition

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore"
)

// deadLetters returns the dead-letter stream of h's type, indexed by Eddy-Offset,
// failing on an event that was dead-lettered twice.
func (h *harness) deadLetters() map[uint64]*jetstream.RawStreamMsg {
	h.t.Helper()
	dl := map[uint64]*jetstream.RawStreamMsg{}
	for _, m := range streamMsgs(h.t, h.ctx, h.js, DLQStream(h.typ)) {
		if m.Subject != DLQSubject(h.typ) {
			h.t.Errorf("dead letter on subject %q, want %q", m.Subject, DLQSubject(h.typ))
		}
		off, err := strconv.ParseUint(m.Header.Get("Eddy-Offset"), 10, 64)
		if err != nil {
			h.t.Fatalf("dead letter without a valid Eddy-Offset: %v", m.Header)
		}
		if _, dup := dl[off]; dup {
			h.t.Errorf("event %d dead-lettered twice", off)
		}
		dl[off] = m
	}
	return dl
}

// waitDeadLetters waits until the dead-letter stream holds n events (they are
// forwarded from the outbox just after the commit that passes their offset)
// and returns them; the caller checks that no more arrived.
func (h *harness) waitDeadLetters(n int) map[uint64]*jetstream.RawStreamMsg {
	h.t.Helper()
	var dl map[uint64]*jetstream.RawStreamMsg
	testkit.WaitFor(h.t, waitTimeout, "dead letters", func() bool {
		dl = h.deadLetters()
		return len(dl) >= n
	})
	return dl
}

// checkDeadLetter checks the headers that tell an operator what went wrong.
func checkDeadLetter(t *testing.T, m *jetstream.RawStreamMsg, attempts int, errorHas string) {
	t.Helper()
	if m == nil {
		t.Errorf("missing dead letter (%s)", errorHas)
		return
	}
	if got := m.Header.Get("Eddy-Attempts"); got != strconv.Itoa(attempts) {
		t.Errorf("dead letter %s: Eddy-Attempts %q, want %d", m.Header.Get("Eddy-Offset"), got, attempts)
	}
	if got := m.Header.Get("Eddy-Partition"); got != "0" {
		t.Errorf("dead letter %s: Eddy-Partition %q, want 0", m.Header.Get("Eddy-Offset"), got)
	}
	if got := m.Header.Get("Eddy-Error"); !strings.Contains(got, errorHas) {
		t.Errorf("dead letter %s: Eddy-Error %q does not say %q", m.Header.Get("Eddy-Offset"), got, errorHas)
	}
}

func TestBadInputGoesToDeadLetters(t *testing.T) {
	h := newHarness(t, "bad", 1)
	var (
		mu    sync.Mutex
		runs  = map[uint64]int{} // handler runs per event offset
		ranOn = func(tx *Txn) int {
			mu.Lock()
			defer mu.Unlock()
			runs[tx.Event().Offset]++
			return runs[tx.Event().Offset]
		}
	)
	cfg := h.config(0, func(tx *Txn) error {
		n := ranOn(tx)
		switch tx.Event().Key {
		case "boom":
			panic("boom")
		case "flaky":
			// Its writes on failed attempts must be discarded.
			if err := counter(tx); err != nil {
				return err
			}
			if n <= 2 {
				return errors.New("flaky: try again")
			}
			return nil
		}
		return counter(tx)
	})
	cfg.MaxAttempts = 3
	cfg.MaxEventSize = 1 << 10
	a := h.start(cfg)

	// Good events with bad ones in between, so that batches mix them.
	good := map[string]uint64{}
	pub := func(key string, data []byte) uint64 {
		return h.publishMsg(h.msg(key, data))
	}
	for i := range 60 {
		key := "k" + strconv.Itoa(i%6)
		pub(key, []byte("x"))
		good[key]++
	}
	boom := pub("boom", []byte("x"))
	flaky := pub("flaky", []byte("x"))
	malformed := h.publishMsg(&nats.Msg{Subject: h.input().PartitionSubject(0), Header: nats.Header{HeaderKey: []string{"~!!!"}}, Data: []byte("x")})
	keyless := h.publishMsg(&nats.Msg{Subject: h.input().PartitionSubject(0), Data: []byte("x")})
	oversized := pub("k0", bytes.Repeat([]byte("x"), 2<<10))
	for i := range 60 {
		key := "k" + strconv.Itoa(i%6)
		pub(key, []byte("x"))
		good[key]++
	}
	h.waitOffset(a, 0)

	dl := h.waitDeadLetters(4)
	if len(dl) != 4 {
		t.Errorf("dead-letter stream holds %d events, want 4 (boom, malformed, keyless, oversized)", len(dl))
	}
	checkDeadLetter(t, dl[boom], 3, "handler panic: boom")
	// Events rejected before the handler runs report 0 attempts.
	checkDeadLetter(t, dl[malformed], 0, "malformed key token")
	checkDeadLetter(t, dl[keyless], 0, "event on bad.0 has no Eddy-Key header")
	checkDeadLetter(t, dl[oversized], 0, "event of 2048 bytes, limit 1024")
	if m := dl[oversized]; m != nil && (m.Header.Get("Eddy-Truncated") != "2048" || len(m.Data) != 0) {
		t.Errorf("oversized dead letter: Eddy-Truncated %q and %d data bytes; want 2048 and none (the event stays in the input stream)",
			m.Header.Get("Eddy-Truncated"), len(m.Data))
	}
	if m := dl[boom]; m != nil && (string(m.Data) != "x" || m.Header.Get("Eddy-Subject") != "bad.0") {
		t.Errorf("boom dead letter: data %q subject %q, want the event", m.Data, m.Header.Get("Eddy-Subject"))
	}
	if _, ok := dl[flaky]; ok {
		t.Errorf("an event that succeeded on its third attempt was dead-lettered")
	}

	mu.Lock()
	if runs[boom] != 3 || runs[flaky] != 3 || runs[malformed] != 0 || runs[keyless] != 0 || runs[oversized] != 0 {
		t.Errorf("handler runs: boom %d flaky %d malformed %d keyless %d oversized %d, want 3 3 0 0 0",
			runs[boom], runs[flaky], runs[malformed], runs[keyless], runs[oversized])
	}
	mu.Unlock()
	if got := count(h.ctx, a, "flaky"); got != 1 {
		t.Errorf("flaky = %d, want 1: its effect must land exactly once", got)
	}
	if _, err := a.Get(h.ctx, DefaultStore, []byte("boom")); !errors.Is(err, statestore.ErrNotFound) {
		t.Errorf("boom has state (%v); a failed event must have no effect", err)
	}
	for key, want := range good {
		if got := count(h.ctx, a, key); got != want {
			t.Errorf("%s = %d, want %d", key, got, want)
		}
	}
	if n := a.Restarts(); n != 0 {
		t.Errorf("actor restarted %d times; bad input must not fail it", n)
	}

	// And it keeps going.
	pub("k1", nil)
	h.waitOffset(a, 0)
	if got := count(h.ctx, a, "k1"); got != good["k1"]+1 {
		t.Errorf("k1 = %d after one more event, want %d", got, good["k1"]+1)
	}
}

func TestValueTooLarge(t *testing.T) {
	h := newHarness(t, "huge", 1)
	setErrs := make(chan error, 10)
	cfg := h.config(0, func(tx *Txn) error {
		if tx.Event().Key != "huge" {
			return counter(tx)
		}
		// A small write first: it must be discarded with the event.
		if err := tx.Set(DefaultStore, []byte("before"), []byte("small")); err != nil {
			return err
		}
		err := tx.Set(DefaultStore, []byte("huge"), make([]byte, tx.a.cfg.MaxValueSize+1))
		setErrs <- err
		return err
	})
	cfg.MaxValueSize = 1 << 10
	a := h.start(cfg)
	h.publish("a", nil)
	huge := h.publishMsg(h.msg("huge", nil))
	h.publish("a", nil)
	h.waitOffset(a, 0)

	select {
	case err := <-setErrs:
		if !errors.Is(err, ErrValueTooLarge) || !errors.Is(err, ErrPermanent) {
			t.Errorf("Set of %d bytes returned %v, want ErrValueTooLarge (permanent)", cfg.MaxValueSize+1, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler never ran for the huge event")
	}
	if n := len(setErrs); n != 0 {
		t.Errorf("the handler ran %d more times for a permanent failure; want once", n)
	}
	dl := h.waitDeadLetters(1)
	if len(dl) != 1 {
		t.Errorf("dead-letter stream holds %d events, want 1", len(dl))
	}
	checkDeadLetter(t, dl[huge], 1, "value too large")
	for _, key := range []string{"huge", "before"} {
		if _, err := a.Get(h.ctx, DefaultStore, []byte(key)); !errors.Is(err, statestore.ErrNotFound) {
			t.Errorf("%s was stored (%v); a dead-lettered event must have no effect", key, err)
		}
	}
	if got := count(h.ctx, a, "a"); got != 2 {
		t.Errorf("a = %d, want 2", got)
	}
	if n := a.Restarts(); n != 0 {
		t.Errorf("actor restarted %d times", n)
	}
}

// TestRecordLimitCutsBatches fills batches up to MaxBatchRecords with events that
// are then dead-lettered or too wide for a commit of their own: each must cut the
// batch or go to the dead-letter stream, never make a commit the server rejects
// (which would fail the partition on the same batch forever).
func TestRecordLimitCutsBatches(t *testing.T) {
	h := newHarness(t, "limit", 1)
	cfg := h.config(0, func(tx *Txn) error {
		switch tx.Event().Key {
		case "boom":
			panic("boom")
		case "wide": // one record more than a commit holds with its meta
			for i := range 4 {
				if err := tx.Set(DefaultStore, []byte("w"+strconv.Itoa(i)), []byte("v")); err != nil {
					return err
				}
			}
			return nil
		}
		return counter(tx)
	})
	cfg.MaxBatchRecords = 4 // three writes and the meta
	cfg.MaxAttempts = 2
	// One batch of exactly these events, so that the limits are hit where intended.
	keys := []string{
		"a", "b", "c", // a full commit: three writes + meta
		"boom", // its dead letter needs a record more
		"w0", "w1",
		"wide", // shares w0 and w1 with the batch: it fits only with them, not alone
		"a",
	}
	cfg.BatchSize, cfg.Linger = len(keys), 10*time.Second
	offsets := map[string]uint64{}
	for _, k := range keys {
		offsets[k] = h.publishMsg(h.msg(k, nil))
	}
	a := h.start(cfg)
	h.waitOffset(a, 0)

	dl := h.waitDeadLetters(2)
	if len(dl) != 2 {
		t.Errorf("dead-letter stream holds %d events, want 2 (boom, wide)", len(dl))
	}
	checkDeadLetter(t, dl[offsets["boom"]], 2, "handler panic")
	checkDeadLetter(t, dl[offsets["wide"]], 1, "event writes more than one commit holds")
	for key, want := range map[string]uint64{"a": 2, "b": 1, "c": 1, "w0": 1, "w1": 1} {
		if got := count(h.ctx, a, key); got != want {
			t.Errorf("%s = %d, want %d", key, got, want)
		}
	}
	if _, err := a.Get(h.ctx, DefaultStore, []byte("w2")); !errors.Is(err, statestore.ErrNotFound) {
		t.Errorf("w2 was stored (%v); the wide event must have no effect", err)
	}
	if n := a.Restarts(); n != 0 {
		t.Errorf("actor restarted %d times; a full batch must be cut, not fail", n)
	}
}
