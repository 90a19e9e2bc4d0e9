package partition

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/snapshot"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// DefaultStore is the store that holds each key's own state.
const DefaultStore = "state"

// Config describes one partition actor.
type Config struct {
	// Type is the actor type; its input stream has the same name.
	Type string
	// Partition is this actor's partition, 0 <= Partition < Partitions.
	Partition int
	// Partitions is the number of partitions of the input stream.
	Partitions int
	// KeyedSubjects says the input stream has one subject per key (see
	// Input), not one per partition.
	KeyedSubjects bool
	// Inputs are the input streams of the actor types the node knows, by
	// name: Txn.Emit addresses events to them in their layout. Other input
	// streams are looked up in JetStream.
	Inputs map[string]Input
	// Epoch is the owner epoch to fence with. 0 means "one more than the
	// newest epoch in the changelog", which is what a single node wants.
	Epoch uint64
	// Owner names the process that runs the actor (a node's id and a token
	// unique to its process). It goes into every meta record with the epoch:
	// an actor that restarts at its epoch recognises what it wrote before as
	// its own and resumes, while the same epoch written by another owner
	// fences it. Empty: Start picks a random one.
	Owner string
	// Stores are the named stores besides DefaultStore.
	Stores []string
	// NoChangelog keeps the partition's stores without a changelog: a commit
	// records only the input offset, the epoch and the outbox there, and the
	// writes go to the local store alone. When the local store is behind the
	// committed offset (lost, or on a new node), the stores are rebuilt by
	// replaying the input partition through the handler from the store's
	// offset (0 for a new store) to the committed offset, with the handler's
	// outbox, replies and dead letters suppressed, as they were delivered
	// the first time. That is slow, and needs the input stream to keep every
	// event; hot replicas have nothing to tail.
	NoChangelog bool
	// Handler processes one event.
	Handler Handler
	// StateVersion is the version of the stores' values that Handler reads
	// and writes (0 and 1 are the same: version 1). It is recorded in every
	// meta record and with the local store. An actor whose changelog holds
	// state of a newer version refuses to run (*VersionError, for good); one
	// that finds an older version upgrades the state before it takes input
	// (see Migrate).
	StateVersion int
	// Migrate, when set, upgrades the stores' values from an older state
	// version: before processing input, the actor rewrites every value
	// (see MigrateFunc) and commits them to the changelog in batches. Nil
	// keeps the values as they are: the new version reads the old ones.
	Migrate MigrateFunc
	// RebuildOnNewVersion, instead of migrating, rebuilds the state of an
	// older version from the input stream's first event with this handler
	// (versionrebuild.go): the old state records are purged from the
	// changelog and the local store is discarded; the handler's emits,
	// sends, replies and dead letters are suppressed up to the offset
	// committed before. The input stream must still hold its first event
	// (else ErrInputGone).
	RebuildOnNewVersion bool

	// Conn is the NATS connection; it should not buffer while reconnecting
	// (nats.ReconnectBufSize(-1)) so that a commit fails fast when NATS is away.
	Conn *nats.Conn
	// JS is the JetStream context of Conn.
	JS jetstream.JetStream

	// Changelog says how the changelog stream is created.
	Changelog changelog.StreamConfig

	// StoreDir is the directory of the partition's local pebble store.
	StoreDir string
	// Cache is a block cache shared by the node's stores (optional).
	Cache *statestore.Cache
	// StoreCacheSize is the block cache of this store when Cache is nil.
	StoreCacheSize int64
	// Handoff, when set, is a promoted hot replica's open store and stream
	// (Replica.Handoff): the actor's first start uses them instead of opening
	// StoreDir and looking the changelog up, and owns the store from then on.
	Handoff *Handoff
	// StoreSync fsyncs the local store once per commit. Correctness does not
	// need it (the changelog is the truth): without it pebble keeps up to one
	// 32 KiB WAL block in process memory, so a killed process loses its last
	// commits from the local store and the restart replays them from the
	// changelog (a store too young to have its first commit on disk restores
	// as a lost one). Stores without a changelog (NoChangelog) are always
	// synced: they would be rebuilt from the input stream.
	StoreSync bool

	// SnapshotEvery takes a snapshot of the store (a pebble checkpoint,
	// uploaded to the type's JetStream Object Store bucket) once the
	// changelog has grown this many records past the last one; 0: not by
	// count. A node without the partition's store restores from the newest
	// snapshot plus the changelog past it, instead of the whole changelog.
	// Only the active owner snapshots, one upload at a time, in the
	// background; types without a changelog never do. After each upload
	// the changelog is trimmed below the oldest kept snapshot (outbox
	// entries not forwarded yet are in the snapshots), so snapshots are also what
	// bounds the changelog: SnapshotEvery trades NATS disk and restore
	// time (records replayed after a snapshot) for upload work.
	SnapshotEvery uint64
	// SnapshotInterval takes a snapshot this long after the last one if the
	// changelog grew since; 0: not by time. With both 0 there are no
	// snapshots (restores still use those other nodes took), and the
	// changelog is never trimmed: it grows with every change.
	SnapshotInterval time.Duration
	// Snapshot says how the snapshot bucket is created and pruned (its
	// replicas, the snapshots kept per partition, the grace of unreferenced files).
	Snapshot snapshot.Config

	// BatchSize is the most events processed per batch: larger batches amortise
	// the commit round trip.
	BatchSize int
	// Linger is how long the input reader waits to fill a batch once it has one event.
	Linger time.Duration
	// MaxBatchRecords is the most changelog records per commit. A commit's
	// records travel framed in one changelog message, or in an atomic batch
	// of a few when they pass NATS's max payload.
	MaxBatchRecords int
	// MaxBatchBytes bounds the bytes of a commit's records (values, keys and
	// outbox entries, as estimated while the batch fills): a batch is cut
	// before it passes it, and an event that passes it alone goes to the
	// dead-letter stream.
	MaxBatchBytes int
	// CommitsInFlight is how many changelog commits the partition has in
	// flight (1 to MaxCommitsInFlight): with 2, a batch's commit is sent
	// while the one before it waits for its acknowledgement (pipeline.go).
	CommitsInFlight int
	// MaxAttempts is how often a failing or panicking handler runs for one event
	// before the event goes to the dead-letter stream.
	MaxAttempts int
	// MaxValueSize is the largest value a handler may store or publish.
	MaxValueSize int
	// MaxEventSize is the largest event processed; larger ones go to the dead-letter stream.
	MaxEventSize int
	// DLQSubject receives events whose handler keeps failing.
	DLQSubject string
	// KnownStreams are streams the node made sure exist (the actor types'
	// input and output streams): a publish to them needs no lookup. A
	// publish to any other stream is checked once (checkTarget).
	KnownStreams []string
	// MarkDelay is how soon an idle partition commits its outbox "forwarded" mark,
	// so that a failover never re-forwards outside the targets' duplicate window.
	MarkDelay time.Duration
	// TrimEvery is the least time between trims of a changelog without
	// state (NoChangelog): below its committed forwarded mark, it holds
	// nothing a restore needs.
	TrimEvery time.Duration
	// CommitTimeout bounds one attempt of a changelog commit or forward:
	// past it the outcome is unknown, and read back from the changelog.
	CommitTimeout time.Duration
	// ProgressEvery is how often a long restore logs its progress.
	ProgressEvery time.Duration

	// Hooks inject faults between the commit steps (tests only).
	Hooks Hooks
	// Logger receives the partition's logs.
	Logger *slog.Logger
	// Metrics records the partition's metrics (optional).
	Metrics *Metrics
	// Tables are the type's co-partitioned tables (table.go): streams laid
	// out like an input stream with Partitions partitions, whose partition
	// this actor materializes into its store for handlers to read
	// (Txn.GetTable).
	Tables []Input
	// CheckTableValue, if set, refuses a table value handlers could not
	// decode: the record goes to the dead-letter stream instead.
	CheckTableValue func([]byte) error
	// External, when set, keeps the partition's state in PostgreSQL
	// instead of the local store and a changelog (external.go): each commit
	// is one transaction holding the writes, the outbox and the input
	// offset, fenced by the epoch. StoreDir, the changelog, snapshots and
	// hot replicas are then unused.
	External *postgres.DB
	// ExternalChangelog, with External, records each commit's writes in
	// the changelog stream ExternalChangelogStream(Type) as well
	// (external_changelog.go): a database restored from a backup is
	// brought forward from it, instead of processing the events again.
	ExternalChangelog bool
	// Ready are closed once what handlers read besides their stores is
	// ready (the node's global tables, caught up with their streams): the
	// actor restores and fences meanwhile, and takes no input before.
	Ready []<-chan struct{}
}

// Hooks are called between the steps of a commit. Tests use them to crash the
// process at each step; they are nil in production.
type Hooks struct {
	// AfterChangelog runs after the changelog batch is committed, before
	// the local store; with an external store, after its transaction
	// committed, before the outbox is forwarded.
	AfterChangelog func()
	// BeforeExternalCommit runs once an external store transaction is
	// built, before it is sent (it commits in one round trip).
	BeforeExternalCommit func()
	// AfterLocal runs after the local store batch, before the outbox is forwarded.
	AfterLocal func()
	// MidForward runs after the first outbox entry of a commit is forwarded, when there are more.
	MidForward func()
	// AfterMigrateBatch runs after each batch of a migration is committed,
	// with the last local store key migrated; an error fails the actor
	// (supervision restarts it and the migration resumes after that key).
	AfterMigrateBatch func(through []byte) error
	// Conn, when set, is the connection changelog batches are published on
	// and read back through, instead of Config.Conn: tests wrap the real one
	// to lose acknowledgements or hold batches back.
	Conn changelog.Conn
	// ReplicaStarting runs when a hot replica starts; an error fails the
	// start, as a broken disk would.
	ReplicaStarting func() error
}

// DefaultConfig returns a config with the tuning defaults; the caller fills in
// Type, Partition, Partitions, Handler, Conn, JS, StoreDir and DLQSubject.
func DefaultConfig() Config {
	return Config{
		BatchSize:       2000,                   // under load a batch fills while the last commits; 2000 (cut at MaxBatchRecords) ran 1.5x the events/s of 1000 (node bench)
		Linger:          2 * time.Millisecond,   // a batch waits at most this for more events
		MaxBatchRecords: 4096,                   // a full batch of 2000 events (0.5-2 records each) commits whole, in one message when values are small
		MaxBatchBytes:   8 << 20,                // a few messages of NATS's 1 MiB default max payload, far under the 1000 of an atomic batch
		CommitsInFlight: 1,                      // 2 gave neither a lower p99 nor more events/s here (2 cores shared with NATS: CPU, not the round trip, bounds a partition), and smaller batches cost CPU
		MaxAttempts:     3,                      // a transient failure gets two retries
		MaxValueSize:    256 << 10,              // leaves room under NATS's 1 MiB max payload
		MaxEventSize:    256 << 10,              // same
		MarkDelay:       500 * time.Millisecond, // far inside JetStream's 2 min duplicate window
		TrimEvery:       time.Second,            // one trim request a second at most
		CommitTimeout:   2 * time.Second,        // a commit takes ms; past this its outcome is read back, not waited for (a killed server never answers)
		ProgressEvery:   3 * time.Second,        // restore progress in the logs
		StoreCacheSize:  32 << 20,
		StoreSync:       false, // an fsync per commit took 1-3 ms under load here (16 partitions), more than the changelog commit; a lost tail replays at millions of records/s
		Changelog:       changelog.DefaultStreamConfig(),
		// A snapshot a million records after the last: a restore replays at
		// most that (about 2 s here), and the changelog keeps about twice
		// that (the older kept snapshot's tail), ~100 MB of 50-byte records.
		SnapshotEvery: 1_000_000,
		// And at least every 10 min while the partition changes, so that a
		// slow partition's changelog is trimmed too.
		SnapshotInterval: 10 * time.Minute,
		Snapshot:         snapshot.DefaultConfig(),
	}
}

// ErrInvalidConfig wraps every Validate failure.
var ErrInvalidConfig = errors.New("partition: invalid config")

// Validate checks the config.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, a...))
	}
	switch {
	case !changelog.ValidName(c.Type):
		return bad("type %q: use letters, digits, '-' and '_'", c.Type)
	case c.Partitions < 1 || c.Partition < 0 || c.Partition >= c.Partitions:
		return bad("partition %d of %d", c.Partition, c.Partitions)
	case c.Handler == nil:
		return bad("no handler")
	case c.Conn == nil || c.JS == nil:
		return bad("no NATS connection")
	case c.Changelog.Validate() != nil:
		return bad("changelog: %v", c.Changelog.Validate())
	case c.StoreDir == "":
		return bad("no store dir")
	case c.DLQSubject == "":
		return bad("no dead-letter subject")
	case c.BatchSize < 1:
		return bad("batch size %d", c.BatchSize)
	case c.MaxBatchRecords < 2:
		return bad("max batch records %d: a commit needs room for a record and its meta", c.MaxBatchRecords)
	case c.MaxBatchBytes < c.MaxValueSize || c.MaxBatchBytes < c.MaxEventSize:
		return bad("max batch bytes %d: a commit needs room for the largest value (%d) and event (%d)", c.MaxBatchBytes, c.MaxValueSize, c.MaxEventSize)
	case c.CommitsInFlight < 1 || c.CommitsInFlight > MaxCommitsInFlight:
		return bad("commits in flight %d: 1 to %d", c.CommitsInFlight, MaxCommitsInFlight)
	case c.MaxAttempts < 1:
		return bad("max attempts %d", c.MaxAttempts)
	case c.MaxValueSize < 1 || c.MaxEventSize < 1:
		return bad("max value/event size must be positive")
	case c.CommitTimeout <= 0 || c.MarkDelay <= 0:
		return bad("commit timeout and mark delay must be positive")
	case c.SnapshotInterval < 0:
		return bad("snapshot interval %v", c.SnapshotInterval)
	case c.Snapshot.Validate() != nil:
		return bad("snapshot: %v", c.Snapshot.Validate())
	case c.StateVersion < 0:
		return bad("state version %d", c.StateVersion)
	case len(c.Tables) > 0 && c.NoChangelog:
		return bad("co-partitioned tables need a changelog")
	case (c.Migrate != nil || c.RebuildOnNewVersion) && c.NoChangelog:
		return bad("Migrate and RebuildOnNewVersion need a changelog")
	case c.Migrate != nil && c.RebuildOnNewVersion:
		return bad("Migrate or RebuildOnNewVersion, not both")
	case c.ExternalChangelog && c.External == nil:
		return bad("ExternalChangelog needs an External store")
	case c.External != nil && (len(c.Tables) > 0 || c.NoChangelog || c.Migrate != nil || c.RebuildOnNewVersion):
		return bad("an external store has no changelog: no co-partitioned tables, NoChangelog, Migrate or RebuildOnNewVersion")
	}
	for _, s := range c.Stores {
		if !changelog.ValidName(s) {
			return bad("store name %q", s)
		}
	}
	for _, t := range c.Tables {
		if t.Partitions != c.Partitions {
			return bad("table %s has %d partitions, the type %d: a co-partitioned table has the type's", t.Type, t.Partitions, c.Partitions)
		}
	}
	return nil
}

// input is the addressing of the actor's input stream.
func (c Config) input() Input {
	return Input{Type: c.Type, Partitions: c.Partitions, KeyedSubjects: c.KeyedSubjects}
}
