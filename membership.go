package eddy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
)

// Subjects of the nodes' control messages over NATS. A node serves:
//
//	eddy.ctl.<node>.apply    commands forwarded to the Raft leader (lag reports)
//	eddy.ctl.<node>.release  "commit and stop partition p, I am its new owner"
//	eddy.ctl.<node>.status   the node's partition actors' statuses (Node.Cluster)
//	eddy.query.<type>.<p>    queries of partition p, by the node running it
//	eddy.rquery.<type>.<p>.<node>  bounded-staleness reads of partition p, by the
//	                         hot replica of p on node (see serveReplicaQueries)
func ctlSubject(node, verb string) string { return "eddy.ctl." + node + "." + verb }

func querySubject(k pkey) string { return "eddy.query." + k.typ + "." + fmt.Sprint(k.p) }

const (
	// lagReportEvery is how often a node looks at its hot replicas' lags and
	// reports them to the leader when they changed; a warm-up move completes
	// at most this long after its replica caught up.
	lagReportEvery = 200 * time.Millisecond
	// lagReportRefresh is how often lags are reported even when unchanged,
	// so a replica re-placed on this node gets a lag the assignor can use.
	lagReportRefresh = 5 * time.Second
	// ctlTimeout bounds one control request between nodes.
	ctlTimeout = 5 * time.Second
)

// clustered reports whether the node runs as a cluster member.
func (c *Config) clustered() bool { return c.GossipAddr != "" }

// startCluster joins the cluster, serves the control subjects, declares the
// actor types and starts following the assignment. n.mu is not held.
func (n *Node) startCluster(ctx context.Context) error {
	cc := n.cfg.clusterConfig(n.httpAddr)
	cc.Forward = n.forward
	cc.Logger = n.log
	subs := []struct {
		subject string
		handle  nats.MsgHandler
	}{
		{ctlSubject(n.cfg.NodeID, "apply"), n.handleForwarded},
		{ctlSubject(n.cfg.NodeID, "release"), n.handleRelease},
		{ctlSubject(n.cfg.NodeID, "status"), n.handleStatusRequest},
	}
	for _, s := range subs {
		sub, err := n.nc.Subscribe(s.subject, s.handle)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", s.subject, err)
		}
		n.ctlSubs = append(n.ctlSubs, sub)
	}
	cl, err := cluster.Start(cc)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.cl = cl
	n.mu.Unlock()
	n.log.Info("joining the cluster", "gossip", cl.GossipAddr(), "raft", cl.RaftAddr(), "join", n.cfg.Join)
	for _, name := range n.order {
		t := n.types[name]
		ct := cluster.ActorType{Name: t.Name, Partitions: t.Partitions, ReplicationFactor: t.replicationFactor()}
		if err := cl.RegisterType(ctx, ct); err != nil {
			return err
		}
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	n.loopCancel = cancel
	n.loopDone = make(chan struct{})
	go n.followAssignment(loopCtx, cl)
	return nil
}

// followAssignment runs the partition actors and hot replicas the
// assignment gives this node, and reports the replicas' lags, until ctx ends.
func (n *Node) followAssignment(ctx context.Context, cl *cluster.Cluster) {
	defer close(n.loopDone)
	changes, cancel := cl.Subscribe()
	defer cancel()
	tick := time.NewTicker(lagReportEvery)
	defer tick.Stop()
	var prev cluster.Model
	lr := &lagReporter{n: n, cl: cl}
	for {
		m := cl.Assignment()
		want, handover := n.placements(cl, prev, m)
		n.apply(ctx, want, handover)
		prev = m
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-tick.C:
			lr.report(ctx)
			n.mu.Lock()
			n.checkHealth(ctx)
			n.mu.Unlock()
		}
	}
}

// placements is what the assignment m gives this node's process. A
// partition that was active on another live node in prev is taken over
// from that node (a handover: it is asked to release the partition first).
// handover holds the partitions active here in prev that m gives to
// another live node, which will ask for them.
func (n *Node) placements(cl *cluster.Cluster, prev, m cluster.Model) (want map[pkey]placement, handover map[pkey]bool) {
	self := n.cfg.NodeID
	want = map[pkey]placement{}
	for _, p := range m.ActiveOnIncarnation(self, cl.Incarnation()) {
		if p.IsGivenBack() {
			continue // the assignor places it again, at a new epoch
		}
		pl := placement{active: true, epoch: p.Epoch}
		if old, ok := prev.Partition(p.Type, p.Partition); ok && old.Active != "" && old.Active != self {
			if ni, ok := m.Node(old.Active); ok && ni.Alive() {
				pl.from = old.Active
			}
		}
		want[pkey{p.Type, p.Partition}] = pl
	}
	for _, p := range m.ReplicasOn(self) {
		want[pkey{p.Type, p.Partition}] = placement{}
	}
	handover = map[pkey]bool{}
	for _, old := range prev.ActiveOn(self) {
		p, ok := m.Partition(old.Type, old.Partition)
		if !ok || p.Active == "" || p.Active == self {
			continue
		}
		if ni, ok := m.Node(p.Active); ok && ni.Alive() {
			handover[pkey{p.Type, p.Partition}] = true
		}
	}
	return want, handover
}

// lagReporter sends the node's replicas' lags to the leader when they
// change, and every lagReportRefresh.
type lagReporter struct {
	n    *Node
	cl   *cluster.Cluster
	last map[pkey]partition.Lag
	at   time.Time
}

func (lr *lagReporter) report(ctx context.Context) {
	lr.n.mu.Lock()
	now := map[pkey]partition.Lag{}
	for k, r := range lr.n.replicas {
		if l := r.Lag(); l.Known() {
			l.At = time.Time{} // compare the lag, not when it was measured
			now[k] = l
		}
	}
	lr.n.mu.Unlock()
	if len(now) == 0 || (maps.Equal(now, lr.last) && time.Since(lr.at) < lagReportRefresh) {
		return
	}
	lags := make([]cluster.LagReport, 0, len(now))
	for k, l := range now {
		lags = append(lags, cluster.LagReport{Type: k.typ, Partition: k.p, Records: l.Records, Behind: l.Behind})
	}
	rctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	if err := lr.cl.ReportLag(rctx, lags); err != nil {
		lr.n.log.Debug("lag report not delivered; retrying", "err", err)
		return
	}
	lr.last, lr.at = now, time.Now()
}

// errLeaderRefused means the leader received a forwarded command and
// refused it (a stale give-back, say): sending it again will not help.
var errLeaderRefused = errors.New("refused by the leader")

// forward sends a command to the leader (cluster.Config.Forward).
func (n *Node) forward(ctx context.Context, leader string, cmd []byte) error {
	resp, err := n.nc.RequestWithContext(ctx, ctlSubject(leader, "apply"), cmd)
	if err != nil {
		return fmt.Errorf("forward to leader %s: %w", leader, err)
	}
	if e := resp.Header.Get(headerError); e != "" {
		return fmt.Errorf("%w: leader %s: %s", errLeaderRefused, leader, e)
	}
	return nil
}

// headerError carries a control or query request's failure.
const headerError = "Eddy-Error"

// headerNotFound marks a query reply for a key without state.
const headerNotFound = "Eddy-Not-Found"

// headerNode names the node that answered a query.
const headerNode = "Eddy-Node"

// headerUnavailable marks a query reply from an owner whose partition does
// not run now; it holds the reason.
const headerUnavailable = "Eddy-Unavailable"

func respond(m *nats.Msg, data []byte, err error) { _ = m.RespondMsg(reply(m, data, err)) }

// reply is the answer to m: data, or err in a header.
func reply(m *nats.Msg, data []byte, err error) *nats.Msg {
	r := nats.NewMsg(m.Reply)
	r.Data = data
	switch {
	case errors.Is(err, ErrNotFound):
		r.Header.Set(headerNotFound, "1")
	case errors.Is(err, errTooStale):
		r.Header.Set(headerTooStale, err.Error())
	case errors.Is(err, ErrUnavailable):
		r.Header.Set(headerUnavailable, err.Error())
	case err != nil:
		r.Header.Set(headerError, err.Error())
	}
	return r
}

// respondQuery answers a query, naming this node as the one that answered.
func (n *Node) respondQuery(m *nats.Msg, data []byte, err error) {
	r := reply(m, data, err)
	r.Header.Set(headerNode, n.cfg.NodeID)
	_ = m.RespondMsg(r)
}

func (n *Node) handleForwarded(m *nats.Msg) {
	n.mu.Lock()
	cl := n.cl
	n.mu.Unlock()
	if cl == nil {
		respond(m, nil, ErrNotRunning)
		return
	}
	respond(m, nil, cl.ApplyForwarded(m.Data))
}

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
	n.mu.Lock()
	var a *partition.Actor
	s := n.actives[k]
	switch {
	case s != nil && s.epoch < req.Epoch:
		n.dropActive(k, s)
		n.releasing[k] = s.a
		a = s.a
	case n.releasing[k] != nil:
		a = n.releasing[k] // already stopping: the answer waits for its last commit
	default:
		n.mu.Unlock()
		respond(m, nil, nil) // not running here (any more)
		return
	}
	n.mu.Unlock()
	n.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		defer cancel()
		start := time.Now()
		err := n.release(ctx, k, a)
		if s != nil {
			n.log.Info("partition released to its new owner", "partition", k.String(), "epoch", s.epoch,
				"new_epoch", req.Epoch, "took", time.Since(start).Round(time.Millisecond), "err", err)
		}
		var b []byte
		if err == nil {
			b, err = msgpack.Marshal(releaseResp{Seq: a.Status().ChangelogSeq})
		}
		respond(m, b, err)
	})
}

// queryReq asks the node running a partition, or a hot replica of it, for a
// committed value.
type queryReq struct {
	Store string `msgpack:"s"`
	Key   string `msgpack:"k"`
	// MaxLag is how stale a replica's copy may be (replica reads only).
	MaxLag time.Duration `msgpack:"l,omitempty"`
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

// GossipAddr is the address other nodes join this one through; empty when
// the node is not a running cluster member.
func (n *Node) GossipAddr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cl == nil {
		return ""
	}
	return n.cl.GossipAddr()
}
