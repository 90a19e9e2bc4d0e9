package statestore

import (
	"errors"
	"fmt"
)

// Typed gives access to values of one Go type, msgpack-encoded, under a key
// prefix of any KV: a Store, or a write set that buffers a batch. The zero
// Typed is not usable; make one with NewTyped. Typed is as safe for
// concurrent use as its KV.
type Typed[T any] struct {
	kv     KV
	prefix []byte
}

// NewTyped returns typed access to the keys of kv that start with prefix. The
// prefix is copied; an empty prefix means the whole keyspace.
func NewTyped[T any](kv KV, prefix []byte) Typed[T] {
	return Typed[T]{kv: kv, prefix: append([]byte(nil), prefix...)}
}

func (t Typed[T]) key(key []byte) []byte {
	k := make([]byte, 0, len(t.prefix)+len(key))
	return append(append(k, t.prefix...), key...)
}

// Get decodes the value of key into v. It returns ok=false and no error when
// the key is absent.
func (t Typed[T]) Get(key []byte) (v T, ok bool, err error) {
	b, err := t.kv.Get(t.key(key))
	if errors.Is(err, ErrNotFound) {
		return v, false, nil
	}
	if err != nil {
		return v, false, err
	}
	if err := Decode(b, &v); err != nil {
		return v, false, fmt.Errorf("statestore: decode %q: %w", key, err)
	}
	return v, true, nil
}

// Set encodes v and stores it under key.
func (t Typed[T]) Set(key []byte, v T) error {
	b, err := Encode(v)
	if err != nil {
		return fmt.Errorf("statestore: encode %q: %w", key, err)
	}
	return t.kv.Set(t.key(key), b)
}

// Delete removes key.
func (t Typed[T]) Delete(key []byte) error {
	return t.kv.Delete(t.key(key))
}
