// Command orders runs the orders example on one node with an embedded NATS
// server: orders are enriched with their customer, read from the
// co-partitioned table "customers" (orders are keyed by customer, so
// partition p of the orders holds partition p of the customers), and with
// the product they name, read from the global table "products" (every node
// keeps the whole table); the enriched orders are emitted to the
// "enriched_orders" stream.
//
// Customers and products are written by any NATS client. An order sees the
// customer record stored before it (the co-partitioned join rule), and it
// carries the stream sequence of the product record it was placed against:
// its handler waits for the global table to have applied it. Neither
// depends on timing, crashes or moves.
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
	"github.com/eddyrt/eddy/examples/apps"
)

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
	for _, t := range apps.GlobalTables("orders") {
		if err := node.RegisterGlobalTable(t); err != nil {
			return err
		}
	}
	if err := node.Register(apps.Orders(4)); err != nil {
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
		b, err := msgpack.Marshal(apps.Product{Name: name, Price: int64(500 * (i + 1))})
		if err != nil {
			return err
		}
		ack, err := js.Publish(ctx, "products."+id, b)
		if err != nil {
			return err
		}
		seqs[id] = ack.Sequence
	}

	// Customers, laid out as the orders' input: one subject per key, in
	// the customer's partition (partition.InputSubject does the same).
	for i, name := range []string{"Ada", "Grace"} {
		b, err := msgpack.Marshal(apps.Customer{Name: name})
		if err != nil {
			return err
		}
		if _, err := js.Publish(ctx, "customers.cust"+strconv.Itoa(i), b); err != nil {
			return err
		}
	}

	client := node.Client()
	for i := range 8 {
		id := "p" + strconv.Itoa(i%4)
		customer := "cust" + strconv.Itoa(i%3) // cust2 has no record
		o := apps.Order{ID: "order-" + strconv.Itoa(i), Product: id, Qty: int64(i + 1), ProductSeq: seqs[id]}
		if err := client.Send(ctx, apps.OrdersType, customer, o); err != nil {
			return err
		}
	}
	// The enriched orders, as any consumer of the output stream reads them.
	out, err := js.Stream(ctx, "enriched_orders")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < 8; {
		msg, err := out.GetLastMsgForSubject(ctx, "enriched_orders.order-"+strconv.Itoa(i))
		switch {
		case err == nil:
			var e apps.Enriched
			if err := msgpack.Unmarshal(msg.Data, &e); err != nil {
				return err
			}
			fmt.Printf("order-%d: %-28s %d x %-7s = %6.2f\n", i, e.Customer, e.Qty, e.Name, float64(e.Total)/100)
			i++
			continue
		case !errors.Is(err, jetstream.ErrMsgNotFound):
			return err
		case time.Now().After(deadline):
			return fmt.Errorf("order-%d was not enriched", i)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Println("every order enriched with its customer and the product it was placed against")
	return nil
}
