package eddy

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/cluster"
)

// A node with Config.GossipAddr is a cluster member: it joins by gossip,
// takes part in electing the Raft assignor, declares its actor types, and
// runs what the assignment gives it (reconcile.go).

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
	n.stopDataPlane = n.watchDataPlane(cl, n.nc)
	n.mu.Unlock()
	n.log.Info("joining the cluster", "gossip", cl.GossipAddr(), "raft", cl.RaftAddr(), "join", n.cfg.Join)
	for _, name := range n.order {
		t := n.types[name]
		ct := cluster.ActorType{Name: t.Name, Partitions: t.Partitions, ReplicationFactor: t.replicationFactor(), External: t.external()}
		if err := cl.RegisterType(ctx, ct); err != nil {
			return err
		}
	}
	r := n.startReconciler(cl)
	n.mu.Lock()
	n.rec = r
	n.mu.Unlock()
	return nil
}

// stopCluster leaves the cluster (gracefully when leave > 0, else as a
// crash would look to the others) and stops serving the control subjects.
// n.mu is not held.
func (n *Node) stopCluster(leave time.Duration) error {
	n.mu.Lock()
	cl, r, stopDataPlane := n.cl, n.rec, n.stopDataPlane
	n.stopDataPlane = nil
	n.mu.Unlock()
	if cl == nil {
		return nil
	}
	if stopDataPlane != nil {
		stopDataPlane()
	}
	var err error
	if leave > 0 {
		err = cl.Leave(leave)
		if r != nil {
			n.awaitHandovers(cl, r)
		}
	} else {
		err = cl.Shutdown()
	}
	for _, s := range n.ctlSubs {
		_ = s.Unsubscribe()
	}
	n.ctlSubs = nil
	n.wg.Wait()
	return err
}

// placements is what the assignment m gives node self's process
// (incarnation). A partition that was active in prev on another node that
// is alive or leaving is taken over from that node (a handover: it is asked
// to release the partition first). handover holds the partitions active on self in prev
// that m gives to another live node, which will ask for them.
func placements(self string, incarnation uint64, prev, m cluster.Model) (want map[pkey]placement, handover map[pkey]bool) {
	want = map[pkey]placement{}
	for _, p := range m.ActiveOnIncarnation(self, incarnation) {
		if p.IsGivenBack() {
			continue // the assignor places it again, at a new epoch
		}
		pl := placement{active: true, epoch: p.Epoch}
		if old, ok := prev.Partition(p.Type, p.Partition); ok && old.Active != "" && old.Active != self {
			// A node that is leaving still runs its partitions until their
			// new owners ask for them (Node.Stop).
			if ni, ok := m.Node(old.Active); ok && (ni.Alive() || ni.State == cluster.NodeLeft) {
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
