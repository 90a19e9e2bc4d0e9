package eddy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore"
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

	reg      prometheus.Registerer
	gatherer prometheus.Gatherer
	metrics  *partition.Metrics

	// owner names this process in the changelogs' meta records: a
	// partition actor that restarts at its epoch recognises its own writes.
	owner string

	mu        sync.Mutex
	running   bool
	starting  bool
	stopping  bool
	srv       *server.Server
	nc        *nats.Conn
	js        jetstream.JetStream
	cache     *statestore.Cache
	sys       *actor.System
	actives   map[pkey]*activeSlot
	replicas  map[pkey]*partition.Replica
	stoppedAt map[pkey]uint64           // newest epoch a partition actor stopped at on this node
	releasing map[pkey]*partition.Actor // partition actors stopping because they moved
	http      *http.Server
	httpAddr  string
	httpDone  chan struct{}

	// Cluster mode.
	cl         *cluster.Cluster
	ctlSubs    []*nats.Subscription
	replSubs   map[pkey]*nats.Subscription // serve other nodes' reads of the hot replicas
	loopCancel context.CancelFunc
	loopDone   chan struct{}
	wg         sync.WaitGroup // control request handlers
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
	return n, nil
}

// Register adds an actor type. It must be called before Start.
func (n *Node) Register(t ActorType) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.running:
		return errors.New("eddy: register before Start")
	case !changelog.ValidName(t.Name):
		return fmt.Errorf("%w: actor type name %q: use letters, digits, '-' and '_'", ErrInvalidConfig, t.Name)
	case t.Partitions < 1:
		return fmt.Errorf("%w: actor type %s: partitions %d", ErrInvalidConfig, t.Name, t.Partitions)
	case t.Handler == nil:
		return fmt.Errorf("%w: actor type %s: no handler", ErrInvalidConfig, t.Name)
	case t.ReplicationFactor < NoReplicas || t.ReplicationFactor > 5:
		return fmt.Errorf("%w: actor type %s: replication factor %d (0 to 5, or NoReplicas)", ErrInvalidConfig, t.Name, t.ReplicationFactor)
	case t.NoChangelog && t.ReplicationFactor > 0:
		return fmt.Errorf("%w: actor type %s: hot replicas tail a changelog; a type without one has none", ErrInvalidConfig, t.Name)
	case n.types[t.Name] != nil:
		return fmt.Errorf("%w: actor type %s registered twice", ErrInvalidConfig, t.Name)
	}
	for _, s := range t.Stores {
		if !changelog.ValidName(s) || s == partition.DefaultStore {
			return fmt.Errorf("%w: actor type %s: store name %q", ErrInvalidConfig, t.Name, s)
		}
	}
	for _, o := range t.Outputs {
		if !changelog.ValidName(o) {
			return fmt.Errorf("%w: actor type %s: output stream %q", ErrInvalidConfig, t.Name, o)
		}
	}
	n.types[t.Name] = &t
	n.order = append(n.order, t.Name)
	return nil
}

// Start connects to NATS (starting the embedded server if no URL is set),
// waiting for NATS and JetStream to come up within Config.NATSWait and ctx,
// creates the streams and serves HTTP. On a single node it then starts a
// partition actor for every partition; in a cluster it joins, declares the
// actor types (waiting for the cluster to form, within ctx) and runs the
// partition actors and hot replicas the assignment gives it. Partitions
// restore in the background; Status tells when they run.
func (n *Node) Start(ctx context.Context) (err error) {
	n.mu.Lock()
	if n.running || n.starting || n.stopping {
		n.mu.Unlock()
		return errors.New("eddy: node already started")
	}
	n.starting = true
	n.owner = n.cfg.NodeID + "/" + nuid.Next()
	n.mu.Unlock()
	defer func() {
		if err != nil {
			n.stopCluster(0)
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		n.starting = false
		if err != nil {
			n.shutdown(context.Background())
			return
		}
		n.running = true
	}()
	if err := n.connect(ctx); err != nil {
		return err
	}
	n.mu.Lock()
	n.cache = statestore.NewCache(n.cfg.CacheSize)
	n.sys = actor.NewSystem(n.log)
	n.actives, n.replicas, n.stoppedAt = map[pkey]*activeSlot{}, map[pkey]*partition.Replica{}, map[pkey]uint64{}
	n.releasing = map[pkey]*partition.Actor{}
	n.replSubs = map[pkey]*nats.Subscription{}
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
		n.apply(ctx, n.allPartitions(), nil)
	}
	n.log.Info("node started", "nats", redactURL(n.nc.ConnectedUrl()), "http", n.httpAddr, "types", n.order, "cluster", n.cfg.clustered())
	return nil
}

// connect connects to NATS, starting the embedded server if no URL is set,
// waits for JetStream and makes the input, dead-letter and output streams
// exist. It waits through NATS and JetStream not being up yet, within
// Config.NATSWait and ctx (natsconn.go).
func (n *Node) connect(ctx context.Context) error {
	if err := os.MkdirAll(n.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	url := n.cfg.NATSURL
	if url == "" {
		var err error
		if url, err = n.startEmbeddedNATS(); err != nil {
			return err
		}
	}
	opts := append([]nats.Option{
		nats.Name("eddy " + n.cfg.NodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond),
		// Fail publishes while disconnected instead of buffering them: a commit
		// must know whether it reached the server.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: the node closed the connection itself
				n.log.Warn("NATS disconnected; partitions retry until it is back", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { n.log.Info("NATS reconnected", "url", c.ConnectedUrl()) }),
	}, n.cfg.NATSOptions...)
	w, ctx, cancel := n.natsWait(ctx, url)
	defer cancel()
	nc, err := w.connect(ctx, url, opts)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(jsAPITimeout))
	if err != nil {
		nc.Close()
		return err
	}
	n.mu.Lock()
	n.nc, n.js = nc, js
	n.mu.Unlock()
	if err := w.awaitJetStream(ctx, nc, js); err != nil {
		return err
	}
	return n.ensureStreams(ctx, w, nc, js)
}

func (n *Node) supervisor() actor.SupervisorConfig {
	s := actor.DefaultSupervisorConfig()
	s.MinBackoff, s.MaxBackoff = 50*time.Millisecond, 2*time.Second // NATS coming back is noticed within 2 s
	return s
}

func (n *Node) startEmbeddedNATS() (string, error) {
	opts := &server.Options{
		ServerName: "eddy-" + n.cfg.NodeID,
		Host:       n.cfg.EmbeddedNATSHost,
		Port:       n.cfg.EmbeddedNATSPort,
		JetStream:  true,
		StoreDir:   filepath.Join(n.cfg.DataDir, "nats"),
		NoSigs:     true,
		NoLog:      true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return "", fmt.Errorf("embedded NATS: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return "", fmt.Errorf("embedded NATS did not start on %s:%d", opts.Host, opts.Port)
	}
	n.srv = srv
	n.log.Info("embedded NATS server started", "url", srv.ClientURL(), "store", opts.StoreDir)
	return srv.ClientURL(), nil
}

// redactURL hides a password in a NATS URL (or a comma-separated list of them).
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
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

// Stop stops the node. In a cluster it first leaves gracefully (within
// Config.LeaveTimeout): the assignor moves its active partitions to other
// nodes, each handed over after its batch in hand is committed. Then it
// stops the partition actors and replicas, HTTP, the NATS connection and the
// embedded server.
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

// stopCluster leaves the cluster (gracefully when leave > 0, else as a
// crash would look to the others), stops following the assignment and the
// control subjects. n.mu is not held.
func (n *Node) stopCluster(leave time.Duration) error {
	n.mu.Lock()
	cl := n.cl
	n.mu.Unlock()
	var errs []error
	if cl != nil {
		if leave > 0 {
			errs = append(errs, cl.Leave(leave))
			n.awaitHandovers(cl)
		} else {
			errs = append(errs, cl.Shutdown())
		}
	}
	if n.loopCancel != nil {
		n.loopCancel()
		<-n.loopDone
		n.loopCancel = nil
	}
	for _, s := range n.ctlSubs {
		_ = s.Unsubscribe()
	}
	n.ctlSubs = nil
	n.wg.Wait()
	n.mu.Lock()
	n.cl = nil
	n.mu.Unlock()
	return errors.Join(errs...)
}

// awaitHandovers waits, up to releaseTimeout, until the new owners of the
// partitions still active here have asked for them (handleRelease), after a
// leave gave them to other live nodes.
func (n *Node) awaitHandovers(cl *cluster.Cluster) {
	deadline := time.Now().Add(releaseTimeout)
	for time.Now().Before(deadline) {
		m := cl.Assignment()
		n.mu.Lock()
		waiting := len(n.releasing) > 0
		for k := range n.actives {
			if p, ok := m.Partition(k.typ, k.p); ok && p.Active != n.cfg.NodeID {
				if ni, ok := m.Node(p.Active); ok && ni.Alive() {
					waiting = true
				}
			}
		}
		n.mu.Unlock()
		if !waiting {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *Node) shutdown(ctx context.Context) error {
	var errs []error
	if n.http != nil {
		errs = append(errs, n.http.Shutdown(ctx))
		<-n.httpDone
		n.http = nil
	}
	for k, s := range n.actives {
		n.dropActive(k, s)
	}
	for k := range n.replicas {
		n.dropReplica(k)
	}
	if n.sys != nil {
		errs = append(errs, n.sys.Stop(ctx))
		n.sys = nil
	}
	if n.cache != nil {
		n.cache.Close()
		n.cache = nil
	}
	if n.nc != nil {
		n.nc.Close()
		n.nc = nil
	}
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
	n.log.Info("node stopped")
	return errors.Join(errs...)
}

// route finds the partition of key and the local partition actor that runs
// it, if any.
func (n *Node) route(typ, key string) (pkey, *partition.Actor, *partition.Replica, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return pkey{}, nil, nil, ErrNotRunning
	}
	t, ok := n.types[typ]
	if !ok {
		return pkey{}, nil, nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	k := pkey{typ, partition.Of(key, t.Partitions)}
	var a *partition.Actor
	if s := n.actives[k]; s != nil {
		a = s.a
	}
	return k, a, n.replicas[k], nil
}

// Query decodes the committed state of key in actor type typ into v, read
// from the partition actor that owns the key: on this node, or on another
// node over NATS request/reply. During a move or failover it retries until
// the new owner answers or ctx ends (10 s when ctx has no deadline). It
// returns ErrNotFound when the key has no state.
func (n *Node) Query(ctx context.Context, typ, key string, v any) error {
	return n.QueryStore(ctx, typ, partition.DefaultStore, key, v)
}

// QueryStore decodes the committed value of key in a named store into v.
func (n *Node) QueryStore(ctx context.Context, typ, store, key string, v any) error {
	b, err := n.queryRaw(ctx, typ, store, key)
	if err != nil {
		return err
	}
	return msgpack.Unmarshal(b, v)
}

// QueryWithin is Query for reads that accept state up to maxLag old
// (Lag.Staleness), sparing the owner the read: the nearest hot replica of
// the key's partition whose copy is within the bound answers. The replicas
// are asked in order: the one on this node; those on other nodes in this
// node's zone (Config.Zone); then, when the owner is in another zone, those
// in other zones; each group by the smallest lag the assignor knows, each
// remote replica for at most 250 ms. A replica that is too stale, gone or
// slow passes the read on to the next, and the owner answers the read that
// no replica could, as Query. When the owner runs on this node, it answers
// unless this node's replica is within the bound. It reports whether a
// replica answered.
func (n *Node) QueryWithin(ctx context.Context, typ, key string, maxLag time.Duration, v any) (fromReplica bool, err error) {
	b, by, err := n.queryRawWithin(ctx, typ, partition.DefaultStore, key, maxLag)
	if err != nil {
		return false, err
	}
	return by.replica, msgpack.Unmarshal(b, v)
}

func (n *Node) queryRaw(ctx context.Context, typ, store, key string) ([]byte, error) {
	b, _, err := n.queryRawWithin(ctx, typ, store, key, -1)
	return b, err
}

// answeredBy says who answered a query.
type answeredBy struct {
	replica bool   // a hot replica; else the partition's owner
	node    string // the node that answered; "" when it did not say
}

// role is "replica" or "owner".
func (a answeredBy) role() string {
	if a.replica {
		return "replica"
	}
	return "owner"
}

// queryRawWithin reads key from the nearest hot replica within maxLag
// (maxLag < 0: none; see QueryWithin), else from the owner, and says which
// answered.
func (n *Node) queryRawWithin(ctx context.Context, typ, store, key string, maxLag time.Duration) ([]byte, answeredBy, error) {
	k, a, r, err := n.route(typ, key)
	if err != nil {
		return nil, answeredBy{}, err
	}
	if store != partition.DefaultStore && !slices.Contains(n.types[typ].Stores, store) {
		return nil, answeredBy{}, fmt.Errorf("%w: actor type %s has no store %q", ErrNotFound, typ, store)
	}
	if r != nil && maxLag >= 0 && r.Lag().Staleness(time.Now()) <= maxLag {
		v, _, err := r.Get(ctx, store, []byte(key))
		if err == nil || errors.Is(err, ErrNotFound) {
			return v, answeredBy{replica: true, node: n.cfg.NodeID}, err
		}
	}
	if a == nil && maxLag >= 0 {
		v, node, err := n.queryReplicas(ctx, k, store, key, maxLag)
		if node != "" || err != nil {
			return v, answeredBy{replica: true, node: node}, err
		}
	}
	v, node, err := n.queryOwner(ctx, k, a, store, key)
	return v, answeredBy{node: node}, err
}

// queryOwner reads key from the partition's owner: a, when it runs here, or
// the node that runs it; it returns the node that answered too.
func (n *Node) queryOwner(ctx context.Context, k pkey, a *partition.Actor, store, key string) ([]byte, string, error) {
	if a != nil {
		v, err := a.Get(ctx, store, []byte(key))
		if err == nil || errors.Is(err, ErrNotFound) || !n.cfg.clustered() ||
			errors.Is(err, ErrUnavailable) && a.Status().State != partition.StateStopped {
			return v, n.cfg.NodeID, err
		}
		// The actor stopped under the query (moved away): ask its new owner.
	}
	if !n.cfg.clustered() {
		return nil, "", fmt.Errorf("eddy: partition %s is not running", k)
	}
	return n.queryRemote(ctx, k, store, key)
}

// PartitionStatus is the progress of one partition actor.
type PartitionStatus = partition.Status

// Status returns the progress of every partition actor on this node as of
// its last commit, by type and partition; partitions still restoring report
// Running false.
func (n *Node) Status() ([]PartitionStatus, error) {
	n.mu.Lock()
	if !n.running {
		n.mu.Unlock()
		return nil, ErrNotRunning
	}
	all := make([]*partition.Actor, 0, len(n.actives))
	for _, s := range n.actives {
		all = append(all, s.a)
	}
	n.mu.Unlock()
	out := make([]PartitionStatus, 0, len(all))
	for _, a := range all {
		out = append(out, a.Status())
	}
	slices.SortFunc(out, func(a, b PartitionStatus) int {
		return cmp.Or(strings.Compare(a.Type, b.Type), cmp.Compare(a.Partition, b.Partition))
	})
	return out, nil
}

func (n *Node) serveHTTP() error {
	ln, err := net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	n.httpAddr = ln.Addr().String()
	srv := &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	n.http, n.httpDone = srv, done
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("http server", "err", err)
		}
	}()
	return nil
}

// ID is the node's id (Config.NodeID).
func (n *Node) ID() string { return n.cfg.NodeID }
