package eddy_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/pgtest"
	"github.com/eddyrt/eddy/internal/testkit"
)

// TestMain stops the PostgreSQL server the tests share (pgtest.DB).
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

// syncBuffer is a log sink for several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// withPassword puts password into a pgtest DSN (the test server trusts
// every connection, so any password works).
func withPassword(dsn, password string) string {
	return strings.Replace(dsn, "postgres://postgres@", "postgres://postgres:"+password+"@", 1)
}

// TestBankOnPostgres runs the bank on PostgreSQL through a node: handlers
// are the bank's own, unchanged; queries read the database; a reset makes
// the next start rebuild every account from the input stream, equal, no
// credit applied twice; and the DSN's
// password appears in no log line.
func TestBankOnPostgres(t *testing.T) {
	const password = "s3cret-pw"
	dsn := withPassword(pgtest.DB(t), password)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bank := apps.Bank(4)
	bank.StateStore = eddy.PostgresStore

	cfg := eddy.DefaultConfig()
	cfg.DataDir, cfg.EmbeddedNATSPort, cfg.HTTPAddr, cfg.Logger = t.TempDir(), -1, "", log
	if n, err := eddy.NewNode(cfg); err != nil {
		t.Fatal(err)
	} else if err := n.Register(bank); !errors.Is(err, eddy.ErrInvalidConfig) {
		t.Fatalf("a type on PostgreSQL without a DSN registered: %v", err)
	}
	cfg.Postgres.DSN = dsn
	node := runNode(t, cfg, bank)
	client, _ := connect(t, node)

	var bal int64
	for _, who := range []string{"alice", "bob", "carol"} {
		if err := client.Ask(ctx, apps.BankType, who, apps.Op{Kind: "deposit", Amount: 100}, &bal); err != nil || bal != 100 {
			t.Fatalf("deposit %s: balance %d, %v", who, bal, err)
		}
	}
	for i := range 30 {
		from, to := []string{"alice", "bob", "carol"}[i%3], []string{"bob", "carol", "alice"}[i%3]
		if err := client.Send(ctx, apps.BankType, from, apps.Op{Kind: "transfer", Amount: int64(1 + i%7), To: to}); err != nil {
			t.Fatal(err)
		}
	}
	want := waitBank(t, ctx, node, 30)

	// A reset (with the type stopped) and a start from the input stream.
	if err := node.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	tool := cfg // the same data dir: the same embedded JetStream
	tool.NodeID = "reset"
	resetter := runNode(t, tool)
	r, err := resetter.Reset(ctx, apps.BankType, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Postgres) != 4 || r.PostgresRows != 3 {
		t.Fatalf("reset %+v: want 4 partitions on PostgreSQL and 3 rows", r)
	}
	if err := resetter.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	node = runNode(t, cfg, bank)
	if got := waitBank(t, ctx, node, 30); got != want {
		t.Fatalf("after the rebuild %+v, before %+v", got, want)
	}
	if strings.Contains(logs.String(), password) {
		t.Fatal("a log line holds the PostgreSQL password")
	}
	if !strings.Contains(logs.String(), "xxxxx") {
		t.Fatal("the node did not log its redacted DSN")
	}
}

// waitBank waits until every one of transfers is applied, and returns the
// three accounts as node reads them from PostgreSQL.
func waitBank(t *testing.T, ctx context.Context, node *eddy.Node, transfers int64) [3]apps.Account {
	t.Helper()
	var accts [3]apps.Account
	testkit.WaitFor(t, 30*time.Second, "every transfer applied", func() bool {
		var debits, credits, rejected, total int64
		for i, who := range []string{"alice", "bob", "carol"} {
			if err := node.Query(ctx, apps.BankType, who, &accts[i]); err != nil {
				return false
			}
			debits, credits, rejected = debits+accts[i].Debits, credits+accts[i].Credits, rejected+accts[i].Rejected
			total += accts[i].Balance
		}
		return debits+rejected == transfers && credits == debits && total == 300
	})
	return accts
}
