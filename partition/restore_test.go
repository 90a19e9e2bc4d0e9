package partition

import (
	"testing"

	"github.com/eddyrt/eddy/changelog"
)

// When the changelog is gone (NATS's data was reset) but the local store
// remains, the store is discarded: the changelog is the truth.
func TestStoreAheadOfChangelogIsDiscarded(t *testing.T) {
	h := newHarness(t, "ahead", 1)
	cfg := h.config(0, counter)
	a := h.start(cfg)
	for range 10 {
		h.publish("k", nil)
	}
	h.waitOffset(a, 0)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.js.DeleteStream(h.ctx, changelog.NewSubjects("ahead", 0).Stream()); err != nil {
		t.Fatal(err)
	}
	h.publish("k", nil)
	a = h.start(cfg)
	h.waitOffset(a, 0)
	// The new changelog starts from offset 0, so the input is processed again
	// from its start: every event counted once in the new state.
	if got := count(h.ctx, a, "k"); got != 11 {
		t.Fatalf("k = %d, want 11", got)
	}
	if a.Restarts() > 1 {
		t.Fatalf("%d restarts", a.Restarts())
	}
}
