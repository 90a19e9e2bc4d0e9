package changelog

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/natstest"
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

func TestCommitReplayPurgeAndTrim(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(nc, s, Tail{}, 0)
	// Two batches: the second overwrites a, deletes b and adds an outbox entry.
	first, last, err := w.Commit(ctx, []Record{
		{Kind: KindSet, Store: "st", Key: []byte("a"), Value: []byte("1")},
		{Kind: KindSet, Store: "st", Key: []byte("b.b"), Value: []byte("2")},
		{Kind: KindMeta, Meta: Meta{Offset: 10, Epoch: 1}},
	})
	if err != nil || first != 1 || last != 3 {
		t.Fatalf("commit 1: %d..%d %v", first, last, err)
	}
	if _, _, err = w.Commit(ctx, []Record{
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
	if err != nil || end != 7 {
		t.Fatalf("replay: end %d, %v", end, err)
	}
	if fmt.Sprint(state) != "map[st/a:3]" || meta.Offset != 11 || len(outs) != 1 || outs[0].MsgID != "m1" || outs[0].Offset != 11 {
		t.Fatalf("replayed state %v meta %+v outbox %+v", state, meta, outs)
	}
	// A log: every record stays, under three subjects whatever the keys.
	st, _ := js.Stream(ctx, s.Stream())
	info, _ := st.Info(ctx)
	if info.State.Msgs != 7 || info.State.NumSubjects != 3 {
		t.Fatalf("want 7 messages on 3 subjects, got %d on %d", info.State.Msgs, info.State.NumSubjects)
	}
	// Purging forwarded outbox entries leaves the rest.
	if err := PurgeOutbox(ctx, js, s, 7); err != nil {
		t.Fatal(err)
	}
	info, _ = st.Info(ctx)
	if info.State.Msgs != 6 || info.State.LastSeq != 7 {
		t.Fatalf("after purge: %+v", info.State)
	}
	// Replay from past the end reads nothing.
	n := 0
	end, err = Replay(ctx, js, s, ReplayConfig{From: 8}, func(uint64, Record) error { n++; return nil })
	if err != nil || n != 0 || end != 7 {
		t.Fatalf("replay past end: %d records, end %d, %v", n, end, err)
	}
	// Trimming below the second batch's meta record (a snapshot there)
	// leaves it, the newest meta, for fencing.
	if err := Trim(ctx, js, s, 7); err != nil {
		t.Fatal(err)
	}
	info, _ = st.Info(ctx)
	if info.State.FirstSeq != 7 || info.State.Msgs != 1 {
		t.Fatalf("after trim: %+v", info.State)
	}
	if m, ok, err := ReadLastMeta(ctx, nc, s); err != nil || !ok || m.Seq != 7 || m.Offset != 11 {
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
	w := NewWriter(nc, s, Tail{}, 0)
	var metas []Meta
	var seqs []uint64
	for i := range 3 {
		recs := []Record{
			{Kind: KindSet, Store: "st", Key: []byte("k"), Value: []byte{byte(i)}},
			{Kind: KindMeta, Meta: Meta{Offset: uint64(i + 1), Epoch: 1}},
		}
		_, last, err := w.Commit(ctx, recs)
		if err != nil {
			t.Fatal(err)
		}
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
	old := NewWriter(nc, s, Tail{}, 0)
	if _, _, err := old.Commit(ctx, []Record{{Kind: KindMeta, Meta: Meta{Epoch: 1}}}); err != nil {
		t.Fatal(err)
	}
	// A new owner restored to sequence 1 and writes its epoch.
	newer := NewWriter(nc, s, old.Tail(), 0)
	if _, _, err := newer.Commit(ctx, []Record{{Kind: KindMeta, Meta: Meta{Epoch: 2}}}); err != nil {
		t.Fatal(err)
	}
	// The old owner's next batch must not land, in whole or in part.
	_, _, err := old.Commit(ctx, []Record{
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

func TestBatchLimit(t *testing.T) {
	ctx, srv, s := setup(t)
	nc, js := srv.Connect(t)
	if _, err := EnsureStream(ctx, js, s, DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(nc, s, Tail{}, 0)
	recs := make([]Record, MaxBatch)
	for i := range recs {
		recs[i] = Record{Kind: KindSet, Store: "st", Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v")}
	}
	if _, last, err := w.Commit(ctx, recs); err != nil || last != MaxBatch {
		t.Fatalf("full batch: %d %v", last, err)
	}
	if _, _, err := w.Commit(ctx, append(recs, recs[0])); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
}
