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
)

// Product is a record of the products table.
type Product struct {
	Name  string `msgpack:"name"`
	Price int64  `msgpack:"price"` // cents
}

// Customer is a record of the customers table.
type Customer struct {
	Name string `msgpack:"name"`
}

// Order is an event of the orders actor type, keyed by customer.
type Order struct {
	ID      string `msgpack:"id"`
	Product string `msgpack:"product"`
	Qty     int64  `msgpack:"qty"`
	// ProductSeq is the sequence of the product record the order was
	// placed against (0: whatever the table has).
	ProductSeq uint64 `msgpack:"product_seq"`
}

// Enriched is an order with its customer and product, as emitted.
type Enriched struct {
	Customer string `msgpack:"customer"`
	Product  string `msgpack:"product"`
	Name     string `msgpack:"name"`
	Qty      int64  `msgpack:"qty"`
	Total    int64  `msgpack:"total"`
}

// orders enriches each order with its product and emits it.
func orders(partitions int) eddy.ActorType {
	return eddy.ActorType{Name: "orders", Partitions: partitions, Outputs: []string{"enriched_orders"},
		Tables: []string{"customers"},
		Handler: func(c *eddy.Context) error {
			var o Order
			if err := c.Decode(&o); err != nil {
				return err
			}
			var cust Customer
			if ok, err := c.Table("customers").Get(c.Key(), &cust); err != nil {
				return err
			} else if !ok {
				cust.Name = "(unknown customer " + c.Key() + ")"
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
			e := Enriched{Customer: cust.Name, Product: o.Product, Name: p.Name, Qty: o.Qty, Total: o.Qty * p.Price}
			return c.Emit("enriched_orders", o.ID, e)
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

	// Customers, laid out as the orders' input: one subject per key, in
	// the customer's partition (partition.InputSubject does the same).
	for i, name := range []string{"Ada", "Grace"} {
		b, err := msgpack.Marshal(Customer{Name: name})
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
		o := Order{ID: "order-" + strconv.Itoa(i), Product: id, Qty: int64(i + 1), ProductSeq: seqs[id]}
		if err := client.Send(ctx, "orders", customer, o); err != nil {
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
			var e Enriched
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
