package eddy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/partition"
)

type product struct {
	Name    string `msgpack:"name" json:"name"`
	Version int    `msgpack:"version" json:"version"`
}

// enrich is an actor type that joins each order with the product it names
// in the global table "products": it keeps the product version it saw. An
// order with the header Product-Seq waits for the table to apply that
// stream sequence first.
func enrich() eddy.ActorType {
	return eddy.ActorType{Name: "orders", Partitions: 2, ReplicationFactor: eddy.NoReplicas, Handler: func(c *eddy.Context) error {
		products := c.Global("products")
		if s := c.Header("Product-Seq"); s != "" {
			seq, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return fmt.Errorf("%w: Product-Seq %q", eddy.ErrMalformed, s)
			}
			if err := products.WaitApplied(seq); err != nil {
				return err
			}
		}
		var p product
		ok, err := products.Get(string(c.Data()), &p)
		if err != nil {
			return err
		}
		if !ok {
			p.Version = -1 // not in the table (yet)
		}
		return c.Set(p.Version)
	}}
}

// startTableNode starts a node, configured by mutate, with the global table
// name and the enrich actor type.
func startTableNode(t *testing.T, ctx context.Context, name string, mutate func(*eddy.Config)) *eddy.Node {
	t.Helper()
	cfg := eddy.DefaultConfig()
	cfg.Logger = testkit.Logger(t)
	mutate(&cfg)
	node, err := eddy.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.RegisterGlobalTable(eddy.GlobalTable{Name: name}); err != nil {
		t.Fatal(err)
	}
	if err := node.Register(enrich()); err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return node
}

// productsOf publishes product records to the table's stream.
type productsOf struct {
	t    *testing.T
	ctx  context.Context
	js   jetstream.JetStream
	last uint64
}

func (p *productsOf) put(id string, version int) uint64 {
	p.t.Helper()
	b, err := msgpack.Marshal(product{Name: "product " + id, Version: version})
	if err != nil {
		p.t.Fatal(err)
	}
	ack, err := p.js.Publish(p.ctx, "products."+id, b)
	if err != nil {
		p.t.Fatal(err)
	}
	p.last = ack.Sequence
	return ack.Sequence
}

// A node's partitions take no input before its global tables caught up
// with their streams: orders published before the node started all see the
// latest product versions of that moment. A handler that waits for the
// sequence of the record it depends on sees it, whenever it runs. Any node
// answers the table over HTTP; a restart reads only the records published
// while it was down; a record the table cannot read goes to its dead-letter
// stream, and the table goes on.
func TestGlobalTableBootstrapsBeforeInputAndJoinsDeterministically(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opt := partition.StreamOptions{Replicas: 1, Duplicates: time.Minute}
	if err := partition.EnsureTableStream(ctx, js, partition.Input{Type: "products", Partitions: 1, KeyedSubjects: true}, opt); err != nil {
		t.Fatal(err)
	}
	orders := partition.Input{Type: "orders", Partitions: 2}
	if err := partition.EnsureInputStream(ctx, js, orders, opt); err != nil {
		t.Fatal(err)
	}
	// Many records before the node starts (a bootstrap of a few hundred
	// ms), every product's last at version 1; orders name the products
	// published last.
	const ids, rounds = 50_000, 2
	p := &productsOf{t: t, ctx: ctx, js: js}
	for round := range rounds {
		for i := range ids {
			b, err := msgpack.Marshal(product{Name: "product p" + strconv.Itoa(i), Version: round})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := js.PublishAsync("products.p"+strconv.Itoa(i), b, jetstream.WithStallWait(time.Minute)); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("preload not acknowledged")
	}
	for i := range 200 {
		if _, err := js.PublishMsg(ctx, orders.Msg("o"+strconv.Itoa(i), []byte("p"+strconv.Itoa(ids-1-i)))); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	start := func(reg *prometheus.Registry) *eddy.Node {
		return startTableNode(t, ctx, "products", func(cfg *eddy.Config) {
			cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr, cfg.Registerer = dir, srv.URL(), "127.0.0.1:0", reg
		})
	}
	node := start(prometheus.NewRegistry())
	seen := func(order string) int {
		t.Helper()
		var v int
		testkit.WaitFor(t, 30*time.Second, "order "+order, func() bool {
			return node.Query(ctx, "orders", order, &v) == nil
		})
		return v
	}
	for i := range 200 {
		if v := seen("o" + strconv.Itoa(i)); v != rounds-1 {
			t.Fatalf("order o%d saw product version %d, want %d: it ran before the table caught up", i, v, rounds-1)
		}
	}

	// A record published now, and an order that depends on it.
	seq := p.put("p7", 3)
	m := orders.Msg("late", []byte("p7"))
	m.Header.Set("Product-Seq", strconv.FormatUint(seq, 10))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	if v := seen("late"); v != 3 {
		t.Fatalf("an order that waits for the product's record saw version %d, want 3", v)
	}
	if ts, err := node.Tables(); err != nil || len(ts) != 1 || !ts[0].Ready || ts[0].Applied < seq {
		t.Fatalf("Tables: %+v %v, want products ready, applied through %d", ts, err, seq)
	}
	resp, err := http.Get("http://" + node.HTTPAddr() + "/v1/tables/products/p7")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Value product `json:"value"`
	}
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || got.Value.Version != 3 {
		t.Fatalf("GET /v1/tables/products/p7: %d %+v %v", resp.StatusCode, got, err)
	}

	// Down for a while: the restart reads only what was published meanwhile.
	if err := node.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		p.put("p"+strconv.Itoa(i), 4)
	}
	if _, err := js.Publish(ctx, "products.bad", []byte{0xc1, 0xff}); err != nil { // neither msgpack nor JSON
		t.Fatal(err)
	}
	p.put("p11", 5)
	reg := prometheus.NewRegistry()
	node = start(reg)
	defer func() { _ = node.Stop(context.Background()) }()
	m = orders.Msg("after", []byte("p11"))
	m.Header.Set("Product-Seq", strconv.FormatUint(p.last, 10))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	if v := seen("after"); v != 5 {
		t.Fatalf("after the restart an order saw version %d, want 5", v)
	}
	applied := testutil.ToFloat64(mustMetric(t, reg, "eddy_table_applied_records_total"))
	if applied != 12 {
		t.Fatalf("the restart applied %v records, want the 12 published while the node was down", applied)
	}
	dl, err := js.Stream(ctx, partition.DLQStream("products"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := dl.GetLastMsgForSubject(ctx, partition.DLQSubject("products"))
	if err != nil || msg.Header.Get("Eddy-Subject") != "products.0.bad" || msg.Header.Get("Eddy-Error") == "" {
		t.Fatalf("dead letter of the bad record: %+v %v", msg, err)
	}

}

// mustMetric returns the one sample of the counter name in reg.
func mustMetric(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: name},
				func() float64 { return mf.Metric[0].GetCounter().GetValue() })
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// Every member of a cluster keeps its own copy of a global table, whether
// or not it runs partitions: each answers it over HTTP, and the orders each
// node processes see the product records they wait for.
func TestGlobalTableOnEveryClusterMember(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	member := func(id, join string) *eddy.Node {
		node := startTableNode(t, ctx, "products", func(cfg *eddy.Config) {
			cfg.NodeID, cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr = id, t.TempDir(), srv.URL(), "127.0.0.1:0"
			cfg.GossipAddr, cfg.RaftAddr = "127.0.0.1:0", "127.0.0.1:0"
			if join == "" {
				cfg.Bootstrap = true
			} else {
				cfg.Join = []string{join}
			}
		})
		t.Cleanup(func() { _ = node.Stop(context.Background()) })
		return node
	}
	n1 := member("n1", "")
	n2 := member("n2", n1.GossipAddr())
	nodes := []*eddy.Node{n1, n2}
	waitSettled(t, nodes, 2)

	_, js := srv.Connect(t)
	p := &productsOf{t: t, ctx: ctx, js: js}
	orders := partition.Input{Type: "orders", Partitions: 2}
	for i := range 20 {
		id := "p" + strconv.Itoa(i)
		seq := p.put(id, i)
		m := orders.Msg("o"+strconv.Itoa(i), []byte(id))
		m.Header.Set("Product-Seq", strconv.FormatUint(seq, 10))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		var v int
		testkit.WaitFor(t, 30*time.Second, "order o"+strconv.Itoa(i), func() bool {
			return n1.Query(ctx, "orders", "o"+strconv.Itoa(i), &v) == nil
		})
		if v != i {
			t.Errorf("order o%d saw product version %d, want %d", i, v, i)
		}
	}
	for _, node := range nodes { // each node's copy tails the stream on its own
		testkit.WaitFor(t, 30*time.Second, "GET "+node.HTTPAddr()+"/v1/tables/products/p19", func() bool {
			resp, err := http.Get("http://" + node.HTTPAddr() + "/v1/tables/products/p19")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var got struct {
				Value product `json:"value"`
			}
			return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&got) == nil && got.Value.Version == 19
		})
	}
}

// A co-partitioned table: partition p of the type reads partition p of the
// table's stream, and an order sees the customer record stored before it.
// A stream with another partition count is refused at start, naming both.
func TestCoPartitionedTable(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	typ := eddy.ActorType{Name: "shop", Partitions: 2, Tables: []string{"customers"}, ReplicationFactor: eddy.NoReplicas,
		Handler: func(c *eddy.Context) error {
			var name string
			ok, err := c.Table("customers").Get(c.Key(), &name)
			if err != nil {
				return err
			}
			if !ok {
				name = "unknown"
			}
			return c.Set(name)
		}}
	start := func(typ eddy.ActorType) (*eddy.Node, error) {
		cfg := eddy.DefaultConfig()
		cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr, cfg.Logger = t.TempDir(), srv.URL(), "", testkit.Logger(t)
		node, err := eddy.NewNode(cfg)
		if err != nil {
			return nil, err
		}
		if err := node.Register(typ); err != nil {
			return nil, err
		}
		return node, node.Start(ctx)
	}
	// Another actor type writes the table: a customer's name, or its
	// deletion for "-".
	writer := eddy.ActorType{Name: "signup", Partitions: 2, ReplicationFactor: eddy.NoReplicas, Handler: func(c *eddy.Context) error {
		var name string
		if err := c.Decode(&name); err != nil {
			return err
		}
		if name == "-" {
			return c.EmitTombstone("customers", c.Key())
		}
		return c.Emit("customers", c.Key(), name)
	}}
	node, err := start(typ)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = node.Stop(context.Background()) }()
	customers := partition.Input{Type: "customers", Partitions: 2, KeyedSubjects: true}
	shop := partition.Input{Type: "shop", Partitions: 2}
	for i := range 10 {
		key := "c" + strconv.Itoa(i)
		if i%2 == 0 {
			b, _ := msgpack.Marshal("customer " + key)
			if _, err := js.PublishMsg(ctx, customers.Msg(key, b)); err != nil {
				t.Fatal(err)
			}
		}
		if i == 3 { // neither msgpack nor JSON: to the dead-letter stream
			if _, err := js.PublishMsg(ctx, customers.Msg(key, []byte{0xc1})); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := js.PublishMsg(ctx, shop.Msg(key, nil)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		key := "c" + strconv.Itoa(i)
		want := "unknown"
		if i%2 == 0 {
			want = "customer " + key
		}
		var got string
		testkit.WaitFor(t, 30*time.Second, "order "+key, func() bool { return node.Query(ctx, "shop", key, &got) == nil })
		if got != want {
			t.Errorf("%s saw %q, want %q", key, got, want)
		}
	}

	// Through the writer type: a name, then a deletion, each seen by an
	// order stored after it.
	wnode, err := start(writer)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = wnode.Stop(context.Background()) }()
	signup := partition.Input{Type: "signup", Partitions: 2}
	for _, step := range []struct{ name, want string }{{"Ada", "Ada"}, {"-", "unknown"}} {
		b, _ := msgpack.Marshal(step.name)
		if _, err := js.PublishMsg(ctx, signup.Msg("c1", b)); err != nil {
			t.Fatal(err)
		}
		var name string
		cst, err := js.Stream(ctx, "customers")
		if err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 30*time.Second, "signup's record for c1", func() bool {
			msg, err := cst.GetLastMsgForSubject(ctx, "customers."+strconv.Itoa(partition.Of("c1", 2))+".c1")
			if err != nil {
				return false
			}
			_, tomb := msg.Header["Eddy-Tombstone"]
			if step.name == "-" {
				return tomb
			}
			var v string
			return !tomb && msgpack.Unmarshal(msg.Data, &v) == nil && v == step.name
		})
		if _, err := js.PublishMsg(ctx, shop.Msg("c1", nil)); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 10*time.Second, "the order of c1 after "+step.name, func() bool {
			err := node.Query(ctx, "shop", "c1", &name)
			return err == nil && name == step.want
		})
	}

	dl, err := js.Stream(ctx, partition.DLQStream("shop"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := dl.GetLastMsgForSubject(ctx, partition.DLQSubject("shop"))
	if err != nil || msg.Header.Get("Eddy-Table") != "customers" || msg.Header.Get("Eddy-Error") == "" {
		t.Fatalf("dead letter of the bad customer record: %+v %v", msg, err)
	}

	both, err := eddy.NewNode(eddy.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := both.Register(typ); err != nil {
		t.Fatal(err)
	}
	three := typ
	three.Name, three.Partitions = "shop3", 3
	if err := both.Register(three); !errors.Is(err, eddy.ErrInvalidConfig) {
		t.Fatalf("two types of 2 and 3 partitions on one table: %v, want ErrInvalidConfig", err)
	}

	other := typ
	other.Name, other.Partitions = "shop3", 3
	if _, err := start(other); !errors.Is(err, eddy.ErrIncompatibleStream) || !strings.Contains(err.Error(), "(3 partitions)") {
		t.Fatalf("a 3-partition type on a 2-partition table: %v, want ErrIncompatibleStream naming the partitions", err)
	}
}

// A join with a co-partitioned table in a cluster whose members hand their
// partitions over (one leaves, one joins) while table records and events
// keep coming: every event's output is the version the rule gives (the
// latest record of its key stored no later than the event), once.
func TestCoPartitionedTableJoinThroughPlannedMoves(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const partitions = 4
	typ := eddy.ActorType{Name: "visits", Partitions: partitions, Tables: []string{"profiles"}, Outputs: []string{"visits_out"},
		Handler: func(c *eddy.Context) error {
			var v string
			ok, err := c.Table("profiles").Get(c.Key(), &v)
			if err != nil {
				return err
			}
			if !ok {
				v = "none"
			}
			return c.Emit("visits_out", c.Key(), c.Key()+"="+v)
		}}
	member := func(id, join string) *eddy.Node {
		return startMember(t, srv.URL(), id, join, func(c *eddy.Config) { c.Logger = testkit.Logger(t) }, typ)
	}
	n1 := member("n1", "")
	n2 := member("n2", n1.GossipAddr())
	waitSettled(t, []*eddy.Node{n1, n2}, partitions)

	profiles := partition.Input{Type: "profiles", Partitions: partitions, KeyedSubjects: true}
	visits := partition.Input{Type: "visits", Partitions: partitions}
	pst, err := js.Stream(ctx, "profiles")
	if err != nil {
		t.Fatal(err)
	}
	vst, err := js.Stream(ctx, "visits")
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		at    time.Time
		value string
	}
	records := map[string][]rec{}
	want := map[uint64]string{} // visit offset -> output
	rng := 0
	publish := func(n int) {
		for range n {
			rng = (rng*1103515245 + 12345) & 0x7fffffff
			key := "u" + strconv.Itoa(rng%12)
			if rng%3 == 0 {
				value := "v" + strconv.Itoa(rng)
				b, _ := msgpack.Marshal(value)
				ack, err := js.PublishMsg(ctx, profiles.Msg(key, b))
				if err != nil {
					t.Fatal(err)
				}
				raw, err := pst.GetMsg(ctx, ack.Sequence)
				if err != nil {
					t.Fatal(err)
				}
				records[key] = append(records[key], rec{raw.Time, value})
				continue
			}
			ack, err := js.PublishMsg(ctx, visits.Msg(key, nil))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := vst.GetMsg(ctx, ack.Sequence)
			if err != nil {
				t.Fatal(err)
			}
			seen := "none"
			for _, r := range records[key] {
				if r.at.After(raw.Time) {
					break
				}
				seen = r.value
			}
			want[ack.Sequence] = key + "=" + seen
		}
	}
	publish(200)
	// n3 joins (partitions move to it after a warm-up), then n2 leaves
	// (its partitions are handed over), while more comes.
	done := make(chan struct{})
	go func() {
		defer close(done)
		n3 := member("n3", n1.GossipAddr())
		waitSettled(t, []*eddy.Node{n1, n2, n3}, partitions)
		if err := n2.Stop(ctx); err != nil {
			t.Errorf("n2 leaves: %v", err)
		}
		waitSettled(t, []*eddy.Node{n1, n3}, partitions)
	}()
	during := 0
	for {
		publish(20)
		during += 20
		select {
		case <-done:
		default:
			continue
		}
		break
	}
	publish(100)
	t.Logf("%d records and visits published while the partitions moved, %d visits in all", during, len(want))

	out, err := js.Stream(ctx, "visits_out")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{} // message id -> output
	testkit.WaitFor(t, 60*time.Second, "every output", func() bool {
		info, err := out.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(len(want))
	})
	cons, err := out.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := out.Info(ctx)
	for range info.State.Msgs {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var s string
		if err := msgpack.Unmarshal(msg.Data(), &s); err != nil {
			t.Fatal(err)
		}
		got[msg.Headers().Get(jetstream.MsgIDHeader)] = s
	}
	if len(got) != len(want) || info.State.Msgs != uint64(len(want)) {
		t.Errorf("%d outputs (%d distinct), want %d", info.State.Msgs, len(got), len(want))
	}
	bad := 0
	for off, w := range want {
		key, _, _ := strings.Cut(w, "=")
		p := partition.Of(key, partitions)
		if g := got["visits/"+strconv.Itoa(p)+"/"+strconv.FormatUint(off, 10)+"/0"]; g != w {
			if bad++; bad <= 5 {
				t.Errorf("visit %d: %q, want %q", off, g, w)
			}
		}
	}
	if bad > 5 {
		t.Errorf("%d visits saw another version than the rule gives", bad)
	}
}

// Node.Stop interrupts a global table's bootstrap: it does not wait for the
// table to catch up.
func TestNodeStopInterruptsGlobalTableBootstrap(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := partition.EnsureTableStream(ctx, js, partition.Input{Type: "big", Partitions: 1, KeyedSubjects: true},
		partition.StreamOptions{Replicas: 1, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	const records = 300_000 // a bootstrap of about a second here
	for i := range records {
		if _, err := js.PublishAsync("big.k"+strconv.Itoa(i), []byte{0xa1, 'x'}, jetstream.WithStallWait(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("preload not acknowledged")
	}
	node := startTableNode(t, ctx, "big", func(cfg *eddy.Config) {
		cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr = t.TempDir(), srv.URL(), ""
	})
	ts, err := node.Tables()
	if err != nil || len(ts) != 1 || ts[0].Ready {
		t.Fatalf("Tables right after Start: %+v %v, want big still bootstrapping", ts, err)
	}
	start := time.Now()
	if err := node.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Stop took %v during a bootstrap", took)
	}
	t.Logf("stopped after %d of %d records", ts[0].Applied, records)
}
