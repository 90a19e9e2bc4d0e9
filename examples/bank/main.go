// Command bank runs the bank example on one node with an embedded NATS server:
// it funds accounts, makes random transfers between them (the debit and the
// credit live in different partitions), waits until every transfer is applied,
// and shows that the total of all balances did not change.
//
//	go run ./examples/bank
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
)

func main() {
	accounts := flag.Int("accounts", 20, "number of accounts")
	transfers := flag.Int("transfers", 2000, "number of transfers")
	dataDir := flag.String("data-dir", "", "data directory (default: a temporary one)")
	flag.Parse()
	if err := run(*accounts, *transfers, *dataDir); err != nil {
		fmt.Fprintln(os.Stderr, "bank:", err)
		os.Exit(1)
	}
}

func run(accounts, transfers int, dataDir string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if dataDir == "" {
		d, err := os.MkdirTemp("", "eddy-bank-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dataDir = d
	}
	cfg := eddy.DefaultConfig()
	cfg.DataDir, cfg.EmbeddedNATSPort, cfg.HTTPAddr = dataDir, -1, ""
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	node, err := eddy.NewNode(cfg)
	if err != nil {
		return err
	}
	if err := node.Register(apps.Bank(4)); err != nil {
		return err
	}
	if err := node.Start(ctx); err != nil {
		return err
	}
	defer node.Stop(context.Background())

	client := node.Client()
	const deposit = 1000
	for i := range accounts {
		if err := client.Send(ctx, apps.BankType, account(i), apps.Op{Kind: "deposit", Amount: deposit}); err != nil {
			return err
		}
	}
	start := time.Now()
	for range transfers {
		from, to := rand.IntN(accounts), rand.IntN(accounts-1)
		if to >= from {
			to++
		}
		op := apps.Op{Kind: "transfer", Amount: 1 + rand.Int64N(50), To: account(to)}
		if err := client.Send(ctx, apps.BankType, account(from), op); err != nil {
			return err
		}
	}
	// Ask answers after the event's effects are committed.
	var bal int64
	if err := client.Ask(ctx, apps.BankType, account(0), apps.Op{Kind: "deposit", Amount: 0}, &bal); err != nil {
		return err
	}
	for {
		var total, debits, credits, rejected int64
		for i := range accounts {
			var a apps.Account
			if err := node.Query(ctx, apps.BankType, account(i), &a); err != nil {
				return err
			}
			total += a.Balance
			debits += a.Debits
			credits += a.Credits
			rejected += a.Rejected
		}
		if debits+rejected == int64(transfers) && credits == debits {
			fmt.Printf("%d transfers in %v (%d applied, %d rejected for lack of funds)\n",
				transfers, time.Since(start).Round(time.Millisecond), debits, rejected)
			fmt.Printf("total of all balances: %d (deposited %d)\n", total, int64(accounts)*deposit)
			if total != int64(accounts)*deposit {
				return fmt.Errorf("the total changed")
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func account(i int) string { return "acct-" + strconv.Itoa(i) }
