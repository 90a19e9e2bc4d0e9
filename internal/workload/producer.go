package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/examples/apps"
)

// The producer's input.
const (
	numAccounts = 40   // bank accounts
	funding     = 1000 // each account's first deposit
	maxAmount   = 100  // the largest transfer or later deposit
	maxWords    = 6    // words in a line, at most
	depositPct  = 10   // bank events that are deposits, in percent; the rest are transfers
	// An event not acknowledged for this long fails the test: JetStream is
	// back within seconds of any fault the tests inject.
	publishGiveUp = 3 * time.Minute
)

// Vocabulary is what the lines are made of.
var Vocabulary = strings.Fields("apple banana cherry date elder fig grape hazel iris juniper kiwi lemon " +
	"mango nutmeg olive pear quince rhubarb sage thyme ume vanilla walnut yam")

// Each worker publishes one event at a time and waits for its ack (a few
// ms: the servers fsync every write), so the rate is spread over several.
const (
	bankWorkers = 4
	lineWorkers = 2
)

// Producer publishes the input of the bank and the word count as any
// NATS client would, not with eddy's Client: plain JetStream publishes of
// JSON (no Content-Type header) to bank.<account> and lines.<line-id>, each
// with a Nats-Msg-Id and retried with the same id until JetStream
// acknowledges it (the duplicate window stores a retried event once). An
// event enters the model only once acknowledged, so the model is exact
// whatever fails meanwhile.
//
// Fund, Start, Pause and StopAndWait are for one goroutine, the test's;
// Events, Snapshot and the counters may be called from any.
type Producer struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	accounts []string
	// partitions of each input stream: the producer computes an event's
	// partition itself, as any client can (see partition.Of).
	partitions int
	bankRate   float64 // bank events per second, over bankWorkers goroutines
	lineRate   float64 // lines per second, over lineWorkers goroutines
	seed       uint64
	publishTO  time.Duration // one publish attempt

	wg sync.WaitGroup

	mu     sync.Mutex
	stop   chan struct{} // closed by Pause; nil while no workers run
	rounds int           // Starts so far: a round's number is in its event ids
	funded bool
	model  Model
	err    error // the first publish given up

	retried    atomic.Int64 // publish attempts that failed and were retried
	duplicates atomic.Int64 // retries JetStream acknowledged as duplicates: the failed attempt had been stored
	slowest    atomic.Int64 // nanoseconds from an event's first attempt to its ack, the most
	movedAt    atomic.Int64 // unix ns of the last forced move to another server (moveServerIfStuck)
}

// NewProducer connects to NATS at url (servers comma-separated) for input
// streams of partitions partitions each; bankRate bank events and lineRate
// lines a second (0: none), drawn by an RNG seeded with seed. Its
// connection fails publishes at once while it is disconnected instead of
// buffering them, and reconnects every 100 ms, so that an event is
// published again as soon as NATS is back rather than when an attempt
// buffered meanwhile times out. opts are added to the connection's (pings,
// for a server that may be cut off without a reset).
func NewProducer(url string, partitions int, seed uint64, bankRate, lineRate float64, opts ...nats.Option) (*Producer, error) {
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name("eddy chaos producer"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond), nats.ReconnectBufSize(-1), nats.RetryOnFailedConnect(true)}, opts...)...)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	p := &Producer{nc: nc, js: js, partitions: partitions, bankRate: bankRate, lineRate: lineRate, seed: seed, publishTO: 2 * time.Second,
		model: newModel()}
	for i := range numAccounts {
		p.accounts = append(p.accounts, fmt.Sprintf("acct-%02d", i))
	}
	return p, nil
}

// Accounts are the bank's accounts, the keys of every bank event.
func (p *Producer) Accounts() []string { return p.accounts }

// Fund deposits funding into every account. Call it once, before the first
// Start: a second call would publish the same message ids again.
func (p *Producer) Fund(ctx context.Context) error {
	p.mu.Lock()
	funded := p.funded
	p.funded = true
	p.mu.Unlock()
	if funded {
		return errors.New("workload: the accounts are funded already")
	}
	for _, a := range p.accounts {
		if err := p.deposit(ctx, a, "fund-"+a, funding); err != nil {
			return err
		}
	}
	return nil
}

// Start publishes from bankWorkers bank goroutines and, if lineRate is
// positive, lineWorkers line goroutines until Pause or StopAndWait. After
// Pause it may be called again: each Start is a round whose event ids
// ("r<round>-w<worker>-<n>") no other round uses, so that JetStream's
// duplicate window never drops a later round's event as a retry of an
// earlier one. Start while the workers run panics.
func (p *Producer) Start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop != nil {
		panic("workload: Start while the producer runs")
	}
	stop := make(chan struct{})
	p.stop = stop
	round := p.rounds
	p.rounds++
	if p.bankRate > 0 {
		for w := range bankWorkers {
			p.wg.Go(func() { p.worker(ctx, stop, round, w, p.bankRate/bankWorkers, p.bankEvent) })
		}
	}
	if p.lineRate > 0 {
		for w := range lineWorkers {
			p.wg.Go(func() { p.worker(ctx, stop, round, bankWorkers+w, p.lineRate/lineWorkers, p.lineEvent) })
		}
	}
}

// Pause stops the workers, each after its event in hand is acknowledged,
// and returns the first error. The connection stays open: Start may
// follow.
func (p *Producer) Pause() error {
	p.mu.Lock()
	stop := p.stop
	p.stop = nil
	p.mu.Unlock()
	if stop != nil {
		close(stop)
	}
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// StopAndWait stops the workers as Pause does, closes the connection and
// returns the first error. It may be called again (a test's cleanup after
// its end); Start may not.
func (p *Producer) StopAndWait() error {
	err := p.Pause()
	p.nc.Close()
	return err
}

// Events is how many events were acknowledged so far.
func (p *Producer) Events() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.model.Events()
}

// Snapshot returns a copy of the model.
func (p *Producer) Snapshot() Model {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.model
	m.Deposited, m.TransfersFrom, m.Words = maps.Clone(m.Deposited), maps.Clone(m.TransfersFrom), maps.Clone(m.Words)
	return m
}

// Retried is how many publish attempts failed and were retried.
func (p *Producer) Retried() int64 { return p.retried.Load() }

// Duplicates is how many retries JetStream acknowledged as duplicates: the
// failed attempt had been stored.
func (p *Producer) Duplicates() int64 { return p.duplicates.Load() }

// Slowest is the longest time from an event's first attempt to its ack.
func (p *Producer) Slowest() time.Duration { return time.Duration(p.slowest.Load()) }

// worker publishes one event at a time, rate a second on average, until
// stop is closed: it catches up on slow acks, but after NATS was away it
// makes up for at most the last second, so that an outage is not followed
// by a burst.
func (p *Producer) worker(ctx context.Context, stop <-chan struct{}, round, w int, rate float64, event func(context.Context, *rand.Rand, string) error) {
	// Each round's worker draws a sequence of its own.
	rng := rand.New(rand.NewPCG(p.seed, uint64(round)<<16+uint64(w)+100))
	interval := time.Duration(float64(time.Second) / rate)
	next := time.Now()
	for n := 0; ; n++ {
		next = next.Add(interval)
		if behind := time.Now().Add(-time.Second); next.Before(behind) {
			next = behind
		}
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		if err := event(ctx, rng, fmt.Sprintf("r%d-w%d-%d", round, w, n)); err != nil {
			p.mu.Lock()
			if p.err == nil {
				p.err = err
			}
			p.mu.Unlock()
			return
		}
	}
}

// bankEvent publishes a deposit or a transfer between two accounts.
func (p *Producer) bankEvent(ctx context.Context, rng *rand.Rand, id string) error {
	from := p.accounts[rng.IntN(len(p.accounts))]
	amount := 1 + rng.Int64N(maxAmount)
	if rng.IntN(100) < depositPct {
		return p.deposit(ctx, from, id, amount)
	}
	to := from
	for to == from {
		to = p.accounts[rng.IntN(len(p.accounts))]
	}
	if err := p.publish(ctx, apps.BankType, from, id, apps.Op{Kind: "transfer", Amount: amount, To: to}); err != nil {
		return err
	}
	p.mu.Lock()
	p.model.TransfersFrom[from]++
	p.model.Transfers++
	p.mu.Unlock()
	return nil
}

// deposit publishes a deposit of amount into account with message id id.
func (p *Producer) deposit(ctx context.Context, account, id string, amount int64) error {
	if err := p.publish(ctx, apps.BankType, account, id, apps.Op{Kind: "deposit", Amount: amount}); err != nil {
		return err
	}
	p.mu.Lock()
	p.model.Deposited[account] += amount
	p.model.Deposits++
	p.mu.Unlock()
	return nil
}

// lineEvent publishes a line of random words, a JSON string, under a key
// of its own.
func (p *Producer) lineEvent(ctx context.Context, rng *rand.Rand, id string) error {
	words := make([]string, 1+rng.IntN(maxWords))
	for i := range words {
		words[i] = Vocabulary[rng.IntN(len(Vocabulary))]
	}
	if err := p.publish(ctx, apps.LinesType, "line-"+id, "line-"+id, strings.Join(words, " ")); err != nil {
		return err
	}
	p.mu.Lock()
	for _, w := range apps.Words(strings.Join(words, " ")) {
		p.model.Words[w]++
		p.model.WordsSent++
	}
	p.model.Lines++
	p.mu.Unlock()
	return nil
}

// publish publishes v as JSON with message id id, retrying with the same id
// until JetStream acknowledges it, ctx ends or publishGiveUp passes.
func (p *Producer) publish(ctx context.Context, typ, key, id string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	// The documented addressing, without eddy's code: FNV-1a of the key
	// (plain keys are their own token) mod the partition count.
	h := fnv.New32a()
	h.Write([]byte(key))
	subject := typ + "." + strconv.Itoa(int(h.Sum32()%uint32(p.partitions)))
	began := time.Now()
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, p.publishTO)
		ack, err := p.js.PublishMsg(actx, &nats.Msg{Subject: subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: {id}, "Eddy-Key": {key}}})
		cancel()
		if err == nil {
			if ack.Duplicate {
				p.duplicates.Add(1)
			}
			took := int64(time.Since(began))
			for s := p.slowest.Load(); took > s && !p.slowest.CompareAndSwap(s, took); s = p.slowest.Load() {
			}
			return nil
		}
		if ctx.Err() != nil || time.Since(began) > publishGiveUp {
			return fmt.Errorf("publish %s (id %s): not acknowledged after %d attempts in %v: %w", subject, id, attempt, time.Since(began).Round(time.Millisecond), err)
		}
		p.retried.Add(1)
		p.moveServerIfStuck(began)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stuckAfter is how long a publish may go unacknowledged, while the
// connection is up, before the producer tries another server.
const stuckAfter = 5 * time.Second

// moveServerIfStuck makes the connection try another server when an event
// first attempted at began has not been acknowledged for stuckAfter while
// connected, at most once per stuckAfter: a server cut off from its
// cluster's peers keeps its clients connected, but JetStream does not
// answer through it, and nats.go would never leave it.
func (p *Producer) moveServerIfStuck(began time.Time) {
	now := time.Now()
	last := p.movedAt.Load()
	if now.Sub(began) < stuckAfter || now.Sub(time.Unix(0, last)) < stuckAfter || !p.nc.IsConnected() ||
		!p.movedAt.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	_ = p.nc.ForceReconnect()
}
