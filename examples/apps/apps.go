// Package apps holds the example actor types that the examples and the node
// binary carry: a bank (transfers between accounts in different partitions),
// a word count (lines split into words, counted per word) and orders
// (enriched from a co-partitioned and a global table).
package apps

import (
	"fmt"
	"sort"
	"strings"

	"github.com/eddyrt/eddy"
)

// Names lists the example apps by name.
var Names = []string{"bank", "wordcount", "orders"}

// ActorTypes returns the actor types of the named app.
func ActorTypes(app string, partitions int) ([]eddy.ActorType, error) {
	switch app {
	case "bank":
		return []eddy.ActorType{Bank(partitions)}, nil
	case "wordcount":
		return WordCount(partitions), nil
	case "orders":
		return []eddy.ActorType{Orders(partitions)}, nil
	}
	return nil, fmt.Errorf("unknown app %q (have %s)", app, strings.Join(Names, ", "))
}

// BankType is the actor type of bank accounts.
const BankType = "bank"

// Op is what a bank event asks an account to do.
type Op struct {
	Kind   string `msgpack:"kind" json:"kind"` // "deposit", "transfer" (debit here, credit To) or "credit"
	Amount int64  `msgpack:"amount" json:"amount"`
	To     string `msgpack:"to,omitempty" json:"to,omitempty"`
	From   string `msgpack:"from,omitempty" json:"from,omitempty"`
}

// Account is an account's state.
type Account struct {
	Balance   int64 `msgpack:"balance" json:"balance"`
	Deposited int64 `msgpack:"deposited" json:"deposited"`
	Debits    int64 `msgpack:"debits" json:"debits"`   // transfers applied from this account
	Credits   int64 `msgpack:"credits" json:"credits"` // transfers received
	Rejected  int64 `msgpack:"rejected" json:"rejected"`
}

// Bank is the bank actor type: the debit of a transfer happens in the source
// account's partition and the credit is an Emit to the target account's actor,
// so the total of all balances equals the total deposited once every credit is
// delivered, and no transfer is applied twice, whatever crashes.
func Bank(partitions int) eddy.ActorType {
	return eddy.ActorType{
		Name:       BankType,
		Partitions: partitions,
		Handler: func(c *eddy.Context) error {
			var op Op
			if err := c.Decode(&op); err != nil {
				return err
			}
			var acc Account
			if _, err := c.Get(&acc); err != nil {
				return err
			}
			switch op.Kind {
			case "deposit":
				acc.Balance += op.Amount
				acc.Deposited += op.Amount
			case "transfer":
				if op.Amount <= 0 || op.To == "" || op.To == c.Key() || acc.Balance < op.Amount {
					acc.Rejected++
					if err := c.Reply("rejected"); err != nil {
						return err
					}
					return c.Set(acc)
				}
				acc.Balance -= op.Amount
				acc.Debits++
				if err := c.Emit(BankType, op.To, Op{Kind: "credit", Amount: op.Amount, From: c.Key()}); err != nil {
					return err
				}
			case "credit":
				acc.Balance += op.Amount
				acc.Credits++
			default:
				return fmt.Errorf("unknown op %q: %w", op.Kind, eddy.ErrMalformed)
			}
			if err := c.Reply(acc.Balance); err != nil {
				return err
			}
			return c.Set(acc)
		},
	}
}

// Word count: LinesType splits a line into words and sends each to the
// WordsType actor of that word, which counts it and emits the running count
// to the CountsStream output.
const (
	LinesType    = "lines"
	WordsType    = "words"
	CountsStream = "wordcounts"
)

// Count is an emitted running count of a word.
type Count struct {
	Word  string `msgpack:"word" json:"word"`
	Count int64  `msgpack:"count" json:"count"`
}

// WordCount returns the two actor types of the word count.
func WordCount(partitions int) []eddy.ActorType {
	return []eddy.ActorType{
		{
			Name:       LinesType,
			Partitions: partitions,
			Handler: func(c *eddy.Context) error {
				var line string
				if err := c.Decode(&line); err != nil {
					return err
				}
				for _, w := range Words(line) {
					if err := c.Emit(WordsType, w, w); err != nil {
						return err
					}
				}
				return nil
			},
		},
		{
			Name:       WordsType,
			Partitions: partitions,
			Outputs:    []string{CountsStream},
			Handler: func(c *eddy.Context) error {
				var n int64
				if _, err := c.Get(&n); err != nil {
					return err
				}
				n++
				if err := c.Set(n); err != nil {
					return err
				}
				return c.Emit(CountsStream, c.Key(), Count{Word: c.Key(), Count: n})
			},
		},
	}
}

// Words splits a line into lower-case words.
func Words(line string) []string {
	return strings.FieldsFunc(strings.ToLower(line), func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '\'')
	})
}

// SortedCounts orders a word count for printing: most frequent first.
func SortedCounts(m map[string]int64) []Count {
	out := make([]Count, 0, len(m))
	for w, n := range m {
		out = append(out, Count{Word: w, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Word < out[j].Word
	})
	return out
}
