package partition

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/pgtest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// openExternal opens a pool on dsn with the tables of typ, closed at the
// end of the test.
func openExternal(t *testing.T, ctx context.Context, dsn, typ string, mutate func(*postgres.Config)) *postgres.DB {
	t.Helper()
	cfg := postgres.DefaultConfig(dsn)
	cfg.CommitTimeout = 2 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	db, err := postgres.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.EnsureType(ctx, typ); err != nil {
		t.Fatal(err)
	}
	return db
}

// externalCounts reads the count of each key k0..k<keys-1> of partition p
// from PostgreSQL, as any node would.
func externalCounts(t *testing.T, ctx context.Context, db *postgres.DB, typ string, p, keys int) map[string]uint64 {
	t.Helper()
	got := map[string]uint64{}
	for i := range keys {
		k := "k" + strconv.Itoa(i)
		v, ok, err := db.Get(ctx, typ, p, DefaultStore, []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got[k] = binary.BigEndian.Uint64(v)
		}
	}
	return got
}

// sequentialModel publishes events to h's input as publishModel does.
func (h *harness) sequentialModel(rng *rand.Rand, events, keys int, counts map[string]uint64, outputs map[uint64]string) uint64 {
	h.t.Helper()
	return publishModel(h.t, h.ctx, h.js, h.input(), rng, events, keys, counts, outputs)
}

// checkOutputs fails t unless stream holds copies outputs of each event,
// exactly once each, with the sequential value. It first waits for them:
// the forward follows the commit.
func checkOutputs(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, typ string, outputs map[uint64]string, copies int) {
	t.Helper()
	testkit.WaitFor(t, waitTimeout, "the outputs forwarded", func() bool { return len(streamMsgs(t, ctx, js, stream)) >= copies*len(outputs) })
	msgs := streamMsgs(t, ctx, js, stream)
	ids := byMsgID(t, msgs)
	if len(msgs) != copies*len(outputs) || len(ids) != copies*len(outputs) {
		t.Errorf("output stream holds %d messages (%d ids), want %d", len(msgs), len(ids), copies*len(outputs))
	}
	for off, want := range outputs {
		for i := range copies {
			id := fmt.Sprintf("%s/0/%d/%d", typ, off, i)
			if m := ids[id]; m == nil {
				t.Errorf("output %s missing", id)
			} else if string(m.Data) != want {
				t.Errorf("output %s = %q, want %q", id, m.Data, want)
			}
		}
	}
}

func checkCounts(t *testing.T, got, want map[string]uint64) {
	t.Helper()
	for key, n := range want {
		if got[key] != n {
			t.Errorf("%s = %d, want %d", key, got[key], n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("PostgreSQL holds %d keys, want %d", len(got), len(want))
	}
}

// TestExternalStoreCommitsWithTheOffset runs a partition on PostgreSQL:
// the state, the offset and the outputs are those of a sequential run; a
// restart resumes from the stored offset without restoring anything, and
// an owner that is paused, resumed after a newer owner claimed the
// partition, can never commit — neither the transaction it was about to
// send when it was paused, nor one after a commit whose outbox it had not
// forwarded yet.
func TestExternalStoreCommitsWithTheOffset(t *testing.T) {
	dsn := pgtest.DB(t)
	h := newHarness(t, "ext_fence", 1)
	db := openExternal(t, h.ctx, dsn, h.typ, func(c *postgres.Config) { c.IdleInTransaction = 300 * time.Millisecond })
	ensureOutput(t, h.ctx, h.js, h.typ+"_out", "out."+h.typ)
	const keys = 10
	rng := rand.New(rand.NewPCG(7, 7))
	counts, outputs := map[string]uint64{}, map[uint64]string{}
	h.sequentialModel(rng, 200, keys, counts, outputs)

	cfg := h.config(0, countAndEmit("out."+h.typ, 2))
	cfg.External, cfg.Epoch, cfg.Owner, cfg.BatchSize = db, 1, "A", 20
	var (
		mu      sync.Mutex
		pause   chan struct{} // when set, the next commit of A waits on it
		paused  = make(chan struct{}, 1)
		inTxn   bool
		commits int
	)
	hold := func(open bool) func() {
		return func() {
			mu.Lock()
			commits++
			p := pause
			if p != nil && inTxn == open {
				pause = nil
			} else {
				p = nil
			}
			mu.Unlock()
			if p != nil {
				paused <- struct{}{}
				<-p
			}
		}
	}
	cfg.Hooks.BeforeExternalCommit = hold(true)
	cfg.Hooks.AfterChangelog = hold(false)
	a := h.start(cfg)
	h.waitOffset(a, 0)
	if s := a.Status(); s.Epoch != 1 || s.ChangelogSeq != 0 {
		t.Fatalf("status %+v: want epoch 1 and no changelog", s)
	}
	checkCounts(t, externalCounts(t, h.ctx, db, h.typ, 0, keys), counts)

	// A restart of the same owner resumes from the stored offset.
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	a = h.start(cfg)
	h.waitRunning(a)
	if s := a.Status(); s.Offset != uint64(len(outputs)) {
		t.Fatalf("restarted at offset %d, want %d", s.Offset, len(outputs))
	}

	for _, open := range []bool{true, false} {
		t.Run(map[bool]string{true: "PausedBeforeSending", false: "PausedBeforeForwarding"}[open], func(t *testing.T) {
			p := make(chan struct{})
			mu.Lock()
			pause, inTxn = p, open
			mu.Unlock()
			h.sequentialModel(rng, 30, keys, counts, outputs) // A takes some and pauses
			select {
			case <-paused:
			case <-time.After(waitTimeout):
				t.Fatal("A did not pause")
			}
			// B claims at a newer epoch and processes everything.
			bcfg := h.config(0, countAndEmit("out."+h.typ, 2))
			bcfg.External, bcfg.Epoch, bcfg.Owner, bcfg.BatchSize = db, cfg.Epoch+1, "B", 20
			b := h.start(bcfg)
			h.sequentialModel(rng, 30, keys, counts, outputs)
			h.waitOffset(b, 0)
			close(p) // A resumes
			testkit.WaitFor(t, waitTimeout, "A to be fenced", func() bool { return a.Status().State == StateFenced })
			if err := a.Err(); !errors.Is(err, ErrFenced) {
				t.Fatalf("A stopped with %v, want ErrFenced", err)
			}
			h.sequentialModel(rng, 20, keys, counts, outputs)
			h.waitOffset(b, 0)
			checkCounts(t, externalCounts(t, h.ctx, db, h.typ, 0, keys), counts)
			checkOutputs(t, h.ctx, h.js, h.typ+"_out", h.typ, outputs, 2)
			// B becomes the A of the next round.
			mu.Lock()
			pause = nil
			mu.Unlock()
			if err := b.Stop(h.ctx); err != nil {
				t.Fatal(err)
			}
			cfg = bcfg
			cfg.Epoch++
			cfg.Hooks.BeforeExternalCommit, cfg.Hooks.AfterChangelog = hold(true), hold(false)
			a = h.start(cfg)
			h.waitRunning(a)
		})
	}
	if commits == 0 {
		t.Fatal("no commit ran the hooks")
	}
}

// TestExternalStoreRestartedUnderLoad crashes PostgreSQL (immediate
// shutdown: no checkpoint, open transactions lost) twice while events keep
// coming: partitions retry in place, every commit lands once, processing
// resumes when it is back, and state and outputs equal a sequential run.
func TestExternalStoreRestartedUnderLoad(t *testing.T) {
	srv := pgtest.New(t)
	h := newHarness(t, "ext_restart", 1)
	db := openExternal(t, h.ctx, srv.DSN("postgres"), h.typ, nil)
	ensureOutput(t, h.ctx, h.js, h.typ+"_out", "out."+h.typ)
	cfg := h.config(0, countAndEmit("out."+h.typ, 2))
	cfg.External, cfg.BatchSize = db, 10
	a := h.start(cfg)
	h.waitRunning(a)
	const keys = 20
	rng := rand.New(rand.NewPCG(3, 3))
	counts, outputs := map[string]uint64{}, map[uint64]string{}
	for round := range 2 {
		done := make(chan struct{})
		go func() { // load while the server is away
			defer close(done)
			for range 10 {
				h.sequentialModel(rng, 20, keys, counts, outputs)
				time.Sleep(20 * time.Millisecond)
			}
		}()
		time.Sleep(50 * time.Millisecond)
		if err := srv.Crash(); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, waitTimeout, "partition to notice", func() bool { return a.Status().State == StateRetrying })
		<-done
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		h.waitOffset(a, 0)
		t.Logf("round %d: %d events, restarts %d", round, len(outputs), a.Restarts())
	}
	checkCounts(t, externalCounts(t, h.ctx, db, h.typ, 0, keys), counts)
	checkOutputs(t, h.ctx, h.js, h.typ+"_out", h.typ, outputs, 2)
}

// TestExternalStoreInputRecreated deletes and creates again the input
// stream of a partition on PostgreSQL: its stored offset belongs to the
// old stream, and the partition refuses it with ErrInputRecreated rather
// than skip the new stream's first events. A reset makes it process the
// new stream from its start.
func TestExternalStoreInputRecreated(t *testing.T) {
	dsn := pgtest.DB(t)
	h := newHarness(t, "ext_recreated", 1)
	db := openExternal(t, h.ctx, dsn, h.typ, nil)
	cfg := h.config(0, counter)
	cfg.External = db
	a := h.start(cfg)
	for range 50 {
		h.publish("k1", nil)
	}
	h.waitOffset(a, 0)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.js.DeleteStream(h.ctx, h.typ); err != nil {
		t.Fatal(err)
	}
	h.createStreams()
	for range 10 {
		h.publish("k1", nil)
	}
	a = h.start(cfg)
	testkit.WaitFor(t, waitTimeout, "partition to refuse", func() bool { return a.Status().State == StateStopped })
	if err := a.Err(); !errors.Is(err, ErrInputRecreated) {
		t.Fatalf("stopped with %v, want ErrInputRecreated", err)
	}
	t.Log(a.Err())
	if got := externalCounts(t, h.ctx, db, h.typ, 0, 2)["k1"]; got != 50 {
		t.Fatalf("k1 = %d after the refusal, want 50 (untouched)", got)
	}

	st, err := h.js.Stream(h.ctx, h.typ)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Reset(h.ctx, h.typ, st.CachedInfo().Created); err != nil {
		t.Fatal(err)
	}
	a = h.start(cfg)
	h.waitOffset(a, 0)
	if got := externalCounts(t, h.ctx, db, h.typ, 0, 2)["k1"]; got != 10 {
		t.Fatalf("k1 = %d after the reset, want 10 (the new stream's events)", got)
	}
}

// TestExternalStoreReplayAfterReset rebuilds a partition's state on
// PostgreSQL from its input stream (the reset tool's path): the state
// comes back equal, the outputs of replayed events are not forwarded
// again (the output stream's duplicate window is too short to hide them),
// and events past the old offset emit as usual.
func TestExternalStoreReplayAfterReset(t *testing.T) {
	dsn := pgtest.DB(t)
	h := newHarness(t, "ext_replay", 1)
	db := openExternal(t, h.ctx, dsn, h.typ, nil)
	short := StreamOptions{Replicas: 1, Duplicates: 100 * time.Millisecond}
	if err := EnsureStream(h.ctx, h.js, h.typ+"_out", []string{"out." + h.typ}, short); err != nil {
		t.Fatal(err)
	}
	const keys = 10
	rng := rand.New(rand.NewPCG(5, 5))
	counts, outputs := map[string]uint64{}, map[uint64]string{}
	h.sequentialModel(rng, 150, keys, counts, outputs)
	cfg := h.config(0, countAndEmit("out."+h.typ, 1))
	cfg.External = db
	a := h.start(cfg)
	h.waitOffset(a, 0)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	st, err := h.js.Stream(h.ctx, h.typ)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := db.Reset(h.ctx, h.typ, st.CachedInfo().Created)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Partitions[0] != 150 || rep.Rows != int64(len(counts)) {
		t.Fatalf("reset %+v, want partition 0 at 150 and %d rows", rep, len(counts))
	}
	if got := externalCounts(t, h.ctx, db, h.typ, 0, keys); len(got) != 0 {
		t.Fatalf("%d keys left after the reset", len(got))
	}
	time.Sleep(200 * time.Millisecond) // past the outputs' duplicate window
	h.sequentialModel(rng, 50, keys, counts, outputs)
	a = h.start(cfg)
	h.waitOffset(a, 0)
	checkCounts(t, externalCounts(t, h.ctx, db, h.typ, 0, keys), counts)
	checkOutputs(t, h.ctx, h.js, h.typ+"_out", h.typ, outputs, 1)
}

// TestMain stops the PostgreSQL server the tests share (pgtest.DB).
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

// TestExternalCrashBetweenCommitSteps crashes a child process running a
// partition on PostgreSQL (os.Exit in a hook: no cleanup runs, as after a
// SIGKILL) before its transaction commits, after it committed and before
// the outbox is forwarded, and in the middle of forwarding; restarts it,
// and compares the state in PostgreSQL and the outputs with a sequential
// run of the same input.
func TestExternalCrashBetweenCommitSteps(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	dsn := pgtest.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, hook := range []string{"BeforeExternalCommit", "AfterChangelog", "MidForward"} {
		t.Run(hook, func(t *testing.T) {
			typ := "extcrash_" + strings.ToLower(hook)
			const events, keys = 300, 10
			opt := StreamOptions{Replicas: 1, Duplicates: 2 * time.Minute}
			if err := EnsureInputStream(ctx, js, Input{Type: typ, Partitions: 1}, opt); err != nil {
				t.Fatal(err)
			}
			if err := EnsureStream(ctx, js, DLQStream(typ), []string{DLQSubject(typ)}, opt); err != nil {
				t.Fatal(err)
			}
			ensureOutput(t, ctx, js, typ+"_out", "out."+typ)
			db := openExternal(t, ctx, dsn, typ, nil)
			rng := rand.New(rand.NewPCG(1, uint64(len(typ))))
			counts, outputs := map[string]uint64{}, map[uint64]string{}
			last := publishModel(t, ctx, js, Input{Type: typ, Partitions: 1}, rng, events, keys, counts, outputs)
			pt := db.Partition(typ, 0)
			child := crashChild{t: t, url: srv.URL(), typ: typ, storeDir: filepath.Join(t.TempDir(), "store"), inFlight: 1, pg: dsn}
			if code, _ := child.run(ctx, hook, 4); code != crashExit {
				t.Fatalf("child exited with %d, want %d: it did not crash at %s", code, crashExit, hook)
			}
			pos, _, err := pt.Position(ctx)
			if err != nil || pos.Offset == 0 || pos.Offset >= last || pos.Epoch != 1 {
				t.Fatalf("the child committed offset %d of %d in epoch %d (%v); want a crash mid-stream, in its first claim",
					pos.Offset, last, pos.Epoch, err)
			}
			if code, _ := child.run(ctx, "", 0); code != 0 {
				t.Fatalf("restarted child exited with %d", code)
			}
			if pos, _, err = pt.Position(ctx); err != nil || pos.Offset != last || pos.Epoch != 2 {
				t.Fatalf("committed offset %d in epoch %d (%v), want %d in epoch 2", pos.Offset, pos.Epoch, err, last)
			}
			checkCounts(t, externalCounts(t, ctx, db, typ, 0, keys), counts)
			checkOutputs(t, ctx, js, typ+"_out", typ, outputs, crashOutputs)
			if dl := streamMsgs(t, ctx, js, DLQStream(typ)); len(dl) != 0 {
				t.Errorf("%d dead letters, want none", len(dl))
			}
			if rows, err := pt.Pending(ctx); err != nil || len(rows) != 0 {
				t.Errorf("%d outbox rows left after a clean stop (%v), want none", len(rows), err)
			}
		})
	}
}

// TestExternalStoreRestoresFromChangelog gives a partition on PostgreSQL a
// changelog, then takes its database back: to a backup taken mid-way, and
// then to nothing at all. Each time the partition brings the database
// forward from the changelog, runs only the events of the changelog's last
// commit again, and ends with the state and outputs of a sequential run.
func TestExternalStoreRestoresFromChangelog(t *testing.T) {
	dsn := pgtest.DB(t)
	h := newHarness(t, "ext_xcl", 1)
	db := openExternal(t, h.ctx, dsn, h.typ, nil)
	ensureOutput(t, h.ctx, h.js, h.typ+"_out", "out."+h.typ)
	conn, err := pgx.Connect(h.ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	sql := func(q string) {
		t.Helper()
		if _, err := conn.Exec(h.ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	const keys = 10
	rng := rand.New(rand.NewPCG(9, 9))
	counts, outputs := map[string]uint64{}, map[uint64]string{}
	run := func() (events float64) {
		t.Helper()
		cfg := h.config(0, countAndEmit("out."+h.typ, 1))
		cfg.External, cfg.ExternalChangelog, cfg.BatchSize = db, true, 20
		reg := prometheus.NewRegistry()
		cfg.Metrics = NewMetrics(reg)
		a := h.start(cfg)
		h.waitOffset(a, 0)
		if err := a.Stop(h.ctx); err != nil {
			t.Fatal(err)
		}
		return counterSum(t, reg, "eddy_partition_events_total")
	}
	h.sequentialModel(rng, 100, keys, counts, outputs)
	run()
	sql(`CREATE TABLE backup_state AS SELECT * FROM eddy_state_ext_xcl`)
	sql(`CREATE TABLE backup_runtime AS SELECT * FROM eddy_runtime WHERE type = 'ext_xcl'`)
	h.sequentialModel(rng, 100, keys, counts, outputs)
	run()

	for _, lost := range []string{"BackToBackup", "Lost"} {
		t.Run(lost, func(t *testing.T) {
			sql(`DELETE FROM eddy_state_ext_xcl`)
			sql(`DELETE FROM eddy_runtime WHERE type = 'ext_xcl'`)
			sql(`DELETE FROM eddy_outbox WHERE type = 'ext_xcl'`)
			if lost == "BackToBackup" {
				sql(`INSERT INTO eddy_state_ext_xcl SELECT * FROM backup_state`)
				sql(`INSERT INTO eddy_runtime SELECT * FROM backup_runtime`)
			}
			h.sequentialModel(rng, 10, keys, counts, outputs)
			events := run()
			if events > 20+10 {
				t.Errorf("%v events ran again, want those of the last commit (20 at most) and the 10 new ones", events)
			}
			checkCounts(t, externalCounts(t, h.ctx, db, h.typ, 0, keys), counts)
			checkOutputs(t, h.ctx, h.js, h.typ+"_out", h.typ, outputs, 1)
		})
	}
}

// TestExternalStoreNATSKilled SIGKILLs the nats-server process under a
// partition on PostgreSQL, three times, each while a commit's outbox is
// half forwarded, and starts it again while events keep coming: the
// partition reads, forwards and commits on, and every key's count and
// every output (each exactly once) are those of a sequential run.
func TestExternalStoreNATSKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nats-server processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := startNATSProcess(t, ctx, nil)
	const typ, events, keys = "ext_natskill", 600, 7
	h := newHarnessOn(t, ctx, srv.ConnectURL(), typ, 1)
	db := openExternal(t, ctx, pgtest.DB(t), typ, nil)
	out := "out." + typ
	ensureOutput(t, ctx, h.js, typ+"_out", out)

	killed := make(chan int, 3)
	forwards := 0
	cfg := h.config(0, countAndEmit(out, 2))
	cfg.External, cfg.BatchSize, cfg.CommitTimeout = db, 20, 2*time.Second
	cfg.Hooks.MidForward = func() {
		if forwards++; forwards == 3 || forwards == 8 || forwards == 13 {
			if err := srv.Kill(0); err != nil {
				t.Error(err)
			}
			killed <- forwards
		}
	}
	a := h.start(cfg)
	published := h.publishCycling(events, keys)
	restartAfterKills(t, ctx, srv, killed, 3, "forward")
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	h.waitOffset(a, 0)
	want := map[string]uint64{}
	for i := range events {
		want["k"+strconv.Itoa(i%keys)]++
	}
	checkCounts(t, externalCounts(t, ctx, db, typ, 0, keys), want)
	// Outputs: each event's two, once, and per key the counts 1..n.
	testkit.WaitFor(t, waitTimeout, "every output forwarded", func() bool { return len(streamMsgs(t, ctx, h.js, typ+"_out")) >= 2*events })
	msgs := streamMsgs(t, ctx, h.js, typ+"_out")
	if ids := byMsgID(t, msgs); len(ids) != 2*events || len(msgs) != 2*events {
		t.Errorf("%d outputs (%d ids), want %d", len(msgs), len(ids), 2*events)
	}
	seen := map[string]int{}
	for _, m := range msgs {
		seen[string(m.Data)]++
	}
	for k, n := range want {
		for c := range n {
			if v := fmt.Sprintf("%s=%d", k, c+1); seen[v] != 2 {
				t.Errorf("output %s seen %d times, want 2", v, seen[v])
			}
		}
	}
	if err := a.Stop(ctx); err != nil || a.Err() != nil {
		t.Fatalf("stop: %v, actor ended with %v", err, a.Err())
	}
	t.Logf("the actor restarted %d times", a.Restarts())
}
