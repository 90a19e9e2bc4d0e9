package partition

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/snapshot"
)

// snapshotKeys are the keys the snapshot tests count.
const snapshotKeys = 7

// runUntilSnapshots runs a partition actor with cfg, publishing rounds of
// events (counted in model) until the type's bucket holds at least n
// snapshots of partition 0, the newest of everything committed (the
// SnapshotInterval tick takes it once the actor is idle), then stops it.
// It returns the bucket.
func (h *harness) runUntilSnapshots(cfg Config, n int, model map[string]uint64) *snapshot.Store {
	h.t.Helper()
	cfg.SnapshotInterval = 50 * time.Millisecond
	a := h.start(cfg)
	var b *snapshot.Store
	newest := func() (int, uint64) {
		if b == nil {
			var err error
			if b, err = snapshot.Lookup(h.ctx, h.js, h.typ, snapshot.DefaultConfig()); err != nil {
				return 0, 0
			}
		}
		ms, err := b.Manifests(h.ctx, 0)
		if err != nil || len(ms) == 0 {
			return 0, 0
		}
		return len(ms), ms[0].ChangelogSeq
	}
	testkit.WaitFor(h.t, waitTimeout, strconv.Itoa(n)+" snapshots", func() bool {
		for i := range 10 {
			k := "k" + strconv.Itoa(i%snapshotKeys)
			h.publish(k, nil)
			model[k]++
		}
		h.waitOffset(a, 0)
		have, _ := newest()
		return have >= n
	})
	testkit.WaitFor(h.t, waitTimeout, "a snapshot of everything committed", func() bool {
		_, seq := newest()
		return seq == a.Status().ChangelogSeq
	})
	if err := a.Stop(h.ctx); err != nil {
		h.t.Fatal(err)
	}
	return b
}

// changelogAfter counts the changelog records of partition 0 past seq.
func (h *harness) changelogAfter(seq uint64) int {
	n := 0
	cl := changelog.NewSubjects(h.typ, 0)
	for _, m := range streamMsgs(h.t, h.ctx, h.js, cl.Stream()) {
		if m.Sequence > seq {
			if err := cl.Records(m.Subject, m.Data, func(changelog.Record) error { n++; return nil }); err != nil {
				h.t.Fatal(err)
			}
		}
	}
	return n
}

// checkCounts compares a's committed counts with the model.
func (h *harness) checkCounts(a *Actor, model map[string]uint64) {
	h.t.Helper()
	for k, want := range model {
		if got := count(h.ctx, a, k); got != want {
			h.t.Errorf("%s = %d, want %d", k, got, want)
		}
	}
}

// restoresBy is eddy_partition_restores_total of path.
func restoresBy(t *testing.T, reg *prometheus.Registry, path string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "eddy_partition_restores_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "path" && l.GetValue() == path {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A partition actor whose store directory is lost restores from the newest
// snapshot and replays only the changelog past it: its state equals the
// state before, and it goes on counting from there.
func TestRestoreFromSnapshotAndTail(t *testing.T) {
	h := newHarness(t, "snap", 1)
	model := map[string]uint64{}
	cfg := h.config(0, counter)
	cfg.SnapshotEvery = 5
	bucket := h.runUntilSnapshots(cfg, 1, model)

	// A tail past the newest snapshot, written by an owner that takes none.
	cfg.SnapshotEvery = 0
	b := h.start(cfg)
	for i := range 3 { // keys 0-2: the changelog keeps one record per key
		k := "k" + strconv.Itoa(i)
		h.publish(k, nil)
		model[k]++
	}
	h.waitOffset(b, 0)
	if err := b.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	ms, err := bucket.Manifests(h.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	snap := ms[0]
	tail := h.changelogAfter(snap.ChangelogSeq)
	total := h.changelogAfter(0)
	if tail == 0 || tail >= total {
		t.Fatalf("tail of %d records of %d: the test needs a proper tail", tail, total)
	}

	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	leftover := cfg.StoreDir + ".snapshot-3" // a checkpoint a crash left
	if err := os.MkdirAll(leftover, 0o755); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Metrics = NewMetrics(reg)
	c := h.start(cfg)
	h.waitRunning(c)
	h.checkCounts(c, model)
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("a leftover checkpoint is still there: %v", err)
	}
	if got := restoresBy(t, reg, restoreSnapshot); got != 1 {
		t.Fatalf("restores from a snapshot = %v, want 1", got)
	}
	if got := counterSum(t, reg, "eddy_partition_restore_records_total"); got != float64(tail) {
		t.Fatalf("replayed %v changelog records, want the %d past the snapshot (of %d)", got, tail, total)
	}
	if s := c.Status().Snapshot; s == nil || !s.Restored || s.ChangelogSeq != snap.ChangelogSeq {
		t.Fatalf("status snapshot %+v, want restored at %d", s, snap.ChangelogSeq)
	}
	// And it goes on from there, each event counted once.
	h.publish("k0", nil)
	model["k0"]++
	h.waitOffset(c, 0)
	h.checkCounts(c, model)
}

// A corrupt file in the newest snapshot makes the restore fall back to the
// previous snapshot, and replay the changelog past that one.
func TestCorruptSnapshotFallsBackToThePrevious(t *testing.T) {
	h := newHarness(t, "snapbad", 1)
	model := map[string]uint64{}
	cfg := h.config(0, counter)
	cfg.SnapshotEvery = 5
	bucket := h.runUntilSnapshots(cfg, 2, model)
	ms, err := bucket.Manifests(h.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	newest, prev := ms[0], ms[1]
	inPrev := map[string]bool{}
	for _, f := range prev.Files {
		inPrev[f.SHA256] = true
	}
	obs, err := h.js.ObjectStore(h.ctx, snapshot.Bucket(h.typ))
	if err != nil {
		t.Fatal(err)
	}
	corrupted := false
	for _, f := range newest.Files {
		if !inPrev[f.SHA256] {
			if _, err := obs.PutString(h.ctx, "files/0/"+f.SHA256, "not the file"); err != nil {
				t.Fatal(err)
			}
			corrupted = true
			break
		}
	}
	if !corrupted {
		t.Fatal("the newest snapshot has no file of its own to corrupt")
	}
	tail := h.changelogAfter(prev.ChangelogSeq)

	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Metrics = NewMetrics(reg)
	cfg.SnapshotEvery = 0
	a := h.start(cfg)
	h.waitRunning(a)
	h.checkCounts(a, model)
	if got := restoresBy(t, reg, restoreSnapshot); got != 1 {
		t.Fatalf("restores from a snapshot = %v, want 1", got)
	}
	if s := a.Status().Snapshot; s == nil || s.ChangelogSeq != prev.ChangelogSeq {
		t.Fatalf("restored from %+v, want the previous snapshot at %d", s, prev.ChangelogSeq)
	}
	if got := counterSum(t, reg, "eddy_partition_restore_records_total"); got != float64(tail) {
		t.Fatalf("replayed %v changelog records, want the %d past the previous snapshot", got, tail)
	}
}

// A snapshot of an earlier changelog stream of the same name (deleted and
// created again) is never restored: the store comes from the new changelog.
func TestSnapshotOfAnEarlierChangelogIsNotUsed(t *testing.T) {
	h := newHarness(t, "snapold", 1)
	cfg := h.config(0, counter)
	cfg.SnapshotEvery = 5
	h.runUntilSnapshots(cfg, 1, map[string]uint64{})
	for _, s := range []string{changelog.NewSubjects(h.typ, 0).Stream(), h.typ} {
		if err := h.js.DeleteStream(h.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	h.createStreams()
	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Metrics = NewMetrics(reg)
	cfg.SnapshotEvery = 0
	a := h.start(cfg)
	h.publish("fresh", nil)
	h.waitOffset(a, 0)
	if got := count(h.ctx, a, "k0"); got != 0 {
		t.Fatalf("k0 = %d from the old changelog's snapshot", got)
	}
	if got := count(h.ctx, a, "fresh"); got != 1 {
		t.Fatalf("fresh = %d, want 1", got)
	}
	if got := restoresBy(t, reg, restoreChangelog); got != 1 {
		t.Fatalf("restores from the changelog = %v, want 1 (snapshot: %v)", got, restoresBy(t, reg, restoreSnapshot))
	}
}

// Actor.Snapshot takes one now, with periodic snapshots off: it returns once
// uploaded, the bucket holds it, and asked again with nothing new it returns
// the same snapshot instead of taking another.
func TestSnapshotNow(t *testing.T) {
	h := newHarness(t, "snapnow", 1)
	a := h.start(h.config(0, counter))
	for i := range 20 {
		h.publish("k"+strconv.Itoa(i%5), nil)
	}
	h.waitOffset(a, 0)
	st, err := a.Snapshot(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChangelogSeq != a.Status().ChangelogSeq || st.Files == 0 || st.Uploaded == 0 {
		t.Fatalf("snapshot %+v; want one of everything committed (changelog sequence %d)", st, a.Status().ChangelogSeq)
	}
	b, err := snapshot.Lookup(h.ctx, h.js, h.typ, snapshot.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if ms, err := b.Manifests(h.ctx, 0); err != nil || len(ms) != 1 || ms[0].ChangelogSeq != st.ChangelogSeq {
		t.Fatalf("manifests %+v, %v; want the one snapshot", ms, err)
	}
	again, err := a.Snapshot(h.ctx)
	if err != nil || again.ChangelogSeq != st.ChangelogSeq || !again.Created.Equal(st.Created) {
		t.Fatalf("asked again with nothing new: %+v, %v; want %+v", again, err, st)
	}
	if ms, _ := b.Manifests(h.ctx, 0); len(ms) != 1 {
		t.Fatalf("%d manifests after asking twice with nothing new; want 1", len(ms))
	}
}

// SnapshotEvery counts changelog records, not changelog messages: a commit
// is one message however many records it holds.
func TestSnapshotEveryCountsRecords(t *testing.T) {
	h := newHarness(t, "snaprecs", 1)
	for i := range 40 { // one batch: 40 values and a meta record in one message
		h.publish("k"+strconv.Itoa(i), nil)
	}
	cfg := h.config(0, counter)
	cfg.SnapshotEvery, cfg.SnapshotInterval = 30, 0
	a := h.start(cfg)
	h.waitOffset(a, 0)
	if seq := a.Status().ChangelogSeq; seq >= cfg.SnapshotEvery {
		t.Fatalf("the changelog took %d messages for one batch: the test needs fewer than %d", seq, cfg.SnapshotEvery)
	}
	testkit.WaitFor(t, waitTimeout, "a snapshot after 40 records", func() bool {
		b, err := snapshot.Lookup(h.ctx, h.js, h.typ, snapshot.DefaultConfig())
		if err != nil {
			return false
		}
		ms, err := b.Manifests(h.ctx, 0)
		return err == nil && len(ms) > 0
	})
}
