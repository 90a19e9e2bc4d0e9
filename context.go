package eddy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/table"
)

// Context is what a handler sees of one event. All of its writes, emits, sends
// and its reply take effect together, once, when the event's batch commits —
// or not at all if the handler returns an error or panics.
type Context struct {
	tx      *partition.Txn
	globals map[string]*table.Global
}

// Context is cancelled when the partition actor stops (or fails and
// restarts): pass it to the calls a handler makes.
func (c *Context) Context() context.Context { return c.tx.Context() }

// Key is the event's key.
func (c *Context) Key() string { return c.tx.Event().Key }

// Partition is the partition processing the event.
func (c *Context) Partition() int { return c.tx.Event().Partition }

// Offset is the event's sequence in its input stream.
func (c *Context) Offset() uint64 { return c.tx.Event().Offset }

// Data is the event's raw payload.
func (c *Context) Data() []byte { return c.tx.Event().Data }

// Header returns an event header.
func (c *Context) Header(name string) string { return c.tx.Event().Header.Get(name) }

// Decode decodes the event into v: JSON when the event has the header
// Content-Type: application/json, else msgpack (what eddy's Client sends),
// else JSON when the payload is a JSON object, array or string that msgpack
// cannot decode into v — so any NATS client can publish plain JSON. A
// failure wraps ErrMalformed, which sends the event to the dead-letter
// stream without retries.
func (c *Context) Decode(v any) error {
	data := c.Data()
	var err error
	if c.Header("Content-Type") == "application/json" {
		err = json.Unmarshal(data, v)
	} else {
		err = decodeValue(data, v)
	}
	if err != nil {
		return fmt.Errorf("%w: decode %T: %v", ErrMalformed, v, err)
	}
	return nil
}

// looksLikeJSON reports whether data starts, after white space, like a JSON
// object, array or string.
func looksLikeJSON(data []byte) bool {
	for _, b := range data {
		switch b {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[', '"':
			return true
		}
		return false
	}
	return false
}

// TableReader reads one co-partitioned table (ActorType.Tables) from a handler.
type TableReader struct {
	c    *Context
	name string
}

// Table returns the co-partitioned table name, as of this event: every
// record stored before the event is applied, none stored after it.
func (c *Context) Table(name string) TableReader { return TableReader{c: c, name: name} }

// Get decodes the table's value of key into v (msgpack, or JSON) and reports
// whether there is one. key must be of this event's partition (the table is
// partitioned as the input): typically the event's own key.
func (r TableReader) Get(key string, v any) (bool, error) {
	b, err := r.c.tx.GetTable(r.name, []byte(key))
	return decodeTableValue(r.name, key, b, err, v)
}

// decodeTableValue decodes the value b read (with err) from table name into
// v and reports whether there was one.
func decodeTableValue(name, key string, b []byte, err error, v any) (bool, error) {
	if errors.Is(err, statestore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := decodeValue(b, v); err != nil {
		return false, fmt.Errorf("eddy: decode table %s/%q into %T: %w", name, key, v, err)
	}
	return true, nil
}

// Get decodes the key's own state into v and reports whether there is any.
func (c *Context) Get(v any) (bool, error) { return c.Store(partition.DefaultStore).Get(c.Key(), v) }

// Set replaces the key's own state.
func (c *Context) Set(v any) error { return c.Store(partition.DefaultStore).Set(c.Key(), v) }

// Delete removes the key's own state.
func (c *Context) Delete() error { return c.Store(partition.DefaultStore).Delete(c.Key()) }

// Store returns a named store of the actor type (declared in ActorType.Stores),
// shared by all keys of the partition.
func (c *Context) Store(name string) Store { return Store{tx: c.tx, name: name} }

// Emit publishes v under key to a stream, once: an output stream
// (ActorType.Outputs), or the input stream of an actor type, which then
// receives v as an event for key. An emit to a stream that does not exist
// fails with ErrUnknownStream, which sends the event to the dead-letter
// stream.
func (c *Context) Emit(stream, key string, v any) error {
	b, err := encode(v)
	if err != nil {
		return err
	}
	return c.tx.Emit(stream, key, b)
}

// EmitTombstone publishes, once, the deletion of key to the stream of a
// table (a record with the header Eddy-Tombstone), as Emit publishes a value.
func (c *Context) EmitTombstone(stream, key string) error { return c.tx.EmitTombstone(stream, key) }

// Reply answers a client's Ask, after the event's effects are committed.
func (c *Context) Reply(v any) error {
	b, err := encode(v)
	if err != nil {
		return err
	}
	return c.tx.Reply(b)
}

func encode(v any) ([]byte, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("eddy: encode %T: %w", v, err)
	}
	return b, nil
}

// Store is a named state store seen from inside a handler.
type Store struct {
	tx   *partition.Txn
	name string
}

// Get decodes the value of key into v and reports whether it exists.
func (s Store) Get(key string, v any) (bool, error) {
	b, err := s.tx.Get(s.name, []byte(key))
	if errors.Is(err, statestore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := msgpack.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("eddy: decode %s/%q into %T: %w", s.name, key, v, err)
	}
	return true, nil
}

// Set stores v under key.
func (s Store) Set(key string, v any) error {
	b, err := encode(v)
	if err != nil {
		return err
	}
	return s.tx.Set(s.name, []byte(key), b)
}

// Delete removes key.
func (s Store) Delete(key string) error { return s.tx.Delete(s.name, []byte(key)) }

// Bytes returns the store's raw byte view; it satisfies statestore.KV, so
// statestore.NewTyped[T](c.Store(name).Bytes(), nil) gives typed access.
func (s Store) Bytes() statestore.KV { return storeKV(s) }

type storeKV Store

func (s storeKV) Get(key []byte) ([]byte, error) { return s.tx.Get(s.name, key) }
func (s storeKV) Set(key, value []byte) error    { return s.tx.Set(s.name, key, value) }
func (s storeKV) Delete(key []byte) error        { return s.tx.Delete(s.name, key) }
