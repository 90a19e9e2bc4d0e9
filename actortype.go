package eddy

import (
	"fmt"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/partition"
)

// ActorType is a named handler with its input stream (same name), partition
// count and stores.
type ActorType struct {
	// Name is the actor type and its input stream: letters, digits, '-', '_'.
	Name string
	// Partitions is how many partitions the input stream has; it cannot change later.
	Partitions int
	// KeyedSubjects gives the input stream one subject per key, <name>.<key>,
	// placed in its partition by the server (a subject transform), so that
	// any NATS client can publish an event for a key without computing its
	// partition. The NATS server then holds state for every key (a few hundred
	// bytes each, in memory, and again at each restart): use it for small
	// keyspaces. By default the stream has one subject per partition,
	// <name>.<p>, with the key in the Eddy-Key header (see partition.Input
	// and partition.Of); Client does that itself. It cannot change later.
	KeyedSubjects bool
	// Handler processes one event.
	Handler func(c *Context) error
	// Stores are named stores besides the per-key state, for cross-key state.
	Stores []string
	// Outputs are the streams the handler Emits to; created if missing, with
	// subjects "<name>.*" (the key is the last token).
	Outputs []string
	// Tables are co-partitioned tables: streams laid out like this type's
	// input stream, with its partition count, each a table (the latest value
	// of each key). Partition p of the type materializes partition p of each
	// into its store, committed with the input offset, so hot replicas,
	// restores and moves carry it; handlers read it with Context.Table.
	// Before an event runs, every record of the table stored no later than
	// the event (by stream timestamp) is applied, and none stored after it:
	// the version an event sees does not depend on timing, crashes or moves.
	// A stream the node creates has one subject per key and is compacted; an
	// existing one must have the type's partition count.
	Tables []string
	// ReplicationFactor is the number of hot replicas each partition keeps on
	// other nodes of a cluster (fewer while the cluster has too few nodes):
	// 0 means DefaultReplicationFactor, NoReplicas none. A replica tails the
	// changelog, so a failover or a move needs no restore.
	ReplicationFactor int
	// NoChangelog keeps the type's stores without a changelog: a commit
	// records only the input offset, the epoch and the outbox there, so it
	// costs less, and the writes live in the local store alone. A partition
	// whose local store is lost, or that moves to another node, is rebuilt
	// by replaying its input stream from offset 0 through the handler, which
	// is slow (every event runs again) and needs the input stream to keep
	// every event; while rebuilding, the handler's emits, sends, replies and
	// dead letters are suppressed, as they took effect the first time. Such a
	// type has no hot replicas: there is no changelog to tail.
	NoChangelog bool
	// StateVersion is the version of the values the handler keeps in the
	// type's stores; 0 and 1 both mean version 1 (state recorded before
	// versions were is version 1). Raise it when the handler changes what
	// it stores. Each partition records the version of its state in its
	// changelog and store. A node whose type has an older version than a
	// partition's state refuses to run it (ErrStateVersion, naming both
	// versions and the owner that wrote the newer state), and in a cluster
	// gives the partition back to the assignor, which places it on another
	// node, so that during a rolling upgrade partitions end on upgraded
	// nodes. A node of a newer version upgrades the state before it
	// processes input: through Migrate if set; without Migrate the values
	// are kept as they are (the new handler reads the old ones).
	StateVersion int
	// Migrate upgrades a value of store (DefaultStore for the per-key
	// state) from state version from to StateVersion: the new value, or nil
	// to delete the key. It runs over every value of a partition, eagerly,
	// before the partition processes input; the upgraded values are
	// committed to the changelog in batches that record the progress, so a
	// crash resumes the migration and each value's migration commits once.
	// An error fails the partition, which retries. Not for types without a
	// changelog.
	Migrate func(store string, key []byte, from int, value []byte) ([]byte, error)
	// RebuildOnNewVersion, instead of Migrate, rebuilds a partition's state
	// of an older version from its input stream: the old state is purged
	// from the changelog and the local store, and the input runs again
	// through the handler from the first event, with its emits, sends,
	// replies and dead letters suppressed up to the offset committed
	// before; then input goes on as usual. It is slow (every event runs
	// again), resumes after a crash, and needs the input stream to still
	// hold its first event, else the partition fails with ErrInputGone and
	// keeps its old state. Not for types without a changelog.
	RebuildOnNewVersion bool
	// StateStore is where the type's state lives: LocalStore (the
	// default) or PostgresStore. Handlers do not see the difference.
	StateStore StateStore
	// ExternalChangelog, for a type on PostgresStore, records each commit's
	// writes in the stream EDDY_XCL_<type> as well, one message per commit,
	// forwarded like the outbox: a database restored from a backup (or
	// emptied) is brought forward from it when a partition starts, instead
	// of processing those events again. Its retention is the stream's
	// limits: it must keep every commit since the oldest backup you would
	// restore.
	ExternalChangelog bool
}

// StateStore says where an actor type keeps its state.
type StateStore string

const (
	// LocalStore keeps each partition's state in a local pebble store,
	// recorded in a changelog stream that hot replicas tail (the zero
	// value means LocalStore too).
	LocalStore StateStore = "local"
	// PostgresStore keeps the type's state in PostgreSQL
	// (Config.Postgres): one table for the type, and each commit one
	// transaction holding the writes, the outbox and the input offset,
	// fenced by the partition's epoch. Any node reads any key from the
	// database; a failover needs no restore (the new owner claims the
	// partition and resumes from the stored offset), so there are no hot
	// replicas, no changelog and no snapshots, hence no co-partitioned
	// tables and no Migrate or RebuildOnNewVersion (see
	// docs/external-store.md).
	PostgresStore StateStore = "postgres"
)

// external tells whether the type keeps its state in PostgreSQL.
func (t *ActorType) external() bool { return t.StateStore == PostgresStore }

// DefaultStore is the store of each key's own state (Context.Get and
// Context.Set), as Migrate names it.
const DefaultStore = partition.DefaultStore

// DefaultReplicationFactor is the hot replicas per partition of an actor type
// that does not say.
const DefaultReplicationFactor = 1

// NoReplicas as ActorType.ReplicationFactor keeps no hot replica: a failed
// over partition restores from its changelog.
const NoReplicas = -1

// Validate checks the actor type: its name and its stores' and outputs'
// names are NATS subject tokens (letters, digits, '-' and '_'), it has a
// handler and at least one partition, and its replication factor fits.
// Failures wrap ErrInvalidConfig.
func (t *ActorType) Validate() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: actor type %s: %s", ErrInvalidConfig, t.Name, fmt.Sprintf(f, a...))
	}
	switch {
	case !changelog.ValidName(t.Name):
		return fmt.Errorf("%w: actor type name %q: use letters, digits, '-' and '_'", ErrInvalidConfig, t.Name)
	case t.Partitions < 1:
		return bad("partitions %d", t.Partitions)
	case t.Handler == nil:
		return bad("no handler")
	case t.ReplicationFactor < NoReplicas || t.ReplicationFactor > 5:
		return bad("replication factor %d (0 to 5, or NoReplicas)", t.ReplicationFactor)
	case t.NoChangelog && t.ReplicationFactor > 0:
		return bad("hot replicas tail a changelog; a type without one has none")
	case t.StateVersion < 0:
		return bad("state version %d", t.StateVersion)
	case (t.Migrate != nil || t.RebuildOnNewVersion) && t.NoChangelog:
		return bad("Migrate and RebuildOnNewVersion need a changelog")
	case t.Migrate != nil && t.RebuildOnNewVersion:
		return bad("Migrate or RebuildOnNewVersion, not both")
	}
	for _, s := range t.Stores {
		if !changelog.ValidName(s) || s == partition.DefaultStore {
			return bad("store name %q", s)
		}
	}
	for _, o := range t.Outputs {
		if !changelog.ValidName(o) {
			return bad("output stream %q", o)
		}
	}
	for _, tb := range t.Tables {
		if !changelog.ValidName(tb) || tb == t.Name {
			return bad("table %q", tb)
		}
	}
	if len(t.Tables) > 0 && t.NoChangelog {
		return bad("co-partitioned tables need a changelog")
	}
	switch t.StateStore {
	case "", LocalStore:
	case PostgresStore:
		switch {
		case t.ReplicationFactor > 0:
			return bad("a type on PostgreSQL has no hot replicas: any node reads its state from the database")
		case t.NoChangelog || len(t.Tables) > 0 || t.Migrate != nil || t.RebuildOnNewVersion:
			return bad("a type on PostgreSQL has no changelog: no NoChangelog, co-partitioned tables, Migrate or RebuildOnNewVersion")
		}
	default:
		return bad("state store %q (%q or %q)", t.StateStore, LocalStore, PostgresStore)
	}
	if t.ExternalChangelog && !t.external() {
		return bad("ExternalChangelog is for a type on PostgresStore")
	}
	return nil
}

// replicationFactor is the hot replicas each partition keeps.
func (t *ActorType) replicationFactor() int {
	switch {
	case t.NoChangelog, t.external():
		return 0
	case t.ReplicationFactor == 0:
		return DefaultReplicationFactor
	case t.ReplicationFactor < 0:
		return 0
	}
	return t.ReplicationFactor
}

// input is the addressing of the type's input stream.
func (t *ActorType) input() partition.Input {
	return partition.Input{Type: t.Name, Partitions: t.Partitions, KeyedSubjects: t.KeyedSubjects}
}
