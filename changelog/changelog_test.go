package changelog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
)

func TestKeyTokensRoundTrip(t *testing.T) {
	for _, k := range []string{"alice", "a-b_c=", "", "~tilde", "a.b", "*", ">", "with space", "ünï", "\x00\xff"} {
		tok := EncodeKey(k)
		for _, c := range tok {
			if c == '.' || c == '*' || c == '>' || c == ' ' || c == '\t' {
				t.Fatalf("token %q of key %q is not subject-safe", tok, k)
			}
		}
		if tok == "" {
			t.Fatalf("empty token for key %q", k)
		}
		got, err := DecodeKey(tok)
		if err != nil || got != k {
			t.Fatalf("DecodeKey(%q) = %q, %v; want %q", tok, got, err, k)
		}
		if string(AppendKey(nil, []byte(k))) != tok {
			t.Fatalf("AppendKey and EncodeKey disagree on %q", k)
		}
	}
	if _, err := DecodeKey("~!!"); !errors.Is(err, ErrBadKey) {
		t.Fatalf("want ErrBadKey, got %v", err)
	}
}

func setup(t *testing.T) (context.Context, *natstest.Server, Subjects) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx, natstest.Start(t), NewSubjects("orders", 3)
}

func TestCommitReplayAndTrim(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(nc, s, Tail{}, 0, 0)
	// Two batches: the second overwrites a, deletes b and adds an outbox entry.
	c, err := w.Commit(ctx, []Record{
		{Kind: KindSet, Store: "st", Key: []byte("a"), Value: []byte("1")},
		{Kind: KindSet, Store: "st", Key: []byte("b.b"), Value: []byte("2")},
		{Kind: KindMeta, Meta: Meta{Offset: 10, Epoch: 1}},
	})
	if first, last := c.Landed(); err != nil || first != 1 || last != 1 {
		t.Fatalf("commit 1: %d..%d %v", first, last, err)
	}
	if _, err = w.Commit(ctx, []Record{
		{Kind: KindSet, Store: "st", Key: []byte("a"), Value: []byte("3")},
		{Kind: KindDelete, Store: "st", Key: []byte("b.b")},
		{Kind: KindOutbox, Outbox: Outbox{Offset: 11, Index: 0, Subject: "out.x", MsgID: "m1", Data: []byte("hi")}},
		{Kind: KindMeta, Meta: Meta{Offset: 11, Epoch: 1}},
	}); err != nil {
		t.Fatal(err)
	}
	state := map[string]string{}
	var meta Meta
	var outs []Outbox
	end, err := Replay(ctx, js, s, ReplayConfig{From: 1}, func(seq uint64, r Record) error {
		switch r.Kind {
		case KindSet:
			state[r.Store+"/"+string(r.Key)] = string(r.Value)
		case KindDelete:
			delete(state, r.Store+"/"+string(r.Key))
		case KindMeta:
			meta = r.Meta
		case KindOutbox:
			outs = append(outs, r.Outbox)
		}
		return nil
	})
	if err != nil || end != 2 {
		t.Fatalf("replay: end %d, %v", end, err)
	}
	if fmt.Sprint(state) != "map[st/a:3]" || meta.Offset != 11 || len(outs) != 1 || outs[0].MsgID != "m1" || outs[0].Offset != 11 {
		t.Fatalf("replayed state %v meta %+v outbox %+v", state, meta, outs)
	}
	// A log of commits, one message each, on one subject whatever the keys.
	st, _ := js.Stream(ctx, s.Stream())
	info, _ := st.Info(ctx)
	if info.State.Msgs != 2 || info.State.NumSubjects != 1 {
		t.Fatalf("want 2 messages on 1 subject, got %d on %d", info.State.Msgs, info.State.NumSubjects)
	}
	// Replay from past the end reads nothing.
	n := 0
	end, err = Replay(ctx, js, s, ReplayConfig{From: 3}, func(uint64, Record) error { n++; return nil })
	if err != nil || n != 0 || end != 2 {
		t.Fatalf("replay past end: %d records, end %d, %v", n, end, err)
	}
	// Trimming below the second batch's meta record (a snapshot there)
	// leaves it, the newest meta, for fencing.
	if err := Trim(ctx, js, s, 2); err != nil {
		t.Fatal(err)
	}
	info, _ = st.Info(ctx)
	if info.State.FirstSeq != 2 || info.State.Msgs != 1 {
		t.Fatalf("after trim: %+v", info.State)
	}
	if m, ok, err := ReadLastMeta(ctx, nc, s); err != nil || !ok || m.Seq != 2 || m.Offset != 11 {
		t.Fatalf("last meta after trim: %+v %v %v", m, ok, err)
	}
}

// Every batch's meta record names the one before it, so that a reader can
// tell a changelog that goes on from what it holds from one trimmed past
// it, or rewritten.
func TestMetaRecordsChainTheBatches(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(nc, s, Tail{}, 0, 0)
	var metas []Meta
	var seqs []uint64
	for i := range 3 {
		recs := []Record{
			{Kind: KindSet, Store: "st", Key: []byte("k"), Value: []byte{byte(i)}},
			{Kind: KindMeta, Meta: Meta{Offset: uint64(i + 1), Epoch: 1}},
		}
		c, err := w.Commit(ctx, recs)
		if err != nil {
			t.Fatal(err)
		}
		_, last := c.Landed()
		metas, seqs = append(metas, recs[1].Meta), append(seqs, last)
	}
	if !metas[0].Continues(0, 0) {
		t.Error("the first batch does not continue an empty changelog")
	}
	for i := 1; i < 3; i++ {
		if !metas[i].Continues(seqs[i-1], metas[i-1].Batch) {
			t.Errorf("batch %d does not continue batch %d", i, i-1)
		}
	}
	if metas[2].Continues(seqs[0], metas[0].Batch) {
		t.Error("a reader at the first batch accepts the third: the second was trimmed")
	}
	if metas[1].Continues(0, 0) {
		t.Error("a reader holding nothing accepts the second batch: the first was trimmed")
	}
	if metas[1].Continues(seqs[0], metas[0].Batch+1) {
		t.Error("a reader accepts a batch that follows another batch at its sequence")
	}
}

func TestStaleWriterIsFenced(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	old := NewWriter(nc, s, Tail{}, 0, 0)
	if _, err := old.Commit(ctx, []Record{{Kind: KindMeta, Meta: Meta{Epoch: 1}}}); err != nil {
		t.Fatal(err)
	}
	// A new owner restored to sequence 1 and writes its epoch.
	newer := NewWriter(nc, s, old.Tail(), 0, 0)
	if _, err := newer.Commit(ctx, []Record{{Kind: KindMeta, Meta: Meta{Epoch: 2}}}); err != nil {
		t.Fatal(err)
	}
	// The old owner's next batch must not land, in whole or in part.
	_, err := old.Commit(ctx, []Record{
		{Kind: KindSet, Store: "st", Key: []byte("zombie"), Value: []byte("x")},
		{Kind: KindMeta, Meta: Meta{Epoch: 1, Offset: 99}},
	})
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("want ErrFenced, got %v", err)
	}
	m, ok, err := ReadLastMeta(ctx, nc, s)
	if err != nil || !ok || m.Epoch != 2 || m.Offset != 0 {
		t.Fatalf("last meta %+v %v %v", m, ok, err)
	}
	st, _ := js.Stream(ctx, s.Stream())
	if info, err := st.Info(ctx); err != nil || info.State.LastSeq != 2 {
		t.Fatalf("a fenced batch left a record behind: %v %v", info, err)
	}
}

// A commit too large for one message goes as an atomic batch of parts and
// its commit message: a reader meets its records in order, where the writer
// says they are, and a stale writer lands none of it.
func TestLargeCommitTakesParts(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(nc, s, Tail{}, 5, 256)
	if _, err := w.Commit(ctx, []Record{{Kind: KindMeta, Meta: Meta{Epoch: 1}}}); err != nil {
		t.Fatal(err)
	}
	stale := NewWriter(nc, s, w.Tail(), 5, 256)
	var recs []Record
	for i := range 30 {
		recs = append(recs, Record{Kind: KindSet, Store: "st", Key: fmt.Appendf(nil, "key-%02d", i), Value: bytes.Repeat([]byte{'v'}, 20)})
	}
	recs = append(recs, Record{Kind: KindOutbox, Outbox: Outbox{Offset: 7, Index: 1, Subject: "out.x", MsgID: "m", Data: []byte("hi")}},
		Record{Kind: KindMeta, Meta: Meta{Offset: 7, Epoch: 1}})
	c, err := w.Commit(ctx, recs)
	if err != nil {
		t.Fatal(err)
	}
	first, last := c.Landed()
	if first != 2 || last < first+2 || last > first+4 {
		t.Fatalf("a commit of ~1.3 KB in messages of 256 B landed at %d..%d", first, last)
	}
	type pos struct {
		seq   uint64
		index int
	}
	var got []pos
	_, err = Replay(ctx, js, s, ReplayConfig{From: first}, func(seq uint64, r Record) error {
		i := len(got)
		if r.Kind != recs[i].Kind || string(r.Key) != string(recs[i].Key) || r.Meta != recs[i].Meta || r.Outbox.MsgID != recs[i].Outbox.MsgID {
			t.Errorf("record %d: got %+v, want %+v", i, r, recs[i])
		}
		got = append(got, pos{seq, r.Index})
		return nil
	})
	if err != nil || len(got) != len(recs) {
		t.Fatalf("replayed %d of %d records: %v", len(got), len(recs), err)
	}
	for i, p := range got {
		if seq, index := c.Position(i); seq != p.seq || index != p.index {
			t.Errorf("record %d: the writer says %d/%d, the changelog %d/%d", i, seq, index, p.seq, p.index)
		}
	}
	if m, ok, err := ReadLastMeta(ctx, nc, s); err != nil || !ok || m.Seq != last || m.Offset != 7 {
		t.Fatalf("last meta: %+v %v %v", m, ok, err)
	}
	for i := range recs[:len(recs)-1] {
		recs[i].Key = append(recs[i].Key, 'z')
	}
	recs[len(recs)-1].Meta = Meta{Offset: 8, Epoch: 1}
	if _, err := stale.Commit(ctx, recs); !errors.Is(err, ErrFenced) {
		t.Fatalf("a stale writer's large commit: %v, want ErrFenced", err)
	}
	if end, err := LastSequence(ctx, nc, s); err != nil || end != last {
		t.Fatalf("a fenced large commit left messages: the changelog ends at %d, not %d (%v)", end, last, err)
	}
	// What does not fit is refused before anything is published.
	big := []Record{{Kind: KindSet, Store: "st", Key: []byte("k"), Value: make([]byte, 300)}, {Kind: KindMeta}}
	if _, err := w.Commit(ctx, big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a record larger than a message: %v, want ErrTooLarge", err)
	}
	many := make([]Record, 0, 61)
	for i := range 60 {
		many = append(many, Record{Kind: KindSet, Store: "st", Key: fmt.Appendf(nil, "k%d", i), Value: make([]byte, 100)})
	}
	if _, err := w.Commit(ctx, append(many, Record{Kind: KindMeta})); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a commit of more messages than a batch may hold: %v, want ErrTooLarge", err)
	}
	if end, err := LastSequence(ctx, nc, s); err != nil || end != last {
		t.Fatalf("a refused commit left messages: the changelog ends at %d, not %d (%v)", end, last, err)
	}
}

// lossyConn loses what a test tells it to of the next commit message: its
// acknowledgement (the commit landed, the writer does not know), or the
// message itself (nothing landed).
type lossyConn struct {
	*nats.Conn
	loseAck, loseCommit bool
}

func (c *lossyConn) PublishMsg(m *nats.Msg) error {
	switch {
	case m.Reply == "":
		return c.Conn.PublishMsg(m) // a part
	case c.loseCommit:
		c.loseCommit = false
		return nil
	case c.loseAck:
		c.loseAck = false
		lost := *m
		lost.Reply = ""
		return c.Conn.PublishMsg(&lost)
	}
	return c.Conn.PublishMsg(m)
}

// A commit whose outcome is unknown, in one message or in parts, resolves
// to what the changelog holds: not landed (commit again), landed (at the
// sequences a plain commit would report), or moved (another writer's).
func TestResolveTellsWhatLanded(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	conn := &lossyConn{Conn: nc}
	w := NewWriter(conn, s, Tail{}, 0, 256)
	defer w.Close()
	batch := func(n int, offset uint64) []Record {
		var recs []Record
		for i := range n {
			recs = append(recs, Record{Kind: KindSet, Store: "st", Key: fmt.Appendf(nil, "key-%02d", i), Value: bytes.Repeat([]byte{'v'}, 20)})
		}
		return append(recs, Record{Kind: KindMeta, Meta: Meta{Offset: offset, Epoch: 1}})
	}
	wait := func(c *Commit) error {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		return w.Wait(ctx, c)
	}
	for _, n := range []int{1, 30} { // one message, then parts
		recs := batch(n, uint64(n))
		before := w.Last()
		conn.loseCommit = true
		c, err := w.Frame(recs)
		if err == nil {
			err = w.Send(c)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := wait(c); !errors.Is(err, ErrCommitUnknown) {
			t.Fatalf("%d records: a lost commit: %v, want ErrCommitUnknown", n, err)
		}
		if o, err := w.Resolve(ctx, c); err != nil || o != NotLanded {
			t.Fatalf("%d records: a lost commit resolves to %v (%v), want not landed", n, o, err)
		}
		conn.loseAck = true
		if err := w.Retry(c); err != nil {
			t.Fatal(err)
		}
		if err := wait(c); !errors.Is(err, ErrCommitUnknown) {
			t.Fatalf("%d records: a lost ack: %v, want ErrCommitUnknown", n, err)
		}
		// The server applies an atomic batch after it received the commit
		// message: until then the commit has not landed.
		var o Outcome
		testkit.WaitFor(t, 5*time.Second, "the commit to land", func() bool {
			o, err = w.Resolve(ctx, c)
			return err != nil || o != NotLanded
		})
		first, last := c.Landed()
		if err != nil || o != Landed || first != before+1 || w.Last() != last {
			t.Fatalf("%d records: a lost ack resolves to %v %d..%d (%v), want landed after %d", n, o, first, last, err, before)
		}
		if n > 1 && last == first {
			t.Fatalf("%d records of 256 B messages landed in one message", n)
		}
		if m, ok, err := ReadLastMeta(ctx, nc, s); err != nil || !ok || m.Seq != last || m.Offset != uint64(n) {
			t.Fatalf("%d records: last meta %+v %v %v, want offset %d at %d", n, m, ok, err, n, last)
		}
		if seq, _ := c.Position(len(recs) - 1); seq != last {
			t.Fatalf("%d records: the meta record is at %d, want %d", n, seq, last)
		}
	}
	// Another writer's commit where this one expected to write.
	other := NewWriter(nc, s, w.Tail(), 0, 256)
	defer other.Close()
	if _, err := other.Commit(ctx, batch(30, 100)); err != nil {
		t.Fatal(err)
	}
	conn.loseCommit = true
	c, err := w.Frame(batch(30, 101))
	if err == nil {
		err = w.Send(c)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(c); !errors.Is(err, ErrCommitUnknown) {
		t.Fatal(err)
	}
	if o, err := w.Resolve(ctx, c); err != nil || o != Moved {
		t.Fatalf("resolves to %v (%v), want moved", o, err)
	}
}

// holdConn keeps back every message until release: commits in flight that
// reach the server later, in the order they were sent.
type holdConn struct {
	*nats.Conn
	held []*nats.Msg
}

func (c *holdConn) PublishMsg(m *nats.Msg) error {
	c.held = append(c.held, m)
	return nil
}

func (c *holdConn) release(t *testing.T) {
	t.Helper()
	for _, m := range c.held {
		if err := c.Conn.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	c.held = nil
}

// A pipelined writer's commits, sent before the one ahead is acknowledged,
// land in order, each where the writer expected. An older owner's commits
// in flight, sent one behind the other, never land after a newer owner's
// commit, even when that one landed at the very sequence the second one
// expects: it also expects the first to be the last message.
func TestPipelinedCommitsAreFenced(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	meta := func(epoch, offset uint64) []Record {
		return []Record{{Kind: KindSet, Store: "st", Key: []byte("k"), Value: fmt.Appendf(nil, "%d", offset)},
			{Kind: KindMeta, Meta: Meta{Epoch: epoch, Offset: offset}}}
	}
	send := func(w *Writer, recs []Record) (*Commit, error) {
		c, err := w.Frame(recs)
		if err != nil {
			t.Fatal(err)
		}
		return c, w.Send(c)
	}
	plain := NewWriter(nc, s, Tail{}, 0, 0)
	defer plain.Close()
	c0, err := send(plain, meta(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := send(plain, meta(1, 2)); !errors.Is(err, ErrNotPipelined) {
		t.Fatalf("a writer not pipelined sends behind a commit in flight: %v", err)
	}
	if err := plain.Wait(ctx, c0); err != nil {
		t.Fatal(err)
	}

	old := NewWriter(nc, s, plain.Tail(), 0, 256)
	defer old.Close()
	old.Pipeline()
	var sent []*Commit
	for i := 1; i <= 3; i++ {
		c, err := send(old, meta(1, uint64(i+1)))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, c)
	}
	var big []Record
	for i := range 30 {
		big = append(big, Record{Kind: KindSet, Store: "st", Key: fmt.Appendf(nil, "key-%02d", i), Value: bytes.Repeat([]byte{'v'}, 20)})
	}
	if _, err := send(old, append(big, Record{Kind: KindMeta, Meta: Meta{Epoch: 1, Offset: 4}})); !errors.Is(err, ErrNotPipelined) {
		t.Fatalf("a commit in parts sent behind one in flight: %v", err)
	}
	for i, c := range sent {
		if err := old.Wait(ctx, c); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		if first, last := c.Landed(); first != uint64(i+2) || last != first {
			t.Fatalf("commit %d landed at %d..%d", i, first, last)
		}
	}

	// The old owner sends two commits that reach the server late; a new
	// owner restored to the tail the old one knew commits first.
	hold := &holdConn{Conn: nc}
	zombie := NewWriter(hold, s, old.Tail(), 0, 0)
	defer zombie.Close()
	zombie.Pipeline()
	k, err := send(zombie, meta(1, 10))
	if err != nil {
		t.Fatal(err)
	}
	k1, err := send(zombie, meta(1, 11))
	if err != nil {
		t.Fatal(err)
	}
	newer := NewWriter(nc, s, old.Tail(), 0, 0)
	defer newer.Close()
	if _, err := newer.Commit(ctx, meta(2, 0)); err != nil {
		t.Fatal(err)
	}
	hold.release(t)
	if err := zombie.Wait(ctx, k); !errors.Is(err, ErrFenced) {
		t.Fatalf("the old owner's first commit: %v, want ErrFenced", err)
	}
	if err := zombie.Wait(ctx, k1); !errors.Is(err, ErrFenced) {
		t.Fatalf("the old owner's second commit, expecting the sequence the new owner's landed at: %v, want ErrFenced", err)
	}
	if m, ok, err := ReadLastMeta(ctx, nc, s); err != nil || !ok || m.Epoch != 2 {
		t.Fatalf("the changelog ends with %+v (%v %v), want the new owner's commit", m, ok, err)
	}
}
