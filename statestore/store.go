package statestore

import "errors"

var (
	// ErrNotFound is returned by Get when the key is absent.
	ErrNotFound = errors.New("statestore: key not found")
	// ErrClosed is returned by every operation on a store after Close, and by a
	// second Close.
	ErrClosed = errors.New("statestore: store closed")
	// ErrBatchDone is returned by Commit on a batch that was already committed
	// or closed.
	ErrBatchDone = errors.New("statestore: batch already committed or closed")
)

// Meta is recorded atomically with the data of a batch: where the store stands.
// It is kept out of the user keyspace: Iterate never returns it.
type Meta struct {
	// Offset is the input stream sequence of the last event whose effects are
	// in the store.
	Offset uint64 `msgpack:"offset"`
	// ChangelogSeq is the changelog stream sequence the store reflects; restore
	// replays the changelog from ChangelogSeq+1.
	ChangelogSeq uint64 `msgpack:"changelog_seq"`
	// Epoch is the owner epoch that wrote it.
	Epoch uint64 `msgpack:"epoch"`
	// Forwarded is the outbox forwarded mark of the newest meta record the
	// store reflects: every outbox entry at or below this changelog sequence
	// was forwarded. 0 in stores written before it was recorded.
	Forwarded uint64 `msgpack:"forwarded,omitempty"`
	// Owner is the owner that wrote the newest meta record the store
	// reflects (with Epoch, the identity a restarted owner recognises as its own).
	Owner string `msgpack:"owner,omitempty"`
	// MetaSeq and Batch are the changelog sequence and batch id of that
	// record: where the store's history can be checked against the changelog's.
	MetaSeq uint64 `msgpack:"meta_seq,omitempty"`
	Batch   uint64 `msgpack:"batch,omitempty"`
	// Version is the state version of the store's values (0: version 1,
	// stores written before versions were recorded). Migrating and
	// MigratedThrough describe a migration in progress, as the changelog's
	// meta record does: keys up to MigratedThrough hold values of version
	// Migrating.
	Version         int    `msgpack:"version,omitempty"`
	Migrating       int    `msgpack:"migrating,omitempty"`
	MigratedThrough string `msgpack:"migrated_through,omitempty"`
	// RebuiltAt, Rebuilding and RebuiltThrough describe a rebuild of the
	// state from the input stream for a new version, as the changelog's meta
	// record does.
	RebuiltAt      uint64 `msgpack:"rebuilt_at,omitempty"`
	Rebuilding     bool   `msgpack:"rebuilding,omitempty"`
	RebuiltThrough uint64 `msgpack:"rebuilt_through,omitempty"`
}

// KV is the read/write surface shared by stores and write sets; Typed works
// over it.
type KV interface {
	// Get returns the value of key, or ErrNotFound when absent. The returned
	// slice is the caller's (a copy).
	Get(key []byte) ([]byte, error)
	// Set stores value under key. Key and value are copied; the caller may
	// reuse them when Set returns.
	Set(key, value []byte) error
	// Delete removes key. Deleting an absent key is not an error.
	Delete(key []byte) error
}

// Store is the state store of one partition actor. All methods are safe for
// concurrent use. Writes through Set and Delete are applied one at a time;
// use a Batch to apply many writes and a Meta atomically.
type Store interface {
	KV
	// Iterate calls fn for each key with the prefix in ascending key order
	// (bytewise); a nil prefix visits every key. fn's slices are valid only
	// during the call. An error from fn stops iteration and is returned as is.
	// fn may read and write the store; whether it sees its own writes during
	// the iteration is unspecified. fn must not Close the store.
	Iterate(prefix []byte, fn func(key, value []byte) error) error
	// NewBatch starts an atomic write. On a closed store it returns a batch
	// whose Commit fails with ErrClosed.
	NewBatch() Batch
	// Meta returns the Meta of the last committed batch that set one, and the
	// zero Meta for a new store.
	Meta() (Meta, error)
	// Close releases the store. In-flight operations finish first; later
	// operations, and a second Close, return ErrClosed.
	Close() error
}

// Batch is an atomic write: all of its sets, deletes and its meta become
// visible together, or none do. A Batch is used by one goroutine at a time.
// After Commit or Close, Set, Delete and SetMeta panic (a use after free is a
// bug in the caller).
type Batch interface {
	// Set records that key is to hold value. Key and value are copied.
	Set(key, value []byte)
	// Delete records that key is to be removed.
	Delete(key []byte)
	// SetMeta records the Meta to store with the batch; the last call wins.
	SetMeta(m Meta)
	// Len is the number of Set and Delete calls recorded so far.
	Len() int
	// Commit applies the batch atomically and releases it. It does not fsync
	// unless the store was opened with Config.Sync: the changelog is the source
	// of truth. A second Commit returns ErrBatchDone.
	Commit() error
	// Close discards the batch without committing it. It is safe after Commit
	// and safe to call twice.
	Close()
}
