package partition

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/snapshot"
)

// The changelog is a log trimmed below the partition's snapshots. Every
// reader that holds less than the trimmed part restores from a snapshot and
// ends with the exact state: a new hot replica, one that was stopped while
// the changelog moved past it, and an owner that lost its store. Without a
// usable snapshot, a trimmed changelog is never taken for the whole state.
func TestTrimmedChangelogRestoresFromSnapshots(t *testing.T) {
	h := newHarness(t, "trim", 1)
	model := map[string]uint64{}
	cfg := h.config(0, counter)
	cfg.SnapshotEvery = 20
	cl := changelog.NewSubjects(h.typ, 0)

	// A replica that follows the first records, then stops with its store.
	laggard := h.config(0, counter)
	laggard.StoreDir += "-laggard"
	r := h.startReplica(laggard)
	a := h.start(cfg)
	round := func() {
		for i := range 10 {
			k := "k" + strconv.Itoa(i%snapshotKeys)
			h.publish(k, nil)
			model[k]++
		}
		h.waitOffset(a, 0)
	}
	round()
	h.waitCaughtUp(r, 0)
	if err := r.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	heldByLaggard := r.Lag().Applied

	// Run until the changelog is trimmed past the laggard, by snapshots.
	first := func() jetstream.StreamState {
		st, err := h.js.Stream(h.ctx, cl.Stream())
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().State
	}
	testkit.WaitFor(t, waitTimeout, "the changelog trimmed past the stopped replica", func() bool {
		round()
		return first().FirstSeq > heldByLaggard+1
	})
	if st := first(); st.NumSubjects > 3 {
		t.Errorf("the changelog has %d subjects; want at most 3, whatever the keys", st.NumSubjects)
	}

	// A new replica, and the laggard with its old store, both restore
	// from a snapshot and catch up exactly.
	fresh := h.config(0, counter)
	fresh.StoreDir += "-fresh"
	for _, c := range []Config{fresh, laggard} {
		r := h.startReplica(c)
		h.waitCaughtUp(r, 0)
		for k, want := range model {
			v, _, err := r.Get(h.ctx, DefaultStore, []byte(k))
			if err != nil || decodeCount(v) != want {
				t.Errorf("replica %s: %s = %d (%v), want %d", c.StoreDir, k, decodeCount(v), err, want)
			}
		}
		if err := r.Stop(h.ctx); err != nil {
			t.Fatal(err)
		}
	}

	// The owner loses its store: it restores from a snapshot.
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	a = h.start(cfg)
	h.waitRunning(a)
	if st := a.Status(); st.Snapshot == nil || !st.Snapshot.Restored {
		t.Errorf("restored without a snapshot: %+v", st.Snapshot)
	}
	h.checkCounts(a, model)
	round()
	h.checkCounts(a, model)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}

	// Without the snapshots, the trimmed changelog is not the whole state:
	// the partition does not start, and says why.
	if err := h.js.DeleteObjectStore(h.ctx, snapshot.Bucket(h.typ)); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	a = h.start(cfg)
	testkit.WaitFor(t, waitTimeout, "the partition to refuse the trimmed changelog", func() bool {
		st := a.Status()
		return st.State == StateRetrying && strings.Contains(st.Err, "trimmed")
	})
	if _, err := a.Get(h.ctx, DefaultStore, []byte("k0")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a partition that cannot restore answered a query: %v", err)
	}
}
