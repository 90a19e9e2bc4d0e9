package partition

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/table"
)

// joinModel publishes, in one random order, records of the co-partitioned
// table "cust" and events of the harness's type, and knows which table
// version each event must see: the latest record of its key stored no
// later than the event. The table's stream has one subject per partition,
// so it keeps every record (a compacted stream keeps the latest of each
// key only: an event processed after a newer record of its key replaced an
// older one sees what the stream still holds).
type joinModel struct {
	h     *harness
	tbl   Input
	rng   *rand.Rand
	want  map[uint64]string // event offset -> the value it must see
	times map[string][]rec  // key -> its table records, in order
	n     int
}

type rec struct {
	at    time.Time
	value string // "" for a tombstone
}

func newJoinModel(h *harness) *joinModel {
	h.t.Helper()
	tbl := Input{Type: h.typ + "_cust", Partitions: h.np}
	if err := EnsureTableStream(h.ctx, h.js, tbl, StreamOptions{Replicas: 1, Duplicates: time.Minute}); err != nil {
		h.t.Fatal(err)
	}
	ensureOutput(h.t, h.ctx, h.js, h.typ+"_out", h.typ+"_out.*")
	return &joinModel{h: h, tbl: tbl, rng: rand.New(rand.NewPCG(7, 7)), want: map[uint64]string{}, times: map[string][]rec{}}
}

// publish publishes n operations over keys: about a third table records
// (one in ten a tombstone), the rest events.
func (m *joinModel) publish(n, keys int) {
	h := m.h
	h.t.Helper()
	st, err := h.js.Stream(h.ctx, m.tbl.Type)
	if err != nil {
		h.t.Fatal(err)
	}
	in, err := h.js.Stream(h.ctx, h.typ)
	if err != nil {
		h.t.Fatal(err)
	}
	for range n {
		m.n++
		key := "c" + strconv.Itoa(m.rng.IntN(keys))
		if m.rng.IntN(3) == 0 {
			msg := m.tbl.Msg(key, fmt.Appendf(nil, "v%d", m.n))
			value := fmt.Sprintf("v%d", m.n)
			if m.rng.IntN(10) == 0 {
				msg.Data, value = nil, ""
				msg.Header.Set(table.TombstoneHeader, "1")
			}
			ack, err := h.js.PublishMsg(h.ctx, msg)
			if err != nil {
				h.t.Fatal(err)
			}
			raw, err := st.GetMsg(h.ctx, ack.Sequence)
			if err != nil {
				h.t.Fatal(err)
			}
			m.times[key] = append(m.times[key], rec{at: raw.Time, value: value})
			continue
		}
		off := h.publishMsg(h.msg(key, nil))
		raw, err := in.GetMsg(h.ctx, off)
		if err != nil {
			h.t.Fatal(err)
		}
		seen := "none"
		for _, r := range m.times[key] {
			if r.at.After(raw.Time) {
				break
			}
			seen = r.value
			if seen == "" {
				seen = "none"
			}
		}
		m.want[off] = key + "=" + seen
	}
}

// lastOffset is the input stream's last sequence.
func (h *harness) lastOffset() uint64 {
	h.t.Helper()
	st, err := h.js.Stream(h.ctx, h.typ)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.LastSeq
}

// handler emits, for each event, the table value it sees.
func (m *joinModel) handler() Handler { return joinHandler(m.tbl.Type, m.h.typ+"_out") }

// joinHandler emits to <out>.<key>, for each event, "<key>=<the value of
// its key in table tbl>" ("none" for no value).
func joinHandler(tbl, out string) Handler {
	return func(tx *Txn) error {
		key := tx.Event().Key
		v, err := tx.GetTable(tbl, []byte(key))
		switch {
		case errors.Is(err, statestore.ErrNotFound):
			v = []byte("none")
		case err != nil:
			return err
		}
		return tx.Publish(out+"."+key, nil, []byte(key+"="+string(v)))
	}
}

// A child process running a partition actor that joins with a table exits
// (as after SIGKILL) after each step of a commit and restarts on its store:
// every event's output is the version the rule gives, once.
func TestCrashBetweenCommitStepsWithTable(t *testing.T) {
	for _, hook := range []string{"AfterChangelog", "AfterLocal", "MidForward"} {
		t.Run(hook, func(t *testing.T) {
			h := newHarness(t, "crashtbl_"+strings.ToLower(hook), 1)
			m := newJoinModel(h)
			m.publish(300, 6)
			child := crashChild{t: t, url: h.srv.URL(), typ: h.typ, storeDir: filepath.Join(t.TempDir(), "store"), inFlight: 1, table: m.tbl.Type}
			if code, _ := child.run(h.ctx, hook, 4); code != crashExit {
				t.Fatalf("child exited with %d, want %d: it did not crash at %s", code, crashExit, hook)
			}
			if meta, _, err := lastMeta(h.ctx, h.js, changelog.NewSubjects(h.typ, 0)); err != nil || meta.Offset >= h.lastOffset() {
				t.Fatalf("the child committed offset %d (%v) of %d: want a crash mid-stream", meta.Offset, err, h.lastOffset())
			}
			if code, _ := child.run(h.ctx, "", 0); code != 0 {
				t.Fatalf("restarted child exited with %d", code)
			}
			m.check()
		})
	}
}

func (m *joinModel) config(p int) Config {
	cfg := m.h.config(p, m.handler())
	cfg.Tables = []Input{m.tbl}
	cfg.BatchSize = 7 // many batches, each with its own view of the table
	return cfg
}

// check compares the outputs with the model: one per event, each the value
// the rule gives.
func (m *joinModel) check() {
	h := m.h
	h.t.Helper()
	testkit.WaitFor(h.t, waitTimeout, "every output", func() bool {
		return len(streamMsgs(h.t, h.ctx, h.js, h.typ+"_out")) >= len(m.want)
	})
	ids := byMsgID(h.t, streamMsgs(h.t, h.ctx, h.js, h.typ+"_out"))
	if len(ids) != len(m.want) {
		h.t.Errorf("%d outputs, want %d", len(ids), len(m.want))
	}
	bad := 0
	for off, want := range m.want {
		var got *jetstream.RawStreamMsg
		for p := range h.np {
			if g := ids[fmt.Sprintf("%s/%d/%d/0", h.typ, p, off)]; g != nil {
				got = g
			}
		}
		if got == nil || string(got.Data) != want {
			if bad++; bad <= 5 {
				h.t.Errorf("event %d saw %v, want %q", off, got, want)
			}
		}
	}
	if bad > 5 {
		h.t.Errorf("%d events saw another table version than the rule gives", bad)
	}
}

// An event sees the table as it was when the event was stored: every record
// stored before it applied, none after, whatever the batches.
func TestTableJoinSeesRecordsStoredBeforeTheEvent(t *testing.T) {
	h := newHarness(t, "join", 2)
	m := newJoinModel(h)
	m.publish(300, 8)
	var actors []*Actor
	for p := range 2 {
		actors = append(actors, h.start(m.config(p)))
	}
	for p, a := range actors {
		h.waitOffset(a, p)
	}
	// And while it runs.
	m.publish(200, 8)
	for p, a := range actors {
		h.waitOffset(a, p)
	}
	m.check()
}

// The join gives the same outputs across a restart on the local store, a
// restore from the whole changelog and a hot replica's promotion: the
// table's position is committed with the input offset.
func TestTableJoinIsTheSameAcrossRestartsAndMoves(t *testing.T) {
	h := newHarness(t, "joinmv", 1)
	m := newJoinModel(h)
	m.publish(200, 5)
	cfg := m.config(0)
	cfg.Epoch = 1
	a := h.start(cfg)
	rcfg := cfg
	rcfg.StoreDir += "-replica"
	r := h.startReplica(rcfg)
	h.waitOffset(a, 0)

	// A restart on the local store, in the middle of more input.
	m.publish(100, 5)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	m.publish(100, 5)
	cfg.Epoch = 2
	a = h.start(cfg)
	h.waitOffset(a, 0)

	// A restore from the whole changelog on another store.
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	m.publish(100, 5)
	fresh := cfg
	fresh.Epoch, fresh.StoreDir = 3, cfg.StoreDir+"-fresh"
	a = h.start(fresh)
	h.waitOffset(a, 0)

	// The hot replica, which tailed all along, is promoted.
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	m.publish(100, 5)
	h.waitCaughtUp(r, 0)
	ho, err := r.Handoff(h.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	pcfg := rcfg
	pcfg.Epoch, pcfg.Handoff = 4, ho
	p := h.start(pcfg)
	h.waitOffset(p, 0)
	m.check()
}

// A nats-server process SIGKILLed in the middle of commits of a partition
// that joins with a table, and started again on its store: every event's
// output is still the version the rule gives, once.
func TestTableJoinSurvivesNATSKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a nats-server process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := startNATSProcess(t, ctx, nil)
	h := newHarnessOn(t, ctx, srv.ConnectURL(), "killtbl", 1)
	m := newJoinModel(h)
	m.publish(400, 6)
	kc := &killConn{Conn: h.nc, srv: srv, kills: map[int]bool{3: true, 8: true}, killed: make(chan int, 2)}
	cfg := m.config(0)
	cfg.Epoch, cfg.Owner = 3, "n1/killtbl"
	cfg.CommitTimeout = 2 * time.Second
	cfg.Hooks.Conn = kc
	a := h.start(cfg)
	restartAfterKills(t, ctx, srv, kc.killed, 2, "commit")
	h.waitOffset(a, 0)
	m.check()
	t.Logf("the actor restarted %d times", a.Restarts())
}
