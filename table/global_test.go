package table

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eddyrt/eddy/internal/natsproc"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore"
)

const waitTimeout = 30 * time.Second

// products is a table's source stream with one subject per key,
// products.<key>, compacted to the latest record of each key.
type products struct {
	t     *testing.T
	ctx   context.Context
	js    jetstream.JetStream
	model map[string]string // the latest value of each key; absent: deleted
	last  uint64            // the stream's last sequence
}

func newProducts(t *testing.T) *products {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	_, js := natstest.Start(t).Connect(t)
	p := &products{t: t, ctx: ctx, js: js, model: map[string]string{}}
	p.create()
	return p
}

func (p *products) create() {
	p.t.Helper()
	if _, err := p.js.CreateStream(p.ctx, jetstream.StreamConfig{Name: "products", Subjects: []string{"products.*"},
		MaxMsgsPerSubject: 1, Storage: jetstream.FileStorage}); err != nil {
		p.t.Fatal(err)
	}
}

// put publishes n records over keys p0..p<keys-1>, every seventh a tombstone.
func (p *products) put(n, keys int, round string) {
	p.t.Helper()
	for i := range n {
		key := fmt.Sprintf("p%d", i%keys)
		m := &nats.Msg{Subject: "products." + key, Header: nats.Header{}}
		if i%7 == 3 {
			m.Header.Set(TombstoneHeader, "1")
			delete(p.model, key)
		} else {
			m.Data = fmt.Appendf(nil, "%s-%d", round, i)
			p.model[key] = string(m.Data)
		}
		ack, err := p.js.PublishMsg(p.ctx, m)
		if err != nil {
			p.t.Fatal(err)
		}
		p.last = ack.Sequence
	}
}

func keyOfSubject(subject string, _ nats.Header) (string, error) {
	key, ok := strings.CutPrefix(subject, "products.")
	if !ok {
		return "", fmt.Errorf("subject %s is not products.<key>", subject)
	}
	return key, nil
}

func (p *products) config(dir string, m *Metrics) GlobalConfig {
	cfg := DefaultGlobalConfig()
	cfg.Name, cfg.Stream, cfg.Key, cfg.JS, cfg.StoreDir = "products", "products", keyOfSubject, p.js, dir
	cfg.Metrics, cfg.Logger = m, testkit.Logger(p.t)
	cfg.Batch = 100
	return cfg
}

func (p *products) start(cfg GlobalConfig) *Global {
	p.t.Helper()
	g, err := StartGlobal(p.ctx, cfg)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { _ = g.Stop() })
	return g
}

func (p *products) waitReady(g *Global) {
	p.t.Helper()
	select {
	case <-g.Ready():
	case <-g.Done():
		p.t.Fatal("the table stopped before it was ready")
	case <-time.After(waitTimeout):
		p.t.Fatal("the table did not catch up")
	}
}

// check compares the table with the model of the latest values.
func (p *products) check(g *Global, keys int) {
	p.t.Helper()
	for i := range keys {
		key := fmt.Sprintf("p%d", i)
		v, err := g.Get(key)
		want, ok := p.model[key]
		switch {
		case !ok && !errors.Is(err, statestore.ErrNotFound):
			p.t.Errorf("%s: %q (%v), want deleted", key, v, err)
		case ok && (err != nil || string(v) != want):
			p.t.Errorf("%s: %q (%v), want %q", key, v, err, want)
		}
	}
}

// A global table catches up with its stream before it is ready (its
// values then the latest of each key, deletes applied), then tails it:
// WaitApplied sees a record published later.
func TestGlobalTableBootstrapsThenTails(t *testing.T) {
	p := newProducts(t)
	const keys = 300
	p.put(3000, keys, "a")
	m := NewMetrics(prometheus.NewRegistry())
	g := p.start(p.config(t.TempDir(), m))
	if _, err := g.Get("p1"); !errors.Is(err, ErrNotReady) && !g.isReady() {
		t.Fatalf("a read before the bootstrap ends: %v, want ErrNotReady", err)
	}
	p.waitReady(g)
	if g.Applied() < p.last {
		t.Fatalf("ready at sequence %d, the stream ends at %d", g.Applied(), p.last)
	}
	p.check(g, keys)

	p.put(500, keys, "b")
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if err := g.WaitApplied(ctx, p.last); err != nil {
		t.Fatal(err)
	}
	p.check(g, keys)
	if lag := testutil.ToFloat64(m.lag.WithLabelValues("products")); lag != 0 {
		t.Errorf("lag %v after the last record, want 0", lag)
	}
	if b := testutil.ToFloat64(m.boot.WithLabelValues("products")); b != 1 {
		t.Errorf("bootstrap ratio %v, want 1", b)
	}
}

// The table's position is kept in its store: a restart reads only the
// records published after it stopped.
func TestGlobalTableRestartReadsOnlyTheTail(t *testing.T) {
	p := newProducts(t)
	const keys = 100
	p.put(1000, keys, "a")
	dir := t.TempDir()
	g := p.start(p.config(dir, nil))
	p.waitReady(g)
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	p.put(40, keys, "b")
	m := NewMetrics(prometheus.NewRegistry())
	g = p.start(p.config(dir, m))
	p.waitReady(g)
	p.check(g, keys)
	if got := testutil.ToFloat64(m.records.WithLabelValues("products")); got != 40 {
		t.Fatalf("the restart applied %v records, want the 40 published while it was stopped", got)
	}
}

// Stop ends a bootstrap in progress, and a restart goes on from where it
// stopped.
func TestGlobalTableStopInterruptsBootstrap(t *testing.T) {
	p := newProducts(t)
	const keys = 2000
	p.put(2000, keys, "a")
	dir := t.TempDir()
	cfg := p.config(dir, nil)
	cfg.Batch = 10
	slow := cfg
	slow.Key = func(subject string, h nats.Header) (string, error) {
		time.Sleep(time.Millisecond) // a slow bootstrap: 2 s or more
		return keyOfSubject(subject, h)
	}
	g := p.start(slow)
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if err := g.WaitApplied(ctx, 100); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Stop took %v during a bootstrap", took)
	}
	stopped := g.Applied()
	if stopped >= p.last || g.isReady() {
		t.Fatalf("the bootstrap ended (at %d of %d) before Stop", stopped, p.last)
	}
	m := NewMetrics(prometheus.NewRegistry())
	cfg.Metrics = m
	g = p.start(cfg)
	p.waitReady(g)
	p.check(g, keys)
	if got := testutil.ToFloat64(m.records.WithLabelValues("products")); got != float64(p.last-stopped) {
		t.Fatalf("the restart applied %v records, want the %d after %d", got, p.last-stopped, stopped)
	}
}

// A stream deleted and created again is another stream: the table starts
// over rather than keep values the new stream never had.
func TestGlobalTableStartsOverOnARecreatedStream(t *testing.T) {
	p := newProducts(t)
	const keys = 50
	p.put(200, keys, "a")
	dir := t.TempDir()
	g := p.start(p.config(dir, nil))
	p.waitReady(g)
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := p.js.DeleteStream(p.ctx, "products"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a creation time of its own
	p.create()
	p.model = map[string]string{}
	p.put(20, keys, "b")
	g = p.start(p.config(dir, nil))
	p.waitReady(g)
	p.check(g, keys)
}

// A record whose key cannot be read is handed to Reject and skipped; the
// table goes on.
func TestGlobalTableSkipsARecordWithoutKey(t *testing.T) {
	p := newProducts(t)
	if _, err := p.js.CreateStream(p.ctx, jetstream.StreamConfig{Name: "other", Subjects: []string{"other.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.js.UpdateStream(p.ctx, jetstream.StreamConfig{Name: "products", Subjects: []string{"products.*", "products.bad.>"},
		MaxMsgsPerSubject: 1, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.js.Publish(p.ctx, "products.bad.x", []byte("no key")); err != nil {
		t.Fatal(err)
	}
	p.put(10, 5, "a")
	var rejected []string
	cfg := p.config(t.TempDir(), nil)
	cfg.Key = func(subject string, h nats.Header) (string, error) {
		if strings.Count(subject, ".") != 1 {
			return "", fmt.Errorf("subject %s is not products.<key>", subject)
		}
		return keyOfSubject(subject, h)
	}
	cfg.Reject = func(msg jetstream.Msg, err error) { rejected = append(rejected, msg.Subject()+": "+err.Error()) }
	g := p.start(cfg)
	p.waitReady(g)
	p.check(g, 5)
	if len(rejected) != 1 || !strings.HasPrefix(rejected[0], "products.bad.x") {
		t.Fatalf("rejected %q, want the record on products.bad.x", rejected)
	}
}

// A nats-server process SIGKILLed under a tailing table, and started again
// on its store: the table reads again from the last sequence it applied,
// and holds the latest value of every key, the records published after the
// restart included.
func TestGlobalTableSurvivesNATSKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a nats-server process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := natsproc.Start(natsproc.Config{Servers: 1, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv.ConnectURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p := &products{t: t, ctx: ctx, js: js, model: map[string]string{}}
	p.create()
	const keys = 100
	p.put(500, keys, "a")
	g := p.start(p.config(t.TempDir(), nil))
	p.waitReady(g)

	for round := range 2 {
		if err := srv.Kill(0); err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(0); err != nil {
			t.Fatal(err)
		}
		if err := srv.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, waitTimeout, "the client to reconnect", nc.IsConnected)
		// Publish until stored: the stream may still be recovering.
		for i := range 200 {
			key := fmt.Sprintf("p%d", i%keys)
			value := fmt.Sprintf("after-kill-%d-%d", round, i)
			for {
				ack, err := js.Publish(ctx, "products."+key, []byte(value))
				if err == nil {
					p.model[key], p.last = value, ack.Sequence
					break
				}
				if ctx.Err() != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		wctx, wcancel := context.WithTimeout(ctx, waitTimeout)
		err := g.WaitApplied(wctx, p.last)
		wcancel()
		if err != nil {
			t.Fatalf("round %d: the table applied %d, the stream ends at %d: %v", round, g.Applied(), p.last, err)
		}
		p.check(g, keys)
	}
}

// A table whose store is ahead of its stream (the stream lost records it
// had acknowledged: a server that crashed before syncing them) starts over
// rather than wait for sequences it will never see again.
func TestGlobalTableAheadOfItsStreamStartsOver(t *testing.T) {
	p := newProducts(t)
	const keys = 20
	p.put(100, keys, "a")
	dir := t.TempDir()
	g := p.start(p.config(dir, nil))
	p.waitReady(g)
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	// The store says it applied far more than the stream holds, and a
	// value the stream never had.
	st, err := statestore.OpenPebble(statestore.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b := st.NewBatch()
	b.Set(valueKey("ghost"), []byte("lost"))
	b.SetMeta(statestore.Meta{Offset: p.last + 1000})
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	g = p.start(p.config(dir, nil))
	p.waitReady(g)
	p.check(g, keys)
	if v, err := g.Get("ghost"); !errors.Is(err, statestore.ErrNotFound) {
		t.Fatalf("a value only the store had survived: %q %v", v, err)
	}
	if g.Applied() != p.last {
		t.Fatalf("applied %d, the stream ends at %d", g.Applied(), p.last)
	}
}

// On a 3-server JetStream cluster (an R3 stream), the table's stream leader
// moved twice and then a member stopped while records keep coming: the
// table follows and holds the latest value of every key.
func TestGlobalTableOnAClusterThroughLeaderMovesAndAMemberLost(t *testing.T) {
	c := natstest.NewCluster(t, 3)
	c.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p := &products{t: t, ctx: ctx, js: js, model: map[string]string{}}
	testkit.WaitFor(t, 60*time.Second, "the stream on the cluster", func() bool {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := js.CreateStream(cctx, jetstream.StreamConfig{Name: "products", Subjects: []string{"products.*"},
			MaxMsgsPerSubject: 1, Storage: jetstream.FileStorage, Replicas: 3})
		return err == nil
	})
	const keys = 50
	put := func(n int, round string) {
		for i := range n {
			key := fmt.Sprintf("p%d", i%keys)
			value := fmt.Sprintf("%s-%d", round, i)
			testkit.WaitFor(t, 30*time.Second, "a record stored", func() bool {
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				ack, err := js.Publish(pctx, "products."+key, []byte(value))
				if err != nil {
					return false
				}
				p.model[key], p.last = value, ack.Sequence
				return true
			})
		}
	}
	put(200, "a")
	g := p.start(p.config(t.TempDir(), nil))
	p.waitReady(g)
	for round := range 3 {
		if round < 2 {
			if _, err := natsproc.StepDownStream(ctx, nc, "products"); err != nil {
				t.Logf("step down: %v", err)
			}
		} else {
			c.Stop(2)
		}
		put(100, fmt.Sprintf("r%d", round))
		wctx, wcancel := context.WithTimeout(ctx, waitTimeout)
		err := g.WaitApplied(wctx, p.last)
		wcancel()
		if err != nil {
			t.Fatalf("round %d: the table applied %d, the stream ends at %d: %v", round, g.Applied(), p.last, err)
		}
		p.check(g, keys)
	}
}
