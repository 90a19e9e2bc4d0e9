package partition

import (
	"encoding/binary"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	dto "github.com/prometheus/client_model/go"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
)

func (h *harness) startReplica(cfg Config) *Replica {
	h.t.Helper()
	r, err := StartReplica(h.sys, cfg, testSupervisor())
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

// waitCaughtUp waits until r has applied the whole changelog of partition p.
func (h *harness) waitCaughtUp(r *Replica, p int) {
	h.t.Helper()
	st, err := h.js.Stream(h.ctx, changelog.NewSubjects(h.typ, p).Stream())
	if err != nil {
		h.t.Fatal(err)
	}
	testkit.WaitFor(h.t, waitTimeout, "replica to catch up", func() bool {
		info, err := st.Info(h.ctx)
		if err != nil {
			return false
		}
		l := r.Lag()
		return l.Known() && l.Records == 0 && l.Applied == info.State.LastSeq
	})
}

// checkPromoted checks that the counts of keys k0..k<keys-1> of promoted
// actor p add up to events and that the output stream <type>_out holds one
// output per event, and returns how many changelog records p replayed.
func (h *harness) checkPromoted(p *Actor, m *Metrics, keys int, events uint64) float64 {
	h.t.Helper()
	total := uint64(0)
	for k := range keys {
		total += count(h.ctx, p, "k"+strconv.Itoa(k))
	}
	if total != events {
		h.t.Fatalf("counts add up to %d, want %d", total, events)
	}
	// Outputs are forwarded while the next batch runs: wait for the last.
	testkit.WaitFor(h.t, waitTimeout, "every output forwarded", func() bool {
		return uint64(len(streamMsgs(h.t, h.ctx, h.js, h.typ+"_out"))) >= events
	})
	if out := byMsgID(h.t, streamMsgs(h.t, h.ctx, h.js, h.typ+"_out")); uint64(len(out)) != events {
		h.t.Fatalf("%d outputs, want %d", len(out), events)
	}
	var c dto.Metric
	if err := m.restoreRecords.WithLabelValues(h.typ, "0").Write(&c); err != nil {
		h.t.Fatal(err)
	}
	return c.GetCounter().GetValue()
}

// A hot replica tails the changelog into its own store while the active
// commits; when the active stops and a partition actor with a newer epoch
// starts on the replica's store (a promotion), it restores nothing but the
// tail and goes on from the committed offset: no event lost, none counted twice.
// The same on a server of 2 KiB messages, where every commit takes parts.
func TestReplicaPromotionRestoresOnlyTheTail(t *testing.T) {
	t.Run("OneMessage", func(t *testing.T) { replicaPromotion(t, nil) })
	t.Run("Parts", func(t *testing.T) {
		h := replicaPromotion(t, func(o *server.Options) { o.MaxPayload = 2 << 10 })
		checkParts(t, h.ctx, h.js, changelog.NewSubjects("rep", 0))
	})
}

func replicaPromotion(t *testing.T, mutate func(*server.Options)) *harness {
	h := newHarnessWith(t, "rep", 1, mutate)
	ensureOutput(t, h.ctx, h.js, "rep_out", "rep_out.*")
	cfg := h.config(0, countAndEmit("rep_out.x", 1))
	cfg.Epoch = 1
	a := h.start(cfg)
	rcfg := cfg
	rcfg.StoreDir += "-replica"
	r := h.startReplica(rcfg)
	for i := range 300 {
		h.publish("k"+strconv.Itoa(i%7), nil)
	}
	h.waitOffset(a, 0)
	h.waitCaughtUp(r, 0)

	// Idle and caught up, the replica keeps renewing the time it was known
	// current, so its reads have a staleness bound; they see committed state.
	idle := time.Now()
	testkit.WaitFor(t, waitTimeout, "an idle replica to renew its lag", func() bool { return r.Lag().At.After(idle.Add(300 * time.Millisecond)) })
	if s := r.Lag().Staleness(time.Now()); s > time.Second {
		t.Errorf("idle caught-up replica: staleness %v", s)
	}
	v, lag, err := r.Get(h.ctx, DefaultStore, []byte("k3"))
	if err != nil || binary.BigEndian.Uint64(v) != count(h.ctx, a, "k3") || lag.Records != 0 {
		t.Fatalf("replica read of k3: %v (lag %+v), %v; active has %d", v, lag, err, count(h.ctx, a, "k3"))
	}

	// The replica restarts (its own crash or a node restart) and resumes
	// from the sequence its store holds.
	if err := r.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		h.publish("k"+strconv.Itoa(i%7), nil)
	}
	h.waitOffset(a, 0)
	r = h.startReplica(rcfg)
	h.waitCaughtUp(r, 0)

	// More input arrives while the active is stopped and the replica is promoted.
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		h.publish("k"+strconv.Itoa(i%7), nil)
	}
	h.waitCaughtUp(r, 0)
	ho, err := r.Handoff(h.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	pcfg := rcfg
	pcfg.Epoch = 2
	pcfg.Metrics = NewMetrics(nil)
	pcfg.Handoff = ho // the promotion takes the replica's open store
	p := h.start(pcfg)
	h.waitOffset(p, 0)
	// The replica had applied everything: the promotion replayed nothing.
	if n := h.checkPromoted(p, pcfg.Metrics, 7, 450); n != 0 {
		t.Fatalf("promotion replayed %v changelog records, want 0", n)
	}
	return h
}

// A replica is promoted while the old owner, not yet stopped (a zombie, or a
// handover whose release was not confirmed), commits more: the promoted
// actor's fast path, fencing at the sequence its store holds, fails; it
// replays the tail instead, and the old owner is fenced. Nothing is lost or
// counted twice, and each event's output is forwarded once.
func TestPromotedReplicaBehindTheChangelogReplaysTheTail(t *testing.T) {
	h := newHarness(t, "rep2", 1)
	ensureOutput(t, h.ctx, h.js, "rep2_out", "rep2_out.*")
	cfg := h.config(0, countAndEmit("rep2_out.x", 1))
	cfg.Epoch = 1
	a := h.start(cfg)
	rcfg := cfg
	rcfg.StoreDir += "-replica"
	r := h.startReplica(rcfg)
	for i := range 200 {
		h.publish("k"+strconv.Itoa(i%5), nil)
	}
	h.waitOffset(a, 0)
	h.waitCaughtUp(r, 0)
	ho, err := r.Handoff(h.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		h.publish("k"+strconv.Itoa(i%5), nil)
	}
	h.waitOffset(a, 0) // the old owner committed past the handed-over store

	pcfg := rcfg
	pcfg.Epoch = 2
	pcfg.Metrics = NewMetrics(nil)
	pcfg.Handoff = ho
	p := h.start(pcfg)
	for i := range 50 {
		h.publish("k"+strconv.Itoa(i%5), nil)
	}
	h.waitOffset(p, 0)
	if n := h.checkPromoted(p, pcfg.Metrics, 5, 350); n == 0 {
		t.Fatal("the promoted actor replayed no changelog records, yet its store was behind")
	}
	// The old owner learns of the new epoch at its next commit and stops.
	h.publish("k0", nil)
	select {
	case <-a.Done():
		if !errors.Is(a.Err(), ErrFenced) {
			t.Fatalf("old owner stopped with %v, want ErrFenced", a.Err())
		}
	case <-time.After(10 * time.Second):
		// It reads no input of its own any more only if it was fenced.
		t.Fatal("old owner still running after the promotion")
	}
}

// Release returns once the actor has committed for the last time, before
// its store is closed: the changelog sequence its Status gives then is the
// changelog's last, which is what a new owner's replica must reach.
func TestReleaseReportsTheLastCommit(t *testing.T) {
	h := newHarness(t, "rel", 1)
	ensureOutput(t, h.ctx, h.js, "rel_out", "rel_out.*")
	cfg := h.config(0, countAndEmit("rel_out.x", 1))
	cfg.Epoch = 1
	cfg.BatchSize = 10
	a := h.start(cfg)
	for i := range 2000 {
		h.publish("k"+strconv.Itoa(i%7), nil)
	}
	testkit.WaitFor(t, waitTimeout, "some input processed", func() bool { return a.Status().Offset > 0 })
	if err := a.Release(h.ctx); err != nil {
		t.Fatal(err)
	}
	seq := a.Status().ChangelogSeq
	select {
	case <-a.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("released actor did not stop")
	}
	if err := a.Err(); err != nil {
		t.Fatalf("released actor stopped with %v", err)
	}
	st, err := h.js.Stream(h.ctx, changelog.NewSubjects("rel", 0).Stream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if seq == 0 || seq != info.State.LastSeq {
		t.Fatalf("Release reported changelog sequence %d, the changelog ends at %d", seq, info.State.LastSeq)
	}
}
