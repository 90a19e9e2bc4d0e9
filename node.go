package eddy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/statestore/postgres"
	"github.com/eddyrt/eddy/table"
)

// Node runs the partition actors of the registered actor types. Alone, it
// owns every partition of every type. As a cluster member (Config.GossipAddr
// set) it runs the partition actors and hot replicas the Raft-elected
// assignor gives it, each partition actor fencing with the epoch of its
// assignment.
type Node struct {
	cfg   Config
	log   *slog.Logger
	types map[string]*ActorType
	order []string
	// inputs are the input streams of the registered types (written by
	// Register, read-only once started).
	inputs map[string]partition.Input
	// The registered global tables, and once started, the tables
	// (read-only while the node runs).
	globalTypes  map[string]*GlobalTable
	globalOrder  []string
	globals      map[string]*table.Global
	tableMetrics *table.Metrics
	// tableInputs are the layouts of the co-partitioned tables' streams
	// (written at start, read-only afterwards).
	tableInputs map[string]partition.Input

	reg      prometheus.Registerer
	gatherer prometheus.Gatherer
	metrics  *partition.Metrics

	// owner names this process in the changelogs' meta records: a
	// partition actor that restarts at its epoch recognises its own writes.
	owner string

	// mu guards the node's lifecycle and what Start sets up. What runs on
	// the node is the reconciler's (reconcile.go).
	mu       sync.Mutex
	running  bool
	starting bool
	stopping bool
	srv      *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	client   *Client
	cache    *statestore.Cache
	pg       *postgres.DB // the external store, when a type keeps its state there
	sys      *actor.System
	rec      *reconciler
	http     *http.Server
	httpAddr string
	httpDone chan struct{}

	// Cluster mode.
	cl      *cluster.Cluster
	ctlSubs []*nats.Subscription
	// stopDataPlane ends the watch of the NATS connection (watchDataPlane).
	stopDataPlane func()
	// stopJSProbe ends the probe of JetStream through the node's server
	// (probeJetStream).
	stopJSProbe func()
	wg          sync.WaitGroup // control request handlers
}

// NewNode returns a node for cfg; register actor types, then Start it.
func NewNode(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, types: map[string]*ActorType{}}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.log = n.log.With("node", cfg.NodeID)
	if cfg.Registerer != nil {
		n.reg = cfg.Registerer
		if g, ok := cfg.Registerer.(prometheus.Gatherer); ok {
			n.gatherer = g
		}
	} else {
		r := prometheus.NewRegistry()
		r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		n.reg, n.gatherer = r, r
	}
	n.metrics = partition.NewMetrics(n.reg)
	n.tableMetrics = table.NewMetrics(n.reg)
	return n, nil
}

// Register adds an actor type (see ActorType.Validate). It must be called
// before Start: afterwards it returns ErrStarted.
func (n *Node) Register(t ActorType) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running || n.starting || n.stopping {
		return fmt.Errorf("%w: register actor type %s before Start", ErrStarted, t.Name)
	}
	if err := t.Validate(); err != nil {
		return err
	}
	if t.external() {
		if err := n.cfg.Postgres.Validate(); err != nil {
			return fmt.Errorf("%w: actor type %s keeps its state in PostgreSQL: Config.Postgres (--pg-dsn, EDDY_PG_DSN): %w", ErrInvalidConfig, t.Name, err)
		}
	}
	if n.types[t.Name] != nil {
		return fmt.Errorf("%w: actor type %s registered twice", ErrInvalidConfig, t.Name)
	}
	for _, other := range n.types {
		for _, tb := range t.Tables {
			if slices.Contains(other.Tables, tb) && other.Partitions != t.Partitions {
				return fmt.Errorf("%w: table %s is co-partitioned with actor type %s (%d partitions) and %s (%d): a table has one partition count",
					ErrInvalidConfig, tb, other.Name, other.Partitions, t.Name, t.Partitions)
			}
		}
	}
	n.types[t.Name] = &t
	n.order = append(n.order, t.Name)
	if n.inputs == nil {
		n.inputs = make(map[string]partition.Input)
	}
	n.inputs[t.Name] = t.input()
	return nil
}

// Start connects to NATS (starting the embedded server if no URL is set),
// waiting for NATS and JetStream to come up within Config.NATSWait and ctx,
// creates the streams and serves HTTP. On a single node it then starts a
// partition actor for every partition; in a cluster it joins, declares the
// actor types (waiting for the cluster to form, within ctx) and runs the
// partition actors and hot replicas the assignment gives it. Partitions
// restore in the background; Status tells when they run. A node starts
// once: a second Start returns ErrStarted.
func (n *Node) Start(ctx context.Context) (err error) {
	n.mu.Lock()
	if n.running || n.starting || n.stopping || n.owner != "" {
		n.mu.Unlock()
		return ErrStarted
	}
	n.starting = true
	n.owner = n.cfg.NodeID + "/" + nuid.Next()
	n.mu.Unlock()
	defer func() {
		if err != nil {
			_ = n.stopCluster(0)
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		n.starting = false
		if err != nil {
			_ = n.shutdown(context.Background())
			return
		}
		n.running = true
	}()
	if err := n.connect(ctx); err != nil {
		return err
	}
	if err := n.openPostgres(ctx); err != nil {
		return err
	}
	n.mu.Lock()
	n.cache = statestore.NewCache(n.cfg.CacheSize)
	n.sys = actor.NewSystem(n.log)
	if err := n.startGlobalTables(ctx); err != nil {
		n.mu.Unlock()
		return err
	}
	if n.cfg.HTTPAddr != "" {
		if err := n.serveHTTP(); err != nil {
			n.mu.Unlock()
			return err
		}
	}
	n.mu.Unlock()
	if n.cfg.clustered() {
		if err := n.startCluster(ctx); err != nil {
			return err
		}
	} else {
		r := n.startReconciler(nil)
		n.mu.Lock()
		n.rec = r
		n.mu.Unlock()
		if err := r.settled(ctx); err != nil {
			return err
		}
	}
	n.log.Info("node started", "nats", redactURL(n.nc.ConnectedUrl()), "http", n.httpAddr, "types", n.order, "cluster", n.cfg.clustered())
	return nil
}

// Stop stops the node. In a cluster it first leaves gracefully (within
// Config.LeaveTimeout): the assignor moves its active partitions to other
// nodes, each handed over after its batch in hand is committed. Then it
// stops the partition actors and replicas, HTTP, the NATS connection and the
// embedded server. A node that is not running returns ErrNotRunning.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if !n.running {
		n.mu.Unlock()
		return ErrNotRunning
	}
	n.stopping = true
	n.mu.Unlock()
	errs := []error{n.stopCluster(n.cfg.LeaveTimeout)}
	n.mu.Lock()
	n.running = false
	h, httpDone := n.http, n.httpDone
	n.http = nil
	n.mu.Unlock()
	// Shut HTTP down without holding n.mu: a handler in flight takes n.mu
	// (and now answers ErrNotRunning), and Shutdown waits for it.
	if h != nil {
		errs = append(errs, h.Shutdown(ctx))
		<-httpDone
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopping = false
	return errors.Join(append(errs, n.shutdown(ctx))...)
}

// shutdown stops what Start set up; n.mu is held.
func (n *Node) shutdown(ctx context.Context) error {
	var errs []error
	if n.http != nil {
		errs = append(errs, n.http.Shutdown(ctx))
		<-n.httpDone
		n.http = nil
	}
	if n.rec != nil {
		n.rec.close()
		n.rec = nil
	}
	n.cl = nil
	if n.sys != nil {
		errs = append(errs, n.sys.Stop(ctx))
		n.sys = nil
	}
	errs = append(errs, n.stopGlobalTables())
	n.wg.Wait() // request handlers: with the actors stopped, none waits long
	if n.cache != nil {
		n.cache.Close()
		n.cache = nil
	}
	if n.pg != nil {
		n.pg.Close()
		n.pg = nil
	}
	if n.stopJSProbe != nil {
		n.stopJSProbe()
		n.stopJSProbe = nil
	}
	if n.nc != nil {
		n.nc.Close()
		n.nc, n.client = nil, nil
	}
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
	n.log.Info("node stopped")
	return errors.Join(errs...)
}

// reconciler is the node's reconciler, nil when it is not running.
func (n *Node) reconciler() *reconciler {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rec
}

// ID is the node's id (Config.NodeID).
func (n *Node) ID() string { return n.cfg.NodeID }

// Client is a client over the node's own NATS connection, to send events
// and ask actors; nil before Start and after Stop.
func (n *Node) Client() *Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.client
}

// NATSURL is the URL of the NATS server the node uses (the embedded one's when
// embedded), without credentials.
func (n *Node) NATSURL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nc == nil {
		return ""
	}
	return n.nc.ConnectedUrlRedacted()
}

// HTTPAddr is the address the node's HTTP endpoint listens on, once started.
func (n *Node) HTTPAddr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.httpAddr
}
