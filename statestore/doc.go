// Package statestore holds the state store of a partition actor: its mutable
// working state (key -> value) on local disk.
//
// A partition actor reads and writes its store while it processes events, and
// every change it makes is also published to the partition's changelog stream.
// The changelog, not the store, is the source of truth: after a crash, restore
// takes the local store and replays the changelog tail past the changelog
// sequence recorded in the store's Meta (or replays the whole changelog into an
// empty store). That is why a batch commit need not fsync for correctness: a
// write lost in a crash is still in the changelog and is applied again on
// restore. (Partition actors can fsync once per commit,
// partition.Config.StoreSync, so that a restart replays a shorter tail; those
// of stores without a changelog always do.)
// Hot replicas use the same store type, fed by tailing the changelog.
//
// Each Batch lands atomically together with a Meta (input offset, changelog
// sequence, epoch), so the store always knows exactly which changelog records
// and input events its contents reflect.
//
// Two implementations share one contract:
//
//   - Pebble, the default: an on-disk LSM (cockroachdb/pebble) whose memory
//     is bounded by its block cache, so stores far larger than RAM stay on
//     disk. Many stores on one node can share one Cache.
//   - Memory, a sorted in-memory map for unit tests of pure logic.
//
// Typed adds msgpack-encoded values of one Go type under a key prefix over any
// KV (a Store, or a write set that buffers changes before a commit).
//
// Stores know nothing of partitions, streams or clusters.
package statestore
