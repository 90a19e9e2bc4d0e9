package partition

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/changelog"
)

// pendingTestEntries are outbox entries, each with its commit time, that the
// pending codec must keep as they are.
var pendingTestEntries = []struct {
	name string
	out  changelog.Outbox
	at   time.Time
}{
	{"full", changelog.Outbox{Offset: 42, Index: 3, Subject: "orders.eu", MsgID: "p7-42-3",
		Header: map[string]string{"k": "v"}, Data: []byte("hi")}, time.Unix(1_700_000_000, 123)},
	{"commit time unknown, no data", changelog.Outbox{Offset: 1, Subject: "s", MsgID: "m"}, time.Time{}},
	{"empty data, headers", changelog.Outbox{Subject: "a.b", MsgID: "x", Data: []byte{},
		Header: map[string]string{"Nats-Expected-Stream": "orders", "trace": strings.Repeat("t", 300)}}, time.Unix(0, 1)},
	{"large", changelog.Outbox{Offset: 1<<64 - 1, Index: 1<<32 - 1, Subject: strings.Repeat("s", 40),
		MsgID: strings.Repeat("m", 300), Data: bytes.Repeat([]byte{0xff}, 70_000)}, time.Unix(4_000_000_000, 999_999_999)},
}

// pendingValueBefore makes a value as the commit, restores and hot replicas
// did before encodePending (existing stores hold such values): the entry by
// msgpack.Marshal, then the trailer, written here as a struct.
func pendingValueBefore(o changelog.Outbox, at time.Time) ([]byte, error) {
	m, err := msgpack.Marshal(&o)
	if err != nil {
		return nil, err
	}
	trailer := struct {
		Offset uint64
		Index  uint32
		At     int64
	}{o.Offset, uint32(o.Index), 0}
	if !at.IsZero() {
		trailer.At = at.UnixNano()
	}
	buf := bytes.NewBuffer(m)
	err = binary.Write(buf, binary.BigEndian, trailer)
	return buf.Bytes(), err
}

func TestPendingRoundTrip(t *testing.T) {
	for _, e := range pendingTestEntries {
		t.Run(e.name, func(t *testing.T) {
			prefix := []byte("kept")
			v, err := encodePending(bytes.Clone(prefix), &e.out, e.at)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(v, prefix) {
				t.Fatalf("encodePending did not append to dst: %q", v[:len(prefix)])
			}
			v = v[len(prefix):]
			out, at, err := decodePending(v)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(out, e.out) || !at.Equal(e.at) {
				t.Fatalf("decoded %+v at %s, want %+v at %s", out, at, e.out, e.at)
			}
			clear(v) // the entry must not share the value's memory
			if !reflect.DeepEqual(out, e.out) {
				t.Fatalf("the decoded entry changed with the value it was decoded from")
			}
		})
	}
}

// TestPendingValueAsBefore checks that encodePending writes the bytes values
// were written with before, and that decodePending reads those.
func TestPendingValueAsBefore(t *testing.T) {
	for _, e := range pendingTestEntries {
		t.Run(e.name, func(t *testing.T) {
			before, err := pendingValueBefore(e.out, e.at)
			if err != nil {
				t.Fatal(err)
			}
			out, at, err := decodePending(before)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(out, e.out) || !at.Equal(e.at) {
				t.Fatalf("decoded %+v at %s, want %+v at %s", out, at, e.out, e.at)
			}
			if len(e.out.Header) > 1 {
				return // msgpack writes a map in Go's random order
			}
			v, err := encodePending(nil, &e.out, e.at)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(v, before) {
				t.Fatalf("encodePending wrote\n%x\nbefore it was\n%x", v, before)
			}
		})
	}
}

// TestPendingValueFormat pins the bytes of two values, as the code before
// encodePending wrote them, against changes of the msgpack library too.
func TestPendingValueFormat(t *testing.T) {
	for i, want := range []string{
		// {s: "orders.eu", i: "p7-42-3", h: {k: v}, d: "hi"}, offset 42, index 3, at 1700000000.000000123
		"84a173a96f72646572732e6575a169a770372d34322d33a16881a16ba176a164c4026869" + "000000000000002a" + "00000003" + "17979cfe362a007b",
		// {s: "s", i: "m", d: nil}, offset 1, index 0, at unknown
		"83a173a173a169a16da164c0" + "0000000000000001" + "00000000" + "0000000000000000",
	} {
		e := pendingTestEntries[i]
		v, err := encodePending(nil, &e.out, e.at)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(v); got != want {
			t.Errorf("%s: encoded\n%s\nwant\n%s", e.name, got, want)
		}
		b, _ := hex.DecodeString(want)
		out, at, err := decodePending(b)
		if err != nil || !reflect.DeepEqual(out, e.out) || !at.Equal(e.at) {
			t.Errorf("%s: decoded %+v at %s (%v), want %+v at %s", e.name, out, at, err, e.out, e.at)
		}
	}
}

func TestPendingBadValue(t *testing.T) {
	for _, v := range [][]byte{nil, make([]byte, pendingTrailer-1), append([]byte{0xc1}, make([]byte, pendingTrailer)...)} {
		if _, _, err := decodePending(v); err == nil {
			t.Errorf("decodePending(%x): no error", v)
		}
	}
}

func TestPendingKey(t *testing.T) {
	for _, seq := range []uint64{0, 1, 1 << 40, 1<<64 - 1} {
		k := pendingKey(seq, 7)
		if !bytes.HasPrefix(k, []byte(pendingKeyPrefix)) || len(k) != len(pendingKeyPrefix)+12 {
			t.Fatalf("pendingKey(%d, 7) = %q", seq, k)
		}
		if got := pendingSeq(k); got != seq {
			t.Fatalf("pendingSeq(pendingKey(%d, 7)) = %d", seq, got)
		}
	}
	// In commit order: by message, then by place in it; a key of a store
	// written before commits were framed (no index) sorts first in its message.
	if bytes.Compare(pendingKey(255, 9), pendingKey(256, 0)) >= 0 || bytes.Compare(pendingKey(256, 1), pendingKey(256, 2)) >= 0 ||
		bytes.Compare(pendingKey(256, 0)[:len(pendingKeyPrefix)+8], pendingKey(256, 0)) >= 0 {
		t.Fatal("pending keys do not sort in commit order")
	}
}

func BenchmarkEncodePending(b *testing.B) {
	e := pendingTestEntries[0]
	b.ReportAllocs()
	var v []byte
	for b.Loop() {
		var err error
		if v, err = encodePending(v[:0], &e.out, e.at); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodePendingBefore(b *testing.B) {
	e := pendingTestEntries[0]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pendingValueBefore(e.out, e.at); err != nil {
			b.Fatal(err)
		}
	}
}
