package partition

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore"
)

// rebuildV1 counts events per key as 8 bytes, keeps a legacy key per key
// that version 2 no longer writes, and publishes "<key>=<count>".
func rebuildV1(subject string) Handler {
	emit := countAndEmit(subject, 1)
	return func(tx *Txn) error {
		if err := emit(tx); err != nil {
			return err
		}
		return tx.Set(DefaultStore, []byte("legacy-"+tx.Event().Key), []byte("v1"))
	}
}

// rebuildV2 counts events per key as JSON and publishes the same outputs.
func rebuildV2(subject string) Handler {
	return func(tx *Txn) error {
		key := []byte(tx.Event().Key)
		var acc account
		if v, err := tx.Get(DefaultStore, key); err == nil {
			if err := json.Unmarshal(v, &acc); err != nil {
				return fmt.Errorf("version 2 met a value it cannot read (%q): %v: %w", v, err, ErrPermanent)
			}
		} else if !errors.Is(err, statestore.ErrNotFound) {
			return err
		}
		acc.N++
		b, _ := json.Marshal(acc)
		if err := tx.Set(DefaultStore, key, b); err != nil {
			return err
		}
		return tx.Publish(subject, nil, []byte(tx.Event().Key+"="+strconv.FormatUint(acc.N, 10)))
	}
}

// RebuildOnNewVersion throws the old state away and runs the input again
// through the new handler: the state then equals a fresh run of version 2
// (the legacy keys are gone, from the store and from the changelog), and
// nothing is forwarded twice — the output stream's short duplicate window
// would let a second forward through. A crash in the middle of the rebuild
// resumes it with the same result.
func TestRebuildOnNewVersion(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "Clean"
		if crash {
			name = "CrashMidRebuild"
		}
		t.Run(name, func(t *testing.T) {
			typ := "ver_rebuild_" + strings.ToLower(name)
			h := newHarness(t, typ, 1)
			cl := changelog.NewSubjects(typ, 0)
			out := "out." + typ
			if err := EnsureStream(h.ctx, h.js, typ+"_out", []string{out},
				StreamOptions{Replicas: 1, Duplicates: 100 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			const keys = 6
			model := map[string]uint64{}
			publish := func(n int) { h.publishCounted(n, keys, model) }

			v1 := h.config(0, rebuildV1(out))
			v1.MaxBatchRecords = 4 // a rebuild batch holds 3 keys: many commits
			v1.SnapshotEvery = 20  // and snapshots trim the changelog before the rebuild
			a := h.start(v1)
			publish(60)
			h.waitOffset(a, 0)
			testkit.WaitFor(t, waitTimeout, "the changelog trimmed by snapshots", func() bool {
				st, err := h.js.Stream(h.ctx, cl.Stream())
				return err == nil && st.CachedInfo().State.FirstSeq > 1
			})
			if err := a.Stop(h.ctx); err != nil {
				t.Fatal(err)
			}
			// Another node's store of version 1's state (a former owner's).
			other := v1
			other.StoreDir += "-other"
			o := h.start(other)
			h.waitRunning(o)
			if err := o.Stop(h.ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond) // past the outputs' duplicate window

			v2 := v1
			v2.Handler, v2.StateVersion, v2.RebuildOnNewVersion = rebuildV2(out), 2, true
			var (
				mu      sync.Mutex
				commits int
				crashed bool
			)
			if crash {
				v2.Hooks.AfterChangelog = func() {
					mu.Lock()
					commits++
					c := !crashed && commits == 5 // epoch record, rebuild start, then rebuild batches
					crashed = crashed || c
					mu.Unlock()
					if c {
						panic("injected crash between the changelog and the local commit")
					}
				}
			}
			// A hot replica that holds version 1's state when the rebuild begins.
			rcfg := v2
			rcfg.Hooks = Hooks{}
			rcfg.StoreDir += "-replica"
			r, err := StartReplica(h.sys, rcfg, testSupervisor())
			if err != nil {
				t.Fatal(err)
			}
			v1Seq := lastSeq(t, h, cl)
			testkit.WaitFor(t, waitTimeout, "replica to apply version 1", func() bool { return r.Lag().Applied >= v1Seq })
			b := h.start(v2)
			h.waitRunning(b)
			if crash && b.Restarts() == 0 {
				t.Fatal("the crash was not injected")
			}
			publish(20)
			h.waitOffset(b, 0)

			check := func(who string, a *Actor) {
				t.Helper()
				for k, n := range model {
					v, err := a.Get(h.ctx, DefaultStore, []byte(k))
					if err != nil {
						t.Fatalf("%s: %s: %v", who, k, err)
					}
					var acc account
					if err := json.Unmarshal(v, &acc); err != nil || acc.N != n {
						t.Errorf("%s: %s = %q, want n=%d", who, k, v, n)
					}
					if _, err := a.Get(h.ctx, DefaultStore, []byte("legacy-"+k)); !errors.Is(err, statestore.ErrNotFound) {
						t.Errorf("%s: legacy-%s survived the rebuild (%v)", who, k, err)
					}
				}
			}
			check("after the rebuild", b)
			last := lastSeq(t, h, cl)
			testkit.WaitFor(t, waitTimeout, "replica to catch up", func() bool { return r.Lag().Applied >= last })
			for k, n := range model {
				v, _, err := r.Get(h.ctx, DefaultStore, []byte(k))
				var acc account
				if err != nil || json.Unmarshal(v, &acc) != nil || acc.N != n {
					t.Errorf("replica: %s = %q (%v), want n=%d", k, v, err, n)
				}
				if _, _, err := r.Get(h.ctx, DefaultStore, []byte("legacy-"+k)); !errors.Is(err, statestore.ErrNotFound) {
					t.Errorf("replica: legacy-%s survived the rebuild (%v)", k, err)
				}
			}
			m, _, err := lastMeta(h.ctx, h.js, cl)
			if err != nil || m.Version != 2 || m.Rebuilding || m.RebuiltAt == 0 {
				t.Fatalf("newest meta record %+v (%v): want version 2, rebuilt, not rebuilding", m, err)
			}

			// Each output once: key=1..count, under a message id of its own.
			msgs := streamMsgs(t, h.ctx, h.js, typ+"_out")
			byMsgID(t, msgs)
			seen := map[string]int{}
			for _, m := range msgs {
				seen[string(m.Data)]++
			}
			var total uint64
			for k, n := range model {
				total += n
				for i := uint64(1); i <= n; i++ {
					if o := k + "=" + strconv.FormatUint(i, 10); seen[o] != 1 {
						t.Errorf("output %s forwarded %d times", o, seen[o])
					}
				}
			}
			if uint64(len(msgs)) != total {
				t.Fatalf("%d outputs, want %d", len(msgs), total)
			}
			if dl := streamMsgs(t, h.ctx, h.js, DLQStream(typ)); len(dl) != 0 {
				t.Fatalf("%d dead letters: version 2 met old state", len(dl))
			}

			// The changelog holds version 2's state only: a new node restores
			// the same.
			if err := b.Stop(h.ctx); err != nil {
				t.Fatal(err)
			}
			fresh := v2
			fresh.Hooks = Hooks{}
			fresh.StoreDir += "-fresh"
			c := h.start(fresh)
			h.waitRunning(c)
			check("a new node", c)
			if err := c.Stop(h.ctx); err != nil {
				t.Fatal(err)
			}
			// And so does a node that kept a store of version 1's state: it
			// is discarded, as it predates the rebuild.
			old := v2
			old.Hooks = Hooks{}
			old.StoreDir = other.StoreDir
			d := h.start(old)
			h.waitRunning(d)
			check("a node with a store from before the rebuild", d)
		})
	}
}

// A rebuild needs the input from its first event: without it the partition
// fails with ErrInputGone, naming the stream and its first sequence, and
// keeps its old state.
func TestRebuildNeedsTheFirstEvent(t *testing.T) {
	h := newHarness(t, "ver_gone", 1)
	cl := changelog.NewSubjects("ver_gone", 0)
	v1 := h.config(0, counter)
	a := h.start(v1)
	for range 5 {
		h.publish("k", nil)
	}
	h.waitOffset(a, 0)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	st, err := h.js.Stream(h.ctx, "ver_gone")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(h.ctx, 1); err != nil {
		t.Fatal(err)
	}
	before := lastSeq(t, h, cl)

	v2 := v1
	v2.StateVersion, v2.RebuildOnNewVersion = 2, true
	b := h.start(v2)
	testkit.WaitFor(t, waitTimeout, "the rebuild to fail", func() bool {
		s := b.Status()
		return s.State == StateRetrying && strings.Contains(s.Err, "first sequence is 2")
	})
	if s := b.Status(); !strings.Contains(s.Err, "input stream ver_gone") || !strings.Contains(s.Err, ErrInputGone.Error()) {
		t.Fatalf("status error %q: want ErrInputGone naming the stream", s.Err)
	}
	if err := b.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	// Only epoch records were written: the state is version 1's, untouched.
	m, _, err := lastMeta(h.ctx, h.js, cl)
	if err != nil || m.Version > 1 || m.Rebuilding {
		t.Fatalf("newest meta record %+v (%v): want version 1, no rebuild", m, err)
	}
	a = h.start(v1)
	h.waitRunning(a)
	if got := count(h.ctx, a, "k"); got != 5 {
		t.Fatalf("k = %d after the refused rebuild, want 5 (changelog from %d)", got, before)
	}
}
