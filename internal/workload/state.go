package workload

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy/examples/apps"
)

// Getter GETs path from a node's HTTP API into v, choosing the node from i,
// the index of the key read, and try, the attempt (0 first): reads spread
// over the nodes by key, and a retry goes elsewhere. A response other than
// 200 OK is an error whose text holds its status ("404 Not Found").
type Getter func(ctx context.Context, i, try int, path string, v any) error

// State is the bank's and the word count's state read through the nodes'
// HTTP API.
type State struct {
	Accounts map[string]apps.Account
	Words    map[string]int64
}

// ReadState reads every account and, withWords, every word of Vocabulary
// through get (each read is routed to the key's owner), retrying a read
// that fails (a 503 while a partition moves) for up to a minute. It returns
// what it read and the first read that still failed.
func ReadState(ctx context.Context, get Getter, accounts []string, withWords bool) (State, error) {
	st := State{Accounts: map[string]apps.Account{}, Words: map[string]int64{}}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, 8)
	)
	read := func(i int, typ, key string, v any) {
		defer wg.Done()
		defer func() { <-sem }()
		deadline := time.Now().Add(time.Minute)
		for try := 0; ; try++ {
			var body struct {
				Value json.RawMessage `json:"value"`
			}
			err := get(ctx, i, try, "/v1/state/"+typ+"/"+key, &body)
			if err == nil {
				err = json.Unmarshal(body.Value, v)
			}
			if err == nil || strings.Contains(fmt.Sprint(err), "404 Not Found") {
				return // a word never counted reads as 0
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("read %s/%s: %w", typ, key, err)
				}
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
		go read(i, apps.BankType, a, &accs[i])
	}
	var counts []int64
	if withWords {
		counts = make([]int64, len(Vocabulary))
		for i, w := range Vocabulary {
			wg.Add(1)
			sem <- struct{}{}
			go read(i, apps.WordsType, w, &counts[i])
		}
	}
	wg.Wait()
	for i, a := range accounts {
		st.Accounts[a] = accs[i]
	}
	for i, n := range counts {
		st.Words[Vocabulary[i]] = n
	}
	return st, firstErr
}

// Totals are the sums the caught-up wait compares.
type Totals struct{ Deposited, Debits, Rejected, Credits, Words int64 }

// Totals sums the accounts' fields and the words' counts.
func (s State) Totals() Totals {
	var t Totals
	for _, a := range s.Accounts {
		t.Deposited += a.Deposited
		t.Debits += a.Debits
		t.Rejected += a.Rejected
		t.Credits += a.Credits
	}
	for _, n := range s.Words {
		t.Words += n
	}
	return t
}

// WaitCaughtUp waits until the totals read through get reach the model's:
// every deposit, transfer and word processed, every credit delivered. It
// gives up after limit, or after 60 s without progress, and returns the
// last state read; the exact checks (Check) then say what is missing.
func WaitCaughtUp(ctx context.Context, t testing.TB, get Getter, p *Producer, m Model, withWords bool, limit time.Duration) State {
	t.Helper()
	want := Totals{Deposited: sumValues(m.Deposited), Words: m.WordsSent}
	deadline, lastChange := time.Now().Add(limit), time.Now()
	var prev Totals
	for {
		st, err := ReadState(ctx, get, p.Accounts(), withWords)
		got := st.Totals()
		if err == nil && got.Deposited == want.Deposited && got.Debits+got.Rejected == m.Transfers &&
			got.Credits == got.Debits && got.Words == want.Words {
			return st
		}
		if got != prev {
			prev, lastChange = got, time.Now()
		}
		if time.Now().After(deadline) || time.Since(lastChange) > time.Minute {
			t.Logf("not caught up: totals %+v; the model: deposited %d, transfers %d, words %d; last read error: %v",
				got, want.Deposited, m.Transfers, m.WordsSent, err)
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
