package eddy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/cluster"
)

// Where does a partition move? The assignor (cluster/) decides, and the
// reconciler of each node (reconcile.go) follows its decision. When the
// assignment gives a partition that runs on a live node to another node
// (a warm-up move, a node leaving), the two hand it over:
//
//  1. The old owner keeps processing until the new owner asks for the
//     partition, for releaseTimeout at most.
//  2. The new owner asks (eddy.ctl.<old>.release, with its new epoch); the
//     old owner commits its batch in hand, stops, and answers with the last
//     changelog sequence it committed.
//  3. The new owner's hot replica applies the changelog through that
//     sequence and hands its open store to the new partition actor, which
//     fences the changelog with its epoch and goes on from the committed
//     offset: the pause is one commit and one fence.
//
// If the old owner does not answer (it crashed, or NATS is slow), the new
// owner starts anyway: fencing keeps the old owner from committing again.

// releaseReq asks the node running a partition to commit and stop it.
type releaseReq struct {
	Type      string `msgpack:"t"`
	Partition int    `msgpack:"p"`
	Epoch     uint64 `msgpack:"e"` // the new owner's epoch
}

// releaseResp is the answer to a releaseReq: the last changelog sequence
// the released actor committed (0 when the partition did not run there).
type releaseResp struct {
	Seq uint64 `msgpack:"s"`
}

// requestRelease asks node from to commit and stop partition k before this
// node starts it at epoch, and returns the last changelog sequence it
// committed (0 if unknown).
func (n *Node) requestRelease(ctx context.Context, from string, k pkey, epoch uint64) (uint64, error) {
	b, err := msgpack.Marshal(releaseReq{Type: k.typ, Partition: k.p, Epoch: epoch})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	resp, err := n.nc.RequestWithContext(ctx, ctlSubject(from, "release"), b)
	if err != nil {
		return 0, err
	}
	if e := resp.Header.Get(headerError); e != "" {
		return 0, errors.New(e)
	}
	var r releaseResp
	if len(resp.Data) > 0 {
		if err := msgpack.Unmarshal(resp.Data, &r); err != nil {
			return 0, fmt.Errorf("release answer: %w", err)
		}
	}
	return r.Seq, nil
}

// handleRelease stops a partition actor that a newer owner takes over: it
// finishes and commits its batch in hand, stops, and then the answer goes
// out with the last changelog sequence it committed.
func (n *Node) handleRelease(m *nats.Msg) {
	var req releaseReq
	if err := msgpack.Unmarshal(m.Data, &req); err != nil {
		respond(m, nil, fmt.Errorf("release: %w", err))
		return
	}
	k := pkey{req.Type, req.Partition}
	r := n.reconciler()
	if r == nil {
		respond(m, nil, nil)
		return
	}
	var c *closing
	var epoch uint64
	r.do(func() { c, epoch = r.releaseTo(k, req.Epoch) })
	if c == nil {
		respond(m, nil, nil) // not running here (any more)
		return
	}
	n.wg.Go(func() {
		start := time.Now()
		<-c.committed // within releaseTimeout
		err := c.err
		if epoch != 0 {
			n.log.Info("partition released to its new owner", "partition", k.String(), "epoch", epoch,
				"new_epoch", req.Epoch, "took", time.Since(start).Round(time.Millisecond), "err", err)
		}
		var b []byte
		if err == nil {
			b, err = msgpack.Marshal(releaseResp{Seq: c.a.Status().ChangelogSeq})
		}
		respond(m, b, err)
	})
}

// releaseTo releases partition k's actor to a new owner at epoch: it
// returns the actor's closing, and the epoch it ran at when this call
// released it (0 when it was stopping already), or nil when k has no
// partition actor here at an older epoch.
func (r *reconciler) releaseTo(k pkey, epoch uint64) (*closing, uint64) {
	if s := r.actives[k]; s != nil && s.epoch < epoch {
		return r.release(k, s, fmt.Sprintf("released to its new owner at epoch %d", epoch)), s.epoch
	}
	for _, c := range r.closing[k] {
		if c.a != nil {
			return c, 0 // already stopping: the answer waits for its last commit
		}
	}
	return nil, 0
}

// awaitHandovers waits, up to releaseTimeout, until the new owners of the
// partitions still active here have asked for them (handleRelease), after a
// leave gave them to other live nodes.
func (n *Node) awaitHandovers(cl *cluster.Cluster, r *reconciler) {
	deadline := time.NewTimer(releaseTimeout)
	defer deadline.Stop()
	changes, unsubscribe := cl.Subscribe()
	defer unsubscribe()
	for {
		v, m := r.view.Load(), cl.Assignment()
		waiting := v.releasing > 0
		for k := range v.actives {
			if p, ok := m.Partition(k.typ, k.p); ok && p.Active != n.cfg.NodeID {
				if ni, ok := m.Node(p.Active); ok && ni.Alive() {
					waiting = true
				}
			}
		}
		if !waiting {
			return
		}
		select {
		case <-v.changed:
		case <-changes:
		case <-deadline.C:
			return
		}
	}
}
