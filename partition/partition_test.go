package partition

import (
	"errors"
	"os"
	"strconv"
	"testing"
)

func TestCountsAndRestoreAfterStoreLoss(t *testing.T) {
	h := newHarness(t, "counts", 1)
	cfg := h.config(0, counter)
	a := h.start(cfg)
	for i := 0; i < 500; i++ {
		h.publish("k"+strconv.Itoa(i%7), []byte("x"))
	}
	h.waitOffset(a, 0)
	if got := count(h.ctx, a, "k0"); got != 72 {
		t.Fatalf("k0 = %d, want 72", got)
	}
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}

	// The local store is lost: the state is rebuilt from the changelog
	// before any new event is processed.
	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	h.publish("k0", []byte("x"))
	a = h.start(cfg)
	h.waitOffset(a, 0)
	if got := count(h.ctx, a, "k0"); got != 73 {
		t.Fatalf("after restore k0 = %d, want 73", got)
	}
	if got := count(h.ctx, a, "k6"); got != 71 {
		t.Fatalf("after restore k6 = %d, want 71", got)
	}
	s := a.Status()
	if s.Epoch != 2 {
		t.Fatalf("epoch after restart = %d, want 2", s.Epoch)
	}
}

func TestOlderEpochIsFenced(t *testing.T) {
	h := newHarness(t, "fence", 1)
	old := h.config(0, counter)
	old.Epoch = 1
	a1 := h.start(old)
	h.publish("a", nil)
	h.waitOffset(a1, 0)

	// A newer owner takes over with its own store (as on another node).
	newer := h.config(0, counter)
	newer.Epoch = 2
	newer.StoreDir += "-new"
	a2 := h.start(newer)
	h.waitRunning(a2) // it has fenced
	if s := a2.Status(); s.Epoch != 2 {
		t.Fatalf("new owner: %+v", s)
	}
	h.publish("a", nil)
	h.waitOffset(a2, 0)

	// The old owner still reads the input; its next commit must fail.
	<-a1.Done()
	if !errors.Is(a1.Err(), ErrFenced) {
		t.Fatalf("old owner ended with %v, want ErrFenced", a1.Err())
	}
	if got := count(h.ctx, a2, "a"); got != 2 {
		t.Fatalf("a = %d, want 2", got)
	}
	// An owner that starts with a stale epoch is fenced at once.
	stale := h.config(0, counter)
	stale.Epoch = 2
	stale.StoreDir += "-stale"
	a3 := h.start(stale)
	<-a3.Done()
	if !errors.Is(a3.Err(), ErrFenced) {
		t.Fatalf("stale owner ended with %v, want ErrFenced", a3.Err())
	}
}
