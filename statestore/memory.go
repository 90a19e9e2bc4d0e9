package statestore

import (
	"bytes"
	"slices"
	"sort"
	"sync"
)

// Memory is an in-memory Store for unit tests of pure logic: the same
// semantics as Pebble (copies in and out, sorted iteration, atomic batches,
// ErrClosed after Close), safe for concurrent use, and nothing on disk.
type Memory struct {
	mu     sync.Mutex
	data   map[string][]byte
	sorted []string // keys of data in order; nil when stale
	meta   Meta
	closed bool
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{data: make(map[string][]byte)}
}

// Get returns a copy of the value of key, or ErrNotFound.
func (m *Memory) Get(key []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	v, ok := m.data[string(key)]
	if !ok {
		return nil, ErrNotFound
	}
	return bytes.Clone(v), nil
}

// Set stores a copy of value under key.
func (m *Memory) Set(key, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.set(string(key), bytes.Clone(value))
	return nil
}

// Delete removes key.
func (m *Memory) Delete(key []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.delete(string(key))
	return nil
}

// set and delete need m.mu held. set takes ownership of value.
func (m *Memory) set(key string, value []byte) {
	if _, ok := m.data[key]; !ok {
		m.sorted = nil
	}
	if value == nil {
		value = []byte{} // a stored value is never nil, as in Pebble
	}
	m.data[key] = value
}

func (m *Memory) delete(key string) {
	if _, ok := m.data[key]; ok {
		delete(m.data, key)
		m.sorted = nil
	}
}

// Iterate calls fn for each key with the prefix in ascending order, over a
// snapshot of the store taken when Iterate starts. fn runs without the lock
// held, so it may use the store.
func (m *Memory) Iterate(prefix []byte, fn func(key, value []byte) error) error {
	type kv struct {
		k string
		v []byte
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.sorted == nil {
		m.sorted = make([]string, 0, len(m.data))
		for k := range m.data {
			m.sorted = append(m.sorted, k)
		}
		slices.Sort(m.sorted)
	}
	p := string(prefix)
	start := sort.SearchStrings(m.sorted, p)
	var snap []kv
	for _, k := range m.sorted[start:] {
		if len(k) < len(p) || k[:len(p)] != p {
			break
		}
		snap = append(snap, kv{k, m.data[k]}) // stored values are never mutated
	}
	m.mu.Unlock()

	for _, e := range snap {
		// Hand out copies, as Pebble hands out its own buffers: fn may not
		// keep or change them.
		if err := fn([]byte(e.k), bytes.Clone(e.v)); err != nil {
			return err
		}
	}
	return nil
}

// NewBatch starts an atomic write.
func (m *Memory) NewBatch() Batch { return &memoryBatch{m: m} }

// Meta returns the Meta of the last committed batch that set one.
func (m *Memory) Meta() (Meta, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Meta{}, ErrClosed
	}
	return m.meta, nil
}

// Close drops the data. A second Close returns ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	m.data, m.sorted = nil, nil
	return nil
}

type memoryOp struct {
	key   string
	value []byte // nil for a delete
	del   bool
}

type memoryBatch struct {
	m       *Memory
	ops     []memoryOp
	n       int
	meta    Meta
	hasMeta bool
	done    bool
}

func (b *memoryBatch) live() {
	if b.done {
		panic("statestore: use of a committed or closed batch")
	}
}

func (b *memoryBatch) Set(key, value []byte) {
	b.live()
	b.ops = append(b.ops, memoryOp{key: string(key), value: bytes.Clone(value)})
	b.n++
}

func (b *memoryBatch) Delete(key []byte) {
	b.live()
	b.ops = append(b.ops, memoryOp{key: string(key), del: true})
	b.n++
}

func (b *memoryBatch) SetMeta(m Meta) {
	b.live()
	b.meta, b.hasMeta = m, true
}

func (b *memoryBatch) Len() int { return b.n }

func (b *memoryBatch) Commit() error {
	if b.done {
		return ErrBatchDone
	}
	defer b.Close()
	m := b.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	for _, op := range b.ops {
		if op.del {
			m.delete(op.key)
		} else {
			m.set(op.key, op.value)
		}
	}
	if b.hasMeta {
		m.meta = b.meta
	}
	return nil
}

func (b *memoryBatch) Close() {
	b.done = true
	b.ops = nil
}
