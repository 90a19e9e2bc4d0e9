package changelog

import (
	"errors"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestStreamPartition(t *testing.T) {
	for _, tc := range []struct {
		stream, typ string
		p           int
		ok          bool
	}{
		{"EDDY_CL_bank_3", "bank", 3, true},
		{"EDDY_CL_bank_eu_3", "bank", 0, false},
		{"EDDY_CL_bank_eu_3", "bank_eu", 3, true},
		{"EDDY_CL_bank_", "bank", 0, false},
		{"EDDY_CL_bank_1x", "bank", 0, false},
		{"bank", "bank", 0, false},
	} {
		p, ok := StreamPartition(tc.stream, tc.typ)
		if p != tc.p || ok != tc.ok {
			t.Errorf("StreamPartition(%q, %q) = %d, %v; want %d, %v", tc.stream, tc.typ, p, ok, tc.p, tc.ok)
		}
	}
	if p, ok := StreamPartition(NewSubjects("words", 12).Stream(), "words"); !ok || p != 12 {
		t.Errorf("the stream of words/12 parses as %d, %v", p, ok)
	}
}

// Records travel framed, many to a message, with any bytes at all in
// stores, keys and values; what eddy did not write is refused, not misread.
func TestRecordsRoundTrip(t *testing.T) {
	s := NewSubjects("orders", 3)
	recs := []Record{
		{Kind: KindSet, Store: "state", Key: []byte("a.b c\x00"), Value: []byte{0xc1, 0}},
		{Kind: KindSet, Store: "idx", Key: nil, Value: nil},
		{Kind: KindDelete, Store: "state", Key: []byte("gone")},
		{Kind: KindOutbox, Outbox: Outbox{Offset: 9, Index: 2, Subject: "out.x", MsgID: "m", Data: []byte("d")}},
		{Kind: KindMeta, Meta: Meta{Offset: 7, Epoch: 2, Batch: 5}},
	}
	w := NewWriter(nil, s, Tail{Seq: 4, Batch: 3}, 0, 0)
	c, err := w.frame(recs)
	if err != nil || len(c.msgs) != 1 {
		t.Fatalf("framed: %v", err)
	}
	m := c.msgs[0]
	if m.Subject != s.Meta() {
		t.Fatalf("a commit message on %s", m.Subject)
	}
	n := 0
	err = s.Records(m.Subject, m.Data, func(got Record) error {
		r := recs[n]
		if got.Index != n || got.Kind != r.Kind || got.Store != r.Store || string(got.Key) != string(r.Key) || string(got.Value) != string(r.Value) ||
			got.Meta != r.Meta || got.Outbox.Offset != r.Outbox.Offset || got.Outbox.Index != r.Outbox.Index || got.Outbox.MsgID != r.Outbox.MsgID {
			t.Errorf("round trip of %+v gave %+v", r, got)
		}
		n++
		return nil
	})
	if err != nil || n != len(recs) {
		t.Fatalf("decoded %d of %d records: %v", n, len(recs), err)
	}
	if got := recs[4].Meta; got.Prev != 4 || got.PrevBatch != 3 {
		t.Errorf("the meta record is not stamped with the writer's tail: %+v", got)
	}
	if meta, err := DecodeMeta(m.Data); err != nil || meta != recs[4].Meta {
		t.Errorf("the meta record alone: %+v, %v", meta, err)
	}
	for _, data := range [][]byte{{frameMagic}, {frameMagic, 9}, {frameMagic, 1, 0x80, 9}, {frameMagic, 1, 0x80, byte(KindSet), 5, 'a'},
		{frameMagic, 1, 0x80, byte(KindSet), 1, 'a', 1, 'k', 4, 'v'}, {frameMagic, 1, 0x80, byte(KindOutbox), 1, 0xc1}} {
		if err := s.Records(s.Meta(), data, func(Record) error { return nil }); !errors.Is(err, ErrBadRecord) {
			t.Errorf("commit message %v: %v, want ErrBadRecord", data, err)
		}
	}
	if err := s.Records(s.Parts(), []byte{byte(KindSet), 1, 'a'}, func(Record) error { return nil }); !errors.Is(err, ErrBadRecord) {
		t.Errorf("an unframed part: %v, want ErrBadRecord", err)
	}
	if err := s.Records("eddy.cl.orders.3.state.alice", []byte("1"), func(Record) error { return nil }); !errors.Is(err, ErrBadRecord) {
		t.Errorf("a record of the per-key layout: %v, want ErrBadRecord", err)
	}
}

// Changelogs written before commits were framed hold one record a
// message, on three subjects; they are read as they are.
func TestUnframedRecordsAreRead(t *testing.T) {
	s := NewSubjects("orders", 3)
	meta, _ := msgpack.Marshal(&Meta{Offset: 7, Epoch: 2})
	out, _ := msgpack.Marshal(&outboxRecord{Outbox: Outbox{Subject: "out.x", MsgID: "m"}, Offset: 9, Index: 2})
	for _, tc := range []struct {
		subject string
		data    []byte
		want    Record
	}{
		{s.prefix + stateToken, []byte{byte(KindSet), 5, 's', 't', 'a', 't', 'e', 1, 'k', 'v', '1'}, Record{Kind: KindSet, Store: "state", Key: []byte("k"), Value: []byte("v1")}},
		{s.prefix + stateToken, []byte{byte(KindDelete), 1, 's', 1, 'k'}, Record{Kind: KindDelete, Store: "s", Key: []byte("k")}},
		{s.prefix + outToken, out, Record{Kind: KindOutbox, Outbox: Outbox{Offset: 9, Index: 2, Subject: "out.x", MsgID: "m"}}},
		{s.Meta(), meta, Record{Kind: KindMeta, Meta: Meta{Offset: 7, Epoch: 2}}},
	} {
		var got []Record
		if err := s.Records(tc.subject, tc.data, func(r Record) error { got = append(got, r); return nil }); err != nil || len(got) != 1 {
			t.Fatalf("%s: %d records, %v", tc.subject, len(got), err)
		}
		r := got[0]
		if r.Kind != tc.want.Kind || r.Store != tc.want.Store || string(r.Key) != string(tc.want.Key) || string(r.Value) != string(tc.want.Value) ||
			r.Meta != tc.want.Meta || r.Outbox.Offset != tc.want.Outbox.Offset || r.Outbox.Index != tc.want.Outbox.Index || r.Outbox.MsgID != tc.want.Outbox.MsgID {
			t.Errorf("%s: got %+v, want %+v", tc.subject, r, tc.want)
		}
	}
	for _, data := range [][]byte{nil, {9}, {byte(KindSet), 5, 'a'}, {byte(KindSet), 1, 'a', 3, 'k'}} {
		if err := s.Records(s.prefix+stateToken, data, func(Record) error { return nil }); !errors.Is(err, ErrBadRecord) {
			t.Errorf("state record %v: %v, want ErrBadRecord", data, err)
		}
	}
}
