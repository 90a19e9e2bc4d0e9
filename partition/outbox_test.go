package partition

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
)

func TestOutboxForwardedOnceAndReply(t *testing.T) {
	h := newHarness(t, "orders", 1)
	out, subject := "orders_out", "out.orders"
	ensureOutput(t, h.ctx, h.js, out, subject)
	cfg := h.config(0, func(tx *Txn) error {
		n, err := increment(tx)
		if err != nil {
			return err
		}
		v := []byte(tx.Event().Key + "=" + strconv.FormatUint(n, 10))
		if err := tx.Publish(subject, map[string]string{"Eddy-Key": tx.Event().Key}, v); err != nil {
			return err
		}
		return tx.Reply(v)
	})
	a := h.start(cfg)

	want := map[uint64]string{} // input offset -> the output a sequential run emits
	counts := map[string]int{}
	pub := func(m *nats.Msg) uint64 {
		key := m.Header.Get(HeaderKey)
		off := h.publishMsg(m)
		counts[key]++
		want[off] = fmt.Sprintf("%s=%d", key, counts[key])
		return off
	}
	for i := range 20 {
		pub(h.msg("k"+strconv.Itoa(i%3), nil))
	}

	// A client asks with an event and waits for the reply on its inbox.
	inbox := nats.NewInbox()
	sub, err := h.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	req := h.msg("k1", nil)
	req.Header.Set(HeaderReply, inbox)
	off := pub(req)
	reply, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	if string(reply.Data) != want[off] {
		t.Errorf("reply %q, want %q", reply.Data, want[off])
	}
	// The reply is sent only after the event's effects are committed.
	if m, _, err := lastMeta(h.ctx, h.js, changelog.NewSubjects(h.typ, 0)); err != nil || m.Offset < off {
		t.Errorf("replied before the commit: changelog offset %d, event %d (%v)", m.Offset, off, err)
	}
	if got := count(h.ctx, a, "k1"); got < uint64(counts["k1"]) {
		t.Errorf("replied before the local commit: k1 = %d", got)
	}

	h.waitOffset(a, 0)
	checkOutputs := func(when string) {
		t.Helper()
		ids := byMsgID(t, streamMsgs(t, h.ctx, h.js, out))
		if len(ids) != len(want) {
			t.Errorf("%s: output stream holds %d messages, want one per event: %d", when, len(ids), len(want))
		}
		for off, v := range want {
			id := fmt.Sprintf("%s/0/%d/0", h.typ, off)
			m := ids[id]
			if m == nil {
				t.Errorf("%s: no output %s", when, id)
				continue
			}
			if string(m.Data) != v || m.Subject != subject || m.Header.Get("Eddy-Key") == "" {
				t.Errorf("%s: output %s = %s %q %v, want %s %q", when, id, m.Subject, m.Data, m.Header, subject, v)
			}
		}
	}
	// Outputs are forwarded while the next batch runs: wait for the last.
	testkit.WaitFor(t, waitTimeout, "every output forwarded", func() bool { return len(streamMsgs(t, h.ctx, h.js, out)) >= len(want) })
	checkOutputs("after processing")

	// A new owner restored from the whole changelog forwards again what the
	// committed mark does not cover; the output stream keeps each message once.
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	a = h.start(cfg)
	pub(h.msg("k2", nil))
	h.waitOffset(a, 0)
	checkOutputs("after a full restore")
}

// TestForwardedMarkNeverRegresses restarts a partition on the same node (its
// local store is current, so the changelog tail is empty) and then loses that
// node: the new owner must not forward again what was forwarded before, because
// after a real failover the targets' duplicate window may be over.
func TestForwardedMarkNeverRegresses(t *testing.T) {
	h := newHarness(t, "mark", 1)
	out, subject := "mark_out", "out.mark"
	ensureOutput(t, h.ctx, h.js, out, subject)
	metrics := NewMetrics(nil)
	cfg := h.config(0, countAndEmit(subject, 1))
	cfg.Metrics = metrics
	forwarded := func() float64 {
		var m dto.Metric
		if err := metrics.forwarded.WithLabelValues(h.typ, "0").Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	cl := changelog.NewSubjects(h.typ, 0)
	mark := func() uint64 {
		m, _, err := lastMeta(h.ctx, h.js, cl)
		if err != nil {
			t.Fatal(err)
		}
		return m.Forwarded
	}

	a := h.start(cfg)
	for i := range 30 {
		h.publish("k"+strconv.Itoa(i%3), nil)
		if i%10 == 9 {
			h.waitOffset(a, 0) // several commits, several outbox ranges
		}
	}
	// The idle partition commits its mark after MarkDelay.
	var lastOut uint64 // the last changelog message with an outbox entry
	_, err := changelog.Replay(h.ctx, h.js, cl, changelog.ReplayConfig{From: 1}, func(seq uint64, r changelog.Record) error {
		if r.Kind == changelog.KindOutbox {
			lastOut = seq
		}
		return nil
	})
	if err != nil || lastOut == 0 {
		t.Fatalf("no outbox entry in the changelog: %v", err)
	}
	testkit.WaitFor(t, waitTimeout, "the forwarded mark to be committed", func() bool { return mark() >= lastOut })
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	sent := forwarded()

	// Restart on the same node.
	a = h.start(cfg)
	h.waitRunning(a) // restored and fenced
	if got := mark(); got < lastOut {
		t.Errorf("restart committed forwarded mark %d, below %d which the changelog held", got, lastOut)
	}
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}

	// The node is lost; a new owner restores from the whole changelog.
	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	a = h.start(cfg)
	h.waitRunning(a)
	if again := forwarded() - sent; again != 0 {
		t.Errorf("the new owner forwarded %v outbox entries again", again)
	}
	if n := len(streamMsgs(t, h.ctx, h.js, out)); n != 30 {
		t.Errorf("output stream holds %d messages, want 30", n)
	}
}

// A partition's owner forwarded its outbox and stopped before the forwarded
// mark reached the changelog; its successor restores from the changelog
// (on another node: no local store) only after the output stream's
// duplicate window has passed, so the output stream would store the entries
// again. The successor finds them in the output stream by their message ids
// and does not forward them again: each output is there once.
func TestOutboxPastTheDuplicateWindowIsNotForwardedTwice(t *testing.T) {
	h := newHarness(t, "late", 1)
	const window, events = time.Second, 20
	opt := StreamOptions{Replicas: 1, Duplicates: window}
	if err := EnsureStream(h.ctx, h.js, "late_out", []string{"out.late"}, opt); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		h.publish("k"+strconv.Itoa(i%4), nil)
	}
	cfg := h.config(0, countAndEmit("out.late", 1))
	cfg.MarkDelay = time.Hour // the forwarded mark of the last batch never commits
	a := h.start(cfg)
	h.waitOffset(a, 0)
	testkit.WaitFor(t, waitTimeout, "the outputs forwarded", func() bool { return len(streamMsgs(t, h.ctx, h.js, "late_out")) == events })
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	if m, _, err := lastMeta(h.ctx, h.js, changelog.NewSubjects(h.typ, 0)); err != nil || m.Forwarded != 0 {
		t.Fatalf("the changelog's forwarded mark is %d (%v): the test needs the outputs unmarked", m.Forwarded, err)
	}
	time.Sleep(window + 200*time.Millisecond) // the output stream deduplicates them no more

	reg := prometheus.NewRegistry()
	cfg.StoreDir += "-elsewhere" // a successor on another node: it restores the whole changelog
	cfg.Metrics = NewMetrics(reg)
	b := h.start(cfg)
	h.waitRunning(b)
	if err := b.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	ids := byMsgID(t, streamMsgs(t, h.ctx, h.js, "late_out"))
	if len(ids) != events {
		t.Errorf("%d outputs, want %d", len(ids), events)
	}
	if found := counterSum(t, reg, "eddy_partition_outbox_found_total"); found != events {
		t.Errorf("outbox_found_total %v, want %d", found, events)
	}
}
