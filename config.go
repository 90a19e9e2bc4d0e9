package eddy

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// Config configures a Node.
type Config struct {
	// NodeID names the node in logs and metrics.
	NodeID string
	// DataDir holds the local state stores and, with the embedded NATS server, its JetStream data.
	DataDir string

	// NATSURL is the NATS server to use; empty starts an embedded server with
	// JetStream under DataDir/nats, for development.
	NATSURL string
	// NATSOptions are extra client options (credentials, TLS) for NATSURL.
	NATSOptions []nats.Option
	// NATSWait bounds how long Start waits for NATS to accept the
	// connection, for JetStream to answer (a JetStream cluster elects its
	// meta leader first) and for the streams to be created; 0 waits as long
	// as it takes (or as Start's context allows). Wrong credentials, a TLS
	// mismatch and a stream eddy cannot use fail Start at once.
	NATSWait time.Duration
	// EmbeddedNATSHost and EmbeddedNATSPort are where the embedded server
	// listens (port -1 picks a free one).
	EmbeddedNATSHost string
	EmbeddedNATSPort int

	// HTTPAddr serves /v1/state, /v1/status and /metrics; empty disables HTTP.
	HTTPAddr string

	// BatchSize is the most events a partition processes per commit.
	BatchSize int
	// Linger is how long a partition waits to fill a batch.
	Linger time.Duration
	// MaxAttempts is how often a failing handler runs before its event goes to the dead-letter stream.
	MaxAttempts int
	// MaxValueSize is the largest state value, emitted message or reply.
	MaxValueSize int
	// MaxEventSize is the largest event processed; larger ones go to the dead-letter stream.
	MaxEventSize int
	// MaxBatchRecords is the most changelog records a partition commits at once.
	MaxBatchRecords int
	// MaxBatchBytes is the most bytes of changelog records a partition commits at once.
	MaxBatchBytes int
	// CommitsInFlight is how many changelog commits a partition has in
	// flight: 2 sends the next batch's commit while the last one's
	// acknowledgement is on its way; 1 waits for each.
	CommitsInFlight int

	// CacheSize is the block cache shared by all state stores of the node.
	CacheSize int64
	// StoreSync fsyncs each partition's local store once per commit, so that
	// a restart after a crash replays a shorter changelog tail. Off by
	// default: the changelog is the truth, and a tail replays fast. Stores
	// without a changelog are always synced.
	StoreSync bool
	// StreamReplicas is the JetStream replication of the streams eddy creates.
	StreamReplicas int
	// DuplicateWindow is the deduplication window of the streams eddy creates;
	// it must cover the longest outage after which an outbox is re-forwarded.
	DuplicateWindow time.Duration
	// SnapshotEvery makes each active partition snapshot its store to the
	// JetStream Object Store (bucket EDDY_SNAP_<type>) once its changelog
	// grew this many records past the last snapshot; 0: not by count. A node
	// without a partition's store or hot replica then restores from the
	// newest snapshot plus the changelog tail past it, instead of the whole
	// changelog (docs/restore-paths.md). After each snapshot the changelog
	// is trimmed below the oldest kept one: snapshots bound the changelog's
	// size on the NATS servers' disks. Fewer records between snapshots mean
	// less disk and shorter restores, for more upload work.
	SnapshotEvery uint64
	// SnapshotInterval snapshots an active partition this long after its last
	// snapshot if its changelog grew since; 0: not by time. With both 0
	// there are no snapshots and the changelogs grow without bound.
	SnapshotInterval time.Duration
	// SnapshotsKept is how many snapshots of each partition are kept, the
	// newest; a restore falls back to an older one when the newest is damaged.
	SnapshotsKept int

	// GossipAddr, when set, makes the node a cluster member: the host:port
	// its gossip (memberlist, UDP and TCP) binds. Empty runs a single node
	// that owns every partition.
	GossipAddr string
	// RaftAddr is the host:port of the node's Raft transport (cluster only).
	RaftAddr string
	// Join is the gossip seed list, host:port each; any live member will do,
	// and the node retries until one answers. Empty for the first node.
	Join []string
	// Bootstrap forms a new one-voter cluster on the first start.
	Bootstrap bool
	// BootstrapExpect forms a new cluster once that many nodes have gossiped
	// (Consul's bootstrap-expect); give every initial node the same number.
	BootstrapExpect int
	// Zone is the node's failure domain; hot replicas are spread across zones.
	Zone string
	// GossipKey encrypts gossip when set (16, 24 or 32 bytes; the same on every node).
	GossipKey []byte
	// GossipProfile is the failure detector's timing: "lan-fast" (a crash is
	// seen in about a second on a LAN) or "lan" (memberlist's default, ~7 s).
	GossipProfile string
	// MaxVoters is how many nodes vote in Raft (odd, 1 to 7); the others
	// follow the assignment as non-voters. 3 survives one failure, 5 two.
	MaxVoters int
	// MaxLagForMove is the replica lag, in changelog records, under which a
	// warm-up move hands a partition over to its new node.
	MaxLagForMove uint64
	// MaxConcurrentMoves bounds the warm-up moves in progress in the cluster.
	MaxConcurrentMoves int
	// LeaveTimeout bounds the graceful leave on Stop: the time the node's
	// active partitions have to move to other nodes.
	LeaveTimeout time.Duration
	// GiveBackAfter is how long a partition actor may keep failing on this
	// node, while the node is connected to NATS, before the node gives the
	// partition back to the assignor to place it elsewhere at a new epoch.
	// (A partition fenced at its assigned epoch is given back at once;
	// failures while NATS is away are retried where they are.)
	GiveBackAfter time.Duration

	// Postgres is the external state store of the actor types whose
	// StateStore is PostgresStore: the DSN (with credentials: the node
	// logs it only redacted), the pool and its timeouts. Unused when no
	// type keeps its state there.
	Postgres postgres.Config

	// Logger receives the node's logs (nil: slog.Default()).
	Logger *slog.Logger
	// Registerer receives the node's metrics (nil: a registry of the node's own,
	// served on /metrics).
	Registerer prometheus.Registerer

	// hooks inject faults between commit steps: tests set them (export_test.go).
	hooks partition.Hooks
}

// DefaultConfig returns a config that runs a development node: embedded NATS
// on 127.0.0.1:4222, data in ./data, HTTP on 127.0.0.1:8080.
func DefaultConfig() Config {
	p, cl := partition.DefaultConfig(), cluster.DefaultConfig()
	return Config{
		NodeID:             "node-1",
		DataDir:            "./data",
		EmbeddedNATSHost:   "127.0.0.1",
		EmbeddedNATSPort:   4222,
		NATSWait:           0, // wait for NATS as long as it takes: compose, systemd and Kubernetes start it with the nodes
		HTTPAddr:           "127.0.0.1:8080",
		BatchSize:          p.BatchSize,
		Linger:             p.Linger,
		MaxAttempts:        p.MaxAttempts,
		MaxValueSize:       p.MaxValueSize,
		MaxEventSize:       p.MaxEventSize,
		MaxBatchRecords:    p.MaxBatchRecords,
		MaxBatchBytes:      p.MaxBatchBytes,
		CommitsInFlight:    p.CommitsInFlight,
		StoreSync:          p.StoreSync,
		CacheSize:          256 << 20,          // hot keys of every partition stay in memory (~3x faster gets than 8 MiB)
		StreamReplicas:     1,                  // a single NATS server; use 3 on a NATS cluster
		DuplicateWindow:    10 * time.Minute,   // covers restarts and failovers by a wide margin
		SnapshotEvery:      p.SnapshotEvery,    // a restore replays at most this after a snapshot
		SnapshotInterval:   p.SnapshotInterval, // a slow partition's changelog is trimmed too
		SnapshotsKept:      p.Snapshot.Keep,    // the newest and one to fall back to
		GossipProfile:      cl.GossipProfile,
		MaxVoters:          cl.MaxVoters,
		MaxLagForMove:      cl.Assignor.MaxLagForMove,
		MaxConcurrentMoves: cl.Assignor.MaxConcurrentMoves,
		LeaveTimeout:       30 * time.Second, // each partition commits its batch in hand and restores elsewhere
		GiveBackAfter:      time.Minute,      // far past a stream leader election (seconds): a fault of this node
		Postgres:           postgres.DefaultConfig(""),
	}
}

// Validate checks the config.
func (c *Config) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(f, a...)) }
	switch {
	case c.DataDir == "":
		return bad("no data dir")
	case c.NATSURL == "" && c.EmbeddedNATSPort == 0:
		return bad("embedded NATS needs a port (-1 for any)")
	case c.NATSWait < 0:
		return bad("NATS wait %v: 0 (no bound) or positive", c.NATSWait)
	case c.BatchSize < 1 || c.MaxAttempts < 1 || c.MaxValueSize < 1 || c.MaxEventSize < 1:
		return bad("batch size, max attempts, max value and event size must be positive")
	case c.MaxBatchRecords < 2:
		return bad("max batch records %d", c.MaxBatchRecords)
	case c.MaxBatchBytes < c.MaxValueSize || c.MaxBatchBytes < c.MaxEventSize:
		return bad("max batch bytes %d: a commit needs room for the largest value and event", c.MaxBatchBytes)
	case c.CommitsInFlight < 1 || c.CommitsInFlight > partition.MaxCommitsInFlight:
		return bad("commits in flight %d: 1 to %d", c.CommitsInFlight, partition.MaxCommitsInFlight)
	case c.MaxValueSize >= 1<<20 || c.MaxEventSize >= 1<<20:
		return bad("max value/event size must stay under NATS's 1 MiB max payload")
	case c.StreamReplicas < 1 || c.StreamReplicas > 5:
		return bad("stream replicas %d", c.StreamReplicas)
	case c.DuplicateWindow < time.Minute:
		return bad("duplicate window %v: must cover a failover (at least 1m)", c.DuplicateWindow)
	case c.CacheSize < 1<<20:
		return bad("cache size %d: at least 1 MiB", c.CacheSize)
	case c.SnapshotInterval < 0:
		return bad("snapshot interval %v", c.SnapshotInterval)
	case c.SnapshotsKept < 1:
		return bad("snapshots kept %d: at least 1", c.SnapshotsKept)
	}
	if !c.clustered() {
		if c.Bootstrap || c.BootstrapExpect > 0 || len(c.Join) > 0 {
			return bad("bootstrap, expect and join need a gossip address")
		}
		return nil
	}
	switch {
	case !changelog.ValidName(c.NodeID):
		return bad("node id %q: a cluster member's id is a NATS subject token: letters, digits, '-' and '_'", c.NodeID)
	case c.RaftAddr == "":
		return bad("a cluster member needs a Raft address")
	case c.Bootstrap && c.BootstrapExpect > 0:
		return bad("bootstrap and expect exclude each other")
	case c.LeaveTimeout < 0:
		return bad("leave timeout %v", c.LeaveTimeout)
	case c.GiveBackAfter <= 0:
		return bad("give-back-after %v: must be positive", c.GiveBackAfter)
	}
	cc := c.clusterConfig("")
	if err := cc.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// clusterConfig is the control plane's config for this node.
func (c *Config) clusterConfig(httpAddr string) cluster.Config {
	cc := cluster.DefaultConfig()
	cc.NodeID, cc.Zone = c.NodeID, c.Zone
	cc.DataDir = filepath.Join(c.DataDir, "raft")
	cc.GossipAddr, cc.RaftAddr, cc.HTTPAddr = c.GossipAddr, c.RaftAddr, httpAddr
	cc.Join = c.Join
	cc.GossipProfile = c.GossipProfile
	cc.GossipKey = c.GossipKey
	cc.Bootstrap, cc.BootstrapExpect = c.Bootstrap, c.BootstrapExpect
	cc.MaxVoters = c.MaxVoters
	cc.Assignor.MaxLagForMove = c.MaxLagForMove
	cc.Assignor.MaxConcurrentMoves = c.MaxConcurrentMoves
	cc.Logger = c.Logger
	return cc
}
