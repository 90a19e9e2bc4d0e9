package partition

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/internal/testkit"
)

// An event's key comes from its subject or its header, by the stream's
// layout, and an event published to the wrong partition is refused.
func TestInputAddressesKeysInBothLayouts(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		in := Input{Type: "bank", Partitions: 8, KeyedSubjects: keyed}
		for _, key := range []string{"alice", "a.b c", "", "~x"} {
			m := in.Msg(key, nil)
			p := Of(key, in.Partitions)
			subject := m.Subject
			if keyed {
				subject = "bank." + strconv.Itoa(p) + m.Subject[len("bank"):] // as the subject transform stores it
			} else if m.Subject != in.Filter(p) {
				t.Errorf("%q: subject %s, partition %d's filter %s", key, m.Subject, p, in.Filter(p))
			}
			got, err := in.Key(p, subject, m.Header)
			if err != nil || got != key {
				t.Errorf("keyed=%v: key %q read back as %q (%v)", keyed, key, got, err)
			}
		}
	}
	in := Input{Type: "bank", Partitions: 8}
	m := in.Msg("alice", nil)
	wrong := (Of("alice", 8) + 1) % 8
	if _, err := in.Key(wrong, in.PartitionSubject(wrong), m.Header); !errors.Is(err, ErrPermanent) {
		t.Errorf("an event of another partition: %v, want a permanent error", err)
	}
	raw := nats.Header{HeaderKey: {"a b"}} // not encoded: "~YSBi" is its token
	if _, err := in.Key(Of("a b", 8), in.PartitionSubject(Of("a b", 8)), raw); !errors.Is(err, ErrPermanent) {
		t.Errorf("a key sent without its token: %v, want a permanent error", err)
	}
	if _, err := in.Key(0, "bank.0", nats.Header{}); !errors.Is(err, ErrPermanent) {
		t.Errorf("an event without a key: %v, want a permanent error", err)
	}
}

// An emit to the input stream of an actor type the node does not run is
// addressed by that stream's own layout, read from its metadata.
func TestEmitAddressesAnotherTypesInput(t *testing.T) {
	h := newHarness(t, "emitter", 1)
	other := Input{Type: "faraway", Partitions: 4}
	if err := EnsureInputStream(h.ctx, h.js, other, StreamOptions{Replicas: 1, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	a := h.start(h.config(0, func(tx *Txn) error {
		return tx.Emit(other.Type, "to-"+tx.Event().Key, []byte("x"))
	}))
	for _, k := range []string{"alice", "bob", "carol"} {
		h.publish(k, nil)
	}
	h.waitOffset(a, 0)
	// The forward follows the commit: wait for it, then check nothing more came.
	testkit.WaitFor(t, waitTimeout, "the emits forwarded", func() bool { return len(streamMsgs(t, h.ctx, h.js, other.Type)) >= 3 })
	msgs := streamMsgs(t, h.ctx, h.js, other.Type)
	if len(msgs) != 3 {
		t.Fatalf("%d events in %s, want 3", len(msgs), other.Type)
	}
	for _, m := range msgs {
		key := m.Header.Get(HeaderKey)
		if want := other.PartitionSubject(Of(key, other.Partitions)); m.Subject != want || !strings.HasPrefix(key, "to-") {
			t.Errorf("event for %q on %s, want %s", key, m.Subject, want)
		}
	}
}
