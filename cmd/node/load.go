package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
)

const (
	loadAccounts   = 100  // bank accounts the demo load funds and moves money between
	loadDeposit    = 1000 // each account's initial deposit
	loadMaxAmount  = 100  // largest demo transfer
	loadStatsEvery = 10 * time.Second
	loadWarnEvery  = 5 * time.Second // at most one send failure logged per interval
)

var loadWords = strings.Fields(`the quick brown fox jumps over the lazy dog a stream of events flows
	through partitions actors keep state in stores every change goes to the changelog replicas tail it
	and take over when an owner fails`)

// loadGen sends demo events at a steady rate with an eddy.Client: for the bank,
// deposits that fund loadAccounts accounts once and then random transfers; for
// the word count, random lines.
type loadGen struct {
	client *eddy.Client
	node   *eddy.Node
	log    *slog.Logger
	rate   float64 // events per second
	apps   []string
	rng    *rand.Rand
}

func (g *loadGen) run(ctx context.Context) error {
	g.rng = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	var send []func(context.Context) error
	if slices.Contains(g.apps, "bank") {
		if err := g.fundAccounts(ctx); err != nil {
			return err
		}
		send = append(send, g.transfer)
	}
	if slices.Contains(g.apps, "wordcount") {
		send = append(send, g.line)
	}
	if len(send) == 0 {
		return nil
	}
	g.log.Info("load started", "rate", g.rate, "apps", g.apps)

	// Send whatever is due every tick: int(rate * elapsed) events so far.
	tick := max(min(time.Duration(float64(time.Second)/g.rate), 100*time.Millisecond), 5*time.Millisecond)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	var sent, failed, behind int64
	start, lastStats, lastWarn := time.Now(), time.Now(), time.Time{}
	for n := 0; ; {
		select {
		case <-ctx.Done():
			g.log.Info("load stopped", "sent", sent, "failed", failed)
			return nil
		case <-ticker.C:
		}
		due := int64(g.rate*time.Since(start).Seconds()) - sent - failed - behind
		if limit := int64(g.rate) + 1; due > limit {
			// More than a second behind: skip the backlog rather than burst.
			behind += due - limit
			due = limit
		}
		for ; due > 0 && ctx.Err() == nil; due-- {
			err := send[n%len(send)](ctx)
			n++
			switch {
			case err == nil:
				sent++
			case ctx.Err() != nil:
			default:
				failed++
				if time.Since(lastWarn) >= loadWarnEvery {
					lastWarn = time.Now()
					g.log.Warn("load: send failed", "err", err, "failed", failed)
				}
			}
		}
		if time.Since(lastStats) >= loadStatsEvery {
			lastStats = time.Now()
			g.log.Info("load", "sent", sent, "failed", failed, "skipped", behind,
				"rate", fmt.Sprintf("%.0f/s", float64(sent)/time.Since(start).Seconds()))
		}
	}
}

func account(i int) string { return fmt.Sprintf("acct-%02d", i) }

// fundAccounts deposits into every account that has no deposit yet, so a
// restarted node does not mint money. The message id makes a repeated run
// inside the duplicate window harmless while a deposit is still in flight.
func (g *loadGen) fundAccounts(ctx context.Context) error {
	funded := 0
	for i := range loadAccounts {
		key := account(i)
		acc, err := g.account(ctx, key)
		switch {
		case err == nil && acc.Deposited > 0:
			continue
		case err != nil && !errors.Is(err, eddy.ErrNotFound):
			return fmt.Errorf("fund %s: %w", key, err)
		}
		op := apps.Op{Kind: "deposit", Amount: loadDeposit}
		if err := g.client.SendWithID(ctx, apps.BankType, key, "eddy-load-fund-"+key, op); err != nil {
			return fmt.Errorf("fund %s: %w", key, err)
		}
		funded++
	}
	g.log.Info("bank accounts funded", "accounts", loadAccounts, "new", funded, "deposit", loadDeposit)
	return nil
}

// account reads key's account, asking again for a minute while its
// partition does not run (restoring, or moving between nodes as a cluster
// forms).
func (g *loadGen) account(ctx context.Context, key string) (apps.Account, error) {
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		var acc apps.Account
		err := g.node.Query(qctx, apps.BankType, key, &acc)
		if !errors.Is(err, eddy.ErrUnavailable) || qctx.Err() != nil {
			return acc, err
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-qctx.Done():
			return acc, err
		}
	}
}

func (g *loadGen) transfer(ctx context.Context) error {
	from := g.rng.IntN(loadAccounts)
	to := (from + 1 + g.rng.IntN(loadAccounts-1)) % loadAccounts
	op := apps.Op{Kind: "transfer", Amount: 1 + g.rng.Int64N(loadMaxAmount), To: account(to)}
	return g.client.Send(ctx, apps.BankType, account(from), op)
}

func (g *loadGen) line(ctx context.Context) error {
	words := make([]string, 3+g.rng.IntN(8))
	for i := range words {
		words[i] = loadWords[g.rng.IntN(len(loadWords))]
	}
	return g.client.Send(ctx, apps.LinesType, fmt.Sprintf("line-%d", g.rng.IntN(1000)), strings.Join(words, " "))
}
