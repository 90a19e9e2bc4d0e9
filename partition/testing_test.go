package partition

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/natsproc"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore"
)

// harness is one node's worth of parts for partition tests: a real embedded
// NATS server, a connection, and pebble stores in a temp dir.
type harness struct {
	t   *testing.T
	ctx context.Context
	srv *natstest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	sys *actor.System
	log *slog.Logger // every component's, to t.Log: made before any starts, so its lines show until they stop
	dir string
	typ string
	np  int
}

func newHarness(t *testing.T, typ string, partitions int) *harness {
	t.Helper()
	return newHarnessWith(t, typ, partitions, nil)
}

// newHarnessWith is newHarness on an embedded server whose options mutate
// changes (a small max payload, say).
func newHarnessWith(t *testing.T, typ string, partitions int, mutate func(*server.Options)) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	srv := natstest.StartWith(t, mutate)
	nc, js := srv.Connect(t)
	log := testkit.Logger(t)
	h := &harness{t: t, ctx: ctx, srv: srv, nc: nc, js: js, sys: actor.NewSystem(log), log: log, dir: t.TempDir(), typ: typ, np: partitions}
	t.Cleanup(func() { _ = h.sys.Stop(context.Background()) })
	h.createStreams()
	return h
}

// newHarnessOn is newHarness on a NATS server of the test's (a process, say)
// at url; the connection reconnects forever and does not buffer while
// reconnecting, as a node's does.
func newHarnessOn(t *testing.T, ctx context.Context, url, typ string, partitions int) *harness {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	log := testkit.Logger(t)
	h := &harness{t: t, ctx: ctx, nc: nc, js: js, sys: actor.NewSystem(log), log: log, dir: t.TempDir(), typ: typ, np: partitions}
	t.Cleanup(func() { _ = h.sys.Stop(context.Background()) })
	h.createStreams()
	return h
}

// createStreams creates the input and dead-letter streams of h's type.
func (h *harness) createStreams() {
	t, ctx, js, typ, partitions := h.t, h.ctx, h.js, h.typ, h.np
	opt := StreamOptions{Replicas: 1, Duplicates: 2 * time.Minute}
	if err := EnsureInputStream(ctx, js, Input{Type: typ, Partitions: partitions}, opt); err != nil {
		t.Fatal(err)
	}
	if err := EnsureStream(ctx, js, DLQStream(typ), []string{DLQSubject(typ)}, opt); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) config(p int, handler Handler) Config {
	cfg := DefaultConfig()
	cfg.Type, cfg.Partition, cfg.Partitions = h.typ, p, h.np
	cfg.Handler, cfg.Conn, cfg.JS = handler, h.nc, h.js
	cfg.StoreDir = filepath.Join(h.dir, h.typ, strconv.Itoa(p))
	cfg.DLQSubject = DLQSubject(h.typ)
	cfg.Logger = h.log
	cfg.MarkDelay = 50 * time.Millisecond
	return cfg
}

// testSupervisor restarts quickly, so tests do not wait on backoff.
func testSupervisor() actor.SupervisorConfig {
	sup := actor.DefaultSupervisorConfig()
	sup.MinBackoff, sup.MaxBackoff = 10*time.Millisecond, 200*time.Millisecond
	return sup
}

func (h *harness) start(cfg Config) *Actor {
	h.t.Helper()
	a, err := Start(h.sys, cfg, testSupervisor())
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

// input addresses h's input stream.
func (h *harness) input() Input { return Input{Type: h.typ, Partitions: h.np} }

// msg is an input event for key.
func (h *harness) msg(key string, data []byte) *nats.Msg { return h.input().Msg(key, data) }

func (h *harness) publish(key string, data []byte) {
	h.t.Helper()
	if _, err := h.js.PublishMsg(h.ctx, h.msg(key, data)); err != nil {
		h.t.Fatal(err)
	}
}

// publishCounted publishes n events for keys k0..k<keys-1>, in turn, and
// counts them in model.
func (h *harness) publishCounted(n, keys int, model map[string]uint64) {
	h.t.Helper()
	for i := range n {
		k := "k" + strconv.Itoa(i%keys)
		h.publish(k, nil)
		model[k]++
	}
}

// publishMsg publishes m to the input stream and returns its offset.
func (h *harness) publishMsg(m *nats.Msg) uint64 {
	h.t.Helper()
	ack, err := h.js.PublishMsg(h.ctx, m)
	if err != nil {
		h.t.Fatal(err)
	}
	return ack.Sequence
}

// counter counts events per key in the default store.
func counter(tx *Txn) error {
	_, err := increment(tx)
	return err
}

// increment adds one to the count of the event's key and returns the new count.
func increment(tx *Txn) (uint64, error) {
	key := []byte(tx.Event().Key)
	var n uint64
	if v, err := tx.Get(DefaultStore, key); err == nil {
		n = binary.BigEndian.Uint64(v)
	} else if !errors.Is(err, statestore.ErrNotFound) {
		return 0, err
	}
	n++
	return n, tx.Set(DefaultStore, key, binary.BigEndian.AppendUint64(nil, n))
}

// countAndEmit counts events per key and publishes copies outputs "<key>=<count>"
// to subject for each event, so a test can compare outputs with a sequential model.
func countAndEmit(subject string, copies int) Handler {
	return func(tx *Txn) error {
		n, err := increment(tx)
		if err != nil {
			return err
		}
		v := []byte(tx.Event().Key + "=" + strconv.FormatUint(n, 10))
		for range copies {
			if err := tx.Publish(subject, nil, v); err != nil {
				return err
			}
		}
		return nil
	}
}

// ensureOutput creates the output stream name on subject, with a duplicate
// window that covers every failover of a test.
func ensureOutput(t *testing.T, ctx context.Context, js jetstream.JetStream, name, subject string) {
	t.Helper()
	opt := StreamOptions{Replicas: 1, Duplicates: 2 * time.Minute}
	if err := EnsureStream(ctx, js, name, []string{subject}, opt); err != nil {
		t.Fatal(err)
	}
}

// streamMsgs returns every message stream name holds, in stream order.
func streamMsgs(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) []*jetstream.RawStreamMsg {
	t.Helper()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// byMsgID indexes msgs by their Nats-Msg-Id and fails on a duplicate id.
func byMsgID(t *testing.T, msgs []*jetstream.RawStreamMsg) map[string]*jetstream.RawStreamMsg {
	t.Helper()
	ids := make(map[string]*jetstream.RawStreamMsg, len(msgs))
	for _, m := range msgs {
		id := m.Header.Get(jetstream.MsgIDHeader)
		if _, dup := ids[id]; dup {
			t.Errorf("message id %q stored twice", id)
		}
		ids[id] = m
	}
	return ids
}

// count returns the committed count of key, 0 if absent.
func count(ctx context.Context, a *Actor, key string) uint64 {
	v, err := a.Get(ctx, DefaultStore, []byte(key))
	if err != nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// waitTimeout bounds every testkit.WaitFor in these tests; hitting it fails
// the test loudly.
const waitTimeout = 30 * time.Second

// waitOffset waits until a has committed input up to the stream's last sequence.
func (h *harness) waitOffset(a *Actor, p int) {
	h.t.Helper()
	var want uint64
	testkit.WaitFor(h.t, waitTimeout, "partition to catch up", func() bool {
		if want == 0 {
			st, err := h.js.Stream(h.ctx, h.typ) // NATS may be reconnecting
			if err != nil {
				return false
			}
			msg, err := st.GetLastMsgForSubject(h.ctx, h.input().Filter(p))
			if err != nil {
				return false
			}
			want = msg.Sequence
		}
		return a.Status().Offset >= want
	})
}

// waitRunning waits until a has restored, fenced and started reading.
func (h *harness) waitRunning(a *Actor) {
	h.t.Helper()
	testkit.WaitFor(h.t, waitTimeout, "partition to run", func() bool { return a.Status().Running })
}

// counterSum is the sum of the counter name over all its labels in reg.
func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// decodeCount decodes a count stored by increment; 0 for none.
func decodeCount(v []byte) uint64 {
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// lastMeta returns the newest meta record of the changelog s, as any
// replica of its stream has it (a direct get).
func lastMeta(ctx context.Context, js jetstream.JetStream, s changelog.Subjects) (changelog.Meta, bool, error) {
	st, err := js.Stream(ctx, s.Stream())
	if err != nil {
		return changelog.Meta{}, false, err
	}
	raw, err := st.GetLastMsgForSubject(ctx, s.Meta())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return changelog.Meta{}, false, nil
	}
	if err != nil {
		return changelog.Meta{}, false, err
	}
	m, err := changelog.DecodeMeta(raw.Data)
	return m, true, err
}

// startNATSProcess starts one nats-server process (with extraConfig lines),
// ready, and closed when the test ends.
func startNATSProcess(t *testing.T, ctx context.Context, extraConfig []string) *natsproc.Cluster {
	t.Helper()
	srv, err := natsproc.Start(natsproc.Config{Servers: 1, Dir: t.TempDir(), ExtraConfig: extraConfig})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return srv
}

// publishCycling publishes events for keys k0..k<keys-1> in turn, each until
// stored (publishUntilStored), in the background; the channel gets the
// outcome.
func (h *harness) publishCycling(events, keys int) <-chan error {
	published := make(chan error, 1)
	go func() {
		for i := range events {
			if err := h.publishUntilStored(h.js, "k"+strconv.Itoa(i%keys), "e-"+strconv.Itoa(i)); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	return published
}

// restartAfterKills starts srv's server again, 300 ms after each of n kills
// reported on killed (what was killed, for the log).
func restartAfterKills(t *testing.T, ctx context.Context, srv *natsproc.Cluster, killed <-chan int, n int, what string) {
	t.Helper()
	for range n {
		select {
		case k := <-killed:
			time.Sleep(300 * time.Millisecond) // NATS stays away for a while
			if err := srv.Start(0); err != nil {
				t.Fatal(err)
			}
			t.Logf("nats-server SIGKILLed during %s %d and started again", what, k)
		case <-ctx.Done():
			t.Fatalf("no %s reached its kill", what)
		}
	}
}
