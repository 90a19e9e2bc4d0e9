package eddy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/partition"
)

// startNode runs a node with an embedded NATS server on a free port and HTTP
// on a free port, stopped when the test ends.
// runNode starts a node for cfg with types, stopped when the test ends.
func runNode(t *testing.T, cfg eddy.Config, types ...eddy.ActorType) *eddy.Node {
	t.Helper()
	node, err := eddy.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range types {
		if err := node.Register(typ); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Stop(context.Background()) })
	return node
}

func startNode(t *testing.T, types ...eddy.ActorType) (*eddy.Node, *eddy.Client, jetstream.JetStream) {
	t.Helper()
	cfg := eddy.DefaultConfig()
	cfg.DataDir, cfg.EmbeddedNATSPort, cfg.HTTPAddr = t.TempDir(), -1, "127.0.0.1:0"
	node := runNode(t, cfg, types...)
	client, js := connect(t, node)
	return node, client, js
}

// connect returns a client of node's NATS server, closed when the test ends.
func connect(t *testing.T, node *eddy.Node) (*eddy.Client, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(node.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	client, err := eddy.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	return client, js
}

func TestNodeServesBankThroughClientQueryAndHTTP(t *testing.T) {
	node, client, js := startNode(t, apps.Bank(4))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var bal int64
	if err := client.Ask(ctx, apps.BankType, "alice", apps.Op{Kind: "deposit", Amount: 100}, &bal); err != nil || bal != 100 {
		t.Fatalf("deposit: balance %d, %v", bal, err)
	}
	// The transfer's credit lands in bob's partition through the outbox.
	if err := client.Ask(ctx, apps.BankType, "alice", apps.Op{Kind: "transfer", Amount: 30, To: "bob"}, &bal); err != nil || bal != 70 {
		t.Fatalf("transfer: balance %d, %v", bal, err)
	}
	var bob apps.Account
	deadline := time.Now().Add(10 * time.Second)
	for bob.Balance != 30 {
		if time.Now().After(deadline) {
			t.Fatalf("bob never credited: %+v", bob)
		}
		err := node.Query(ctx, apps.BankType, "bob", &bob)
		if err != nil && !errors.Is(err, eddy.ErrNotFound) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := node.Query(ctx, apps.BankType, "nobody", &bob); !errors.Is(err, eddy.ErrNotFound) {
		t.Fatalf("query of a missing key: %v", err)
	}

	resp, err := http.Get("http://" + node.HTTPAddr() + "/v1/state/bank/alice")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var got struct {
		Value apps.Account `json:"value"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || got.Value.Balance != 70 || got.Value.Debits != 1 {
		t.Fatalf("GET state: %d %s", resp.StatusCode, body)
	}
	if resp, err := http.Get("http://" + node.HTTPAddr() + "/v1/state/bank/nobody"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("GET missing state: %v %v", resp, err)
	}

	// Any NATS client can publish; a malformed event goes to the dead-letter
	// stream and the partition goes on.
	if _, err := js.PublishMsg(ctx, partition.Input{Type: apps.BankType, Partitions: 4}.Msg("carol", []byte{0xc1})); err != nil {
		t.Fatal(err)
	}
	if err := client.Ask(ctx, apps.BankType, "carol", apps.Op{Kind: "deposit", Amount: 5}, &bal); err != nil || bal != 5 {
		t.Fatalf("after a malformed event: %d %v", bal, err)
	}
	dlq, err := js.Stream(ctx, partition.DLQStream(apps.BankType))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := dlq.GetLastMsgForSubject(ctx, partition.DLQSubject(apps.BankType))
	if err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	if msg.Header.Get("Eddy-Attempts") != "1" || msg.Header.Get("Eddy-Error") == "" || string(msg.Data) != "\xc1" {
		t.Fatalf("dead letter headers %v data %q", msg.Header, msg.Data)
	}
	st, err := node.Status()
	if err != nil || len(st) != 4 || !st[0].Running {
		t.Fatalf("status: %v %v", st, err)
	}
}

func TestRegisterRejectsBadTypes(t *testing.T) {
	node, err := eddy.NewNode(eddy.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	h := func(*eddy.Context) error { return nil }
	for _, typ := range []eddy.ActorType{
		{Name: "a.b", Partitions: 1, Handler: h},
		{Name: "ok", Partitions: 0, Handler: h},
		{Name: "ok", Partitions: 1},
		{Name: "ok", Partitions: 1, Handler: h, Stores: []string{"has space"}},
		{Name: "ok", Partitions: 1, Handler: h, NoChangelog: true, ReplicationFactor: 1},
	} {
		if err := node.Register(typ); !errors.Is(err, eddy.ErrInvalidConfig) {
			t.Errorf("Register(%+v) = %v, want ErrInvalidConfig", typ.Name, err)
		}
	}
}

// An actor type without a changelog keeps its state in the local stores
// alone; when they are lost, the node rebuilds them from the input stream
// and goes on from the committed offset. (That a rebuild sends nothing again
// is TestCrashBetweenCommitSteps/NoChangelog's, with a short duplicate window.)
func TestStoresWithoutChangelogRebuildFromInput(t *testing.T) {
	cfg := eddy.DefaultConfig()
	cfg.DataDir, cfg.EmbeddedNATSPort, cfg.HTTPAddr = t.TempDir(), -1, "127.0.0.1:0"
	bank := apps.Bank(2)
	bank.NoChangelog = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	run := func() (*eddy.Node, *eddy.Client) {
		node := runNode(t, cfg, bank)
		client, _ := connect(t, node)
		return node, client
	}
	balances := func(node *eddy.Node, accounts []string) map[string]int64 {
		got := map[string]int64{}
		for _, a := range accounts {
			var acc apps.Account
			if err := node.Query(ctx, apps.BankType, a, &acc); err != nil && !errors.Is(err, eddy.ErrNotFound) {
				t.Fatal(err)
			}
			got[a] = acc.Balance
		}
		return got
	}
	node, client := run()
	accounts := []string{"a", "b", "c", "d", "e", "f"}
	var bal int64
	for _, a := range accounts {
		if err := client.Ask(ctx, apps.BankType, a, apps.Op{Kind: "deposit", Amount: 100}, &bal); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		from, to := accounts[i%len(accounts)], accounts[(i+1)%len(accounts)]
		if err := client.Ask(ctx, apps.BankType, from, apps.Op{Kind: "transfer", Amount: int64(i + 1), To: to}, &bal); err != nil {
			t.Fatal(err)
		}
	}
	var want map[string]int64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		want = balances(node, accounts)
		total := int64(0)
		for _, b := range want {
			total += b
		}
		if total == 600 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("credits not all delivered: %v", want)
		}
	}
	if err := node.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(cfg.DataDir, "stores")); err != nil {
		t.Fatal(err)
	}

	node, client = run()
	if got := balances(node, accounts); !maps.Equal(got, want) {
		t.Fatalf("after the rebuild: %v, want %v", got, want)
	}
	if n := rebuiltEvents(t, node); n != 66 {
		t.Fatalf("rebuilt from %v input events, want all 66", n)
	}
	// Processing goes on from the committed offset, with replies.
	if err := client.Ask(ctx, apps.BankType, "a", apps.Op{Kind: "deposit", Amount: 1}, &bal); err != nil || bal != want["a"]+1 {
		t.Fatalf("deposit after the rebuild: balance %d, %v; want %d", bal, err, want["a"]+1)
	}
}

// rebuiltEvents is the eddy_partition_rebuild_events_total a node serves on
// /metrics, summed over its partitions.
func rebuiltEvents(t *testing.T, node *eddy.Node) float64 {
	t.Helper()
	resp, err := http.Get("http://" + node.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for line := range strings.SplitSeq(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, "eddy_partition_rebuild_events_total{"); ok {
			v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}

// Any NATS client can publish plain JSON to an actor type's input stream,
// with or without a Content-Type header; what is neither msgpack nor JSON
// goes to the dead-letter stream.
func TestPlainJSONEventsFromAnyClient(t *testing.T) {
	node, _, js := startNode(t, apps.Bank(2))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// What a client in any language sends: the partition is FNV-1a of the
	// key mod 2, the key goes in the Eddy-Key header.
	h := fnv.New32a()
	h.Write([]byte("alice"))
	subject := fmt.Sprintf("bank.%d", h.Sum32()%2)
	for _, m := range []*nats.Msg{
		{Subject: subject, Header: nats.Header{"Eddy-Key": {"alice"}}, Data: []byte(`{"kind":"deposit","amount":40}`)},
		{Subject: subject, Header: nats.Header{"Eddy-Key": {"alice"}, "Content-Type": {"application/json"}}, Data: []byte(` {"kind":"deposit","amount":2}`)},
		{Subject: subject, Header: nats.Header{"Eddy-Key": {"alice"}}, Data: []byte(`deposit 1000`)},
	} {
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var acc apps.Account
		err := node.Query(ctx, apps.BankType, "alice", &acc)
		if err == nil && acc.Deposited == 42 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice: %+v, %v; want 42 deposited from two JSON events", acc, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, err := js.Stream(ctx, partition.DLQStream(apps.BankType))
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for st.CachedInfo().State.Msgs != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters, want the one that is neither msgpack nor JSON", st.CachedInfo().State.Msgs)
		}
		time.Sleep(20 * time.Millisecond)
		_, _ = st.Info(ctx)
	}
}
