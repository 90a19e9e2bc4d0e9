package partition

import (
	"strconv"
	"testing"
	"time"

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

// A changelog deleted and created again, and grown past the old local store's
// sequence by another owner, must not be replayed on top of the old store.
func TestStoreOfARecreatedChangelogIsDiscarded(t *testing.T) {
	h := newHarness(t, "recreated", 1)
	cfg := h.config(0, counter)
	a := h.start(cfg)
	for range 3 {
		h.publish("old", nil)
	}
	h.waitOffset(a, 0)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	// The changelog and input are reset; another owner processes more than
	// before, elsewhere, so the new changelog is longer than the old one.
	for _, s := range []string{changelog.NewSubjects("recreated", 0).Stream(), "recreated"} {
		if err := h.js.DeleteStream(h.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := EnsureInputStream(h.ctx, h.js, Input{Type: "recreated", Partitions: 1}, StreamOptions{Replicas: 1, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.StoreDir += "-other"
	b := h.start(other)
	for i := range 20 {
		h.publish("new"+strconv.Itoa(i), nil)
	}
	h.waitOffset(b, 0)
	if err := b.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	// The old store comes back: it is discarded and rebuilt from the new changelog.
	a = h.start(cfg)
	h.waitOffset(a, 0)
	if got := count(h.ctx, a, "old"); got != 0 {
		t.Fatalf("stale key survived: old = %d", got)
	}
	if got := count(h.ctx, a, "new7"); got != 1 {
		t.Fatalf("new7 = %d, want 1", got)
	}
}
