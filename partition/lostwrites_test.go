package partition

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eddyrt/eddy/internal/testkit"
)

// TestChangelogLosesItsAcknowledgedTail: by default a nats-server
// acknowledges writes before it syncs them to disk, so a host crash can take
// back writes it acknowledged (modelled here by rewinding the server's store
// to a snapshot: the changelog, the input and the output streams all lose
// their tail). The partition actor and its hot replica already hold the lost
// changelog records, and the actor forwarded outputs of the lost events.
// Both must notice that their stores are ahead of the changelog, discard
// them and restore from the changelog, and go on from what NATS kept: the
// state and the outputs are those of a sequential run of the events the
// input stream kept and the ones published after the crash, each once.
func TestChangelogLosesItsAcknowledgedTail(t *testing.T) {
	h := newHarness(t, "lost", 1)
	out := "out.lost"
	ensureOutput(t, h.ctx, h.js, "lost_out", out)
	reg := prometheus.NewRegistry()
	cfg := h.config(0, countAndEmit(out, 1))
	cfg.Metrics = NewMetrics(reg)
	a := h.start(cfg)
	rcfg := cfg
	rcfg.StoreDir += "-replica"
	r, err := StartReplica(h.sys, rcfg, testSupervisor())
	if err != nil {
		t.Fatal(err)
	}
	const keys = 5
	var kept []string // the keys of the events the input stream keeps, in order
	publish := func(n int, keep bool) {
		for i := range n {
			key := "k" + strconv.Itoa(i%keys)
			h.publish(key, nil)
			if keep {
				kept = append(kept, key)
			}
		}
		h.waitOffset(a, 0)
		seq := a.Status().ChangelogSeq
		testkit.WaitFor(t, waitTimeout, "the replica to catch up", func() bool { return r.Lag().Applied >= seq })
	}

	publish(50, true)
	snap := h.srv.Snapshot() // what the disk holds when the host crashes
	publish(50, false)       // acknowledged, applied by actor and replica, outputs forwarded: lost
	h.srv.Rewind(snap)
	testkit.WaitFor(t, waitTimeout, "the active's and the replica's stores discarded", func() bool {
		return counterSum(t, reg, "eddy_partition_store_discards_total") >= 2
	})
	for range 30 { // new events take the lost events' sequences
		key := "k" + strconv.Itoa(len(kept)%keys)
		h.publish(key, nil)
		kept = append(kept, key)
	}
	testkit.WaitFor(t, waitTimeout, "the active to process what the input stream holds", func() bool {
		st := a.Status()
		return st.Running && st.Offset == uint64(len(kept))
	})
	seq := a.Status().ChangelogSeq
	testkit.WaitFor(t, waitTimeout, "the replica to catch up", func() bool { return r.Lag().Applied == seq })
	counts := map[string]uint64{}
	want := map[string]string{} // output message id -> value
	for i, key := range kept {
		counts[key]++
		want[fmt.Sprintf("lost/0/%d/0", i+1)] = fmt.Sprintf("%s=%d", key, counts[key])
	}
	for key, n := range counts {
		if got := count(h.ctx, a, key); got != n {
			t.Errorf("%s = %d, want %d", key, got, n)
		}
		v, _, err := r.Get(h.ctx, DefaultStore, []byte(key))
		if err != nil || decodeCount(v) != n {
			t.Errorf("replica: %s = %d (%v), want %d", key, decodeCount(v), err, n)
		}
	}
	testkit.WaitFor(t, waitTimeout, "every output forwarded", func() bool { return len(streamMsgs(t, h.ctx, h.js, "lost_out")) >= len(kept) })
	ids := byMsgID(t, streamMsgs(t, h.ctx, h.js, "lost_out"))
	if len(ids) != len(kept) {
		t.Errorf("%d outputs, want %d", len(ids), len(kept))
	}
	for id, v := range want {
		if m := ids[id]; m == nil || string(m.Data) != v {
			t.Errorf("output %s: %v, want %q", id, m, v)
		}
	}
}
