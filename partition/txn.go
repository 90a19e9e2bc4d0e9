package partition

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/table"
)

var (
	// ErrFenced means a newer owner of the partition has committed: this actor
	// stopped and committed nothing more.
	ErrFenced = errors.New("eddy: partition fenced by a newer owner")
	// ErrPermanent marks a handler error that retrying cannot fix (a malformed
	// event, a value that is too large): the event goes to the dead-letter stream at once.
	ErrPermanent = errors.New("permanent failure")
	// ErrValueTooLarge means a value exceeds Config.MaxValueSize. It is permanent.
	ErrValueTooLarge = fmt.Errorf("eddy: value too large: %w", ErrPermanent)
	// ErrUnknownStore means the handler named a store its actor type did not declare.
	ErrUnknownStore = fmt.Errorf("unknown store: %w", ErrPermanent)
	// ErrTooManyWrites means one event wrote more records, or more bytes,
	// than one commit can hold (Config.MaxBatchRecords, MaxBatchBytes).
	ErrTooManyWrites = fmt.Errorf("event writes more than one commit holds: %w", ErrPermanent)
	// ErrInputGone means a store without a changelog (Config.NoChangelog)
	// cannot be rebuilt: the input stream no longer holds events it needs.
	ErrInputGone = errors.New("eddy: input stream no longer holds the events to rebuild from")
)

// HeaderReply carries the inbox a client waits on for the handler's reply.
const HeaderReply = "Eddy-Reply"

// Handler processes one event inside a transaction. Its writes, publishes and
// reply take effect only if it returns nil and the batch commits; on an error or
// a panic they are discarded and the event is retried, up to Config.MaxAttempts.
type Handler func(tx *Txn) error

// Event is one input event.
type Event struct {
	Key       string
	Subject   string
	Data      []byte
	Header    nats.Header
	Offset    uint64 // input stream sequence
	Partition int
}

type write struct {
	key   string // store + "\x00" + key, also the local store key
	value []byte
	del   bool
}

// Txn is the transaction of one event: reads see the committed store plus the
// batch's earlier events plus this event's own writes.
type Txn struct {
	a       *partitionActor
	ev      Event
	writes  []write
	outbox  []changelog.Outbox
	reply   []byte
	replied bool
}

// Event is the event being processed.
func (tx *Txn) Event() *Event { return &tx.ev }

// Context is cancelled when the partition actor stops or fails: a handler
// passes it to the calls it makes, which then end with the actor.
func (tx *Txn) Context() context.Context { return tx.a.ctx }

func (tx *Txn) storeKey(store string, key []byte) (string, error) {
	if store != DefaultStore && !tx.a.stores[store] {
		return "", fmt.Errorf("%w: %q", ErrUnknownStore, store)
	}
	return storeKey(store, key), nil
}

func storeKey(store string, key []byte) string {
	b := make([]byte, 0, len(store)+1+len(key))
	b = append(b, store...)
	b = append(b, 0)
	return string(append(b, key...))
}

func splitStoreKey(k []byte) (store string, key []byte) {
	i := bytes.IndexByte(k, 0)
	return string(k[:i]), k[i+1:]
}

// Get returns the value of key in store, or statestore.ErrNotFound.
func (tx *Txn) Get(store string, key []byte) ([]byte, error) {
	k, err := tx.storeKey(store, key)
	if err != nil {
		return nil, err
	}
	for i := len(tx.writes) - 1; i >= 0; i-- {
		if tx.writes[i].key == k {
			if tx.writes[i].del {
				return nil, statestore.ErrNotFound
			}
			return tx.writes[i].value, nil
		}
	}
	return tx.a.get(k)
}

// GetTable returns the value of key in the co-partitioned table name (as
// of this event: see table.go), or statestore.ErrNotFound. A key of
// another partition is a permanent error: this partition does not hold it.
func (tx *Txn) GetTable(name string, key []byte) ([]byte, error) {
	if !slices.ContainsFunc(tx.a.cfg.Tables, func(in Input) bool { return in.Type == name }) {
		return nil, fmt.Errorf("%w: table %q", ErrUnknownStore, name)
	}
	if p := Of(string(key), tx.a.cfg.Partitions); p != tx.a.cfg.Partition {
		return nil, fmt.Errorf("table %s: key %q is in partition %d, this event's is %d (a co-partitioned table is read by keys of the event's partition): %w",
			name, key, p, tx.a.cfg.Partition, ErrPermanent)
	}
	return tx.a.get(storeKey(TableStore(name), key))
}

// Set stores value under key in store.
func (tx *Txn) Set(store string, key, value []byte) error {
	if len(value) > tx.a.cfg.MaxValueSize {
		return fmt.Errorf("set %s/%q: %d bytes, limit %d: %w", store, key, len(value), tx.a.cfg.MaxValueSize, ErrValueTooLarge)
	}
	k, err := tx.storeKey(store, key)
	if err != nil {
		return err
	}
	tx.writes = append(tx.writes, write{key: k, value: value})
	return nil
}

// Delete removes key from store.
func (tx *Txn) Delete(store string, key []byte) error {
	k, err := tx.storeKey(store, key)
	if err != nil {
		return err
	}
	tx.writes = append(tx.writes, write{key: k, del: true})
	return nil
}

// Publish queues a message for subject in the outbox: it is published after
// the batch commits, exactly once in the target stream (deduplicated by a
// message id derived from the event's offset), and never if the event fails.
func (tx *Txn) Publish(subject string, header map[string]string, data []byte) error {
	if len(data) > tx.a.cfg.MaxValueSize {
		return fmt.Errorf("publish to %s: %d bytes, limit %d: %w", subject, len(data), tx.a.cfg.MaxValueSize, ErrValueTooLarge)
	}
	if _, err := tx.a.checkTarget(subject); err != nil {
		return err
	}
	return tx.publish(subject, header, data)
}

// Emit queues data for key on stream, as Publish does: as an event for key
// when stream is an actor type's input stream (in its layout, see Input),
// else on the subject <stream>.<key>.
func (tx *Txn) Emit(stream, key string, data []byte) error {
	if len(data) > tx.a.cfg.MaxValueSize {
		return fmt.Errorf("emit to %s: %d bytes, limit %d: %w", stream, len(data), tx.a.cfg.MaxValueSize, ErrValueTooLarge)
	}
	return tx.emit(stream, key, data, nil)
}

// EmitTombstone is Emit of a record that deletes key from a table whose
// stream is stream (the header table.TombstoneHeader, no data).
func (tx *Txn) EmitTombstone(stream, key string) error {
	return tx.emit(stream, key, nil, map[string]string{table.TombstoneHeader: "1"})
}

func (tx *Txn) emit(stream, key string, data []byte, header map[string]string) error {
	subject := InputSubject(stream, key)
	t, err := tx.a.checkTarget(subject)
	if err != nil {
		return err
	}
	if t.input == nil || t.input.KeyedSubjects {
		return tx.publish(subject, header, data)
	}
	m := t.input.Msg(key, data)
	h := map[string]string{HeaderKey: m.Header.Get(HeaderKey)}
	for k, v := range header {
		h[k] = v
	}
	return tx.publish(m.Subject, h, data)
}

func (tx *Txn) publish(subject string, header map[string]string, data []byte) error {
	n := len(tx.outbox)
	tx.outbox = append(tx.outbox, changelog.Outbox{
		Offset:  tx.ev.Offset,
		Index:   n,
		Subject: subject,
		MsgID:   tx.a.msgID(tx.ev.Offset, strconv.Itoa(n)),
		Header:  header,
		Data:    data,
	})
	return nil
}

// Reply answers the client that asked with this event (no-op when nobody
// asked). The reply is sent only after the event's effects are committed.
func (tx *Txn) Reply(data []byte) error {
	if len(data) > tx.a.cfg.MaxValueSize {
		return fmt.Errorf("reply: %d bytes, limit %d: %w", len(data), tx.a.cfg.MaxValueSize, ErrValueTooLarge)
	}
	tx.reply, tx.replied = data, true
	return nil
}

func (tx *Txn) reset(ev Event) {
	tx.ev = ev
	tx.writes = tx.writes[:0]
	tx.outbox = tx.outbox[:0]
	tx.reply, tx.replied = nil, false
}

// size estimates the bytes the event's writes and outbox entries take in a
// changelog commit: an upper bound, as a key written twice counts twice.
func (tx *Txn) size() int {
	const overhead = 16 // a record's kind and lengths, an outbox entry's offset and index
	n := 0
	for _, w := range tx.writes {
		n += overhead + len(w.key) + len(w.value)
	}
	for _, o := range tx.outbox {
		n += overhead + len(o.Subject) + len(o.MsgID) + len(o.Data)
		for k, v := range o.Header {
			n += len(k) + len(v) + 2
		}
	}
	return n
}
