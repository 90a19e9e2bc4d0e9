package eddy_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/partition"
)

// A node takes its actor types before Start, and starts once.
func TestRegisterAfterStartAndStartTwiceAreRefused(t *testing.T) {
	node, _, _ := startNode(t, apps.Bank(1))
	h := func(*eddy.Context) error { return nil }
	if err := node.Register(eddy.ActorType{Name: "late", Partitions: 1, Handler: h}); !errors.Is(err, eddy.ErrStarted) {
		t.Errorf("Register after Start: %v, want ErrStarted", err)
	}
	if err := node.Start(context.Background()); !errors.Is(err, eddy.ErrStarted) {
		t.Errorf("second Start: %v, want ErrStarted", err)
	}
	if err := node.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := node.Start(context.Background()); !errors.Is(err, eddy.ErrStarted) {
		t.Errorf("Start after Stop: %v, want ErrStarted", err)
	}
}

// ActorType.Validate holds the rules Register applies.
func TestActorTypeValidate(t *testing.T) {
	h := func(*eddy.Context) error { return nil }
	good := eddy.ActorType{Name: "ok", Partitions: 1, Handler: h, Stores: []string{"totals"}, Outputs: []string{"out"}}
	if err := good.Validate(); err != nil {
		t.Fatalf("%+v: %v", good.Name, err)
	}
	for name, typ := range map[string]eddy.ActorType{
		"name with a dot":         {Name: "a.b", Partitions: 1, Handler: h},
		"no partition":            {Name: "ok", Handler: h},
		"no handler":              {Name: "ok", Partitions: 1},
		"store with a space":      {Name: "ok", Partitions: 1, Handler: h, Stores: []string{"has space"}},
		"output with a wildcard":  {Name: "ok", Partitions: 1, Handler: h, Outputs: []string{"out*"}},
		"replicas, no changelog":  {Name: "ok", Partitions: 1, Handler: h, NoChangelog: true, ReplicationFactor: 1},
		"replication factor of 6": {Name: "ok", Partitions: 1, Handler: h, ReplicationFactor: 6},
	} {
		if err := typ.Validate(); !errors.Is(err, eddy.ErrInvalidConfig) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig", name, err)
		}
	}
}

// An event no handler can decode goes to the dead-letter stream at once,
// with a one-line reason in its Eddy-Error header.
func TestMalformedEventIsDeadLetteredWithOneLineReason(t *testing.T) {
	if strings.Contains(eddy.ErrMalformed.Error(), "\n") || !errors.Is(eddy.ErrMalformed, partition.ErrPermanent) {
		t.Fatalf("ErrMalformed %q: want one line, and permanent", eddy.ErrMalformed)
	}
	_, _, js := startNode(t, apps.Bank(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, partition.Input{Type: apps.BankType, Partitions: 1}.Msg("alice", []byte("not an event"))); err != nil {
		t.Fatal(err)
	}
	sub, err := js.OrderedConsumer(ctx, partition.DLQStream(apps.BankType), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := sub.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	reason := m.Headers().Get("Eddy-Error")
	if strings.Contains(reason, "\n") || !strings.HasPrefix(reason, "eddy: malformed event") {
		t.Fatalf("Eddy-Error %q: want one line saying eddy: malformed event", reason)
	}
	if n := m.Headers().Get("Eddy-Attempts"); n != "1" {
		t.Errorf("Eddy-Attempts %s: a malformed event is not retried", n)
	}
}

// The context a handler sees lives as long as its partition actor: it is
// live while events are processed and cancelled once the partition stops.
func TestHandlerContextEndsWithThePartition(t *testing.T) {
	var (
		mu   sync.Mutex
		ctxs []context.Context
		seen = make(chan struct{}, 1)
	)
	typ := eddy.ActorType{Name: "visits", Partitions: 1, Handler: func(c *eddy.Context) error {
		if err := c.Context().Err(); err != nil {
			return err
		}
		mu.Lock()
		ctxs = append(ctxs, c.Context())
		mu.Unlock()
		select {
		case seen <- struct{}{}:
		default:
		}
		return nil
	}}
	node, _, _ := startNode(t, typ)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.Client().Send(ctx, "visits", "home", 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-seen:
	case <-ctx.Done():
		t.Fatal("the handler did not run")
	}
	if err := node.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range ctxs {
		if c.Err() == nil {
			t.Fatal("a handler's context is live after its partition stopped")
		}
	}
}

// One Query takes a named store and a staleness bound together, and says
// who answered.
func TestQueryOptions(t *testing.T) {
	words := apps.WordCount(2)
	node, _, _ := startNode(t, words...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.Client().Send(ctx, apps.LinesType, "l1", "to be or not to be"); err != nil {
		t.Fatal(err)
	}
	var served eddy.Served
	testkit.WaitFor(t, 10*time.Second, "the count of to to be 2, read by the owner", func() bool {
		var n int
		err := node.Query(ctx, apps.WordsType, "to", &n, eddy.MaxStaleness(time.Second), eddy.ServedBy(&served))
		return err == nil && n == 2
	})
	if served.Replica || served.Node != node.ID() {
		t.Errorf("served by %+v; want the owner on %s (a single node has no replicas)", served, node.ID())
	}
	var v any
	err := node.Query(ctx, apps.WordsType, "to", &v, eddy.InStore("nope"), eddy.MaxStaleness(time.Second))
	if !errors.Is(err, eddy.ErrNotFound) || !strings.Contains(err.Error(), `no store "nope"`) {
		t.Errorf("query of an undeclared store: %v", err)
	}
}

// The HTTP API names its JSON fields one way: lower case, words joined by
// an underscore, in /v1/status as in /v1/state and /v1/cluster. A node that
// takes snapshots (Config.SnapshotEvery) shows the newest in /v1/status.
func TestHTTPFieldNamesAreLowerCase(t *testing.T) {
	cfg := eddy.DefaultConfig()
	cfg.DataDir, cfg.EmbeddedNATSPort, cfg.HTTPAddr = t.TempDir(), -1, "127.0.0.1:0"
	cfg.SnapshotEvery = 1
	node := runNode(t, cfg, apps.Bank(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.Client().Ask(ctx, apps.BankType, "alice", apps.Op{Kind: "deposit", Amount: 1}, nil); err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	testkit.WaitFor(t, 10*time.Second, "a snapshot in /v1/status", func() bool {
		resp, err := http.Get("http://" + node.HTTPAddr() + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Partitions []map[string]any `json:"partitions"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Partitions) != 1 {
			t.Fatalf("/v1/status: %+v, %v", body, err)
		}
		p = body.Partitions[0]
		_, ok := p["snapshot"]
		return ok
	})
	for _, k := range []string{"type", "partition", "state", "epoch", "offset", "changelog_seq", "input_lag", "last_commit", "snapshot"} {
		if _, ok := p[k]; !ok {
			t.Errorf("/v1/status partition has no %q: %v", k, p)
		}
	}
	snap, _ := p["snapshot"].(map[string]any)
	for _, k := range []string{"changelog_seq", "offset", "created", "files", "bytes", "uploaded_bytes"} {
		if _, ok := snap[k]; !ok {
			t.Errorf("/v1/status snapshot has no %q: %v", k, snap)
		}
	}
	for _, m := range []map[string]any{p, snap} {
		for k := range m {
			if k != strings.ToLower(k) {
				t.Errorf("/v1/status field %q is not lower case", k)
			}
		}
	}
}

// An emit to a stream that no one created goes to the dead-letter stream at
// once, naming the stream, and the partition goes on; an emit to a stream
// the handler did not declare, but that exists, is forwarded.
func TestEmitToAStreamThatDoesNotExist(t *testing.T) {
	typ := eddy.ActorType{Name: "router", Partitions: 1, Handler: func(c *eddy.Context) error {
		var to string
		if err := c.Decode(&to); err != nil {
			return err
		}
		if err := c.Emit(to, c.Key(), "hello"); err != nil {
			return err
		}
		var n int
		if _, err := c.Get(&n); err != nil {
			return err
		}
		return c.Set(n + 1)
	}}
	node, client, js := startNode(t, typ)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "elsewhere", Subjects: []string{"elsewhere.*"}}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"nowhere", "elsewhere"} {
		if err := client.Send(ctx, "router", "k", to); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "both events processed", func() bool {
		var n int
		return node.Query(ctx, "router", "k", &n) == nil && n == 1
	})
	dl, err := js.OrderedConsumer(ctx, partition.DLQStream("router"), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := dl.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if reason := m.Headers().Get("Eddy-Error"); !strings.Contains(reason, "no stream for the subject") || !strings.Contains(reason, `"nowhere"`) {
		t.Fatalf("Eddy-Error %q: want it to name the missing stream", reason)
	}
	out, err := js.Stream(ctx, "elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the emit to elsewhere forwarded", func() bool {
		info, err := out.Info(ctx)
		return err == nil && info.State.Msgs == 1
	})
}
