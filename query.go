package eddy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/partition"
)

// How does a read find the owner? Node.Query hashes the key to its
// partition (partition.Of) and asks, in order:
//
//  1. with MaxStaleness, the hot replica of the partition on this node, then
//     the nearest replicas on other nodes (staleread.go), if their copy is
//     within the bound;
//  2. the partition actor, when it runs on this node;
//  3. else the node that runs it, over NATS request/reply on
//     eddy.query.<type>.<p>: only the partition actor's node subscribes
//     there, so the request reaches the owner wherever it runs, and a move
//     in progress is retried until the new owner answers.
//
// The owner answers from its committed state (partition.Actor.Get); a
// partition that does not run now (retrying, fenced, stopped) answers
// ErrUnavailable at once, with why.

// A QueryOption refines Node.Query.
type QueryOption func(*queryOptions)

type queryOptions struct {
	store  string
	maxLag time.Duration // < 0: the owner answers
	served *Served
}

// InStore reads key from a named store of the actor type (one of
// ActorType.Stores) instead of the key's own state.
func InStore(name string) QueryOption { return func(o *queryOptions) { o.store = name } }

// MaxStaleness accepts state up to d old (partition.Lag.Staleness), sparing
// the owner the read: the nearest hot replica of the key's partition whose
// copy is within d answers. The replicas are asked in order: the one on this
// node; those on other nodes in this node's zone (Config.Zone); then, when
// the owner is in another zone, those in other zones; each group by the
// smallest lag the assignor knows, each remote replica for at most 250 ms. A
// replica that is too stale, gone or slow passes the read on to the next,
// and the owner answers the read that no replica could. When the owner runs
// on this node, it answers unless this node's replica is within the bound.
// A negative d asks the owner.
func MaxStaleness(d time.Duration) QueryOption { return func(o *queryOptions) { o.maxLag = d } }

// ServedBy records in s who answered the query.
func ServedBy(s *Served) QueryOption { return func(o *queryOptions) { o.served = s } }

// Served says who answered a query.
type Served struct {
	// Node is the node that answered; "" when it did not say.
	Node string
	// Replica is set when a hot replica answered, not the partition's owner.
	Replica bool
}

// role is "replica" or "owner".
func (s Served) role() string {
	if s.Replica {
		return "replica"
	}
	return "owner"
}

// Query decodes the committed state of key in actor type typ into v (by
// default the key's own state; InStore for a named store). The partition
// actor that owns the key answers, on this node or on another one over NATS
// request/reply; with MaxStaleness a hot replica may answer instead. During
// a move or failover it retries until the new owner answers or ctx ends (10
// s when ctx has no deadline). It returns ErrNotFound when the key has no
// state, ErrUnavailable at once when its partition does not run now.
func (n *Node) Query(ctx context.Context, typ, key string, v any, opts ...QueryOption) error {
	b, err := n.queryRaw(ctx, typ, key, opts...)
	if err != nil {
		return err
	}
	return msgpack.Unmarshal(b, v)
}

// queryRaw is Query without the decoding.
func (n *Node) queryRaw(ctx context.Context, typ, key string, opts ...QueryOption) ([]byte, error) {
	o := queryOptions{store: partition.DefaultStore, maxLag: -1}
	for _, opt := range opts {
		opt(&o)
	}
	b, by, err := n.query(ctx, typ, key, o.store, o.maxLag)
	if o.served != nil {
		*o.served = by
	}
	return b, err
}

// query reads key from the nearest hot replica within maxLag (maxLag < 0:
// none), else from the owner, and says which answered.
func (n *Node) query(ctx context.Context, typ, key, store string, maxLag time.Duration) ([]byte, Served, error) {
	k, a, r, err := n.route(typ, key)
	if err != nil {
		return nil, Served{}, err
	}
	if store != partition.DefaultStore && !slices.Contains(n.types[typ].Stores, store) {
		return nil, Served{}, fmt.Errorf("%w: actor type %s has no store %q", ErrNotFound, typ, store)
	}
	if n.types[typ].external() {
		// Every node reads the committed rows: no owner to ask.
		v, err := n.queryExternal(ctx, k, store, key)
		return v, Served{Node: n.cfg.NodeID}, err
	}
	if r != nil && maxLag >= 0 && r.Lag().Staleness(time.Now()) <= maxLag {
		v, _, err := r.Get(ctx, store, []byte(key))
		if err == nil || errors.Is(err, ErrNotFound) {
			return v, Served{Replica: true, Node: n.cfg.NodeID}, err
		}
	}
	if a == nil && maxLag >= 0 {
		v, node, err := n.queryReplicas(ctx, k, store, key, maxLag)
		if node != "" || err != nil {
			return v, Served{Replica: true, Node: node}, err
		}
	}
	v, node, err := n.queryOwner(ctx, k, a, store, key)
	return v, Served{Node: node}, err
}

// route finds the partition of key, and its partition actor and hot
// replica on this node, if any.
func (n *Node) route(typ, key string) (pkey, *partition.Actor, *partition.Replica, error) {
	n.mu.Lock()
	running, r := n.running, n.rec
	n.mu.Unlock()
	if !running || r == nil {
		return pkey{}, nil, nil, ErrNotRunning
	}
	t, ok := n.types[typ]
	if !ok {
		return pkey{}, nil, nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	k := pkey{typ, partition.Of(key, t.Partitions)}
	v := r.view.Load()
	return k, v.actives[k], v.replicas[k], nil
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
		return nil, "", fmt.Errorf("%w: partition %s is not running", ErrUnavailable, k)
	}
	return n.queryRemote(ctx, k, store, key)
}

func querySubject(k pkey) string { return "eddy.query." + k.typ + "." + fmt.Sprint(k.p) }

// queryReq asks the node running a partition, or a hot replica of it, for a
// committed value.
type queryReq struct {
	Store string `msgpack:"s"`
	Key   string `msgpack:"k"`
	// MaxLag is how stale a replica's copy may be (replica reads only).
	MaxLag time.Duration `msgpack:"l,omitempty"`
}

// respondQuery answers a query, naming this node as the one that answered.
func (n *Node) respondQuery(m *nats.Msg, data []byte, err error) {
	r := reply(m, data, err)
	r.Header.Set(headerNode, n.cfg.NodeID)
	_ = m.RespondMsg(r)
}

// serveQueries answers queries of partition k from other nodes.
func (n *Node) serveQueries(k pkey, a *partition.Actor) (*nats.Subscription, error) {
	return n.nc.Subscribe(querySubject(k), func(m *nats.Msg) {
		var req queryReq
		if err := msgpack.Unmarshal(m.Data, &req); err != nil {
			n.respondQuery(m, nil, fmt.Errorf("query: %w", err))
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
		defer cancel()
		v, err := a.Get(ctx, req.Store, []byte(req.Key))
		n.respondQuery(m, v, err)
	})
}

// queryRemote asks the node running partition k, retrying while no node
// serves it (a move or failover in progress) until ctx ends. It returns the
// answering node's id too ("" from a node that does not name itself).
func (n *Node) queryRemote(ctx context.Context, k pkey, store, key string) ([]byte, string, error) {
	b, err := msgpack.Marshal(queryReq{Store: store, Key: key})
	if err != nil {
		return nil, "", err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	wait := 20 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, ctlTimeout)
		resp, err := n.nc.RequestWithContext(rctx, querySubject(k), b)
		cancel()
		switch {
		case err == nil && resp.Header.Get(headerNotFound) != "":
			return nil, resp.Header.Get(headerNode), ErrNotFound
		case err == nil && resp.Header.Get(headerUnavailable) != "":
			// The owner runs the partition's slot but not the partition: say why at once.
			return nil, resp.Header.Get(headerNode), fmt.Errorf("%w: on node %s: %s", ErrUnavailable,
				resp.Header.Get(headerNode), strings.TrimPrefix(resp.Header.Get(headerUnavailable), ErrUnavailable.Error()+": "))
		case err == nil && resp.Header.Get(headerError) == "":
			return resp.Data, resp.Header.Get(headerNode), nil
		case err == nil:
			err = errors.New(resp.Header.Get(headerError))
		case !n.nc.IsConnected():
			// The owner cannot be reached before NATS is back: say so at once.
			return nil, "", fmt.Errorf("%w: %s: this node is not connected to NATS (%s): %v", ErrUnavailable, k, n.nc.Status(), err)
		}
		select {
		case <-ctx.Done():
			return nil, "", fmt.Errorf("eddy: query %s: %w (last: %v)", k, ctx.Err(), err)
		case <-time.After(wait):
			wait = min(2*wait, 500*time.Millisecond)
		}
	}
}
