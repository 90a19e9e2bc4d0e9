package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"
)

var (
	// ErrMalformedCommand is returned by FSM.Apply for a log entry that is not
	// an encoded Command.
	ErrMalformedCommand = errors.New("cluster: malformed command")
	// ErrInvalidCommand is returned for a command that breaks the assignment's
	// rules whatever the state (a replica on the active's node, an epoch that
	// is not the one the change must set, an unknown actor type): a bug in its sender.
	ErrInvalidCommand = errors.New("cluster: invalid command")
	// ErrStale is returned for a command planned against an older assignment:
	// an Assign whose expected epoch or version no longer matches, or that
	// names a node that is no longer alive (the leader plans again), or a
	// GiveBack from a node that is no longer the active at that epoch.
	ErrStale = errors.New("cluster: stale command")
	// ErrTypeConflict is returned for a RegisterType that changes the
	// partition count of a registered actor type.
	ErrTypeConflict = errors.New("cluster: actor type registered with another partition count")
	// ErrUnknownNode is returned for a command about a node the assignment
	// does not know.
	ErrUnknownNode = errors.New("cluster: unknown node")
)

// FSM is the assignment state machine that Raft replicates to every node: it
// applies Commands to a Model. Raft calls Apply, ApplyBatch, Snapshot and
// Restore on its own goroutine; Assignment, Subscribe and Wait may be called
// from any goroutine at any time.
//
// Apply returns nil, or an error (never panics) for a command that is
// malformed (ErrMalformedCommand), invalid (ErrInvalidCommand), stale
// (ErrStale) or otherwise refused; the error reaches the leader as the
// raft.ApplyFuture's Response and leaves the assignment unchanged on every node.
type FSM struct {
	mu    sync.Mutex
	m     Model
	subs  map[*fsmSub]struct{}
	ready chan struct{} // closed and replaced on every change, for Wait
}

type fsmSub struct {
	ch   chan struct{}
	once sync.Once
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// NewFSM returns an FSM holding an empty assignment.
func NewFSM() *FSM {
	return &FSM{subs: make(map[*fsmSub]struct{}), ready: make(chan struct{})}
}

// Apply applies one committed log entry; see FSM for its result.
func (f *FSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed, err := f.apply(l.Index, l.Data)
	if changed {
		f.notifyLocked()
	}
	if err != nil {
		return err
	}
	return nil
}

// ApplyBatch applies committed log entries in order (raft's Config.BatchApplyCh),
// notifying watchers once for the whole batch.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	resps := make([]any, len(logs))
	changed := false
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := f.apply(l.Index, l.Data)
		changed = changed || c
		if err != nil {
			resps[i] = err
		}
	}
	if changed {
		f.notifyLocked()
	}
	return resps
}

// apply applies one encoded command and records its index. It reports whether
// the assignment changed.
func (f *FSM) apply(index uint64, data []byte) (bool, error) {
	if index > f.m.Index {
		f.m.Index = index
	}
	cmd, err := DecodeCommand(data)
	if err != nil {
		return false, err
	}
	switch c := cmd.(type) {
	case RegisterType:
		return f.registerType(c)
	case NodeUp:
		return f.nodeUp(c)
	case NodeDown:
		return f.nodeGone(c.ID, NodeDead)
	case NodeLeave:
		return f.nodeGone(c.ID, NodeLeft)
	case ForgetNode:
		return f.forgetNode(c.ID)
	case Assign:
		return f.assign(c.Changes)
	case ReportLag:
		return f.reportLag(c), nil
	case GiveBack:
		return f.giveBack(c)
	case GiveBackReplica:
		return f.giveBackReplica(c)
	}
	return false, fmt.Errorf("%w: %T", ErrMalformedCommand, cmd)
}

func (f *FSM) registerType(c RegisterType) (bool, error) {
	i, ok := f.m.typeIndex(c.Type.Name)
	if ok {
		t := &f.m.Types[i].Type
		if t.Partitions != c.Type.Partitions {
			return false, fmt.Errorf("%w: %s has %d partitions, not %d", ErrTypeConflict, t.Name, t.Partitions, c.Type.Partitions)
		}
		if t.ReplicationFactor == c.Type.ReplicationFactor {
			return false, nil
		}
		t.ReplicationFactor = c.Type.ReplicationFactor
		return true, nil
	}
	ta := TypeAssignment{Type: c.Type, Partitions: make([]PartitionAssignment, c.Type.Partitions)}
	for p := range ta.Partitions {
		ta.Partitions[p] = PartitionAssignment{Type: c.Type.Name, Partition: p}
	}
	f.m.Types = slices.Insert(f.m.Types, i, ta)
	return true, nil
}

func (f *FSM) nodeUp(c NodeUp) (bool, error) {
	n := NodeInfo{ID: c.ID, Zone: c.Zone, RaftAddr: c.RaftAddr, HTTPAddr: c.HTTPAddr, State: NodeAlive, Incarnation: c.Incarnation}
	i, ok := f.m.nodeIndex(c.ID)
	if !ok {
		f.m.Nodes = slices.Insert(f.m.Nodes, i, n)
		return true, nil
	}
	if have := f.m.Nodes[i].Incarnation; c.Incarnation < have {
		return false, fmt.Errorf("%w: node up %s: incarnation %d, older than %d", ErrStale, c.ID, c.Incarnation, have)
	}
	if f.m.Nodes[i] == n {
		return false, nil
	}
	if c.Incarnation != f.m.Nodes[i].Incarnation {
		f.dropAvoid(c.ID) // a new process: it may run what the old one gave back
	}
	f.m.Nodes[i] = n
	return true, nil
}

// dropAvoid removes node from every partition's avoided nodes, bumping the
// version of each partition that avoided it.
func (f *FSM) dropAvoid(node string) {
	for ti := range f.m.Types {
		for pi := range f.m.Types[ti].Partitions {
			p := &f.m.Types[ti].Partitions[pi]
			if j, ok := p.avoidIndex(node); ok {
				p.Avoid = slices.Delete(p.Avoid, j, j+1)
				if len(p.Avoid) == 0 {
					p.Avoid = nil
				}
				p.Version++
			}
		}
	}
}

func (f *FSM) nodeGone(id string, state NodeState) (bool, error) {
	i, ok := f.m.nodeIndex(id)
	if !ok {
		return false, fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	if f.m.Nodes[i].State == state {
		return false, nil
	}
	f.m.Nodes[i].State = state
	return true, nil
}

func (f *FSM) forgetNode(id string) (bool, error) {
	i, ok := f.m.nodeIndex(id)
	if !ok {
		return false, fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	if f.m.Nodes[i].Alive() {
		return false, fmt.Errorf("%w: forget node %s: it is alive", ErrStale, id)
	}
	for _, t := range f.m.Types {
		for _, p := range t.Partitions {
			if p.Active == id || p.HasReplica(id) {
				return false, fmt.Errorf("%w: forget node %s: it still holds %s", ErrStale, id, p)
			}
		}
	}
	f.dropAvoid(id)
	f.m.Nodes = slices.Delete(f.m.Nodes, i, i+1)
	return true, nil
}

// assign checks every change against the current assignment, then applies
// them all, or none.
func (f *FSM) assign(changes []Change) (bool, error) {
	seen := make(map[partitionKey]bool, len(changes))
	targets := make([]*PartitionAssignment, len(changes))
	for i, ch := range changes {
		k := partitionKey{ch.Type, ch.Partition}
		if seen[k] {
			return false, fmt.Errorf("%w: assign: %s changed twice in one batch", ErrInvalidCommand, k)
		}
		seen[k] = true
		p, err := f.checkChange(ch)
		if err != nil {
			return false, fmt.Errorf("assign %s: %w", k, err)
		}
		targets[i] = p
	}
	for i, ch := range changes {
		p := targets[i]
		old := p.Replicas
		p.Replicas = make([]Replica, 0, len(ch.Replicas))
		for _, rp := range ch.Replicas {
			r := Replica{Node: rp.Node}
			if j, ok := slices.BinarySearchFunc(old, rp.Node, func(r Replica, n string) int { return strings.Compare(r.Node, n) }); ok {
				r = old[j] // the replica stays: keep its lag
			}
			r.Replaces = rp.Replaces
			p.Replicas = append(p.Replicas, r)
		}
		slices.SortFunc(p.Replicas, func(a, b Replica) int { return strings.Compare(a.Node, b.Node) })
		p.Active, p.Epoch, p.ActiveIncarnation, p.MovingTo = ch.Active, ch.Epoch, ch.ActiveIncarnation, ch.MovingTo
		p.GivenBack, p.GiveBackReason, p.EpochFloor = "", "", 0 // placed again, if it was given back
		p.Version++
	}
	return true, nil
}

// checkChange returns the partition ch changes if ch may be applied to it.
func (f *FSM) checkChange(ch Change) (*PartitionAssignment, error) {
	ti, ok := f.m.typeIndex(ch.Type)
	if !ok {
		return nil, fmt.Errorf("%w: actor type not registered", ErrInvalidCommand)
	}
	ps := f.m.Types[ti].Partitions
	if ch.Partition < 0 || ch.Partition >= len(ps) {
		return nil, fmt.Errorf("%w: no such partition", ErrInvalidCommand)
	}
	p := &ps[ch.Partition]
	if p.Epoch != ch.ExpectEpoch || p.Version != ch.ExpectVersion {
		return nil, fmt.Errorf("%w: at epoch %d version %d, change expects epoch %d version %d",
			ErrStale, p.Epoch, p.Version, ch.ExpectEpoch, ch.ExpectVersion)
	}
	if ch.Active == "" {
		return nil, fmt.Errorf("%w: no active node", ErrInvalidCommand)
	}
	want, newEpoch := changeEpoch(*p, ch)
	if ch.Epoch != want {
		if p.IsGivenBack() {
			return nil, fmt.Errorf("%w: epoch %d for a partition %s gave back at epoch %d (floor %d): want %d",
				ErrInvalidCommand, ch.Epoch, p.GivenBack, p.Epoch, p.EpochFloor, want)
		}
		return nil, fmt.Errorf("%w: epoch %d with active %s (incarnation %d) -> %s (incarnation %d) at epoch %d",
			ErrInvalidCommand, ch.Epoch, p.Active, p.ActiveIncarnation, ch.Active, ch.ActiveIncarnation, p.Epoch)
	}
	if err := f.checkAlive(ch.Active); err != nil {
		return nil, err
	}
	if n, _ := f.m.Node(ch.Active); newEpoch && ch.ActiveIncarnation != n.Incarnation {
		return nil, fmt.Errorf("%w: new epoch for incarnation %d of %s, which is at incarnation %d", ErrStale, ch.ActiveIncarnation, ch.Active, n.Incarnation)
	}
	nodes := make(map[string]bool, len(ch.Replicas))
	for _, r := range ch.Replicas {
		switch {
		case r.Node == ch.Active:
			return nil, fmt.Errorf("%w: replica on the active node %s", ErrInvalidCommand, r.Node)
		case nodes[r.Node]:
			return nil, fmt.Errorf("%w: two replicas on %s", ErrInvalidCommand, r.Node)
		}
		nodes[r.Node] = true
		if err := f.checkAlive(r.Node); err != nil {
			return nil, err
		}
	}
	for _, r := range ch.Replicas {
		if r.Replaces != "" && (r.Replaces == r.Node || !nodes[r.Replaces] || r.Replaces == ch.MovingTo || r.Node == ch.MovingTo) {
			return nil, fmt.Errorf("%w: replica %s replaces %q", ErrInvalidCommand, r.Node, r.Replaces)
		}
	}
	if ch.MovingTo != "" && !nodes[ch.MovingTo] {
		return nil, fmt.Errorf("%w: moving to %s, which holds no replica", ErrInvalidCommand, ch.MovingTo)
	}
	return p, nil
}

// changeEpoch returns the epoch a change ch of p must set, and whether it is
// a new one. A new owner gets a new epoch: another node, or a restarted
// process (another incarnation) of the same node; Epoch+1. A given-back
// partition gets a new one whoever its active is: NextEpoch, above the floor
// its changelog holds. Otherwise the epoch stays.
func changeEpoch(p PartitionAssignment, ch Change) (epoch uint64, isNew bool) {
	switch {
	case p.IsGivenBack():
		return p.NextEpoch(), true
	case ch.Active != p.Active || ch.ActiveIncarnation != p.ActiveIncarnation:
		return p.Epoch + 1, true
	}
	return p.Epoch, false
}

func (f *FSM) checkAlive(id string) error {
	n, ok := f.m.Node(id)
	if !ok {
		return fmt.Errorf("%w: node %s is unknown", ErrStale, id)
	}
	if !n.Alive() {
		return fmt.Errorf("%w: node %s is %s", ErrStale, id, n.State)
	}
	return nil
}

// reportLag records the lags of the replicas c.Node still holds.
func (f *FSM) reportLag(c ReportLag) bool {
	changed := false
	for _, l := range c.Lags {
		ti, ok := f.m.typeIndex(l.Type)
		if !ok || l.Partition < 0 || l.Partition >= len(f.m.Types[ti].Partitions) {
			continue
		}
		p := &f.m.Types[ti].Partitions[l.Partition]
		j, ok := p.replicaIndex(c.Node)
		if !ok {
			continue
		}
		r := &p.Replicas[j]
		if r.LagKnown() && !c.At.After(r.ReportedAt) {
			continue
		}
		r.Lag, r.Behind, r.ReportedAt = l.Records, l.Behind, c.At
		changed = true
	}
	return changed
}

// giveBack marks a partition given back by its active at its epoch, and
// with Avoid records the active's process among the partition's avoided
// nodes if that process is still the node's current one. A give-back from
// another node or for another epoch is stale; one repeated before the
// partition is placed again raises the floor (and takes the new reason, and
// an avoidance not recorded yet), and changes nothing if all are the same.
func (f *FSM) giveBack(c GiveBack) (bool, error) {
	p, err := f.partition("give back", c.Type, c.Partition)
	if err != nil {
		return false, err
	}
	if p.Active != c.Node || p.Epoch != c.Epoch {
		return false, fmt.Errorf("%w: %s gives back %s at epoch %d, which is active on %q at epoch %d",
			ErrStale, c.Node, p, c.Epoch, p.Active, p.Epoch)
	}
	floor := max(p.EpochFloor, c.MinEpoch)
	inc := p.ActiveIncarnation // the process that ran it at Epoch, and gives it back
	n, known := f.m.Node(c.Node)
	avoid := c.Avoid && known && n.Incarnation == inc && !p.Avoids(c.Node, inc)
	if p.GivenBack == c.Node && p.EpochFloor == floor && p.GiveBackReason == c.Reason && !avoid {
		return false, nil // repeated
	}
	p.GivenBack, p.EpochFloor, p.GiveBackReason = c.Node, floor, c.Reason
	if avoid {
		// Not there yet: an entry always names its node's current incarnation.
		j, _ := p.avoidIndex(c.Node)
		p.Avoid = slices.Insert(p.Avoid, j, AvoidNode{Node: c.Node, Incarnation: inc})
	}
	p.Version++
	return true, nil
}

// partition is the assignment of partition p of typ, to change in place;
// an unknown type or partition is ErrInvalidCommand (what names the command).
func (f *FSM) partition(what, typ string, p int) (*PartitionAssignment, error) {
	ti, ok := f.m.typeIndex(typ)
	if !ok {
		return nil, fmt.Errorf("%w: %s %s/%d: actor type not registered", ErrInvalidCommand, what, typ, p)
	}
	ps := f.m.Types[ti].Partitions
	if p >= len(ps) {
		return nil, fmt.Errorf("%w: %s %s/%d: no such partition", ErrInvalidCommand, what, typ, p)
	}
	return &ps[p], nil
}

// giveBackReplica records the giving node's current process among the
// partition's avoided nodes, if the node holds a replica of it or is its
// move target; otherwise the give-back is stale.
func (f *FSM) giveBackReplica(c GiveBackReplica) (bool, error) {
	p, err := f.partition("give back a replica of", c.Type, c.Partition)
	if err != nil {
		return false, err
	}
	held := p.MovingTo == c.Node || slices.ContainsFunc(p.Replicas, func(r Replica) bool { return r.Node == c.Node })
	n, known := f.m.Node(c.Node)
	if !held || !known {
		return false, fmt.Errorf("%w: %s gives back its replica of %s, which it does not hold", ErrStale, c.Node, p)
	}
	if p.Avoids(c.Node, n.Incarnation) {
		return false, nil // repeated
	}
	j, found := p.avoidIndex(c.Node)
	if found {
		p.Avoid[j].Incarnation = n.Incarnation // an older process of the node was avoided
	} else {
		p.Avoid = slices.Insert(p.Avoid, j, AvoidNode{Node: c.Node, Incarnation: n.Incarnation})
	}
	p.Version++
	return true, nil
}

// Assignment returns a copy of the current assignment.
func (f *FSM) Assignment() Model {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m.Clone()
}

// Subscribe returns a channel that receives a value after the assignment
// changes, and a cancel func that stops the notifications and closes the
// channel. Notifications coalesce: the channel holds at most one, and a
// receiver reads the current state with Assignment. The channel starts with
// one pending notification, so a loop of receive-then-Assignment starts in sync.
func (f *FSM) Subscribe() (<-chan struct{}, func()) {
	s := &fsmSub{ch: make(chan struct{}, 1)}
	s.ch <- struct{}{}
	f.mu.Lock()
	f.subs[s] = struct{}{}
	f.mu.Unlock()
	return s.ch, func() {
		s.once.Do(func() {
			f.mu.Lock()
			delete(f.subs, s)
			f.mu.Unlock()
			close(s.ch)
		})
	}
}

// Wait returns the assignment once cond holds for it, or ctx's error.
func (f *FSM) Wait(ctx context.Context, cond func(Model) bool) (Model, error) {
	for {
		f.mu.Lock()
		m, ready := f.m.Clone(), f.ready
		f.mu.Unlock()
		if cond(m) {
			return m, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return m, ctx.Err()
		}
	}
}

func (f *FSM) notifyLocked() {
	for s := range f.subs {
		select {
		case s.ch <- struct{}{}:
		default:
		}
	}
	close(f.ready)
	f.ready = make(chan struct{})
}

// snapshotVersion is the first byte of a snapshot: the encoding of the rest.
const snapshotVersion = 1

// Snapshot captures the assignment for Raft; Persist writes it as msgpack.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return fsmSnapshot{m: f.Assignment()}, nil
}

// Restore replaces the assignment with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore assignment: %w", err)
	}
	m, err := decodeSnapshot(b)
	if err != nil {
		return fmt.Errorf("restore assignment: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m = m
	f.notifyLocked()
	return nil
}

type fsmSnapshot struct{ m Model }

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := encodeSnapshot(s.m)
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist assignment snapshot: %w", err)
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

func encodeSnapshot(m Model) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(snapshotVersion)
	if err := msgpack.NewEncoder(&buf).Encode(m); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func decodeSnapshot(b []byte) (Model, error) {
	if len(b) == 0 || b[0] != snapshotVersion {
		return Model{}, errors.New("not an assignment snapshot (version byte)")
	}
	var m Model
	if err := msgpack.Unmarshal(b[1:], &m); err != nil {
		return Model{}, err
	}
	if err := m.check(); err != nil {
		return Model{}, err
	}
	return m, nil
}
