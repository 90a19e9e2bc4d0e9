package eddy

import (
	"cmp"
	"context"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
)

// PartitionStatus is the progress and health of one partition actor.
type PartitionStatus = partition.Status

// SnapshotStatus is the newest snapshot of a partition's store that its
// actor uploaded or restored from (Config.SnapshotEvery).
type SnapshotStatus = partition.SnapshotStatus

// Status returns the progress of every partition actor on this node, by
// type and partition: its state (and why, when it is not running), epoch,
// committed offset and changelog sequence, input lag, last commit and newest snapshot.
func (n *Node) Status() ([]PartitionStatus, error) {
	n.mu.Lock()
	running, r := n.running, n.rec
	n.mu.Unlock()
	if !running || r == nil {
		return nil, ErrNotRunning
	}
	actives := r.view.Load().actives
	out := make([]PartitionStatus, 0, len(actives))
	for _, a := range actives {
		out = append(out, a.Status())
	}
	slices.SortFunc(out, func(a, b PartitionStatus) int {
		return cmp.Or(strings.Compare(a.Type, b.Type), cmp.Compare(a.Partition, b.Partition))
	})
	return out, nil
}

// ClusterStatus is the cluster as one node sees it.
type ClusterStatus struct {
	// Node is the node answering.
	Node string `json:"node"`
	// Leader is the Raft leader's node id, "" when none is known.
	Leader string `json:"leader"`
	// Term is the Raft term.
	Term uint64 `json:"term"`
	// Members are the gossip members.
	Members []MemberStatus `json:"members"`
	// Partitions is the assignment table.
	Partitions []AssignmentStatus `json:"partitions"`
}

// MemberStatus is one gossip member.
type MemberStatus struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Zone     string `json:"zone,omitempty"`
	Gossip   string `json:"gossip"`
	Raft     string `json:"raft,omitempty"`
	HTTP     string `json:"http,omitempty"`
	Assigned string `json:"assigned,omitempty"` // the assignor's view: alive, left or dead
	// NATS is "down" while the member reports its NATS connection lost
	// (its partitions move to nodes that reach NATS), empty otherwise.
	NATS string `json:"nats,omitempty"`
}

// AssignmentStatus is where one partition runs, and how its partition
// actor is doing there as its node reports it.
type AssignmentStatus struct {
	Type      string          `json:"type"`
	Partition int             `json:"partition"`
	Active    string          `json:"active"`
	Epoch     uint64          `json:"epoch"`
	MovingTo  string          `json:"moving_to,omitempty"`
	Replicas  []ReplicaStatus `json:"replicas,omitempty"`
	// State is the partition actor's state on the active node at Epoch
	// (starting, running, retrying, fenced, stopped), "unknown" when that
	// node did not answer in time, "absent" when it runs no actor at Epoch.
	State string `json:"state"`
	// Err is why it is not running, when it says.
	Err string `json:"error,omitempty"`
	// InputLag and LastCommit are the actor's (PartitionStatus).
	InputLag   uint64    `json:"input_lag"`
	LastCommit time.Time `json:"last_commit,omitzero"`
	// GivenBack says that the active node gave the partition back to the
	// assignor, and why; the assignor places it again at a new epoch.
	GivenBack string `json:"given_back,omitempty"`
	// Avoid lists the nodes that gave the partition back for a fault of
	// their own: the assignor does not place it there until they restart.
	Avoid []string `json:"avoid,omitempty"`
}

// ReplicaStatus is one hot replica and its last reported lag.
type ReplicaStatus struct {
	Node       string        `json:"node"`
	LagRecords uint64        `json:"lag_records"`
	Behind     time.Duration `json:"behind_ns"`
	Reported   bool          `json:"reported"`
}

// Cluster returns the members, the Raft leader and term, and the assignment
// as this node knows them, with the state of each partition actor as its
// node reports it (each alive member is asked, for at most statusTimeout).
func (n *Node) Cluster(ctx context.Context) (ClusterStatus, error) {
	n.mu.Lock()
	cl, running := n.cl, n.running
	n.mu.Unlock()
	if !running {
		return ClusterStatus{}, ErrNotRunning
	}
	if cl == nil {
		return ClusterStatus{}, ErrNotClustered
	}
	m := cl.Assignment()
	st := ClusterStatus{Node: n.cfg.NodeID, Term: cl.Term()}
	st.Leader, _ = cl.Leader()
	for _, mb := range cl.Members() {
		ms := MemberStatus{ID: mb.ID, State: mb.State.String(), Zone: mb.Meta.Zone, Gossip: mb.Addr, Raft: mb.Meta.RaftAddr, HTTP: mb.Meta.HTTPAddr}
		if mb.Meta.DataPlaneDown {
			ms.NATS = "down"
		}
		if ni, ok := m.Node(mb.ID); ok {
			ms.Assigned = ni.State.String()
		}
		st.Members = append(st.Members, ms)
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].ID < st.Members[j].ID })
	actors := n.memberStatuses(ctx, cl)
	for _, p := range m.Partitions() {
		as := AssignmentStatus{Type: p.Type, Partition: p.Partition, Active: p.Active, Epoch: p.Epoch, MovingTo: p.MovingTo,
			State: "unknown", GivenBack: p.GiveBackReason}
		for _, a := range p.Avoid {
			as.Avoid = append(as.Avoid, a.Node)
		}
		if ps, ok := actors[p.Active]; ok {
			as.State = "absent"
			for _, a := range ps {
				if a.Type == p.Type && a.Partition == p.Partition && a.Epoch == p.Epoch {
					as.State, as.Err, as.InputLag, as.LastCommit = string(a.State), a.Err, a.InputLag, a.LastCommit
				}
			}
		}
		for _, r := range p.Replicas {
			as.Replicas = append(as.Replicas, ReplicaStatus{Node: r.Node, LagRecords: r.Lag, Behind: r.Behind, Reported: r.LagKnown()})
		}
		st.Partitions = append(st.Partitions, as)
	}
	return st, nil
}

// statusTimeout bounds how long Cluster waits for each member's partition
// statuses.
const statusTimeout = 500 * time.Millisecond

// memberStatuses asks every alive member for its partition actors'
// statuses (eddy.ctl.<node>.status), in parallel; members that do not
// answer in time are missing from the result.
func (n *Node) memberStatuses(ctx context.Context, cl *cluster.Cluster) map[string][]PartitionStatus {
	var (
		mu  sync.Mutex
		out = map[string][]PartitionStatus{}
		wg  sync.WaitGroup
	)
	for _, mb := range cl.Members() {
		if mb.State != cluster.MemberAlive {
			continue
		}
		wg.Go(func() {
			var ps []PartitionStatus
			if mb.ID == n.cfg.NodeID {
				ps, _ = n.Status()
			} else {
				rctx, cancel := context.WithTimeout(ctx, statusTimeout)
				defer cancel()
				resp, err := n.nc.RequestWithContext(rctx, ctlSubject(mb.ID, "status"), nil)
				if err != nil || resp.Header.Get(headerError) != "" || msgpack.Unmarshal(resp.Data, &ps) != nil {
					return
				}
			}
			mu.Lock()
			out[mb.ID] = ps
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// handleStatus answers another member's memberStatuses.
func (n *Node) handleStatusRequest(m *nats.Msg) {
	ps, err := n.Status()
	if err != nil {
		respond(m, nil, err)
		return
	}
	b, err := msgpack.Marshal(ps)
	respond(m, b, err)
}
