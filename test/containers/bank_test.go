//go:build containers

package containers

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/partition"
)

// deposit is what every account is funded with: more than the transfers of
// a run can take out (amounts 1..100, ~100/s over a few minutes spread over
// the accounts), so that no transfer is rejected and every account's final
// state follows from the transfers alone, whatever their interleaving with
// the credits.
const deposit = 1_000_000

// sendTimeout bounds one publish attempt; a send retries with the same
// Nats-Msg-Id (stored once) until acknowledged, for at most sendGiveUp.
const (
	sendTimeout = 3 * time.Second
	sendGiveUp  = 90 * time.Second
)

// bankProducer is a producer that is not eddy's Client: plain JetStream
// publishes of JSON apps.Op events to bank.<p> with the Eddy-Key header, as
// a producer in another language would send them. It keeps the model of
// every account: what it must hold once every acknowledged event is
// processed.
type bankProducer struct {
	t        *testing.T
	nc       *nats.Conn
	js       jetstream.JetStream
	input    partition.Input
	accounts []string

	mu    sync.Mutex
	model map[string]apps.Account // the accounts once every sent event is applied
	sent  int                     // transfers acknowledged
	acked time.Time               // the last acknowledgement
	stall time.Duration           // the longest wait for an acknowledgement, from the previous one

	stopLoad func() // ends the running load and waits for its last send
}

// newBankProducer connects to the NATS servers' data-network addresses and
// deposits into every account.
func newBankProducer(t *testing.T, c *dockerCluster, partitions, accounts int) *bankProducer {
	var urls []string
	for _, n := range c.nats {
		urls = append(urls, "nats://"+n.ips[c.data]+":4222")
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.Name("eddy containers test"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true),
		// A server cut off the network does not close the connection: the
		// client finds out when 3 pings a second go unanswered.
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p := &bankProducer{t: t, nc: nc, js: js, input: partition.Input{Type: apps.BankType, Partitions: partitions},
		model: map[string]apps.Account{}}
	for i := range accounts {
		p.accounts = append(p.accounts, fmt.Sprintf("acct-%04d", i))
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(p.accounts))
	for _, a := range p.accounts {
		wg.Go(func() {
			if err := p.send(a, "deposit-"+a, apps.Op{Kind: "deposit", Amount: deposit}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	for _, a := range p.accounts {
		p.model[a] = apps.Account{Balance: deposit, Deposited: deposit}
	}
	t.Logf("producer: %d accounts funded in %v", accounts, time.Since(start).Round(time.Millisecond))
	return p
}

// send publishes op for key with message id id, retrying until JetStream
// acknowledges it.
func (p *bankProducer) send(key, id string, op apps.Op) error {
	data, err := json.Marshal(op)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(sendGiveUp)
	for {
		msg := p.input.Msg(key, data)
		msg.Header.Set("Content-Type", "application/json")
		ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
		_, err = p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("send %s to %s: not acknowledged within %v: %w", id, key, sendGiveUp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startLoad sends rate transfers a second between random distinct accounts,
// one at a time, until stopLoad.
func (p *bankProducer) startLoad(rate float64, seed uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.run(ctx, rate, seed) }()
	p.stopLoad = func() {
		cancel()
		if err := <-done; err != nil {
			p.t.Fatal(err)
		}
		p.stopLoad = nil
	}
	p.t.Cleanup(func() {
		if p.stopLoad != nil {
			cancel()
			<-done
		}
	})
}

func (p *bankProducer) run(ctx context.Context, rate float64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 11))
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	p.mu.Lock()
	p.acked = time.Now()
	p.mu.Unlock()
	start, sent := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for due := int(rate*time.Since(start).Seconds()) - sent; due > 0; due-- {
			from := p.accounts[rng.IntN(len(p.accounts))]
			to := p.accounts[rng.IntN(len(p.accounts)-1)]
			if to == from {
				to = p.accounts[len(p.accounts)-1]
			}
			amount := 1 + rng.Int64N(100)
			if err := p.send(from, fmt.Sprintf("t-%d-%d", seed, sent), apps.Op{Kind: "transfer", Amount: amount, To: to}); err != nil {
				return err
			}
			sent++
			p.applied(from, to, amount)
		}
	}
}

// applied adds an acknowledged transfer to the model.
func (p *bankProducer) applied(from, to string, amount int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, d := p.model[from], p.model[to]
	f.Balance -= amount
	f.Debits++
	d.Balance += amount
	d.Credits++
	p.model[from], p.model[to] = f, d
	p.sent++
	now := time.Now()
	p.stall = max(p.stall, now.Sub(p.acked))
	p.acked = now
}

// transfers is the number of transfers acknowledged so far.
func (p *bankProducer) transfers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

// resetStall returns the longest time the load waited for an
// acknowledgement since the last call, and starts over.
func (p *bankProducer) resetStall() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stall
	p.stall = 0
	return s
}

// balances reads every account through node n's HTTP API (each read
// routed to the account's owner).
func (p *bankProducer) balances(ctx context.Context, c *dockerCluster, n *container) (map[string]apps.Account, error) {
	got := make(map[string]apps.Account, len(p.accounts))
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, a := range p.accounts {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var body struct {
				Value apps.Account `json:"value"`
			}
			err := c.get(ctx, c.nodeURL(n)+"/v1/state/bank/"+a, &body)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			got[a] = body.Value
		})
	}
	wg.Wait()
	return got, firstErr
}

// check compares the accounts read with the model: every account exactly
// as the model says (no event lost or applied twice, no transfer rejected),
// and the totals: balances add up to the deposits, credits equal debits.
func (p *bankProducer) check(got map[string]apps.Account) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sum apps.Account
	for _, a := range p.accounts {
		g, want := got[a], p.model[a]
		if g != want {
			return fmt.Errorf("account %s is %+v, want %+v", a, g, want)
		}
		sum.Balance += g.Balance
		sum.Deposited += g.Deposited
		sum.Debits += g.Debits
		sum.Credits += g.Credits
	}
	switch deposited := int64(deposit * len(p.accounts)); {
	case sum.Deposited != deposited:
		return fmt.Errorf("deposited %d, sent %d", sum.Deposited, deposited)
	case sum.Balance != deposited:
		return fmt.Errorf("balances add up to %d, deposited %d", sum.Balance, deposited)
	case sum.Debits != sum.Credits || sum.Debits != int64(p.sent):
		return fmt.Errorf("debits %d, credits %d, transfers sent %d", sum.Debits, sum.Credits, p.sent)
	}
	return nil
}

// waitInvariants stops the load (if it runs) and waits until the accounts
// read through node n equal the model; it returns them.
func (p *bankProducer) waitInvariants(c *dockerCluster, n *container, timeout time.Duration) map[string]apps.Account {
	p.t.Helper()
	if p.stopLoad != nil {
		p.stopLoad()
	}
	var got map[string]apps.Account
	c.waitFor(timeout, fmt.Sprintf("bank invariants exact (%d transfers) through %s", p.transfers(), n.name), func(ctx context.Context) error {
		var err error
		if got, err = p.balances(ctx, c, n); err != nil {
			return err
		}
		return p.check(got)
	})
	return got
}
