package partition

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/changelog"
)

// HeaderKey carries an event's key, encoded as changelog.EncodeKey does, on
// an input stream with one subject per partition.
const HeaderKey = "Eddy-Key"

// Of returns the partition of a key among n partitions: FNV-1a (32 bits) of
// the key's token (changelog.EncodeKey), mod n. Producers of any language
// compute it so, e.g. in Python:
//
//	p = fnv1a_32(token.encode()) % n   # token: the key itself when it is made of [A-Za-z0-9_=-]
//
// It is also the input stream's subject transform {{partition(n,1)}} of
// the layout with one subject per key, so clients and the server agree.
func Of(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(changelog.EncodeKey(key)))
	return int(h.Sum32() % uint32(n))
}

// InputSubject is the subject of an event for key on an input stream with
// one subject per key (Input.KeyedSubjects): typ.<token>.
func InputSubject(typ, key string) string { return typ + "." + changelog.EncodeKey(key) }

// Input addresses the events of one actor type's input stream: what a
// producer needs to publish an event for a key, and what a partition needs
// to read its own.
//
// An input stream has one of two layouts. By default it has one subject per
// partition, <type>.<p>, and each event carries its key in the Eddy-Key
// header: the producer computes p with Of. The NATS server then keeps state
// for P subjects, whatever the number of keys, and a partition's filtered
// consumer is as cheap as an unfiltered one. With KeyedSubjects the stream
// has one subject per key, <type>.<key>, placed in its partition by a
// subject transform, so that any NATS client can publish to <type>.<key>
// without computing anything; the server then keeps state for every key
// (a few hundred bytes each, measured), which suits small keyspaces only.
type Input struct {
	// Type is the actor type, which names its input stream.
	Type string
	// Partitions is the type's partition count.
	Partitions int
	// KeyedSubjects selects the layout with one subject per key.
	KeyedSubjects bool
}

// Msg returns the message that carries data as an event for key.
func (in Input) Msg(key string, data []byte) *nats.Msg {
	if in.KeyedSubjects {
		return &nats.Msg{Subject: InputSubject(in.Type, key), Data: data, Header: nats.Header{}}
	}
	return &nats.Msg{Subject: in.PartitionSubject(Of(key, in.Partitions)), Data: data,
		Header: nats.Header{HeaderKey: []string{changelog.EncodeKey(key)}}}
}

// PartitionSubject is the subject of partition p's events in the layout
// with one subject per partition: <type>.<p>.
func (in Input) PartitionSubject(p int) string { return in.Type + "." + strconv.Itoa(p) }

// Filter is the subject filter that reads partition p's events.
func (in Input) Filter(p int) string {
	if in.KeyedSubjects {
		return in.Type + "." + strconv.Itoa(p) + ".*"
	}
	return in.PartitionSubject(p)
}

// Subjects are the subjects the input stream takes: <type>.* for keyed
// subjects (transformed to <type>.<p>.<key>), else exactly <type>.0 ..
// <type>.<P-1>, so that a publish to any other subject fails at once
// (no stream answers it) rather than landing where no partition reads.
func (in Input) Subjects() []string {
	if in.KeyedSubjects {
		return []string{in.Type + ".*"}
	}
	s := make([]string, in.Partitions)
	for p := range s {
		s[p] = in.PartitionSubject(p)
	}
	return s
}

// Key returns the key of an event that partition p read: from its subject
// <type>.<p>.<token> with keyed subjects, else from its Eddy-Key header. An
// event without a key, with a malformed one or one not in its token's
// canonical form, or with a key of another partition (a producer that
// computed the partition wrongly) is an error
// wrapping ErrPermanent: it goes to the dead-letter stream.
func (in Input) Key(p int, subject string, h nats.Header) (string, error) {
	var token string
	if in.KeyedSubjects {
		i := strings.LastIndexByte(subject, '.')
		if i < 0 {
			return "", fmt.Errorf("input subject %q has no key: %w", subject, ErrPermanent)
		}
		token = subject[i+1:]
	} else if token = h.Get(HeaderKey); token == "" {
		return "", fmt.Errorf("event on %s has no %s header: %w", subject, HeaderKey, ErrPermanent)
	}
	k, err := changelog.DecodeKey(token)
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, ErrPermanent)
	}
	if !in.KeyedSubjects {
		// The partition is the hash of the token: a key must have one
		// token, or its events would be split between partitions.
		if canon := changelog.EncodeKey(k); canon != token {
			return "", fmt.Errorf("%s header %q is not the key's token %q (a key with characters other than [A-Za-z0-9_=-] goes as ~ and its unpadded base64url): %w",
				HeaderKey, token, canon, ErrPermanent)
		}
		if q := Of(k, in.Partitions); q != p {
			return "", fmt.Errorf("event for key %q published to partition %d, the key's partition is %d: %w", k, p, q, ErrPermanent)
		}
	}
	return k, nil
}
