package eddy_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/eddyrt/eddy"
)

// startExampleNode starts a node on an embedded NATS server with the
// "visits" actor type: it counts the events of each key and replies with
// the count. stop stops the node and removes its data.
func startExampleNode(ctx context.Context) (node *eddy.Node, stop func(), err error) {
	dir, err := os.MkdirTemp("", "eddy-example-")
	if err != nil {
		return nil, nil, err
	}
	cfg := eddy.DefaultConfig()
	cfg.DataDir = dir
	cfg.EmbeddedNATSPort = -1 // any free port
	cfg.HTTPAddr = ""         // no HTTP endpoint
	cfg.Logger = slog.New(slog.DiscardHandler)
	node, err = eddy.NewNode(cfg)
	if err != nil {
		return nil, nil, err
	}
	err = node.Register(eddy.ActorType{
		Name:       "visits",
		Partitions: 4,
		Handler: func(c *eddy.Context) error {
			var n int
			if _, err := c.Get(&n); err != nil {
				return err
			}
			n++
			if err := c.Set(n); err != nil {
				return err
			}
			return c.Reply(n)
		},
	})
	if err != nil {
		return nil, nil, err
	}
	if err := node.Start(ctx); err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, err
	}
	return node, func() {
		_ = node.Stop(context.Background())
		_ = os.RemoveAll(dir)
	}, nil
}

// A node with one actor type, on an embedded NATS server: events for a key
// go to the partition actor that owns it, which keeps the key's state.
func ExampleNode() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, stop, err := startExampleNode(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	client := node.Client()
	for range 3 {
		if err := client.Send(ctx, "visits", "home", "hello"); err != nil {
			log.Fatal(err)
		}
	}
	var n int
	if err := client.Ask(ctx, "visits", "home", "hello", &n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("visits of home:", n)
	// Output: visits of home: 4
}

// Ask waits for the handler's reply, which comes only once the event's
// effects are committed.
func ExampleClient_Ask() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, stop, err := startExampleNode(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	var n int
	if err := node.Client().Ask(ctx, "visits", "about", nil, &n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("first visit of about:", n)
	// Output: first visit of about: 1
}

// Query reads a key's committed state from the partition actor that owns
// it, wherever it runs; ServedBy tells who answered, and MaxStaleness lets
// a hot replica answer instead (in a cluster).
func ExampleNode_Query() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, stop, err := startExampleNode(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	if err := node.Client().Ask(ctx, "visits", "home", nil, nil); err != nil {
		log.Fatal(err)
	}
	var (
		n      int
		served eddy.Served
	)
	if err := node.Query(ctx, "visits", "home", &n, eddy.MaxStaleness(time.Second), eddy.ServedBy(&served)); err != nil {
		log.Fatal(err)
	}
	fmt.Println("visits of home:", n, "answered by the owner:", !served.Replica)

	err = node.Query(ctx, "visits", "nobody", &n)
	fmt.Println("nobody has state:", !errors.Is(err, eddy.ErrNotFound))
	// Output:
	// visits of home: 1 answered by the owner: true
	// nobody has state: false
}
