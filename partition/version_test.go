package partition

import (
	"errors"
	"strings"
	"testing"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
)

// A node of an older state version must not run a partition whose changelog
// a newer version wrote: it refuses before writing anything (not even its
// epoch record, which would fence the newer owner), stops for good instead
// of retrying, and says both versions and who wrote the newer state. That
// holds on a new node (full replay) and on the node whose store the newer
// version's records reached.
func TestOlderVersionRefusesNewerChangelog(t *testing.T) {
	h := newHarness(t, "ver_refuse", 1)
	cl := changelog.NewSubjects("ver_refuse", 0)

	newer := h.config(0, counter)
	newer.StateVersion, newer.Owner = 2, "node-b/new"
	a := h.start(newer)
	for range 5 {
		h.publish("k", nil)
	}
	h.waitOffset(a, 0)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	m, _, err := lastMeta(h.ctx, h.js, cl)
	if err != nil || m.Version != 2 || m.Owner != "node-b/new" {
		t.Fatalf("newest meta record %+v (%v): want version 2 written by node-b/new", m, err)
	}
	seq := lastSeq(t, h, cl)

	for _, c := range []struct {
		name string
		dir  string
	}{{"NewNode", newer.StoreDir + "-older"}, {"SameStore", newer.StoreDir}} {
		t.Run(c.name, func(t *testing.T) {
			older := h.config(0, counter)
			older.StoreDir, older.Owner = c.dir, "node-a/old" // StateVersion 0: version 1
			o := h.start(older)
			testkit.WaitFor(t, waitTimeout, "older actor to stop", func() bool {
				select {
				case <-o.Done():
					return true
				default:
					return false
				}
			})
			var ve *VersionError
			if !errors.As(o.Err(), &ve) || !errors.Is(o.Err(), ErrStateVersion) {
				t.Fatalf("older actor stopped with %v, want a *VersionError", o.Err())
			}
			if ve.Version != 1 || ve.Found != 2 || ve.Owner != "node-b/new" {
				t.Fatalf("version error %+v: want version 1, found 2, owner node-b/new", ve)
			}
			msg := o.Err().Error()
			for _, want := range []string{"state version 2", "version 1", "node-b/new"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
			if o.Restarts() != 0 {
				t.Errorf("%d restarts: a newer state version must stop the actor, not retry", o.Restarts())
			}
			st := o.Status()
			if st.Running || !strings.Contains(st.Err, "state version 2") {
				t.Errorf("status %+v: want stopped with the version error", st)
			}
			if got := lastSeq(t, h, cl); got != seq {
				t.Fatalf("the older actor wrote to the changelog: last sequence %d, was %d", got, seq)
			}
		})
	}

	// The newer version still runs the partition, and its state is intact.
	a = h.start(newer)
	h.publish("k", nil)
	h.waitOffset(a, 0)
	if got := count(h.ctx, a, "k"); got != 6 {
		t.Fatalf("k = %d, want 6", got)
	}
}

// A hot replica of an older version must not apply what a newer version
// wrote: it stops tailing at the first meta record of the newer version,
// without committing that batch, and says why in Err.
func TestReplicaOfOlderVersionStopsAtNewerRecords(t *testing.T) {
	h := newHarness(t, "ver_replica", 1)
	cl := changelog.NewSubjects("ver_replica", 0)

	v1 := h.config(0, counter)
	a := h.start(v1)
	rcfg := h.config(0, counter)
	rcfg.StoreDir += "-replica"
	r, err := StartReplica(h.sys, rcfg, testSupervisor())
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		h.publish("k", nil)
	}
	h.waitOffset(a, 0)
	v1Seq := lastSeq(t, h, cl)
	testkit.WaitFor(t, waitTimeout, "replica to apply version 1", func() bool { return r.Lag().Applied >= v1Seq })
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	before := lastSeq(t, h, cl)

	// Version 2 (no Migrate: the values are kept) takes over and processes more.
	v2 := v1
	v2.StateVersion = 2
	b := h.start(v2)
	for range 5 {
		h.publish("k", nil)
	}
	h.waitOffset(b, 0)
	if got := count(h.ctx, b, "k"); got != 10 {
		t.Fatalf("k = %d, want 10", got)
	}

	testkit.WaitFor(t, waitTimeout, "replica to stop", func() bool {
		select {
		case <-r.Done():
			return true
		default:
			return false
		}
	})
	var ve *VersionError
	if !errors.As(r.Err(), &ve) || ve.Version != 1 || ve.Found != 2 {
		t.Fatalf("replica stopped with %v, want a *VersionError (version 1, found 2)", r.Err())
	}
	// It applied version 1's records and at most version 2's epoch record
	// (written before the upgrade: version 1 state), nothing of version 2's.
	if got := r.Lag().Applied; got > before+1 {
		t.Fatalf("replica applied through %d, past version 2's epoch record at %d", got, before+1)
	}
	if m, _, err := lastMeta(h.ctx, h.js, cl); err != nil || m.Version != 2 {
		t.Fatalf("newest meta record %+v (%v): want version 2", m, err)
	}
}

// lastSeq is the last sequence of changelog cl.
func lastSeq(t *testing.T, h *harness, cl changelog.Subjects) uint64 {
	t.Helper()
	st, err := h.js.Stream(h.ctx, cl.Stream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}
