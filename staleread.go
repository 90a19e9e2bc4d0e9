package eddy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
)

// Bounded-staleness reads (Node.Query with MaxStaleness, GET /v1/state/...?max_lag=):
// every hot replica of a cluster member serves reads of its copy on a subject
// of its own, and a read that accepts maxLag of staleness asks the nearest
// replicas first and the owner last.

// errTooStale is a hot replica's refusal of a read: its copy may be older
// than the read's bound.
var errTooStale = errors.New("eddy: replica copy too stale")

// replicaQueryTimeout bounds one read from a hot replica on another node, so
// that a replica that is gone or stuck delays the read by at most this
// before the next candidate is asked: a round trip over a LAN takes well
// under a millisecond, and a replica's read is a local store lookup.
const replicaQueryTimeout = 250 * time.Millisecond

// replicaQuerySubject is where the hot replica of partition k on node serves
// bounded-staleness reads.
func replicaQuerySubject(k pkey, node string) string {
	return "eddy.rquery." + k.typ + "." + strconv.Itoa(k.p) + "." + node
}

// serveReplicaQueries answers other nodes' bounded-staleness reads of
// partition k from its hot replica r: the value (or not found) when r's copy
// is at most the request's MaxLag stale (partition.Lag.Staleness), else
// errTooStale. A replica that stopped (or was promoted) under a read
// answers with an error; either way the reader asks its next candidate.
func (n *Node) serveReplicaQueries(k pkey, r *partition.Replica) (*nats.Subscription, error) {
	return n.nc.Subscribe(replicaQuerySubject(k, n.cfg.NodeID), func(m *nats.Msg) {
		var req queryReq
		if err := msgpack.Unmarshal(m.Data, &req); err != nil {
			n.respondQuery(m, nil, fmt.Errorf("replica query: %w", err))
			return
		}
		lag := r.Lag()
		if s := lag.Staleness(time.Now()); s > req.MaxLag {
			err := fmt.Errorf("%w: lag not measured yet", errTooStale)
			if lag.Known() {
				err = fmt.Errorf("%w: up to %v stale, bound %v", errTooStale, s, req.MaxLag)
			}
			n.respondQuery(m, nil, err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
		defer cancel()
		v, _, err := r.Get(ctx, req.Store, []byte(req.Key))
		n.respondQuery(m, v, err)
	})
}

// queryReplicas asks the hot replicas of partition k on other nodes for key,
// nearest first (nearestReplicas), each for at most replicaQueryTimeout, and
// returns the first answer within maxLag: the value or ErrNotFound, and the
// node that answered. node is "" (and err nil) when none answered: the
// caller asks the owner.
func (n *Node) queryReplicas(ctx context.Context, k pkey, store, key string, maxLag time.Duration) (v []byte, node string, err error) {
	n.mu.Lock()
	cl := n.cl
	n.mu.Unlock()
	if cl == nil {
		return nil, "", nil
	}
	m := cl.Assignment()
	pa, ok := m.Partition(k.typ, k.p)
	if !ok {
		return nil, "", nil
	}
	candidates := nearestReplicas(m, pa, n.cfg.NodeID, n.cfg.Zone)
	if len(candidates) == 0 {
		return nil, "", nil
	}
	req, err := msgpack.Marshal(queryReq{Store: store, Key: key, MaxLag: maxLag})
	if err != nil {
		return nil, "", err
	}
	for _, node := range candidates {
		rctx, cancel := context.WithTimeout(ctx, replicaQueryTimeout)
		resp, err := n.nc.RequestWithContext(rctx, replicaQuerySubject(k, node), req)
		cancel()
		var why string
		switch {
		case err != nil: // no responders (not started, or gone), or a timeout
			why = err.Error()
		case resp.Header.Get(headerNotFound) != "":
			return nil, node, ErrNotFound
		case resp.Header.Get(headerTooStale) != "":
			why = resp.Header.Get(headerTooStale)
		case resp.Header.Get(headerError) != "":
			why = resp.Header.Get(headerError)
		default:
			return resp.Data, node, nil
		}
		n.log.Debug("hot replica did not answer a bounded-staleness read; asking the next",
			"partition", k.String(), "replica", node, "why", why)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", nil
}

// nearestReplicas lists the nodes whose hot replicas of partition pa a read
// from node self in zone asks, in order: the replicas in self's zone, then,
// unless the owner is in self's zone (it is then nearer than any other zone,
// and the caller asks it next), the replicas in other zones. Within a zone
// group the replica with the smallest lag the assignor knows comes first
// (unreported lags last). self's own replica and replicas on nodes that are
// not alive are left out.
func nearestReplicas(m cluster.Model, pa cluster.PartitionAssignment, self, zone string) []string {
	inZone := func(id string) bool {
		ni, ok := m.Node(id)
		return ok && ni.Zone == zone
	}
	var near, far []cluster.Replica
	for _, r := range pa.Replicas {
		if ni, ok := m.Node(r.Node); r.Node == self || !ok || !ni.Alive() {
			continue
		}
		if inZone(r.Node) {
			near = append(near, r)
		} else {
			far = append(far, r)
		}
	}
	if pa.Active != "" && inZone(pa.Active) {
		far = nil
	}
	byLag := func(a, b cluster.Replica) int {
		known := func(r cluster.Replica) int {
			if r.LagKnown() {
				return 0
			}
			return 1
		}
		return cmp.Or(cmp.Compare(known(a), known(b)), cmp.Compare(a.Behind, b.Behind),
			cmp.Compare(a.Lag, b.Lag), strings.Compare(a.Node, b.Node))
	}
	slices.SortFunc(near, byLag)
	slices.SortFunc(far, byLag)
	nodes := make([]string, 0, len(near)+len(far))
	for _, r := range append(near, far...) {
		nodes = append(nodes, r.Node)
	}
	return nodes
}
