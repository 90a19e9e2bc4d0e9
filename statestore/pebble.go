package statestore

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// Tuning that is not worth a Config field. Memory: the block cache (which
// memtables are charged to) caps what a store holds for data, so a store of
// 10 M keys stays on disk (see TestPebbleManyKeysStayOnDisk). Measured here
// with 10 M keys in random order: ~460 k keys/s loaded with these settings,
// ~320 k/s with pebble's defaults; random gets the same or better.
const (
	// memTableStopWrites: writes stall only when 4 memtables are queued for
	// flushing, so a restore burst keeps going while one flush runs (pebble's
	// default of 2 stalls on every slow flush).
	memTableStopWrites = 4
	// l0CompactionThreshold: compact L0 into the LSM early (pebble's default),
	// so that point gets touch few files.
	l0CompactionThreshold = 4
	// l0StopWrites: tolerate a backlog of L0 files during a restore before
	// stalling writes (pebble's default is 12; RocksDB stops at 36).
	l0StopWrites = 24
	// bloomBitsPerKey: a ~1% false-positive filter per table, so a get reads
	// one data block instead of one per level.
	bloomBitsPerKey = 10
)

// Pebble is the default Store: on local disk, in a cockroachdb/pebble LSM.
// All its methods are safe for concurrent use.
type Pebble struct {
	db   *pebble.DB
	dir  string
	wo   *pebble.WriteOptions
	gate *gate
}

var _ Store = (*Pebble)(nil)

// OpenPebble opens (or creates) the store in cfg.Dir.
func OpenPebble(cfg Config) (*Pebble, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	opts := &pebble.Options{
		FormatMajorVersion:          pebble.FormatNewest,
		MemTableSize:                cfg.MemTableSize,
		MemTableStopWritesThreshold: memTableStopWrites,
		L0CompactionThreshold:       l0CompactionThreshold,
		L0StopWritesThreshold:       l0StopWrites,
		Logger:                      newPebbleLogger(cfg.Logger),
	}
	if cfg.Cache != nil {
		opts.Cache = cfg.Cache.c // pebble.Open takes its own reference
	} else {
		opts.CacheSize = cfg.CacheSize
	}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(bloomBitsPerKey)
		opts.Levels[i].FilterType = pebble.TableFilter
	}

	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("statestore: open pebble in %s: %w", cfg.Dir, err)
	}
	wo := pebble.NoSync
	if cfg.Sync {
		wo = pebble.Sync
	}
	return &Pebble{db: db, dir: cfg.Dir, wo: wo, gate: newGate()}, nil
}

// Get returns a copy of the value of key, or ErrNotFound.
func (p *Pebble) Get(key []byte) ([]byte, error) {
	if !p.gate.enter() {
		return nil, ErrClosed
	}
	defer p.gate.leave()

	k := getUserKey(key)
	v, closer, err := p.db.Get(*k)
	putKey(k) // pebble does not keep the key past Get
	if err != nil {
		if errors.Is(err, pebble.ErrNotFound) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("statestore: get: %w", err)
	}
	out := make([]byte, len(v))
	copy(out, v)
	if err := closer.Close(); err != nil {
		return nil, fmt.Errorf("statestore: get: %w", err)
	}
	return out, nil
}

// Set stores value under key, on its own.
func (p *Pebble) Set(key, value []byte) error {
	if !p.gate.enter() {
		return ErrClosed
	}
	defer p.gate.leave()

	k := getUserKey(key)
	err := p.db.Set(*k, value, p.wo) // copies key and value
	putKey(k)
	if err != nil {
		return fmt.Errorf("statestore: set: %w", err)
	}
	return nil
}

// Delete removes key, on its own.
func (p *Pebble) Delete(key []byte) error {
	if !p.gate.enter() {
		return ErrClosed
	}
	defer p.gate.leave()

	k := getUserKey(key)
	err := p.db.Delete(*k, p.wo)
	putKey(k)
	if err != nil {
		return fmt.Errorf("statestore: delete: %w", err)
	}
	return nil
}

// Iterate calls fn for each key with the prefix, in ascending order, over a
// consistent snapshot of the store taken when Iterate starts.
func (p *Pebble) Iterate(prefix []byte, fn func(key, value []byte) error) error {
	return p.IterateAfter(prefix, nil, fn)
}

// iterate calls fn for each user key in [lower, upper), in ascending order,
// over a consistent snapshot of the store; the gate is entered.
func (p *Pebble) iterate(lower, upper []byte, fn func(key, value []byte) error) error {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("statestore: iterate: %w", err)
	}
	for valid := it.First(); valid; valid = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("statestore: iterate: %w", err)
		}
		if err := fn(it.Key()[1:], v); err != nil {
			_ = it.Close()
			return err
		}
	}
	if err := it.Close(); err != nil { // reports the iteration's error, if any
		return fmt.Errorf("statestore: iterate: %w", err)
	}
	return nil
}

// NewBatch starts an atomic write.
func (p *Pebble) NewBatch() Batch {
	if p.gate.isClosed() {
		return &pebbleBatch{err: ErrClosed}
	}
	// Creating a batch does not touch the DB, so a concurrent Close is
	// harmless here: Commit checks again.
	return &pebbleBatch{s: p, b: p.db.NewBatch()}
}

// Meta returns the Meta of the last committed batch that set one.
func (p *Pebble) Meta() (Meta, error) {
	if !p.gate.enter() {
		return Meta{}, ErrClosed
	}
	defer p.gate.leave()

	v, closer, err := p.db.Get(metaKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return Meta{}, nil
	}
	if err != nil {
		return Meta{}, fmt.Errorf("statestore: read meta: %w", err)
	}
	defer closer.Close()
	var m Meta
	if err := Decode(v, &m); err != nil {
		return Meta{}, fmt.Errorf("statestore: decode meta: %w", err)
	}
	return m, nil
}

// Checkpoint writes a consistent, openable copy of the store to destDir
// (which must not exist), hard-linking table files where it can. It is the
// basis of snapshots.
func (p *Pebble) Checkpoint(destDir string) error {
	if !p.gate.enter() {
		return ErrClosed
	}
	defer p.gate.leave()

	if err := p.db.Checkpoint(destDir, pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("statestore: checkpoint %s to %s: %w", p.dir, destDir, err)
	}
	return nil
}

// Dir is the directory of the store.
func (p *Pebble) Dir() string { return p.dir }

// Close waits for in-flight operations and closes the store. A second Close
// returns ErrClosed.
func (p *Pebble) Close() error {
	if !p.gate.close() {
		return ErrClosed
	}
	if err := p.db.Close(); err != nil {
		return fmt.Errorf("statestore: close %s: %w", p.dir, err)
	}
	return nil
}

// pebbleBatch wraps a pebble batch; keys get userPrefix as they are written
// into the batch's buffer, so Set and Delete do not allocate.
type pebbleBatch struct {
	s       *Pebble
	b       *pebble.Batch // nil once released
	n       int
	meta    Meta
	hasMeta bool
	err     error // first error while building, returned by Commit
	done    bool
}

func (b *pebbleBatch) live() {
	if b.done {
		panic("statestore: use of a committed or closed batch")
	}
}

func (b *pebbleBatch) Set(key, value []byte) {
	b.live()
	b.n++
	if b.b == nil {
		return // store was closed; Commit reports it
	}
	op := b.b.SetDeferred(1+len(key), len(value))
	op.Key[0] = userPrefix
	copy(op.Key[1:], key)
	copy(op.Value, value)
	if err := op.Finish(); err != nil && b.err == nil {
		b.err = err
	}
}

func (b *pebbleBatch) Delete(key []byte) {
	b.live()
	b.n++
	if b.b == nil {
		return
	}
	op := b.b.DeleteDeferred(1 + len(key))
	op.Key[0] = userPrefix
	copy(op.Key[1:], key)
	if err := op.Finish(); err != nil && b.err == nil {
		b.err = err
	}
}

func (b *pebbleBatch) SetMeta(m Meta) {
	b.live()
	b.meta, b.hasMeta = m, true
}

func (b *pebbleBatch) Len() int { return b.n }

func (b *pebbleBatch) Commit() error {
	if b.done {
		return ErrBatchDone
	}
	defer b.Close()
	if b.err != nil {
		if errors.Is(b.err, ErrClosed) {
			return ErrClosed
		}
		return fmt.Errorf("statestore: build batch: %w", b.err)
	}
	if b.n == 0 && !b.hasMeta {
		return nil
	}
	if b.hasMeta {
		enc, err := Encode(b.meta)
		if err != nil {
			return fmt.Errorf("statestore: encode meta: %w", err)
		}
		if err := b.b.Set(metaKey, enc, nil); err != nil {
			return fmt.Errorf("statestore: build batch: %w", err)
		}
	}
	if !b.s.gate.enter() {
		return ErrClosed
	}
	defer b.s.gate.leave()
	if err := b.b.Commit(b.s.wo); err != nil {
		return fmt.Errorf("statestore: commit batch of %d: %w", b.n, err)
	}
	return nil
}

func (b *pebbleBatch) Close() {
	if b.done {
		return
	}
	b.done = true
	if b.b != nil {
		_ = b.b.Close() // only fails on a double close, which done prevents
		b.b = nil
	}
}
