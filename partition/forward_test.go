package partition

import (
	"strconv"
	"strings"
	"testing"

	"github.com/eddyrt/eddy/internal/testkit"
)

// Outputs are forwarded while the next batch runs, but land in commit
// order: while their stream is gone, the partition goes on committing
// until the batch after the failed forward, which waits for it; once the
// stream is back every output lands once, and each key's outputs in the
// order its events were processed.
func TestForwardKeepsCommitOrderThroughFailures(t *testing.T) {
	h := newHarness(t, "fwdorder", 1)
	const out, subject, keys = "fwdorder_out", "out.fwdorder", 5
	ensureOutput(t, h.ctx, h.js, out, subject)
	cfg := h.config(0, countAndEmit(subject, 1))
	cfg.BatchSize = 7 // many batches, so forwards overlap them
	a := h.start(cfg)
	model := map[string]uint64{}
	publish := func(n int) { h.publishCounted(n, keys, model) }
	publish(50)
	h.waitOffset(a, 0)

	if err := h.js.DeleteStream(h.ctx, out); err != nil {
		t.Fatal(err)
	}
	publish(50)
	testkit.WaitFor(t, waitTimeout, "the partition to retry its forward", func() bool {
		return a.Status().State == StateRetrying
	})
	ensureOutput(t, h.ctx, h.js, out, subject)
	h.waitOffset(a, 0)
	testkit.WaitFor(t, waitTimeout, "every output", func() bool {
		st, err := h.js.Stream(h.ctx, out)
		if err != nil {
			return false
		}
		info, err := st.Info(h.ctx)
		return err == nil && info.State.Msgs >= 50 // those of the second half, at least
	})
	if a.Status().State != StateRunning {
		t.Fatalf("state %s after the stream came back, want running", a.Status().State)
	}

	// The recreated stream holds the outputs not forwarded before it was
	// deleted: each once, and each key's in order, up to its count.
	msgs := streamMsgs(t, h.ctx, h.js, out)
	byMsgID(t, msgs)
	next := map[string]uint64{}
	for _, m := range msgs {
		k, n, ok := strings.Cut(string(m.Data), "=")
		if !ok {
			t.Fatalf("output %q", m.Data)
		}
		got, _ := strconv.ParseUint(n, 10, 64)
		if next[k] != 0 && got != next[k] {
			t.Fatalf("output %s=%d after %s=%d: out of order or missing", k, got, k, next[k]-1)
		}
		next[k] = got + 1
	}
	for k, want := range model {
		if next[k] != want+1 {
			t.Errorf("the last output of %s is %d, want %d", k, next[k]-1, want)
		}
	}
	if got := len(msgs); got < 50 || got > 100 {
		t.Errorf("%d outputs in the recreated stream, want the second half's 50 and at most 50 more", got)
	}
}
