package eddy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/partition"
)

// Scenario knobs. EDDY_CHAOS=1 runs the long version (give it go test
// -timeout 30m); EDDY_CHAOS_SEED=n
// replays a kill schedule and input (the timing of the machine still varies);
// EDDY_CHAOS_LOGS=1 shows the children's logs even when the test passes.
const (
	crashKills      = 15                   // default run: well under a minute, even with -race
	crashChaosKills = 120                  // EDDY_CHAOS=1
	crashAccounts   = 20                   // bank accounts
	crashFunding    = 1_000_000            // each account's first deposit: far more than it can ever send
	crashMaxAmount  = 100                  // the largest transfer
	crashPace       = 3 * time.Millisecond // between publishing rounds (a transfer, and a line every other round)
)

// crashVocabulary is what the lines are made of.
var crashVocabulary = strings.Fields("apple banana cherry date elder fig grape hazel iris juniper kiwi lemon " +
	"mango nutmeg olive pear quince rhubarb sage thyme ume vanilla walnut yam")

// TestEffectivelyOnceUnderSIGKILL is the headline test of effectively-once
// processing. The bank and word count apps run in a child process that is
// killed with SIGKILL at random moments, many times, while input is published
// to the NATS server, which stays up. After the last restart the state must
// equal a sequential model of the input: exact word counts, the bank's total
// unchanged, every transfer applied exactly once; and the output stream must
// hold each word's running counts 1..N once each, with no dead letters.
func TestEffectivelyOnceUnderSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a child process many times; skipped with -short")
	}
	kills, seed := crashSchedule(t)
	timeout, catchUpLimit := 4*time.Minute, 3*time.Minute
	if kills > crashKills {
		timeout, catchUpLimit = 25*time.Minute, 10*time.Minute // run with go test -timeout 30m
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	began := time.Now()

	srv := natstest.Start(t)
	nc, js := srv.Connect(t)
	client, err := eddy.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "node")
	env := []string{envCrashNATS + "=" + srv.URL(), envCrashDir + "=" + dataDir}

	// Every incarnation's logs are shown if the test fails.
	var children []*crashChild
	t.Cleanup(func() {
		for _, c := range children {
			if c.alive() {
				c.kill()
			}
		}
		if t.Failed() || os.Getenv("EDDY_CHAOS_LOGS") != "" {
			for _, c := range children {
				t.Logf("=== child %d: %v ===\n%s", c.n, c.err, c.out.String())
			}
		}
	})

	// Publish from a goroutine until the kills are over.
	var (
		stopPub  = make(chan struct{})
		pubDone  = make(chan struct{})
		stopOnce sync.Once
		model    *crashModel
		pubErr   error
	)
	stopPublishing := func() {
		stopOnce.Do(func() { close(stopPub) })
		<-pubDone
	}
	pubRng := rand.New(rand.NewPCG(seed, 1))
	killRng := rand.New(rand.NewPCG(seed, 2))

	// Kill phase. Three kills in four land 100-700 ms after every partition of
	// the child runs, in the middle of batches and commits; the others land
	// 100-700 ms after its node started, mostly while partitions restore.
	var (
		pubStart      time.Time
		startups      []time.Duration // from process start to every partition running
		killedRunning int
	)
	for i := range kills {
		c := startCrashChild(t, i, env...)
		children = append(children, c)
		delay := time.Duration(100+killRng.IntN(601)) * time.Millisecond
		after := c.running
		if killRng.IntN(4) == 0 {
			after = c.nodeStarted
		}
		if i == 0 {
			// The first incarnation creates the streams; publish once they exist.
			waitCrashStreams(ctx, t, js, c)
			pubStart = time.Now()
			go func() {
				defer close(pubDone)
				model, pubErr = publishCrashInput(ctx, client, pubRng, stopPub)
			}()
			t.Cleanup(func() { stopPublishing() })
		}
		select {
		case <-after:
			if after == c.running {
				startups = append(startups, time.Since(c.started))
			}
		case <-c.exited:
			t.Fatalf("child %d exited by itself %v after it started: %v", i, time.Since(c.started), c.err)
		case <-time.After(time.Minute):
			t.Fatalf("child %d: node or partitions not started a minute after the process", i)
		}
		select {
		case <-time.After(delay):
		case <-c.exited:
			t.Fatalf("child %d exited by itself %v after it started: %v", i, time.Since(c.started), c.err)
		}
		select {
		case <-c.running:
			killedRunning++
		default:
		}
		c.kill()
	}
	stopPublishing()
	if pubErr != nil {
		t.Fatalf("publishing: %v", pubErr)
	}
	pubTook := time.Since(pubStart)
	t.Logf("seed %d: %d kills (%d once all partitions ran, %d while some restored) during %v of publishing: %d deposits, %d transfers, %d lines (%d words)",
		seed, kills, killedRunning, kills-killedRunning, pubTook.Round(time.Millisecond), model.deposits, model.transfers, model.lines, model.wordsSent)
	if len(startups) > 0 {
		slices.Sort(startups)
		t.Logf("child start-up to all partitions running: min %v, median %v, max %v", startups[0].Round(time.Millisecond),
			startups[len(startups)/2].Round(time.Millisecond), startups[len(startups)-1].Round(time.Millisecond))
	}

	// Last incarnation: let it catch up, then stop it cleanly.
	httpFile := filepath.Join(t.TempDir(), "http-addr")
	final := startCrashChild(t, kills, append(env, envCrashHTTPFile+"="+httpFile)...)
	children = append(children, final)
	addr, err := waitFile(httpFile, time.Minute, final.alive)
	if err != nil {
		t.Fatalf("final child: %v", err)
	}
	catchUp := time.Now()
	waitCrashCaughtUp(ctx, t, addr, model, final, catchUpLimit)
	t.Logf("final child caught up in %v", time.Since(catchUp).Round(time.Millisecond))
	if err := final.stop(time.Minute); err != nil {
		t.Fatalf("final child did not stop cleanly: %v", err)
	}
	for _, c := range children {
		if strings.Contains(c.out.String(), "WARNING: DATA RACE") {
			t.Errorf("child %d reported a data race", c.n)
		}
	}

	// Check the committed state with a node in this process, on the same stores.
	node, err := eddy.NewNode(crashNodeConfig(srv.URL(), dataDir, testkit.LoggerAt(t, slog.LevelInfo)))
	if err != nil {
		t.Fatal(err)
	}
	if err := registerCrashApps(node); err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		if err := node.Stop(sctx); err != nil {
			t.Errorf("stop node: %v", err)
		}
	}()
	checkCrashBank(ctx, t, node, model)
	checkCrashWords(ctx, t, node, model)
	checkCrashInputs(ctx, t, js, model)
	checkCrashCounts(ctx, t, js, model)
	checkCrashDeadLetters(ctx, t, js)
	t.Logf("took %v", time.Since(began).Round(time.Millisecond))
}

// TestCrashChild is the child process of TestEffectivelyOnceUnderSIGKILL: it
// runs a node with the bank and the word count until it is killed, or until its
// stdin closes, when it stops the node cleanly. It skips unless run as a child.
func TestCrashChild(t *testing.T) {
	url := os.Getenv(envCrashNATS)
	if url == "" {
		t.Skip("the child process of TestEffectivelyOnceUnderSIGKILL")
	}
	cfg := crashNodeConfig(url, os.Getenv(envCrashDir), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	httpFile := os.Getenv(envCrashHTTPFile)
	if httpFile != "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	node, err := eddy.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := registerCrashApps(node); err != nil {
		t.Fatal(err)
	}
	if err := node.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(os.Stderr, crashNodeStarted)
	go reportAllRunning(node)
	if httpFile != "" {
		// Written whole, then renamed, so the parent never reads half an address.
		if err := os.WriteFile(httpFile+".tmp", []byte(node.HTTPAddr()), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(httpFile+".tmp", httpFile); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it, or dies
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// reportAllRunning writes crashAllRunning to stderr once every partition of
// the node has restored and runs.
func reportAllRunning(node *eddy.Node) {
	for {
		st, err := node.Status()
		if err != nil {
			return // stopped
		}
		if !slices.ContainsFunc(st, func(s eddy.PartitionStatus) bool { return !s.Running }) {
			fmt.Fprintln(os.Stderr, crashAllRunning)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// crashSchedule returns the number of kills and the seed, and logs how to replay them.
func crashSchedule(t *testing.T) (kills int, seed uint64) {
	kills = crashKills
	if v := os.Getenv("EDDY_CHAOS"); v != "" && v != "0" {
		kills = crashChaosKills
	}
	seed = uint64(time.Now().UnixNano())
	if s := os.Getenv("EDDY_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("EDDY_CHAOS_SEED: %v", err)
		}
	}
	t.Logf("seed %d, %d kills (replay with EDDY_CHAOS_SEED=%d)", seed, kills, seed)
	return kills, seed
}

// waitCrashStreams waits until the child has created the streams the test uses.
func waitCrashStreams(ctx context.Context, t *testing.T, js jetstream.JetStream, c *crashChild) {
	t.Helper()
	names := []string{apps.BankType, apps.LinesType, apps.WordsType, apps.CountsStream,
		partition.DLQStream(apps.BankType), partition.DLQStream(apps.LinesType), partition.DLQStream(apps.WordsType)}
	deadline := time.Now().Add(time.Minute)
	for _, name := range names {
		for {
			_, err := js.Stream(ctx, name)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Fatalf("stream %s: %v", name, err)
			}
			if !c.alive() {
				t.Fatalf("child %d exited before creating stream %s: %v", c.n, name, c.err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("child %d did not create stream %s within a minute", c.n, name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// publishCrashInput funds the accounts, then publishes transfers and lines
// until stop is closed, and returns the model of what it published. Publishes
// go to JetStream, which stays up while the child dies; each carries a message
// id, so a retry after an unclear failure is stored once.
func publishCrashInput(ctx context.Context, client *eddy.Client, rng *rand.Rand, stop <-chan struct{}) (*crashModel, error) {
	accounts := make([]string, crashAccounts)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%02d", i)
	}
	m := newCrashModel(accounts)
	send := func(typ, key, id string, v any) error {
		for attempt := 1; ; attempt++ {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := client.SendWithID(sctx, typ, key, id, v)
			cancel()
			if err == nil {
				return nil
			}
			if attempt == 5 || ctx.Err() != nil {
				return fmt.Errorf("send %s after %d attempts: %w", id, attempt, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, a := range accounts {
		if err := send(apps.BankType, a, "fund-"+a, apps.Op{Kind: "deposit", Amount: crashFunding}); err != nil {
			return m, err
		}
		m.deposit(a, crashFunding)
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return m, nil
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(crashPace):
		}
		from := rng.IntN(len(accounts))
		to := (from + 1 + rng.IntN(len(accounts)-1)) % len(accounts)
		amount := 1 + rng.Int64N(crashMaxAmount)
		op := apps.Op{Kind: "transfer", Amount: amount, To: accounts[to]}
		if err := send(apps.BankType, accounts[from], "tr-"+strconv.Itoa(i), op); err != nil {
			return m, err
		}
		m.transfer(accounts[from], accounts[to], amount)
		if i%2 == 0 {
			words := make([]string, 1+rng.IntN(8))
			for j := range words {
				words[j] = crashVocabulary[rng.IntN(len(crashVocabulary))]
			}
			doc := "doc-" + strconv.Itoa(rng.IntN(8))
			if err := send(apps.LinesType, doc, "line-"+strconv.Itoa(i), strings.Join(words, " ")); err != nil {
				return m, err
			}
			m.line(words)
		}
		if i%97 == 0 {
			a := accounts[rng.IntN(len(accounts))]
			amount := 1 + rng.Int64N(1000)
			if err := send(apps.BankType, a, "dep-"+strconv.Itoa(i), apps.Op{Kind: "deposit", Amount: amount}); err != nil {
				return m, err
			}
			m.deposit(a, amount)
		}
	}
}

// waitCrashCaughtUp polls the final child's HTTP API until the totals match
// the model: every transfer debited (or rejected) and credited, every deposit
// and word counted. Totals only grow, so one above the model fails at once.
func waitCrashCaughtUp(ctx context.Context, t *testing.T, addr string, m *crashModel, c *crashChild, limit time.Duration) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	type totals struct{ debits, rejected, credits, deposited, words int64 }
	want := totals{debits: int64(m.transfers), credits: int64(m.transfers), deposited: m.deposited, words: m.wordsSent}
	read := func() (totals, error) {
		var s totals
		for a := range m.accounts {
			var acc apps.Account
			if _, err := httpState(ctx, hc, addr, apps.BankType, a, &acc); err != nil {
				return s, err
			}
			s.debits += acc.Debits
			s.rejected += acc.Rejected
			s.credits += acc.Credits
			s.deposited += acc.Deposited
		}
		for _, w := range crashVocabulary {
			var n int64
			if _, err := httpState(ctx, hc, addr, apps.WordsType, w, &n); err != nil {
				return s, err
			}
			s.words += n
		}
		return s, nil
	}
	deadline := time.Now().Add(limit)
	lastLog, lastChange := time.Now(), time.Now()
	var (
		got, prev totals
		readErr   error
	)
	for {
		if !c.alive() {
			t.Fatalf("final child exited while catching up: %v", c.err)
		}
		// A busy node may answer 503 (a query queued behind batches): retry.
		if s, err := read(); err != nil {
			readErr = err
		} else {
			got, readErr = s, nil
			if got.debits+got.rejected > want.debits || got.credits > want.credits ||
				got.deposited > want.deposited || got.words > want.words {
				t.Fatalf("more effects than input: got %+v, the model has %+v", got, want)
			}
			if got.debits+got.rejected == want.debits && got.credits == got.debits &&
				got.deposited == want.deposited && got.words == want.words {
				return
			}
		}
		if got != prev {
			prev, lastChange = got, time.Now()
		}
		if time.Since(lastChange) > 30*time.Second {
			t.Fatalf("final child stalled for 30s short of the model (effects lost?): got %+v, the model has %+v; last read error: %v",
				got, want, readErr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("final child did not catch up within %v: got %+v, the model has %+v; last read error: %v", limit, got, want, readErr)
		}
		if time.Since(lastLog) > 5*time.Second {
			lastLog = time.Now()
			t.Logf("catching up: %+v of %+v (read error: %v)", got, want, readErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkCrashBank checks every account against the model: the total of the
// balances is what was deposited, and each transfer is applied exactly once.
func checkCrashBank(ctx context.Context, t *testing.T, node *eddy.Node, m *crashModel) {
	t.Helper()
	var total int64
	for _, a := range slices.Sorted(maps.Keys(m.accounts)) {
		var got apps.Account
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := node.Query(qctx, apps.BankType, a, &got)
		cancel()
		if err != nil {
			t.Errorf("query account %s: %v", a, err)
			continue
		}
		if want := *m.accounts[a]; got != want {
			t.Errorf("account %s: got %+v, the model has %+v", a, got, want)
		}
		total += got.Balance
	}
	if total != m.deposited {
		t.Errorf("sum of balances %d, sum of deposits %d", total, m.deposited)
	}
}

// checkCrashWords checks every word's count against the model.
func checkCrashWords(ctx context.Context, t *testing.T, node *eddy.Node, m *crashModel) {
	t.Helper()
	for _, w := range crashVocabulary {
		var got int64
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := node.Query(qctx, apps.WordsType, w, &got)
		cancel()
		if err != nil && !(errors.Is(err, eddy.ErrNotFound) && m.words[w] == 0) {
			t.Errorf("query word %q: %v", w, err)
			continue
		}
		if got != m.words[w] {
			t.Errorf("word %q: count %d, the model has %d", w, got, m.words[w])
		}
	}
}

// checkCrashInputs checks that the input streams hold each event once: the
// credits and words the actors sent were deduplicated on every re-forward.
func checkCrashInputs(ctx context.Context, t *testing.T, js jetstream.JetStream, m *crashModel) {
	t.Helper()
	want := map[string]uint64{
		apps.BankType:  uint64(m.deposits + 2*m.transfers), // a transfer, then its credit
		apps.LinesType: uint64(m.lines),
		apps.WordsType: uint64(m.wordsSent),
	}
	for name, n := range want {
		if got := streamMsgs(ctx, t, js, name); got != n {
			t.Errorf("input stream %s holds %d events, the model sent %d", name, got, n)
		}
	}
}

// checkCrashCounts reads the output stream and checks that it holds, for each
// word, the running counts 1..N exactly once each and in order.
func checkCrashCounts(ctx context.Context, t *testing.T, js jetstream.JetStream, m *crashModel) {
	t.Helper()
	// The last commit's outbox may still be on its way.
	deadline := time.Now().Add(30 * time.Second)
	for streamMsgs(ctx, t, js, apps.CountsStream) < uint64(m.wordsSent) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	st, err := js.Stream(ctx, apps.CountsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(m.wordsSent) {
		t.Errorf("output stream %s holds %d counts, want %d (one per word sent)", apps.CountsStream, info.State.Msgs, m.wordsSent)
	}
	counts := map[string][]int64{}
	if info.State.Msgs > 0 {
		cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(1000))
		if err != nil {
			t.Fatal(err)
		}
		defer it.Stop()
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		defer rcancel()
		for {
			msg, err := it.Next(jetstream.NextContext(rctx))
			if err != nil {
				t.Fatalf("read %s: %v", apps.CountsStream, err)
			}
			md, err := msg.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			var c apps.Count
			if err := msgpack.Unmarshal(msg.Data(), &c); err != nil {
				t.Fatalf("%s seq %d: %v", apps.CountsStream, md.Sequence.Stream, err)
			}
			counts[c.Word] = append(counts[c.Word], c.Count)
			if md.Sequence.Stream >= info.State.LastSeq {
				break
			}
		}
	}
	for w := range counts {
		if _, ok := m.words[w]; !ok {
			t.Errorf("output stream has counts of %q, a word never sent", w)
		}
	}
	for _, w := range slices.Sorted(maps.Keys(m.words)) {
		got := counts[w]
		want := make([]int64, m.words[w])
		for i := range want {
			want[i] = int64(i + 1)
		}
		if !slices.Equal(got, want) {
			t.Errorf("word %q: output counts %s, want 1..%d once each, in order", w, testkit.DescribeRun(got), len(want))
		}
	}
}

// checkCrashDeadLetters checks that no event went to a dead-letter stream.
func checkCrashDeadLetters(ctx context.Context, t *testing.T, js jetstream.JetStream) {
	t.Helper()
	for _, typ := range []string{apps.BankType, apps.LinesType, apps.WordsType} {
		name := partition.DLQStream(typ)
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := info.State.Msgs
		if n == 0 {
			continue
		}
		first := "?"
		if raw, err := st.GetMsg(ctx, info.State.FirstSeq); err == nil {
			first = fmt.Sprintf("%s: %s", raw.Header.Get("Eddy-Subject"), raw.Header.Get("Eddy-Error"))
		}
		t.Errorf("dead-letter stream %s holds %d events; first: %s", name, n, first)
	}
}

func streamMsgs(ctx context.Context, t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return info.State.Msgs
}
