package partition

import (
	"errors"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
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
	if _, err := in.Key(0, "bank.0", nats.Header{}); !errors.Is(err, ErrPermanent) {
		t.Errorf("an event without a key: %v, want a permanent error", err)
	}
}
