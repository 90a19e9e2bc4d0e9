// Command orders runs the orders example on one node with an embedded NATS
// server: orders are enriched with the product they name, read from the
// global table "products" (every node keeps the whole table), and the
// enriched orders are emitted to the "enriched_orders" stream.
//
// Products are written by any NATS client to products.<id>; an order carries
// the stream sequence of the product record it was placed against, and its
// handler waits for the table to have applied it, so the enrichment does not
// depend on how far the table got when the order ran.
//
//	go run ./examples/orders
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
)

// Product is a record of the products table.
type Product struct {
	Name  string `msgpack:"name"`
	Price int64  `msgpack:"price"` // cents
}

// Order is an event of the orders actor type.
type Order struct {
	Product string `msgpack:"product"`
	Qty     int64  `msgpack:"qty"`
	// ProductSeq is the sequence of the product record the order was
	// placed against (0: whatever the table has).
	ProductSeq uint64 `msgpack:"product_seq"`
}

// Enriched is an order with its product, as emitted.
type Enriched struct {
	Product string `msgpack:"product"`
	Name    string `msgpack:"name"`
	Qty     int64  `msgpack:"qty"`
	Total   int64  `msgpack:"total"`
}

// orders enriches each order with its product and emits it.
func orders(partitions int) eddy.ActorType {
	return eddy.ActorType{Name: "orders", Partitions: partitions, Outputs: []string{"enriched_orders"},
		Handler: func(c *eddy.Context) error {
			var o Order
			if err := c.Decode(&o); err != nil {
				return err
			}
			products := c.Global("products")
			if o.ProductSeq > 0 {
				if err := products.WaitApplied(o.ProductSeq); err != nil {
					return err
				}
			}
			var p Product
			ok, err := products.Get(o.Product, &p)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%w: no product %q", eddy.ErrMalformed, o.Product) // to the dead-letter stream
			}
			e := Enriched{Product: o.Product, Name: p.Name, Qty: o.Qty, Total: o.Qty * p.Price}
			if err := c.Set(e); err != nil {
				return err
			}
			return c.Emit("enriched_orders", c.Key(), e)
		}}
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	dir, err := os.MkdirTemp("", "eddy-orders-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := eddy.DefaultConfig()
	cfg.DataDir, cfg.EmbeddedNATSPort, cfg.HTTPAddr = dir, -1, ""
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	node, err := eddy.NewNode(cfg)
	if err != nil {
		return err
	}
	if err := node.RegisterGlobalTable(eddy.GlobalTable{Name: "products"}); err != nil {
		return err
	}
	if err := node.Register(orders(4)); err != nil {
		return err
	}
	if err := node.Start(ctx); err != nil {
		return err
	}
	defer node.Stop(context.Background())

	// Any NATS client writes the products table.
	nc, err := nats.Connect(node.NATSURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	seqs := map[string]uint64{}
	for i, name := range []string{"kettle", "teapot", "mug", "saucer"} {
		id := "p" + strconv.Itoa(i)
		b, err := msgpack.Marshal(Product{Name: name, Price: int64(500 * (i + 1))})
		if err != nil {
			return err
		}
		ack, err := js.Publish(ctx, "products."+id, b)
		if err != nil {
			return err
		}
		seqs[id] = ack.Sequence
	}

	client := node.Client()
	for i := range 8 {
		id := "p" + strconv.Itoa(i%4)
		o := Order{Product: id, Qty: int64(i + 1), ProductSeq: seqs[id]}
		if err := client.Send(ctx, "orders", "order-"+strconv.Itoa(i), o); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < 8; {
		var e Enriched
		err := node.Query(ctx, "orders", "order-"+strconv.Itoa(i), &e)
		switch {
		case err == nil:
			fmt.Printf("order-%d: %d x %-7s = %6.2f\n", i, e.Qty, e.Name, float64(e.Total)/100)
			i++
			continue
		case !errors.Is(err, eddy.ErrNotFound):
			return err
		case time.Now().After(deadline):
			return fmt.Errorf("order-%d was not enriched", i)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Println("every order enriched with the product it was placed against")
	return nil
}
