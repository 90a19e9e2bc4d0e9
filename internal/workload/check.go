package workload

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/partition"
)

// Check compares the final state with the model and returns the
// violations, each also reported with t.Errorf (the first 50):
//   - every account's deposited equals what was published to it, and its
//     debits + rejected the transfers published from it;
//   - the balances add up to the deposits, and the credits to the debits;
//   - each word's count equals its occurrences in the lines;
//   - the wordcounts stream holds each word's running counts 1..n exactly
//     once (read whole);
//   - the input streams hold each event once (the credits and words the
//     actors sent deduplicated on every re-forward), no dead letters.
//
// js reads the streams; the input streams must hold nothing but what the
// producer published and what the apps sent on.
func Check(ctx context.Context, t testing.TB, js jetstream.JetStream, st State, m Model, withWords bool) int {
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
	for _, a := range slices.Sorted(maps.Keys(st.Accounts)) {
		acc := st.Accounts[a]
		if acc.Deposited != m.Deposited[a] {
			fail("account %s: deposited %d, published %d", a, acc.Deposited, m.Deposited[a])
		}
		if acc.Debits+acc.Rejected != m.TransfersFrom[a] {
			fail("account %s: debits %d + rejected %d = %d, transfers published from it %d", a, acc.Debits, acc.Rejected, acc.Debits+acc.Rejected, m.TransfersFrom[a])
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
	want := map[string]uint64{apps.BankType: uint64(m.Deposits + m.Transfers + debits)} // each debit sent one credit
	types := []string{apps.BankType}
	if withWords {
		for _, w := range slices.Sorted(maps.Keys(st.Words)) {
			if st.Words[w] != m.Words[w] {
				fail("word %q: count %d, occurrences %d", w, st.Words[w], m.Words[w])
			}
		}
		CheckCounts(ctx, t, js, m, fail)
		want[apps.LinesType], want[apps.WordsType] = uint64(m.Lines), uint64(m.WordsSent)
		types = append(types, apps.LinesType, apps.WordsType)
	}
	for name, n := range want {
		if got, err := StreamMsgs(ctx, js, name); err != nil {
			fail("input stream %s: %v", name, err)
		} else if got != n {
			fail("input stream %s holds %d events, want %d (published, plus one credit a debit)", name, got, n)
		}
	}
	for _, typ := range types {
		name := partition.DLQStream(typ)
		if n, err := StreamMsgs(ctx, js, name); err != nil {
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

// CheckCounts reads the whole wordcounts stream and checks, through
// fail, that each word's running counts 1..n are there exactly once, no
// duplicate and no gap; counts out of order are logged.
func CheckCounts(ctx context.Context, t testing.TB, js jetstream.JetStream, m Model, fail func(string, ...any)) {
	t.Helper()
	// The last commits' outboxes may still be on their way.
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := StreamMsgs(ctx, js, apps.CountsStream)
		if err == nil && n >= uint64(m.WordsSent) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	counts, err := ReadCounts(ctx, js)
	if err != nil {
		fail("read %s: %v", apps.CountsStream, err)
		return
	}
	total, disordered := 0, 0
	for w, got := range counts {
		total += len(got)
		if _, ok := m.Words[w]; !ok {
			fail("%s holds %d counts of %q, a word never published", apps.CountsStream, len(got), w)
		}
	}
	if total != int(m.WordsSent) {
		fail("%s holds %d counts, want %d (one per word occurrence)", apps.CountsStream, total, m.WordsSent)
	}
	for _, w := range slices.Sorted(maps.Keys(m.Words)) {
		got := counts[w]
		seen := make([]int, m.Words[w]+1)
		bad := false
		for _, n := range got {
			if n < 1 || n > m.Words[w] {
				bad = true
				continue
			}
			seen[n]++
		}
		for n := 1; n < len(seen); n++ {
			bad = bad || seen[n] != 1
		}
		if bad {
			fail("word %q: %s counts %s, want 1..%d once each", w, apps.CountsStream, testkit.DescribeRun(got), m.Words[w])
		} else if !slices.IsSorted(got) {
			disordered++
			t.Logf("word %q: %s holds 1..%d once each, out of order: %s", w, apps.CountsStream, m.Words[w], testkit.DescribeRun(got))
		}
	}
	if disordered > 0 {
		t.Logf("%d words' running counts are out of order in %s (each count once)", disordered, apps.CountsStream)
	}
}

// ReadCounts reads the whole wordcounts stream into each word's running
// counts, in stream order.
func ReadCounts(ctx context.Context, js jetstream.JetStream) (map[string][]int64, error) {
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

// StreamMsgs is how many messages stream name holds. It retries a stream
// info request that goes unanswered, but not a stream that does not exist.
func StreamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
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
