package eddy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
)

// A partition that cannot run is never left dead in silence. A partition
// actor that stops for good at the epoch its assignment gives it (another
// owner holds its changelog at a newer epoch, or at the same one) keeps its
// slot: /v1/status, /v1/cluster and `node status` say why, and queries of
// its keys answer ErrUnavailable at once. In a cluster the node gives the
// partition back to the assignor, which places it again at a new epoch
// (above the changelog's). A partition actor that keeps failing for
// Config.GiveBackAfter while the node is connected to NATS — a fault of this
// node, not of NATS — is given back too, with Avoid: the assignor does not
// place that partition's active on this node again until it restarts, so
// that the partition does not flap between this node and the others. A
// hot replica failing as long is given back the same way (GiveBackReplica):
// the assignor moves it elsewhere, and cancels a warm-up move here, which
// would wait for it forever. Failures while NATS is away are retried in
// place: every node is in the same boat, and moving partitions would not
// help.

// partitionDown reports a partition actor that stopped for good at the
// epoch the assignment gives it, and gives the partition back.
func (r *reconciler) partitionDown(k pkey, s *activeSlot) {
	err := s.a.Err()
	r.n.log.Error("partition cannot run at the epoch the assignment gives it", "partition", k.String(), "epoch", s.epoch, "err", err)
	var minEpoch uint64
	why := err.Error()
	if fe := (*partition.FenceError)(nil); errors.As(err, &fe) {
		minEpoch, why = fe.By.Epoch, fe.Error()
	}
	if externalDown(err) {
		return // every node would refuse it: it stays here, stopped, saying why
	}
	// State of a newer version than this node's: only a node that runs the
	// newer version can take it, so the assignor keeps it off this one.
	avoid := errors.Is(err, partition.ErrStateVersion)
	r.giveBack(k, s, minEpoch, avoid, why) // else the changelog's doing, not this node's
}

// checkHealth gives back the partitions and hot replicas that have been
// failing for GiveBackAfter or longer while this node is connected to NATS:
// a fault of this node's own, so the assignor is told to avoid it.
func (r *reconciler) checkHealth() {
	if r.cl == nil || !r.n.nc.IsConnected() {
		return
	}
	failing := func(since time.Time, err string) string {
		return fmt.Sprintf("failing for %v with NATS connected: %s", time.Since(since).Round(time.Second), err)
	}
	for k, s := range r.actives {
		if st := s.a.Status(); st.State == partition.StateRetrying && time.Since(st.Since) >= r.n.cfg.GiveBackAfter {
			r.giveBack(k, s, 0, true, failing(st.Since, st.Err))
		}
	}
	for k, s := range r.replicas {
		if since, err, ok := s.r.Failing(); ok && time.Since(since) >= r.n.cfg.GiveBackAfter {
			r.giveBackReplica(k, s, failing(since, err))
		}
	}
}

// giveBackReplica tells the assignor, once per replica slot, that this node
// cannot keep its hot replica of partition k: the partition avoids this
// node until it restarts.
func (r *reconciler) giveBackReplica(k pkey, s *replicaSlot, why string) {
	if s.givenBack || r.cl == nil {
		return
	}
	s.givenBack = true
	r.n.log.Warn("giving the hot replica back to the assignor", "partition", k.String(), "why", why)
	g := cluster.GiveBackReplica{Node: r.n.cfg.NodeID, Type: k.typ, Partition: k.p, Reason: why}
	r.tellAssignor(k, func(ctx context.Context) error { return r.cl.GiveBackReplica(ctx, g) })
}

// giveBack tells the assignor, once per slot, that this node cannot run
// partition k at its epoch (with avoid, for a fault of its own: the
// assignor keeps the partition off this node until it restarts).
func (r *reconciler) giveBack(k pkey, s *activeSlot, minEpoch uint64, avoid bool, why string) {
	if s.givenBack || r.cl == nil {
		return
	}
	s.givenBack = true
	g := cluster.GiveBack{Node: r.n.cfg.NodeID, Type: k.typ, Partition: k.p, Epoch: s.epoch, MinEpoch: minEpoch, Reason: why, Avoid: avoid}
	r.n.log.Warn("giving the partition back to the assignor", "partition", k.String(), "epoch", s.epoch, "min_epoch", minEpoch, "avoid", avoid, "why", why)
	r.tellAssignor(k, func(ctx context.Context) error { return r.cl.GiveBack(ctx, g) })
}

// tellAssignor sends a give-back of partition k to the leader in a worker,
// retrying until the leader has it (or refuses it as stale: the assignment
// moved on) or the node stops.
func (r *reconciler) tellAssignor(k pkey, send func(ctx context.Context) error) {
	n, ctx := r.n, r.ctx
	r.workers.Go(func() {
		wait := 100 * time.Millisecond
		for {
			rctx, cancel := context.WithTimeout(ctx, ctlTimeout)
			err := send(rctx)
			cancel()
			switch {
			case err == nil:
				return
			case errors.Is(err, cluster.ErrStale), errors.Is(err, errLeaderRefused):
				n.log.Info("give-back not applied: the assignment moved on", "partition", k.String(), "err", err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
				wait = min(2*wait, 2*time.Second)
			}
		}
	})
}
