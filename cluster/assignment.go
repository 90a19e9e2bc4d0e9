package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// NodeState is a node's liveness as the assignor last saw it.
type NodeState uint8

const (
	// NodeAlive nodes can hold active partitions and hot replicas.
	NodeAlive NodeState = iota + 1
	// NodeLeft nodes left gracefully; the assignor moves their partitions away.
	NodeLeft
	// NodeDead nodes stopped answering gossip; the assignor promotes a hot
	// replica (or restores elsewhere) for each partition they were active for.
	NodeDead
)

func (s NodeState) String() string {
	switch s {
	case NodeAlive:
		return "alive"
	case NodeLeft:
		return "left"
	case NodeDead:
		return "dead"
	}
	return "NodeState(" + strconv.Itoa(int(s)) + ")"
}

// NodeInfo is one node as the assignment knows it.
type NodeInfo struct {
	// ID is the node id (the gossip node name).
	ID string `msgpack:"id"`
	// Zone is the node's failure domain; replicas are spread across zones.
	// Empty is a zone of its own, so a cluster that declares no zones has one.
	Zone string `msgpack:"z,omitempty"`
	// RaftAddr is the node's Raft transport address, as it last announced it.
	RaftAddr string `msgpack:"ra,omitempty"`
	// HTTPAddr is the node's HTTP address (queries, status), as it last announced it.
	HTTPAddr string `msgpack:"ha,omitempty"`
	// State is the node's liveness as the leader last saw it.
	State NodeState `msgpack:"s"`
	// Incarnation identifies the node's current process (NodeMeta.Incarnation):
	// it changes, growing, each time the node restarts; 0 if never announced.
	Incarnation uint64 `msgpack:"inc,omitempty"`
}

// Alive reports whether the node can hold partitions.
func (n NodeInfo) Alive() bool { return n.State == NodeAlive }

// ActorType is a registered actor type: the unit the assignor places.
type ActorType struct {
	// Name is the actor type's name, also the name of its input stream.
	Name string `msgpack:"n"`
	// Partitions is the partition count of the input stream; it never changes.
	Partitions int `msgpack:"p"`
	// ReplicationFactor is the number of hot replicas each partition wants
	// besides its active (fewer while the cluster has too few alive nodes).
	ReplicationFactor int `msgpack:"r"`
	// External: the type's state is in an external store, which every
	// node reaches: a move hands the active over at once, without a
	// replica to warm up first.
	External bool `msgpack:"x,omitempty"`
}

// Replica is a hot replica of a partition on one node.
type Replica struct {
	// Node is the node id holding the replica.
	Node string `msgpack:"n"`
	// Replaces names another replica of the same partition that this one is
	// warming up to take the place of (a replica move, for balance or zone
	// spread); the assignor drops that one once this one's lag is small.
	Replaces string `msgpack:"rp,omitempty"`
	// Lag is how many changelog records the replica was behind when it last
	// reported; meaningless until ReportedAt is set.
	Lag uint64 `msgpack:"l,omitempty"`
	// Behind is how far behind in time the replica was when it last reported.
	Behind time.Duration `msgpack:"b,omitempty"`
	// ReportedAt is when the replica's node measured the lag; zero until the
	// first report since the replica was placed.
	ReportedAt time.Time `msgpack:"t,omitempty"`
}

// LagKnown reports whether the replica has reported its lag since it was placed.
func (r Replica) LagKnown() bool { return !r.ReportedAt.IsZero() }

// warm reports whether the replica has reported a lag of at most max.
func (r Replica) warm(max uint64) bool { return r.LagKnown() && r.Lag <= max }

// lagString is the replica's lag for logs.
func (r Replica) lagString() string {
	if !r.LagKnown() {
		return "lag unknown"
	}
	return "lag " + strconv.FormatUint(r.Lag, 10)
}

// PartitionAssignment is where one partition of an actor type runs.
type PartitionAssignment struct {
	// Type is the actor type.
	Type string `msgpack:"ty"`
	// Partition is the partition number, 0 <= Partition < Partitions.
	Partition int `msgpack:"p"`
	// Active is the node id of the partition actor's owner, "" until the
	// assignor first places the partition.
	Active string `msgpack:"a,omitempty"`
	// Epoch is bumped each time the active owner changes (0 before the first
	// placement), and each time the active's node restarts (its incarnation
	// changes) while it stays the active; the partition actor fences its
	// changelog with it, so every process that runs the actor gets a newer one.
	Epoch uint64 `msgpack:"e,omitempty"`
	// ActiveIncarnation is the incarnation of the Active node's process that
	// Epoch was assigned to (NodeInfo.Incarnation when it was assigned). A node
	// starts the partition actor only when ActiveIncarnation equals its own
	// incarnation (see Model.ActiveOnIncarnation and ActiveFor): after a
	// restart it waits for the leader to assign it a new epoch.
	ActiveIncarnation uint64 `msgpack:"ai,omitempty"`
	// Version is bumped by every applied change of this partition. With
	// Epoch it is what an Assign change compares and sets.
	Version uint64 `msgpack:"v,omitempty"`
	// Replicas are the partition's hot replicas, sorted by node id, never on
	// the Active node.
	Replicas []Replica `msgpack:"r,omitempty"`
	// MovingTo is the replica the active is moving to: a warm-up move in
	// progress. The assignor hands the active over once that replica's lag is
	// small enough; "" when no move is in progress.
	MovingTo string `msgpack:"m,omitempty"`
	// GivenBack is the node that gave the partition back (GiveBack) at Epoch:
	// it cannot run the partition at Epoch. It is the Active node, or "" when
	// the partition was not given back. The next change of the partition
	// must give it epoch NextEpoch (a new one even if the active stays), and
	// clears GivenBack, GiveBackReason and EpochFloor.
	GivenBack string `msgpack:"gb,omitempty"`
	// GiveBackReason is the reason the give-back gave ("" when not given back).
	GiveBackReason string `msgpack:"gbr,omitempty"`
	// EpochFloor is an epoch the partition's changelog holds, as the
	// give-back reported it (GiveBack.MinEpoch; the largest if given back
	// more than once): the next epoch must be above it. 0 when not given back.
	EpochFloor uint64 `msgpack:"ef,omitempty"`
	// Avoid are the node processes that gave the partition back for a fault
	// of their own (GiveBack.Avoid), sorted by node id, one entry a node. The
	// assignor does not make such a node the partition's active again, nor
	// the target of a move, while an alive node the partition does not
	// avoid exists; it places a replica of the partition there only when no
	// other node can take one. An entry holds while the node runs the process
	// it names: the FSM drops it when the node announces another incarnation
	// (NodeUp) or is forgotten (ForgetNode), so every entry names a known
	// node at its recorded incarnation. Unlike the give-back, it outlives
	// the partition's placement elsewhere.
	Avoid []AvoidNode `msgpack:"av,omitempty"`
}

// AvoidNode is a node process a partition avoids (PartitionAssignment.Avoid).
type AvoidNode struct {
	// Node is the node id.
	Node string `msgpack:"n"`
	// Incarnation is the incarnation of the node's process that gave the
	// partition back (the partition's ActiveIncarnation then); the entry
	// holds while the node is at it.
	Incarnation uint64 `msgpack:"inc,omitempty"`
}

// Avoids reports whether the partition avoids node while its process has
// incarnation inc: that process gave the partition back for a fault of its
// own, and has not restarted since.
func (p PartitionAssignment) Avoids(node string, inc uint64) bool {
	i, ok := p.avoidIndex(node)
	return ok && p.Avoid[i].Incarnation == inc
}

// IsGivenBack reports whether the partition's active gave it back at Epoch
// and the assignor has not placed it again yet.
func (p PartitionAssignment) IsGivenBack() bool { return p.GivenBack != "" }

// NextEpoch is the epoch the next change of a given-back partition must
// give it: above both its Epoch and its EpochFloor.
func (p PartitionAssignment) NextEpoch() uint64 { return max(p.Epoch, p.EpochFloor) + 1 }

// ActiveFor reports whether the process of node with incarnation inc is the
// partition's active owner at Epoch: the check a node makes before it starts
// the partition actor with Epoch.
func (p PartitionAssignment) ActiveFor(node string, inc uint64) bool {
	return node != "" && p.Active == node && p.ActiveIncarnation == inc
}

// Replica returns the partition's replica on node.
func (p PartitionAssignment) Replica(node string) (Replica, bool) {
	i, ok := p.replicaIndex(node)
	if !ok {
		return Replica{}, false
	}
	return p.Replicas[i], true
}

// HasReplica reports whether node holds a replica of the partition.
func (p PartitionAssignment) HasReplica(node string) bool {
	_, ok := p.replicaIndex(node)
	return ok
}

// MovesInProgress is the number of warm-up moves the partition has running:
// a move of its active (MovingTo) and replicas replacing other replicas.
func (p PartitionAssignment) MovesInProgress() int {
	n := 0
	if p.MovingTo != "" {
		n++
	}
	for _, r := range p.Replicas {
		if r.Replaces != "" {
			n++
		}
	}
	return n
}

// String names the partition as type/partition.
func (p PartitionAssignment) String() string {
	return p.Type + "/" + strconv.Itoa(p.Partition)
}

func (p PartitionAssignment) replicaIndex(node string) (int, bool) {
	return slices.BinarySearchFunc(p.Replicas, node, func(r Replica, n string) int {
		return strings.Compare(r.Node, n)
	})
}

func (p PartitionAssignment) avoidIndex(node string) (int, bool) {
	return slices.BinarySearchFunc(p.Avoid, node, func(a AvoidNode, n string) int {
		return strings.Compare(a.Node, n)
	})
}

func (p PartitionAssignment) clone() PartitionAssignment {
	p.Replicas = slices.Clone(p.Replicas)
	p.Avoid = slices.Clone(p.Avoid)
	return p
}

// TypeAssignment is a registered actor type and where its partitions run.
type TypeAssignment struct {
	// Type is the registered actor type.
	Type ActorType `msgpack:"t"`
	// Partitions holds one entry per partition: Partitions[p].Partition == p.
	Partitions []PartitionAssignment `msgpack:"p"`
}

// Model is the whole assignment: the nodes the assignor knows, the
// registered actor types, and for each (actor type, partition) its active
// node, epoch and hot replicas. Every slice is sorted (nodes by id, types by
// name, partitions by number, replicas by node id), so iteration is
// deterministic. A Model returned by the FSM is a copy the caller owns.
type Model struct {
	// Index is the Raft log index of the last command applied.
	Index uint64 `msgpack:"i"`
	// Nodes are the known nodes, sorted by id.
	Nodes []NodeInfo `msgpack:"n,omitempty"`
	// Types are the registered actor types, sorted by name.
	Types []TypeAssignment `msgpack:"t,omitempty"`
}

// Clone returns a deep copy of m.
func (m Model) Clone() Model {
	c := Model{Index: m.Index, Nodes: slices.Clone(m.Nodes)}
	if m.Types != nil {
		c.Types = make([]TypeAssignment, len(m.Types))
	}
	for i, t := range m.Types {
		c.Types[i] = TypeAssignment{Type: t.Type, Partitions: make([]PartitionAssignment, len(t.Partitions))}
		for j, p := range t.Partitions {
			c.Types[i].Partitions[j] = p.clone()
		}
	}
	return c
}

// Node returns the node with id.
func (m Model) Node(id string) (NodeInfo, bool) {
	i, ok := m.nodeIndex(id)
	if !ok {
		return NodeInfo{}, false
	}
	return m.Nodes[i], true
}

// AliveNodes returns the alive nodes, sorted by id.
func (m Model) AliveNodes() []NodeInfo {
	var alive []NodeInfo
	for _, n := range m.Nodes {
		if n.Alive() {
			alive = append(alive, n)
		}
	}
	return alive
}

// ActorType returns the registered actor type with name.
func (m Model) ActorType(name string) (ActorType, bool) {
	i, ok := m.typeIndex(name)
	if !ok {
		return ActorType{}, false
	}
	return m.Types[i].Type, true
}

// Partition returns the assignment of partition p of actor type typ.
func (m Model) Partition(typ string, p int) (PartitionAssignment, bool) {
	i, ok := m.typeIndex(typ)
	if !ok || p < 0 || p >= len(m.Types[i].Partitions) {
		return PartitionAssignment{}, false
	}
	return m.Types[i].Partitions[p].clone(), true
}

// Partitions returns every partition assignment, by type then partition.
func (m Model) Partitions() []PartitionAssignment {
	return m.partitionsWhere(func(PartitionAssignment) bool { return true })
}

// ActiveOn returns the partitions whose active owner is node: the partition
// actors node should run.
func (m Model) ActiveOn(node string) []PartitionAssignment {
	return m.partitionsWhere(func(p PartitionAssignment) bool { return p.Active == node })
}

// ActiveOnIncarnation returns the partitions whose active owner is the
// process of node with incarnation inc (PartitionAssignment.ActiveFor): the
// partition actors that process may start, each with its partition's Epoch.
// A partition still assigned to an earlier incarnation of node is left out
// until the leader bumps its epoch for inc.
func (m Model) ActiveOnIncarnation(node string, inc uint64) []PartitionAssignment {
	return m.partitionsWhere(func(p PartitionAssignment) bool { return p.ActiveFor(node, inc) })
}

// ReplicasOn returns the partitions that have a hot replica on node.
func (m Model) ReplicasOn(node string) []PartitionAssignment {
	return m.partitionsWhere(func(p PartitionAssignment) bool { return p.HasReplica(node) })
}

// partitionsWhere returns copies of the partition assignments that keep
// selects, by type then partition.
func (m Model) partitionsWhere(keep func(PartitionAssignment) bool) []PartitionAssignment {
	var ps []PartitionAssignment
	for _, t := range m.Types {
		for _, p := range t.Partitions {
			if keep(p) {
				ps = append(ps, p.clone())
			}
		}
	}
	return ps
}

// MovesInProgress is the number of warm-up moves running in the cluster, the
// number AssignorConfig.MaxConcurrentMoves bounds.
func (m Model) MovesInProgress() int {
	n := 0
	for _, t := range m.Types {
		for _, p := range t.Partitions {
			n += p.MovesInProgress()
		}
	}
	return n
}

func (m Model) nodeIndex(id string) (int, bool) {
	return slices.BinarySearchFunc(m.Nodes, id, func(n NodeInfo, id string) int {
		return strings.Compare(n.ID, id)
	})
}

func (m Model) typeIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(m.Types, name, func(t TypeAssignment, name string) int {
		return strings.Compare(t.Type.Name, name)
	})
}

// partitionKey names a partition of an actor type.
type partitionKey struct {
	typ string
	p   int
}

func (k partitionKey) String() string { return fmt.Sprintf("%s/%d", k.typ, k.p) }

// check verifies the structure the FSM relies on: sorted, unique entries and
// one partition entry per partition.
func (m Model) check() error {
	if !slices.IsSortedFunc(m.Nodes, func(a, b NodeInfo) int { return cmp.Compare(a.ID, b.ID) }) {
		return errors.New("nodes not sorted")
	}
	for i := 1; i < len(m.Nodes); i++ {
		if m.Nodes[i].ID == m.Nodes[i-1].ID {
			return fmt.Errorf("node %s twice", m.Nodes[i].ID)
		}
	}
	for i, t := range m.Types {
		if i > 0 && m.Types[i-1].Type.Name >= t.Type.Name {
			return errors.New("actor types not sorted")
		}
		if len(t.Partitions) != t.Type.Partitions {
			return fmt.Errorf("actor type %s: %d partition entries for %d partitions", t.Type.Name, len(t.Partitions), t.Type.Partitions)
		}
		for j, p := range t.Partitions {
			if p.Type != t.Type.Name || p.Partition != j {
				return fmt.Errorf("actor type %s: entry %d is %s", t.Type.Name, j, p)
			}
			for k, r := range p.Replicas {
				if r.Node == p.Active || (k > 0 && p.Replicas[k-1].Node >= r.Node) {
					return fmt.Errorf("%s: replicas not sorted, twice or on the active node", p)
				}
			}
			if err := p.checkGiveBack(); err != nil {
				return err
			}
			if err := m.checkAvoid(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkGiveBack verifies the give-back fields: only the active can have given
// the partition back, and the reason and floor exist only with a give-back.
func (p PartitionAssignment) checkGiveBack() error {
	switch {
	case p.GivenBack != "" && p.GivenBack != p.Active:
		return fmt.Errorf("%s: given back by %s, but active on %q", p, p.GivenBack, p.Active)
	case p.GivenBack == "" && (p.EpochFloor != 0 || p.GiveBackReason != ""):
		return fmt.Errorf("%s: epoch floor %d or give-back reason %q without a give-back", p, p.EpochFloor, p.GiveBackReason)
	}
	return nil
}

// checkAvoid verifies the partition's avoided nodes: sorted, one entry a
// node, each a known node at the incarnation the entry names (the FSM drops
// an entry when its node restarts or is forgotten).
func (m Model) checkAvoid(p PartitionAssignment) error {
	for i, a := range p.Avoid {
		if i > 0 && p.Avoid[i-1].Node >= a.Node {
			return fmt.Errorf("%s: avoided nodes not sorted or twice", p)
		}
		n, ok := m.Node(a.Node)
		if !ok || n.Incarnation != a.Incarnation {
			return fmt.Errorf("%s: avoids %s at incarnation %d, which the assignment does not know", p, a.Node, a.Incarnation)
		}
	}
	return nil
}
