package apps

import (
	"fmt"

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

// OrdersType is the actor type of orders, keyed by customer.
const OrdersType = "orders"

// GlobalTables returns the global tables of the named app.
func GlobalTables(app string) []eddy.GlobalTable {
	if app == "orders" {
		return []eddy.GlobalTable{{Name: "products"}}
	}
	return nil
}

// Orders is the orders actor type: each order is enriched with its customer,
// read from the co-partitioned table "customers" (orders are keyed by
// customer), and with its product, read from the global table "products"
// after waiting for the product record it was placed against; the enriched
// order is emitted to "enriched_orders".
func Orders(partitions int) eddy.ActorType {
	return eddy.ActorType{Name: OrdersType, Partitions: partitions, Outputs: []string{"enriched_orders"},
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
