package postgres_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/pgtest"
	"github.com/eddyrt/eddy/statestore/postgres"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://eddy:s3cret@db:5432/eddy?sslmode=disable": "postgres://eddy:xxxxx@db:5432/eddy?sslmode=disable",
		"postgresql://eddy@db/eddy?password=s3cret":           "postgresql://eddy@db/eddy?password=xxxxx",
		"host=db user=eddy password=s3cret dbname=eddy":       "host=db user=eddy password=xxxxx dbname=eddy",
		"host=db password='se cret' user=eddy":                "host=db password=xxxxx user=eddy",
		"postgres://eddy@db/eddy":                             "postgres://eddy@db/eddy",
	} {
		if got := postgres.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenDoesNotLeakTheDSN(t *testing.T) {
	cfg := postgres.DefaultConfig("postgres://eddy:s3cret@db:99999999/eddy")
	_, err := postgres.Open(context.Background(), cfg)
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Open of a bad DSN: %v", err)
	}
}

// openAcct opens a pool on a fresh database with the tables of type acct.
func openAcct(t *testing.T, ctx context.Context) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(ctx, postgres.DefaultConfig(pgtest.DB(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.EnsureType(ctx, "acct"); err != nil {
		t.Fatal(err)
	}
	return db
}

// TestClaimFencesOlderOwners: once a newer owner claimed a partition, the
// older owner's commits update nothing and roll back, whatever they hold;
// a commit of an offset already committed is not applied twice.
func TestClaimFencesOlderOwners(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := openAcct(t, ctx)
	created := time.Now()
	claim := func(epoch uint64, owner string) (*postgres.Partition, postgres.Position, bool) {
		pt := db.Partition("acct", 3)
		pos, ok, err := pt.Claim(ctx, postgres.Claim{Epoch: epoch, Owner: owner, InputStream: "acct", InputCreated: created})
		if err != nil {
			t.Fatal(err)
		}
		return pt, pos, ok
	}
	a, pos, ok := claim(1, "A")
	if !ok || pos.Epoch != 1 || pos.Offset != 0 {
		t.Fatalf("first claim: %+v %v", pos, ok)
	}
	set := func(offset uint64, v string) *postgres.Commit {
		return &postgres.Commit{Epoch: 1, Owner: "A", Offset: offset,
			Writes:    []postgres.Write{{Store: "state", Key: []byte("k"), Value: []byte(v)}},
			Outbox:    []postgres.Outbox{{Offset: offset, Subject: "out.k", MsgID: "acct/3/" + v, Header: map[string]string{"h": "1"}, Data: []byte(v)}},
			Forwarded: offset - 1}
	}
	if err := a.Commit(ctx, set(5, "a5")); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(ctx, set(5, "again")); !errors.Is(err, postgres.ErrNotApplied) {
		t.Fatalf("a commit of offset 5 again: %v, want ErrNotApplied", err)
	}
	if _, _, ok := claim(1, "Z"); ok {
		t.Fatal("another owner claimed epoch 1, held by A")
	}
	if _, pos, ok := claim(2, "B"); !ok || pos.Offset != 5 || pos.Epoch != 2 {
		t.Fatalf("B's claim: %+v %v", pos, ok)
	}
	if err := a.Commit(ctx, set(6, "zombie")); !errors.Is(err, postgres.ErrNotApplied) {
		t.Fatalf("A's commit after B's claim: %v, want ErrNotApplied", err)
	}
	v, ok, err := db.Get(ctx, "acct", 3, "state", []byte("k"))
	if err != nil || !ok || string(v) != "a5" {
		t.Fatalf("k = %q %v %v, want a5", v, ok, err)
	}
	rows, err := db.Partition("acct", 3).Pending(ctx)
	if err != nil || len(rows) != 1 || rows[0].MsgID != "acct/3/a5" || rows[0].Header["h"] != "1" || rows[0].At.IsZero() {
		t.Fatalf("outbox %+v %v: want A's one entry", rows, err)
	}
	if _, _, ok := claim(1, "A"); ok {
		t.Fatal("A claimed again below B's epoch")
	}
}

// TestPrefetchReadsWhatIsThere: a new owner's handle reads a batch's keys
// in one query, present and absent, and a partition that starts empty
// reads nothing.
func TestPrefetchReadsWhatIsThere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := openAcct(t, ctx)
	created := time.Now()
	a := db.Partition("acct", 0)
	if _, ok, err := a.Claim(ctx, postgres.Claim{Epoch: 1, Owner: "A", InputStream: "acct", InputCreated: created}); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	c := &postgres.Commit{Epoch: 1, Owner: "A", Offset: 1}
	for _, k := range []string{"a", "b", "c"} {
		c.Writes = append(c.Writes, postgres.Write{Store: "state", Key: []byte(k), Value: []byte("v" + k)})
	}
	c.Writes = append(c.Writes, postgres.Write{Store: "other", Key: []byte("a"), Value: []byte("other")})
	if err := a.Commit(ctx, c); err != nil {
		t.Fatal(err)
	}
	b := db.Partition("acct", 0) // a new owner: a cold cache
	if _, ok, err := b.Claim(ctx, postgres.Claim{Epoch: 2, Owner: "B", InputStream: "acct", InputCreated: created}); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if b.Complete() {
		t.Fatal("a partition with rows taken for empty")
	}
	if err := b.Prefetch(ctx, "state", [][]byte{[]byte("a"), []byte("c"), []byte("zz")}); err != nil {
		t.Fatal(err)
	}
	db.Close() // from here on, only the cache answers
	for k, want := range map[string]string{"a": "va", "c": "vc", "zz": ""} {
		v, ok, err := b.Get(ctx, "state", []byte(k))
		if err != nil || ok != (want != "") || string(v) != want {
			t.Errorf("%s = %q %v %v, want %q from the prefetch", k, v, ok, err, want)
		}
	}
	if _, _, err := b.Get(ctx, "state", []byte("b")); err == nil {
		t.Error("b was not prefetched, yet read without the server")
	}
}
