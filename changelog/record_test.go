package changelog

import (
	"errors"
	"testing"
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

// State records carry store, key and value in their data, any bytes at all;
// what eddy did not write is refused, not misread.
func TestRecordsRoundTrip(t *testing.T) {
	s := NewSubjects("orders", 3)
	for _, r := range []Record{
		{Kind: KindSet, Store: "state", Key: []byte("a.b c\x00"), Value: []byte{0xc1, 0}},
		{Kind: KindSet, Store: "idx", Key: nil, Value: nil},
		{Kind: KindDelete, Store: "state", Key: []byte("gone")},
		{Kind: KindOutbox, Outbox: Outbox{Offset: 9, Index: 2, Subject: "out.x", MsgID: "m", Data: []byte("d")}},
		{Kind: KindMeta, Meta: Meta{Offset: 7, Epoch: 2, Batch: 5, Prev: 4}},
	} {
		m, err := s.Msg(&r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		if got.Kind != r.Kind || got.Store != r.Store || string(got.Key) != string(r.Key) || string(got.Value) != string(r.Value) ||
			got.Meta != r.Meta || got.Outbox.Offset != r.Outbox.Offset || got.Outbox.Index != r.Outbox.Index || got.Outbox.MsgID != r.Outbox.MsgID {
			t.Errorf("round trip of %+v gave %+v", r, got)
		}
	}
	for _, data := range [][]byte{nil, {9}, {byte(KindSet), 5, 'a'}, {byte(KindSet), 1, 'a', 3, 'k'}} {
		if _, err := s.Decode(s.State(), nil, data); !errors.Is(err, ErrBadRecord) {
			t.Errorf("state record %v: %v, want ErrBadRecord", data, err)
		}
	}
	if _, err := s.Decode("eddy.cl.orders.3.state.alice", nil, []byte("1")); !errors.Is(err, ErrBadRecord) {
		t.Errorf("a record of the per-key layout: %v, want ErrBadRecord", err)
	}
}
