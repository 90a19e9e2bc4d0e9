package eddy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
)

// The partition actors and hot replicas of a node are owned by one
// goroutine, the reconciler's loop. It reconciles them with what the node
// should run — every partition on a single node, the assignment's placements
// for this node in a cluster — and is the only goroutine that starts, stops
// or forgets them. Other goroutines reach it by message (reconciler.do), and
// read the view it publishes after every change (localView) without locks.
// What takes time (a partition actor committing its batch in hand before it
// stops, a new owner waiting for the previous one, a replica handing over
// its store) runs in the reconciler's workers, which report back by message,
// so the loop is always free to answer.

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
	// actor goes on until the new owner asks for the partition (handover.go),
	// or until releaseBy if it never does.
	releaseBy time.Time
	// down is set once the actor has stopped for good at the epoch the
	// assignment still gives it (fenced): the slot stays, and says why.
	down bool
	// givenBack is set once the partition was given back to the assignor
	// at this epoch.
	givenBack bool
}

// replicaSlot is a running hot replica with the responder that serves its
// copy to other nodes' bounded-staleness reads (staleread.go).
type replicaSlot struct {
	r   *partition.Replica
	sub *nats.Subscription
	// givenBack is set once the replica was given back to the assignor.
	givenBack bool
}

// closing is a partition actor or hot replica that is stopping and may
// still hold its partition's local store open.
type closing struct {
	a *partition.Actor // nil for a hot replica
	// committed is closed once a has committed for the last time (its
	// Release returned); err is Release's error, set before.
	committed chan struct{}
	err       error
}

// localView is what runs on the node, as the reconciler last published it.
// It never changes once published.
type localView struct {
	actives   map[pkey]*partition.Actor
	replicas  map[pkey]*partition.Replica
	releasing int // partition actors stopping for a new owner
	starting  int // partition actors being started
	// reconciled is set once the loop has made its first round.
	reconciled bool
	// changed is closed when a newer view replaces this one.
	changed chan struct{}
}

const (
	// reconcileEvery is how often the loop looks again without an
	// assignment change: partition actors that stopped by themselves,
	// handovers whose new owner never asked, partitions to give back.
	reconcileEvery = 200 * time.Millisecond
	// replicaAfterRelease is how long a partition actor's store rests after
	// the actor was released before a hot replica opens it on this node: its
	// open and catch-up would compete for the CPU with the new owner's first
	// commits (node bench failover on 2 shared cores: handover pause p50
	// ~66 ms with the replica opened at once, ~45 ms with this rest).
	replicaAfterRelease = 200 * time.Millisecond
	// replicaAfterNewerVersion is how long a hot replica that stopped at a
	// newer state version than this node's waits before it is started
	// again (partition.ErrStateVersion): one attempt, and one ERROR log, a
	// minute per partition while an upgrade is rolling out.
	replicaAfterNewerVersion = time.Minute
	// releaseTimeout bounds how long a new owner waits for the old owner to
	// commit and stop before it starts anyway: fencing keeps the old owner
	// from committing after that, so the wait only saves the old owner's work.
	releaseTimeout = 3 * time.Second
)

// reconciler owns the partition actors and hot replicas of a node.
type reconciler struct {
	n     *Node
	cl    *cluster.Cluster // nil on a single node
	inbox chan func()
	view  atomic.Pointer[localView]

	ctx     context.Context // ends on close; bounds the workers
	cancel  context.CancelFunc
	done    chan struct{} // closed when run has returned
	workers sync.WaitGroup

	// Owned by run.
	want      map[pkey]placement
	handover  map[pkey]bool // active here in prev, given to another live node
	prev      cluster.Model
	actives   map[pkey]*activeSlot
	replicas  map[pkey]*replicaSlot
	stoppedAt map[pkey]uint64 // newest epoch a partition actor stopped at on this node
	closing   map[pkey][]*closing
	starting  map[pkey]bool
	// replicaAfter holds partitions whose actor was released here: no hot
	// replica opens their store before the time given (replicaAfterRelease).
	replicaAfter map[pkey]time.Time
	// reconciled is set after the first round; dirty when the state
	// changed since the view was last published.
	reconciled, dirty bool
}

// startReconciler starts the loop: on a single node (cl nil) it runs every
// partition of every registered type; in a cluster it follows cl's
// assignment and reports the replicas' lags to the assignor.
func (n *Node) startReconciler(cl *cluster.Cluster) *reconciler {
	ctx, cancel := context.WithCancel(context.Background())
	r := &reconciler{
		n: n, cl: cl, inbox: make(chan func()), ctx: ctx, cancel: cancel, done: make(chan struct{}),
		want: map[pkey]placement{}, handover: map[pkey]bool{},
		actives: map[pkey]*activeSlot{}, replicas: map[pkey]*replicaSlot{}, stoppedAt: map[pkey]uint64{},
		closing: map[pkey][]*closing{}, starting: map[pkey]bool{}, replicaAfter: map[pkey]time.Time{},
	}
	r.publish()
	if cl == nil {
		r.want = n.allPartitions()
	} else {
		lr := &lagReporter{n: n, r: r, cl: cl}
		r.workers.Go(func() { lr.run(ctx) })
	}
	go r.run()
	return r
}

// run is the loop: it owns the reconciler's state until close.
func (r *reconciler) run() {
	defer close(r.done)
	var changes <-chan struct{}
	if r.cl != nil {
		ch, unsubscribe := r.cl.Subscribe()
		defer unsubscribe()
		changes = ch
		r.follow()
	}
	tick := time.NewTicker(reconcileEvery)
	defer tick.Stop()
	for {
		r.reconcile()
		select {
		case <-r.ctx.Done():
			r.forgetAll()
			return
		case f := <-r.inbox:
			f()
			r.dirty = true // requests and workers' reports change the state
		case <-changes:
			r.follow()
		case <-tick.C:
			r.checkHealth()
		}
	}
}

// do runs f on the loop and returns once it has run; false when the
// reconciler has stopped and f did not run. Never call it from the loop.
func (r *reconciler) do(f func()) bool {
	ran := make(chan struct{})
	select {
	case r.inbox <- func() { f(); close(ran) }:
		<-ran
		return true
	case <-r.done:
		return false
	}
}

// post hands f to the loop without waiting for it to run; f is dropped
// once the reconciler has stopped. For the workers.
func (r *reconciler) post(f func()) {
	select {
	case r.inbox <- f:
	case <-r.done:
	}
}

// close stops the loop and the workers. The partition actors and replicas
// are forgotten, not stopped: the node's actor system stops them.
func (r *reconciler) close() {
	r.cancel()
	<-r.done
	r.workers.Wait()
}

// follow reads the assignment's placements for this node.
func (r *reconciler) follow() {
	m := r.cl.Assignment()
	want, handover := placements(r.n.cfg.NodeID, r.cl.Incarnation(), r.prev, m)
	for k, w := range want {
		// A takeover that could not start yet keeps its previous owner.
		if old, ok := r.want[k]; ok && w.active && w.from == "" && old.active && old.epoch == w.epoch && r.actives[k] == nil {
			w.from = old.from
			want[k] = w
		}
	}
	r.want, r.handover, r.prev = want, handover, m
}

// reconcile makes what runs match r.want: it stops what must stop (each
// partition actor committing its batch in hand, in a worker), then starts
// what can start. A partition's active and replica share its store
// directory: nothing starts on a partition while something that holds its
// store is closing, and a promotion takes the replica's open store. A
// partition handed over to another live node keeps running until that node
// asks for it (handover.go), so the pause of a planned move starts only when
// the new owner is ready.
func (r *reconciler) reconcile() {
	changed := r.stopUnwanted()
	if r.startWanted() {
		changed = true
	}
	if changed || r.dirty || !r.reconciled {
		r.reconciled = true
		r.publish()
	}
}

// stopUnwanted stops the partition actors and replicas that r.want does not
// keep, and notices those that stopped by themselves.
func (r *reconciler) stopUnwanted() (changed bool) {
	for k, s := range r.actives {
		w, ok := r.want[k]
		select {
		case <-s.a.Done():
			// Stopped by itself: fenced, or released to a new owner.
			if ok && w.active && w.epoch == s.epoch && s.a.Err() != nil {
				// Nothing here can fix this: only a new epoch from the
				// assignor. The slot stays, so that status and queries say
				// why the partition does not run, until the assignment changes.
				if !s.down {
					s.down = true
					r.partitionDown(k, s)
				}
				continue
			}
			r.n.log.Info("partition actor stopped", "partition", k.String(), "epoch", s.epoch, "err", s.a.Err())
			r.forgetActive(k, s)
			changed = true
			continue
		default:
		}
		if ok && w.active && w.epoch == s.epoch {
			continue
		}
		switch {
		case ok && w.active:
			s.releaseBy = time.Time{} // back here at a newer epoch: restart now
		case r.handover[k] && s.releaseBy.IsZero():
			s.releaseBy = time.Now().Add(releaseTimeout)
		}
		if !s.releaseBy.IsZero() && time.Now().Before(s.releaseBy) {
			continue // until the new owner asks (handover.go)
		}
		why := "assigned elsewhere"
		if ok && w.active {
			why = fmt.Sprintf("new epoch %d", w.epoch)
		}
		r.release(k, s, why)
		changed = true
	}
	for k, s := range r.replicas {
		if _, ok := r.want[k]; ok {
			// Kept, or about to be promoted: the new partition actor takes its open store.
			select {
			case <-s.r.Done():
			default:
				continue
			}
			if err := s.r.Err(); errors.Is(err, partition.ErrStateVersion) {
				// Its changelog holds a newer state version than this node
				// runs: starting it again at once would only stop again, and
				// the assignor should place the replica (and any move of the
				// partition) on a node that runs the newer version.
				r.replicaAfter[k] = time.Now().Add(replicaAfterNewerVersion)
				r.giveBackReplica(k, s, err.Error())
			}
		}
		r.forgetReplica(k)
		c := r.addClosing(k, nil)
		r.workers.Go(func() {
			if err := s.r.Stop(r.ctx); err != nil {
				r.n.log.Warn("hot replica did not stop", "partition", k.String(), "err", err)
			}
			r.post(func() { r.closed(k, c) })
		})
		changed = true
	}
	return changed
}

// startWanted starts the hot replicas and partition actors r.want asks for
// whose store is free.
func (r *reconciler) startWanted() (changed bool) {
	for k, w := range r.want {
		t := r.n.types[k.typ]
		if t == nil || r.actives[k] != nil || r.starting[k] || len(r.closing[k]) > 0 {
			continue // not declared here (other nodes declared it), running, or its store is busy
		}
		switch {
		case !w.active && r.replicas[k] == nil:
			if time.Now().Before(r.replicaAfter[k]) {
				continue // a later round starts it
			}
			delete(r.replicaAfter, k)
			rep, err := partition.StartReplica(r.n.sys, r.n.partitionConfig(t, k.p, 0), r.n.supervisor())
			if err != nil {
				r.n.log.Error("cannot start hot replica", "partition", k.String(), "err", err)
				continue
			}
			r.addReplica(k, rep)
			changed = true
		case w.active:
			if w.epoch != 0 && r.stoppedAt[k] >= w.epoch {
				continue // fenced or released at this epoch: wait for a newer one
			}
			var promote *partition.Replica
			if s := r.replicas[k]; s != nil {
				promote = s.r
				r.forgetReplica(k) // a promotion takes the replica's store: it reads for no one else
			}
			r.starting[k] = true
			r.workers.Go(func() {
				a := r.n.startActive(r.ctx, t, k, w, promote)
				r.post(func() { r.started(k, w, a) })
			})
			changed = true
		}
	}
	return changed
}

// started takes a partition actor a worker started for k at w (nil when it
// could not start: the next round tries again).
func (r *reconciler) started(k pkey, w placement, a *partition.Actor) {
	delete(r.starting, k)
	if a == nil {
		return
	}
	s := &activeSlot{a: a, epoch: w.epoch}
	if now, ok := r.want[k]; !ok || !now.active || now.epoch != w.epoch {
		r.release(k, s, "assignment changed while it started")
		return
	}
	var err error
	if s.sub, err = r.n.serveQueries(k, a); err != nil {
		r.n.log.Warn("partition serves no remote queries", "partition", k.String(), "err", err)
	}
	r.actives[k] = s
	if w.epoch != 0 {
		r.n.log.Info("partition actor starting", "partition", k.String(), "epoch", w.epoch)
	}
}

// release asks partition actor s of k to commit its batch in hand and stop
// (partition.Actor.Release), in a worker; k's store counts as busy until the
// actor has stopped, or for releaseTimeout at most.
func (r *reconciler) release(k pkey, s *activeSlot, why string) *closing {
	r.forgetActive(k, s)
	c := r.addClosing(k, s.a)
	r.workers.Go(func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.ctx, releaseTimeout)
		defer cancel()
		c.err = s.a.Release(ctx)
		close(c.committed)
		if c.err != nil {
			r.n.log.Warn("partition actor did not stop", "partition", k.String(), "err", c.err)
		} else {
			r.n.log.Info("partition actor stopped", "partition", k.String(), "epoch", s.epoch, "why", why,
				"took", time.Since(start).Round(time.Millisecond))
		}
		select {
		case <-s.a.Done():
		case <-ctx.Done():
			if r.ctx.Err() == nil {
				r.n.log.Warn("released partition actor has not stopped", "partition", k.String())
			}
		}
		r.post(func() { r.closed(k, c) })
	})
	return c
}

func (r *reconciler) addClosing(k pkey, a *partition.Actor) *closing {
	c := &closing{a: a, committed: make(chan struct{})}
	r.closing[k] = append(r.closing[k], c)
	return c
}

// closed forgets c: k's store is free of it.
func (r *reconciler) closed(k pkey, c *closing) {
	if c.a != nil {
		r.replicaAfter[k] = time.Now().Add(replicaAfterRelease)
	}
	cs := r.closing[k]
	for i := range cs {
		if cs[i] == c {
			cs = append(cs[:i], cs[i+1:]...)
			break
		}
	}
	if len(cs) == 0 {
		delete(r.closing, k)
	} else {
		r.closing[k] = cs
	}
}

// forgetActive drops a partition actor from the running set and stops
// serving its queries.
func (r *reconciler) forgetActive(k pkey, s *activeSlot) {
	if s.sub != nil {
		_ = s.sub.Unsubscribe()
	}
	if s.epoch != 0 {
		r.stoppedAt[k] = max(r.stoppedAt[k], s.epoch)
	}
	delete(r.actives, k)
}

// addReplica records a started hot replica; in a cluster the replica also
// serves reads of its copy to other nodes.
func (r *reconciler) addReplica(k pkey, rep *partition.Replica) {
	s := &replicaSlot{r: rep}
	r.replicas[k] = s
	if r.cl == nil {
		return
	}
	var err error
	if s.sub, err = r.n.serveReplicaQueries(k, rep); err != nil {
		r.n.log.Warn("hot replica serves no reads to other nodes", "partition", k.String(), "err", err)
	}
}

// forgetReplica drops a hot replica from the running set and stops serving
// its reads; the caller stops it or takes its store.
func (r *reconciler) forgetReplica(k pkey) {
	if s := r.replicas[k]; s != nil && s.sub != nil {
		_ = s.sub.Unsubscribe()
	}
	delete(r.replicas, k)
}

// forgetAll forgets every partition actor and replica (close).
func (r *reconciler) forgetAll() {
	for k, s := range r.actives {
		r.forgetActive(k, s)
	}
	for k := range r.replicas {
		r.forgetReplica(k)
	}
	r.publish()
}

// publish replaces the view with the current state.
func (r *reconciler) publish() {
	v := &localView{
		actives:    make(map[pkey]*partition.Actor, len(r.actives)),
		replicas:   make(map[pkey]*partition.Replica, len(r.replicas)),
		starting:   len(r.starting),
		reconciled: r.reconciled,
		changed:    make(chan struct{}),
	}
	for k, s := range r.actives {
		v.actives[k] = s.a
	}
	for k, s := range r.replicas {
		v.replicas[k] = s.r
	}
	for _, cs := range r.closing {
		for _, c := range cs {
			if c.a != nil {
				v.releasing++
			}
		}
	}
	r.dirty = false
	if old := r.view.Swap(v); old != nil {
		close(old.changed)
	}
}

// settled waits until the loop's first round has started what it could
// (a single node's start), or ctx ends.
func (r *reconciler) settled(ctx context.Context) error {
	for {
		v := r.view.Load()
		if v.reconciled && v.starting == 0 {
			return nil
		}
		select {
		case <-v.changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.done:
			return ErrNotRunning
		}
	}
}

// startActive starts the partition actor for k at w.epoch, after asking the
// previous owner to release the partition when there is one, on the store
// of promote, the partition's hot replica on this node, when there is one.
// It returns nil when the actor could not start. A worker runs it.
func (n *Node) startActive(ctx context.Context, t *ActorType, k pkey, w placement, promote *partition.Replica) *partition.Actor {
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
	if promote != nil {
		// The replica's store is current (once it has applied the previous
		// owner's last commit) and open.
		h, err := promote.Handoff(ctx, through)
		if err != nil {
			n.log.Warn("hot replica did not hand its store over; reopening it", "partition", k.String(), "err", err)
			_ = promote.Stop(ctx)
		}
		cfg.Handoff = h
	}
	if ctx.Err() != nil { // the node is stopping
		if cfg.Handoff != nil {
			_ = cfg.Handoff.Close()
		}
		return nil
	}
	a, err := partition.Start(n.sys, cfg, n.supervisor())
	if err != nil {
		n.log.Error("cannot start partition actor", "partition", k.String(), "err", err)
		return nil
	}
	return a
}

func (n *Node) partitionConfig(t *ActorType, p int, epoch uint64) partition.Config {
	c := partition.DefaultConfig()
	c.Type, c.Partition, c.Partitions = t.Name, p, t.Partitions
	c.KeyedSubjects = t.KeyedSubjects
	c.Inputs = n.inputs
	c.Epoch, c.Owner = epoch, n.owner
	c.Stores = t.Stores
	c.NoChangelog = t.NoChangelog
	c.StateVersion, c.Migrate, c.RebuildOnNewVersion = t.StateVersion, t.Migrate, t.RebuildOnNewVersion
	h := t.Handler
	globals := n.globals
	c.Handler = func(tx *partition.Txn) error { return h(&Context{tx: tx, globals: globals}) }
	c.Ready = n.globalsReady()
	for _, tb := range t.Tables {
		c.Tables = append(c.Tables, n.tableInputs[tb])
	}
	c.CheckTableValue = checkValue
	c.Conn, c.JS = n.nc, n.js
	if t.external() {
		c.External, c.ExternalChangelog = n.pg, t.ExternalChangelog
	}
	c.StoreDir = filepath.Join(n.cfg.DataDir, "stores", t.Name, strconv.Itoa(p))
	c.Cache = n.cache
	c.StoreSync = n.cfg.StoreSync
	c.BatchSize, c.Linger = n.cfg.BatchSize, n.cfg.Linger
	c.MaxBatchRecords, c.MaxBatchBytes, c.MaxAttempts = n.cfg.MaxBatchRecords, n.cfg.MaxBatchBytes, n.cfg.MaxAttempts
	c.CommitsInFlight = n.cfg.CommitsInFlight
	c.MaxValueSize, c.MaxEventSize = n.cfg.MaxValueSize, n.cfg.MaxEventSize
	c.DLQSubject = partition.DLQSubject(t.Name)
	c.KnownStreams = append(slices.Clone(n.order), t.Outputs...)
	c.Changelog.Replicas = n.cfg.StreamReplicas
	c.SnapshotEvery, c.SnapshotInterval = n.cfg.SnapshotEvery, n.cfg.SnapshotInterval
	c.Snapshot.Replicas, c.Snapshot.Keep = n.cfg.StreamReplicas, n.cfg.SnapshotsKept
	c.Hooks = n.cfg.hooks
	c.Logger = n.log
	c.Metrics = n.metrics
	return c
}

func (n *Node) supervisor() actor.SupervisorConfig {
	s := actor.DefaultSupervisorConfig()
	s.MinBackoff, s.MaxBackoff = 50*time.Millisecond, 2*time.Second // NATS coming back is noticed within 2 s
	return s
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
