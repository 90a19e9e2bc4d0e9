package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/partition"
)

// The chaos producer's input.
const (
	chaosAccounts   = 40   // bank accounts
	chaosFunding    = 1000 // each account's first deposit
	chaosMaxAmount  = 100  // the largest transfer or later deposit
	chaosMaxWords   = 6    // words in a line, at most
	chaosDepositPct = 10   // bank events that are deposits, in percent; the rest are transfers
	// An event not acknowledged for this long fails the test: JetStream is
	// back within seconds of any fault the tests inject.
	chaosPublishGiveUp = 3 * time.Minute
)

// chaosVocabulary is what the lines are made of.
var chaosVocabulary = strings.Fields("apple banana cherry date elder fig grape hazel iris juniper kiwi lemon " +
	"mango nutmeg olive pear quince rhubarb sage thyme ume vanilla walnut yam")

// chaosModel is what was published, acknowledged events only: the state the
// bank and the word count must end in.
type chaosModel struct {
	deposited     map[string]int64 // account -> sum of its deposits
	transfersFrom map[string]int64 // account -> transfers published from it
	words         map[string]int64 // word -> occurrences in the lines
	deposits      int64
	transfers     int64
	lines         int64
	wordsSent     int64
}

func (m *chaosModel) events() int64 { return m.deposits + m.transfers + m.lines }

// chaosProducer publishes the input of the bank and the word count as any
// NATS client would, not with eddy's Client: plain JetStream publishes of
// JSON (no Content-Type header) to bank.<account> and lines.<line-id>, each
// with a Nats-Msg-Id and retried with the same id until JetStream
// acknowledges it (the duplicate window stores a retried event once). An
// event enters the model only once acknowledged, so the model is exact
// whatever fails meanwhile.
type chaosProducer struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	accounts []string
	// partitions of each input stream: the producer computes an event's
	// partition itself, as any client can (see partition.Of).
	partitions int
	bankRate   float64 // bank events per second, over bankWorkers goroutines
	lineRate   float64 // lines per second, over chaosLineWorkers goroutines
	seed       uint64
	publishTO  time.Duration // one publish attempt

	stop chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	model chaosModel
	err   error // the first publish given up

	retried    atomic.Int64 // publish attempts that failed and were retried
	duplicates atomic.Int64 // retries JetStream acknowledged as duplicates: the failed attempt had been stored
	slowest    atomic.Int64 // nanoseconds from an event's first attempt to its ack, the most
}

// Each worker publishes one event at a time and waits for its ack (a few
// ms: the servers fsync every write), so the rate is spread over several.
const (
	chaosBankWorkers = 4
	chaosLineWorkers = 2
)

// newChaosProducer connects to NATS at url (servers comma-separated). Its
// connection fails publishes at once while it is disconnected instead of
// buffering them, and reconnects every 100 ms, so that an event is
// published again as soon as NATS is back rather than when an attempt
// buffered meanwhile times out.
func newChaosProducer(url string, partitions int, seed uint64, bankRate, lineRate float64) (*chaosProducer, error) {
	nc, err := nats.Connect(url, nats.Name("eddy chaos producer"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectBufSize(-1), nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	p := &chaosProducer{nc: nc, js: js, partitions: partitions, bankRate: bankRate, lineRate: lineRate, seed: seed, publishTO: 2 * time.Second,
		stop:  make(chan struct{}),
		model: chaosModel{deposited: map[string]int64{}, transfersFrom: map[string]int64{}, words: map[string]int64{}}}
	for i := range chaosAccounts {
		p.accounts = append(p.accounts, fmt.Sprintf("acct-%02d", i))
	}
	return p, nil
}

// fund deposits chaosFunding into every account.
func (p *chaosProducer) fund(ctx context.Context) error {
	for _, a := range p.accounts {
		if err := p.publish(ctx, apps.BankType, a, "fund-"+a, apps.Op{Kind: "deposit", Amount: chaosFunding}); err != nil {
			return err
		}
		p.mu.Lock()
		p.model.deposited[a] += chaosFunding
		p.model.deposits++
		p.mu.Unlock()
	}
	return nil
}

// start publishes from chaosBankWorkers bank goroutines and, if lineRate
// is positive, chaosLineWorkers line goroutines until stopAndWait.
func (p *chaosProducer) start(ctx context.Context) {
	if p.bankRate > 0 {
		for w := range chaosBankWorkers {
			p.wg.Go(func() { p.worker(ctx, w, p.bankRate/chaosBankWorkers, p.bankEvent) })
		}
	}
	if p.lineRate > 0 {
		for w := range chaosLineWorkers {
			p.wg.Go(func() { p.worker(ctx, chaosBankWorkers+w, p.lineRate/chaosLineWorkers, p.lineEvent) })
		}
	}
}

// stopAndWait stops the workers, each after its event in hand is
// acknowledged, and returns the first error.
func (p *chaosProducer) stopAndWait() error {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
	p.nc.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// events is how many events were acknowledged so far.
func (p *chaosProducer) events() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.model.events()
}

// snapshot returns a copy of the model.
func (p *chaosProducer) snapshot() chaosModel {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.model
	m.deposited, m.transfersFrom, m.words = maps.Clone(m.deposited), maps.Clone(m.transfersFrom), maps.Clone(m.words)
	return m
}

// worker publishes one event at a time, rate a second on average: it
// catches up on slow acks, but after NATS was away it makes up for at most
// the last second, so that an outage is not followed by a burst.
func (p *chaosProducer) worker(ctx context.Context, w int, rate float64, event func(context.Context, *rand.Rand, string) error) {
	rng := rand.New(rand.NewPCG(p.seed, uint64(w)+100))
	interval := time.Duration(float64(time.Second) / rate)
	next := time.Now()
	for n := 0; ; n++ {
		next = next.Add(interval)
		if behind := time.Now().Add(-time.Second); next.Before(behind) {
			next = behind
		}
		select {
		case <-p.stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		if err := event(ctx, rng, fmt.Sprintf("w%d-%d", w, n)); err != nil {
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
func (p *chaosProducer) bankEvent(ctx context.Context, rng *rand.Rand, id string) error {
	from := p.accounts[rng.IntN(len(p.accounts))]
	amount := 1 + rng.Int64N(chaosMaxAmount)
	if rng.IntN(100) < chaosDepositPct {
		if err := p.publish(ctx, apps.BankType, from, id, apps.Op{Kind: "deposit", Amount: amount}); err != nil {
			return err
		}
		p.mu.Lock()
		p.model.deposited[from] += amount
		p.model.deposits++
		p.mu.Unlock()
		return nil
	}
	to := from
	for to == from {
		to = p.accounts[rng.IntN(len(p.accounts))]
	}
	if err := p.publish(ctx, apps.BankType, from, id, apps.Op{Kind: "transfer", Amount: amount, To: to}); err != nil {
		return err
	}
	p.mu.Lock()
	p.model.transfersFrom[from]++
	p.model.transfers++
	p.mu.Unlock()
	return nil
}

// lineEvent publishes a line of random words, a JSON string, under a key
// of its own.
func (p *chaosProducer) lineEvent(ctx context.Context, rng *rand.Rand, id string) error {
	words := make([]string, 1+rng.IntN(chaosMaxWords))
	for i := range words {
		words[i] = chaosVocabulary[rng.IntN(len(chaosVocabulary))]
	}
	if err := p.publish(ctx, apps.LinesType, "line-"+id, "line-"+id, strings.Join(words, " ")); err != nil {
		return err
	}
	p.mu.Lock()
	for _, w := range apps.Words(strings.Join(words, " ")) {
		p.model.words[w]++
		p.model.wordsSent++
	}
	p.model.lines++
	p.mu.Unlock()
	return nil
}

// publish publishes v as JSON with message id id, retrying with the same id
// until JetStream acknowledges it, ctx ends or chaosPublishGiveUp passes.
func (p *chaosProducer) publish(ctx context.Context, typ, key, id string, v any) error {
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
		if ctx.Err() != nil || time.Since(began) > chaosPublishGiveUp {
			return fmt.Errorf("publish %s (id %s): not acknowledged after %d attempts in %v: %w", subject, id, attempt, time.Since(began).Round(time.Millisecond), err)
		}
		p.retried.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// chaosState is the bank's and the word count's state read through the
// nodes' HTTP API.
type chaosState struct {
	accounts map[string]apps.Account
	words    map[string]int64
}

// readChaosState reads every account and every word, key i through node
// ids[i % len(ids)] (each read is routed to the key's owner), retrying a
// read that fails (a 503 while a partition moves) for up to a minute.
func readChaosState(ctx context.Context, pc *procCluster, ids []string, accounts []string, withWords bool) (chaosState, error) {
	st := chaosState{accounts: map[string]apps.Account{}, words: map[string]int64{}}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, 8)
	)
	get := func(i int, typ, key string, v any) {
		defer wg.Done()
		defer func() { <-sem }()
		deadline := time.Now().Add(time.Minute)
		for try := 0; ; try++ {
			var body struct {
				Value json.RawMessage `json:"value"`
			}
			err := pc.getJSON(ctx, ids[(i+try)%len(ids)], "/v1/state/"+typ+"/"+key, &body)
			if err == nil {
				err = json.Unmarshal(body.Value, v)
			}
			if err == nil || strings.Contains(fmt.Sprint(err), "404 Not Found") {
				return // a word never counted reads as 0
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				mu.Lock()
				firstErr = cmpErr(firstErr, fmt.Errorf("read %s/%s: %w", typ, key, err))
				mu.Unlock()
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	accs := make([]apps.Account, len(accounts))
	for i, a := range accounts {
		wg.Add(1)
		sem <- struct{}{}
		go get(i, apps.BankType, a, &accs[i])
	}
	var counts []int64
	if withWords {
		counts = make([]int64, len(chaosVocabulary))
		for i, w := range chaosVocabulary {
			wg.Add(1)
			sem <- struct{}{}
			go get(i, apps.WordsType, w, &counts[i])
		}
	}
	wg.Wait()
	for i, a := range accounts {
		st.accounts[a] = accs[i]
	}
	for i, n := range counts {
		st.words[chaosVocabulary[i]] = n
	}
	return st, firstErr
}

// chaosTotals are the sums the caught-up wait compares.
type chaosTotals struct{ deposited, debits, rejected, credits, words int64 }

func (s chaosState) totals() chaosTotals {
	var t chaosTotals
	for _, a := range s.accounts {
		t.deposited += a.Deposited
		t.debits += a.Debits
		t.rejected += a.Rejected
		t.credits += a.Credits
	}
	for _, n := range s.words {
		t.words += n
	}
	return t
}

// waitChaosCaughtUp waits until the totals read through the nodes reach
// the model's: every deposit, transfer and word processed, every credit
// delivered. It gives up after limit, or after 60 s without progress, and
// returns the last state read; the exact checks then say what is missing.
func waitChaosCaughtUp(ctx context.Context, t *testing.T, pc *procCluster, ids []string, p *chaosProducer, m chaosModel, withWords bool, limit time.Duration) chaosState {
	t.Helper()
	want := chaosTotals{deposited: sumValues(m.deposited), words: m.wordsSent}
	deadline, lastChange := time.Now().Add(limit), time.Now()
	var prev chaosTotals
	for {
		st, err := readChaosState(ctx, pc, ids, p.accounts, withWords)
		got := st.totals()
		if err == nil && got.deposited == want.deposited && got.debits+got.rejected == m.transfers &&
			got.credits == got.debits && got.words == want.words {
			return st
		}
		if got != prev {
			prev, lastChange = got, time.Now()
		}
		if time.Now().After(deadline) || time.Since(lastChange) > time.Minute {
			t.Logf("not caught up: totals %+v; the model: deposited %d, transfers %d, words %d; last read error: %v",
				got, want.deposited, m.transfers, m.wordsSent, err)
			return st
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func sumValues(m map[string]int64) int64 {
	var s int64
	for _, v := range m {
		s += v
	}
	return s
}

// checkChaos compares the final state with the model and returns the
// violations, each also reported with t.Errorf:
//   - every account's deposited equals what was published to it, and its
//     debits + rejected the transfers published from it;
//   - the balances add up to the deposits, and the credits to the debits;
//   - each word's count equals its occurrences in the lines;
//   - the wordcounts stream holds each word's running counts 1..n exactly
//     once (read whole);
//   - the input streams hold each event once (the credits and words the
//     actors sent deduplicated on every re-forward), no dead letters.
func checkChaos(ctx context.Context, t *testing.T, pc *procCluster, st chaosState, m chaosModel, withWords bool) int {
	t.Helper()
	violations := 0
	fail := func(format string, args ...any) {
		t.Helper()
		violations++
		if violations <= 50 {
			t.Errorf(format, args...)
		}
	}
	var balances, deposited, debits, credits int64
	for _, a := range slices.Sorted(maps.Keys(st.accounts)) {
		acc := st.accounts[a]
		if acc.Deposited != m.deposited[a] {
			fail("account %s: deposited %d, published %d", a, acc.Deposited, m.deposited[a])
		}
		if acc.Debits+acc.Rejected != m.transfersFrom[a] {
			fail("account %s: debits %d + rejected %d = %d, transfers published from it %d", a, acc.Debits, acc.Rejected, acc.Debits+acc.Rejected, m.transfersFrom[a])
		}
		balances += acc.Balance
		deposited += acc.Deposited
		debits += acc.Debits
		credits += acc.Credits
	}
	if balances != deposited {
		fail("balances add up to %d, deposits to %d", balances, deposited)
	}
	if credits != debits {
		fail("credits add up to %d, debits to %d", credits, debits)
	}
	js, err := jetstream.New(pc.nc)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{apps.BankType: uint64(m.deposits + m.transfers + debits)} // each debit sent one credit
	types := []string{apps.BankType}
	if withWords {
		for _, w := range slices.Sorted(maps.Keys(st.words)) {
			if st.words[w] != m.words[w] {
				fail("word %q: count %d, occurrences %d", w, st.words[w], m.words[w])
			}
		}
		checkChaosCounts(ctx, t, js, m, fail)
		want[apps.LinesType], want[apps.WordsType] = uint64(m.lines), uint64(m.wordsSent)
		types = append(types, apps.LinesType, apps.WordsType)
	}
	for name, n := range want {
		if got, err := chaosStreamMsgs(ctx, js, name); err != nil {
			fail("input stream %s: %v", name, err)
		} else if got != n {
			fail("input stream %s holds %d events, want %d (published, plus one credit a debit)", name, got, n)
		}
	}
	for _, typ := range types {
		name := partition.DLQStream(typ)
		if n, err := chaosStreamMsgs(ctx, js, name); err != nil {
			fail("dead-letter stream %s: %v", name, err)
		} else if n > 0 {
			first := ""
			if s, err := js.Stream(ctx, name); err == nil {
				if raw, err := s.GetMsg(ctx, 1); err == nil {
					first = fmt.Sprintf("%s: %s", raw.Header.Get("Eddy-Subject"), raw.Header.Get("Eddy-Error"))
				}
			}
			fail("dead-letter stream %s holds %d events; first: %s", name, n, first)
		}
	}
	return violations
}

// checkChaosCounts reads the whole wordcounts stream and checks, through
// fail, that each word's running counts 1..n are there exactly once, no
// duplicate and no gap; counts out of order are logged.
func checkChaosCounts(ctx context.Context, t *testing.T, js jetstream.JetStream, m chaosModel, fail func(string, ...any)) {
	t.Helper()
	// The last commits' outboxes may still be on their way.
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := chaosStreamMsgs(ctx, js, apps.CountsStream)
		if err == nil && n >= uint64(m.wordsSent) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	counts, err := readCounts(ctx, js)
	if err != nil {
		fail("read %s: %v", apps.CountsStream, err)
		return
	}
	total, disordered := 0, 0
	for w, got := range counts {
		total += len(got)
		if _, ok := m.words[w]; !ok {
			fail("%s holds %d counts of %q, a word never published", apps.CountsStream, len(got), w)
		}
	}
	if total != int(m.wordsSent) {
		fail("%s holds %d counts, want %d (one per word occurrence)", apps.CountsStream, total, m.wordsSent)
	}
	for _, w := range slices.Sorted(maps.Keys(m.words)) {
		got := counts[w]
		seen := make([]int, m.words[w]+1)
		bad := false
		for _, n := range got {
			if n < 1 || n > m.words[w] {
				bad = true
				continue
			}
			seen[n]++
		}
		for n := 1; n < len(seen); n++ {
			bad = bad || seen[n] != 1
		}
		if bad {
			fail("word %q: %s counts %s, want 1..%d once each", w, apps.CountsStream, testkit.DescribeRun(got), m.words[w])
		} else if !slices.IsSorted(got) {
			disordered++
			t.Logf("word %q: %s holds 1..%d once each, out of order: %s", w, apps.CountsStream, m.words[w], testkit.DescribeRun(got))
		}
	}
	if disordered > 0 {
		t.Logf("%d words' running counts are out of order in %s (each count once)", disordered, apps.CountsStream)
	}
}

// readCounts reads the whole wordcounts stream into each word's running
// counts, in stream order.
func readCounts(ctx context.Context, js jetstream.JetStream) (map[string][]int64, error) {
	counts := map[string][]int64{}
	st, err := js.Stream(ctx, apps.CountsStream)
	if err != nil {
		return nil, err
	}
	last := st.CachedInfo().State.LastSeq
	if last == 0 {
		return counts, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		return nil, err
	}
	defer it.Stop()
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		msg, err := it.Next(jetstream.NextContext(rctx))
		if err != nil {
			return counts, err
		}
		md, err := msg.Metadata()
		if err != nil {
			return counts, err
		}
		var c apps.Count
		if err := msgpack.Unmarshal(msg.Data(), &c); err != nil {
			return counts, fmt.Errorf("sequence %d: %w", md.Sequence.Stream, err)
		}
		counts[c.Word] = append(counts[c.Word], c.Count)
		if md.Sequence.Stream >= last {
			return counts, nil
		}
	}
}

// chaosStreamMsgs is how many messages stream holds.
func chaosStreamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
	var last error
	for range 10 { // a stream info request during a leader election can go unanswered
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := js.Stream(rctx, name)
		cancel()
		if err == nil {
			return s.CachedInfo().State.Msgs, nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return 0, err
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	return 0, last
}
