package eddy

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/partition"
)

// pkey names a partition of an actor type.
type pkey struct {
	typ string
	p   int
}

func (k pkey) String() string { return k.typ + "/" + strconv.Itoa(k.p) }

// placement is what this node should run for one partition: the active
// partition actor at an epoch, or a hot replica.
type placement struct {
	active bool
	epoch  uint64 // active only; 0 on a single node: "newest + 1"
	// from is the node that was active before this node, when this node
	// takes the partition over from another live node (a handover).
	from string
}

// activeSlot is a running partition actor with its query responder.
type activeSlot struct {
	a     *partition.Actor
	epoch uint64
	sub   *nats.Subscription
	// releaseBy is set when the partition moved to another live node: the
	// actor goes on until the new owner asks for the partition (handleRelease),
	// or until releaseBy if it never does.
	releaseBy time.Time
	// down is set once the actor has stopped for good at the epoch the
	// assignment still gives it (fenced): the slot stays, and says why.
	down bool
	// givenBack is set once the partition was given back to the assignor
	// at this epoch.
	givenBack bool
}

// releaseTimeout bounds how long a new owner waits for the old owner to
// commit and stop before it starts anyway: fencing keeps the old owner from
// committing after that, so the wait only saves the old owner's work.
const releaseTimeout = 3 * time.Second

// apply makes the running partition actors and hot replicas match want:
// first it stops what must stop (in parallel, each committing its batch in
// hand), then it starts what must start. A partition's active and replica
// share its store directory, so a promotion stops the replica before the
// active starts on the replica's store. A partition handed over to another
// live node (in handover) keeps running until that node asks for it, so the
// pause of a planned move starts only when the new owner is ready.
func (n *Node) apply(ctx context.Context, want map[pkey]placement, handover map[pkey]bool) {
	n.mu.Lock()
	var stops []func()
	for k, s := range n.actives {
		w, ok := want[k]
		select {
		case <-s.a.Done():
			// Stopped by itself: fenced, or released to a new owner.
			if ok && w.active && w.epoch == s.epoch && s.a.Err() != nil {
				// Nothing here can fix this: only a new epoch from the
				// assignor. The slot stays, so that status and queries say
				// why the partition does not run, until the assignment changes.
				if !s.down {
					s.down = true
					n.partitionDown(ctx, k, s)
				}
				continue
			}
			n.log.Info("partition actor stopped", "partition", k.String(), "epoch", s.epoch, "err", s.a.Err())
			n.dropActive(k, s)
			continue
		default:
		}
		if ok && w.active && w.epoch == s.epoch {
			continue
		}
		switch {
		case ok && w.active:
			s.releaseBy = time.Time{} // back here at a newer epoch: restart now
		case handover[k] && s.releaseBy.IsZero():
			s.releaseBy = time.Now().Add(releaseTimeout)
		}
		if !s.releaseBy.IsZero() && time.Now().Before(s.releaseBy) {
			continue // until the new owner asks (handleRelease)
		}
		n.dropActive(k, s)
		n.releasing[k] = s.a
		why := "assigned elsewhere"
		if ok && w.active {
			why = fmt.Sprintf("new epoch %d", w.epoch)
		}
		stops = append(stops, func() {
			start := time.Now()
			err := n.release(ctx, k, s.a)
			if ok && w.active {
				// Restarting here: the new incarnation opens the same store.
				select {
				case <-s.a.Done():
				case <-ctx.Done():
				}
			}
			if err != nil {
				n.log.Warn("partition actor did not stop", "partition", k.String(), "err", err)
				return
			}
			n.log.Info("partition actor stopped", "partition", k.String(), "epoch", s.epoch, "why", why,
				"took", time.Since(start).Round(time.Millisecond))
		})
	}
	for k, r := range n.replicas {
		if _, ok := want[k]; ok {
			// Kept, or promoted: startActive takes its open store.
			select {
			case <-r.Done():
			default:
				continue
			}
		}
		n.dropReplica(k)
		stops = append(stops, func() {
			if err := r.Stop(ctx); err != nil {
				n.log.Warn("hot replica did not stop", "partition", k.String(), "err", err)
			}
		})
	}
	n.mu.Unlock()
	runAll(stops)

	var starts []func()
	n.mu.Lock()
	for k, w := range want {
		t := n.types[k.typ]
		if t == nil {
			continue // declared by other nodes only
		}
		switch {
		case !w.active && n.replicas[k] == nil && n.actives[k] == nil && !n.storeBusy(k):
			// (A partition being handed over gets its replica here once released.)
			r, err := partition.StartReplica(n.sys, n.partitionConfig(t, k.p, 0), n.supervisor())
			if err != nil {
				n.log.Error("cannot start hot replica", "partition", k.String(), "err", err)
				continue
			}
			n.addReplica(k, r)
		case w.active && n.actives[k] == nil && !n.storeBusy(k):
			if w.epoch != 0 && n.stoppedAt[k] >= w.epoch {
				continue // fenced or released at this epoch: wait for a newer one
			}
			n.stopReplicaQueries(k) // a promotion takes the replica's store: it reads for no one else
			starts = append(starts, func() { n.startActive(ctx, t, k, w) })
		}
	}
	n.mu.Unlock()
	runAll(starts)
}

// release asks partition actor a of k to commit its batch in hand and stop
// (partition.Actor.Release), and returns once a has committed for the last
// time. k stays in n.releasing until a has stopped and closed its store
// (storeBusy), at most releaseTimeout. n.mu is not held.
func (n *Node) release(ctx context.Context, k pkey, a *partition.Actor) error {
	err := a.Release(ctx)
	n.wg.Go(func() {
		t := time.NewTimer(releaseTimeout)
		defer t.Stop()
		select {
		case <-a.Done():
		case <-t.C:
			n.log.Warn("released partition actor has not stopped", "partition", k.String())
		}
		n.mu.Lock()
		if n.releasing[k] == a {
			delete(n.releasing, k)
		}
		n.mu.Unlock()
	})
	return err
}

// storeBusy says whether a released partition actor of k still has the
// partition's local store open; n.mu is held.
func (n *Node) storeBusy(k pkey) bool {
	a := n.releasing[k]
	if a == nil {
		return false
	}
	select {
	case <-a.Done():
		return false
	default:
		return true
	}
}

// dropActive forgets a partition actor; n.mu is held.
func (n *Node) dropActive(k pkey, s *activeSlot) {
	if s.sub != nil {
		_ = s.sub.Unsubscribe()
	}
	if s.epoch != 0 {
		n.stoppedAt[k] = max(n.stoppedAt[k], s.epoch)
	}
	delete(n.actives, k)
}

// startActive starts the partition actor for k at w.epoch, after asking the
// previous owner to release the partition when there is one.
func (n *Node) startActive(ctx context.Context, t *ActorType, k pkey, w placement) {
	var through uint64 // the previous owner's last changelog sequence, when known
	if w.from != "" {
		start := time.Now()
		seq, err := n.requestRelease(ctx, w.from, k, w.epoch)
		if err != nil {
			n.log.Warn("previous owner did not confirm the handover; starting anyway (fencing stops it)",
				"partition", k.String(), "from", w.from, "err", err)
		} else {
			through = seq
			n.log.Info("previous owner released the partition", "partition", k.String(), "from", w.from,
				"changelog_seq", seq, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	cfg := n.partitionConfig(t, k.p, w.epoch)
	n.mu.Lock()
	r := n.replicas[k]
	delete(n.replicas, k)
	n.mu.Unlock()
	if r != nil {
		// A promotion: the replica's store is current (once it has applied
		// the previous owner's last commit) and open.
		h, err := r.Handoff(ctx, through)
		if err != nil {
			n.log.Warn("hot replica did not hand its store over; reopening it", "partition", k.String(), "err", err)
			_ = r.Stop(ctx)
		}
		cfg.Handoff = h
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running && !n.starting || n.actives[k] != nil {
		if cfg.Handoff != nil {
			_ = cfg.Handoff.Close()
		}
		return
	}
	a, err := partition.Start(n.sys, cfg, n.supervisor())
	if err != nil {
		n.log.Error("cannot start partition actor", "partition", k.String(), "err", err)
		return
	}
	s := &activeSlot{a: a, epoch: w.epoch}
	if s.sub, err = n.serveQueries(k, a); err != nil {
		n.log.Warn("partition serves no remote queries", "partition", k.String(), "err", err)
	}
	n.actives[k] = s
	if w.epoch != 0 {
		n.log.Info("partition actor starting", "partition", k.String(), "epoch", w.epoch)
	}
}

// runAll runs fs in parallel and waits for them.
func runAll(fs []func()) {
	var wg sync.WaitGroup
	for _, f := range fs {
		wg.Go(f)
	}
	wg.Wait()
}

func (n *Node) partitionConfig(t *ActorType, p int, epoch uint64) partition.Config {
	c := partition.DefaultConfig()
	c.Type, c.Partition, c.Partitions = t.Name, p, t.Partitions
	c.Epoch, c.Owner = epoch, n.owner
	c.Stores = t.Stores
	c.NoChangelog = t.NoChangelog
	h := t.Handler
	c.Handler = func(tx *partition.Txn) error { return h(&Context{tx: tx}) }
	c.Conn, c.JS = n.nc, n.js
	c.StoreDir = filepath.Join(n.cfg.DataDir, "stores", t.Name, strconv.Itoa(p))
	c.Cache = n.cache
	c.StoreSync = n.cfg.StoreSync
	c.BatchSize, c.Linger = n.cfg.BatchSize, n.cfg.Linger
	c.MaxBatchRecords, c.MaxAttempts = n.cfg.MaxBatchRecords, n.cfg.MaxAttempts
	c.MaxValueSize, c.MaxEventSize = n.cfg.MaxValueSize, n.cfg.MaxEventSize
	c.DLQSubject = partition.DLQSubject(t.Name)
	c.Changelog.Replicas = n.cfg.StreamReplicas
	c.Hooks = n.cfg.Hooks
	c.Logger = n.log
	c.Metrics = n.metrics
	return c
}

// allPartitions is the placement of a single node: every partition of every
// registered type active here, each fencing with the changelog's epoch + 1.
func (n *Node) allPartitions() map[pkey]placement {
	want := map[pkey]placement{}
	for _, name := range n.order {
		for p := range n.types[name].Partitions {
			want[pkey{name, p}] = placement{active: true}
		}
	}
	return want
}
