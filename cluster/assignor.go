package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// AssignorConfig tunes the assignor.
type AssignorConfig struct {
	// MaxLagForMove is the replica lag, in changelog records, under which a
	// warm-up move hands the active over (and a replica move drops the replica
	// it replaces). The new owner drains these records while the partition
	// pauses. 1000: an ordered consumer reads ~550-770 k records/s here, so
	// the drain takes a few ms, well inside the 100 ms handover target.
	MaxLagForMove uint64
	// MaxConcurrentMoves bounds the warm-up moves in progress in the cluster
	// (actives moving, replicas replacing replicas), so that the changelog
	// restores of a join do not swamp the nodes. Failover never waits for it.
	// 4: each warming replica replays a changelog at up to ~0.5 M records/s on
	// 2 cores; 4 keeps that bounded while a 32-partition join needs 8 rounds.
	MaxConcurrentMoves int
}

// DefaultAssignorConfig returns the defaults described on each field.
func DefaultAssignorConfig() AssignorConfig {
	return AssignorConfig{MaxLagForMove: 1000, MaxConcurrentMoves: 4}
}

// Validate checks the config.
func (c AssignorConfig) Validate() error {
	if c.MaxConcurrentMoves < 1 {
		return errors.New("cluster: MaxConcurrentMoves must be at least 1")
	}
	return nil
}

// ReplicaPlacement is one hot replica in a Change.
type ReplicaPlacement struct {
	// Node holds the replica.
	Node string `msgpack:"n"`
	// Replaces is the replica this one warms up to replace, if any.
	Replaces string `msgpack:"rp,omitempty"`
}

// Change sets where one partition runs. It is a compare-and-set: it applies
// only while the partition is at ExpectEpoch and ExpectVersion, so a change
// planned by an old leader cannot overwrite newer state.
type Change struct {
	Type      string `msgpack:"ty"`
	Partition int    `msgpack:"p"`
	// ExpectEpoch and ExpectVersion are the partition's epoch and version the
	// change was planned against.
	ExpectEpoch   uint64 `msgpack:"xe"`
	ExpectVersion uint64 `msgpack:"xv"`
	// Active is the active node after the change.
	Active string `msgpack:"a"`
	// Epoch is ExpectEpoch+1 if Active or ActiveIncarnation changes, else
	// ExpectEpoch; for a partition given back (PartitionAssignment.IsGivenBack)
	// it is the partition's NextEpoch, max(ExpectEpoch, EpochFloor)+1, whoever
	// the Active is.
	Epoch uint64 `msgpack:"e"`
	// ActiveIncarnation is the partition's ActiveIncarnation after the change.
	// When it differs from the partition's (or Active changes), it must be the
	// Active node's recorded incarnation (ErrStale otherwise): a new epoch is
	// assigned only to the node's current process.
	ActiveIncarnation uint64 `msgpack:"ai,omitempty"`
	// Replicas is the whole set of hot replicas after the change; replicas
	// that stay keep their reported lag.
	Replicas []ReplicaPlacement `msgpack:"r,omitempty"`
	// MovingTo is the replica the active is moving to, "" for none.
	MovingTo string `msgpack:"m,omitempty"`
	// Reason says why, for the logs: "node n2 dead: promote replica n3 (lag 4)".
	Reason string `msgpack:"why,omitempty"`
}

// String describes the change for logs.
func (c Change) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d: active %s epoch %d", c.Type, c.Partition, c.Active, c.Epoch)
	if c.Epoch != c.ExpectEpoch {
		fmt.Fprintf(&b, " (was %d)", c.ExpectEpoch)
	}
	b.WriteString(" replicas [")
	for i, r := range c.Replicas {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(r.Node)
		if r.Replaces != "" {
			b.WriteString(">" + r.Replaces)
		}
	}
	b.WriteByte(']')
	if c.MovingTo != "" {
		b.WriteString(" moving to " + c.MovingTo)
	}
	return b.String() + ": " + c.Reason
}

// Plan is the assignor: it returns the changes that take the assignment m to
// where it should be, one per partition that changes, sorted by actor type
// and partition. The leader runs it on every change of membership, actor
// types or replica lag, and applies the result as one Assign.
//
// Once applied, every partition of every actor type has its active on an
// alive node (when one is alive), and planning again yields no changes until
// something changes. A partition stays where it is unless its node is gone
// or balance needs a move; a partition whose node is gone is taken over by
// its least-lagging hot replica (promotion) or else by the least-loaded
// alive node (cold restore from the changelog). Balance means that no
// partition's planned node (MovingTo, else Active) holds two or more actives
// of its type than an alive node the partition may move to (one it does not
// avoid, below); with no node avoided, the actives of each actor type differ
// by at most one between alive nodes (so none holds more than ceil(P/N)). A
// balance move first warms the target up as a replica (MovingTo) and hands
// the active over once the replica's lag is at most MaxLagForMove, with at
// most MaxConcurrentMoves moves in progress.
// Each partition gets min(R, N-1) hot replicas, never on its active's node,
// not all in the active's zone while another zone has an alive node, and
// spread so that each node holds about as many replicas of a type as the
// others (moving a replica also warms the new one up before dropping the old).
// A partition whose active node restarted (its NodeInfo.Incarnation differs
// from the partition's ActiveIncarnation) stays on that node with a new
// epoch for the new incarnation, so that the restarted partition actor's
// epoch is newer than the one its changelog was fenced with.
// A partition its active gave back (PartitionAssignment.IsGivenBack) is
// recovered like one whose node is gone: its least-lagging hot replica is
// promoted, else it is restored on the least-loaded alive node other than
// the one that gave it back, or on that one if no other may take it; either
// way at epoch NextEpoch, above its EpochFloor, and no longer given back.
// The node that gave it back gets a new replica of it only when no other
// node can take one.
//
// A partition avoids the alive nodes in its PartitionAssignment.Avoid that
// are still at the incarnation recorded there (they gave it back for a fault
// of their own), unless it would avoid every alive node: then it avoids none.
// Once applied, no partition's active or move target is a node it avoids:
// recovery promotes only a replica on a node it does not avoid (else
// restores on one), balance never moves an active or starts a move to one,
// a move in progress to one is cancelled, and an active on one (placed
// there while every alive node was avoided) is recovered as if its node
// were gone as soon as another alive node may take it; a replica warm-up
// to a node the partition avoids is cancelled. A replica goes to a
// node its partition avoids only when no other node can take one (or, for
// zone spread, when no other node of another zone can), is the first
// dropped when there are too many, and is moved to a node the partition
// does not avoid once one can take it without putting the partition in one
// zone; replica balance never moves a replica there.
//
// Plan is a pure function of m and cfg (which must be valid): the same input
// gives the same output. Lag reports matter only while a move is in progress
// (MovesInProgress) and at failover, so the leader need not plan on a lag
// report otherwise.
func Plan(m Model, cfg AssignorConfig) []Change {
	pl := newPlanner(m, cfg)
	if len(pl.alive) == 0 {
		return nil
	}
	// Plan on the working copy until a round changes nothing, so that
	// planning again on the result changes nothing either. Usually three
	// rounds: everything but replica balance, then replica balance, then none.
	for range maxPlanRounds {
		pl.changed = false
		pl.round()
		if !pl.changed {
			break
		}
	}
	return pl.changes()
}

const maxPlanRounds = 8

// planner holds the working copy of the assignment while Plan runs, and the
// load of every alive node, kept up to date by mutate.
type planner struct {
	cfg     AssignorConfig
	nodes   map[string]NodeInfo
	alive   []string // sorted
	isAlive map[string]bool
	zones   int // distinct zones of alive nodes
	types   []*typePlan
	changed bool

	// Loads: planned actives (MovingTo, else Active) and effective replicas
	// (see partPlan.effective), per actor type and in total, of alive nodes.
	activeLoad   map[string]map[string]int
	totalActive  map[string]int
	replicaLoad  map[string]map[string]int
	totalReplica map[string]int
}

type typePlan struct {
	t     ActorType
	parts []*partPlan
}

type partPlan struct {
	orig    PartitionAssignment
	cur     PartitionAssignment
	reasons []string
	// avoid holds the alive nodes the partition avoids (see avoided).
	avoid map[string]bool
}

func newPlanner(m Model, cfg AssignorConfig) *planner {
	pl := &planner{
		cfg:          cfg,
		nodes:        make(map[string]NodeInfo, len(m.Nodes)),
		isAlive:      make(map[string]bool),
		activeLoad:   make(map[string]map[string]int),
		totalActive:  make(map[string]int),
		replicaLoad:  make(map[string]map[string]int),
		totalReplica: make(map[string]int),
	}
	zones := map[string]bool{}
	for _, n := range m.Nodes {
		pl.nodes[n.ID] = n
		if n.Alive() {
			pl.alive = append(pl.alive, n.ID)
			pl.isAlive[n.ID] = true
			zones[n.Zone] = true
		}
	}
	slices.Sort(pl.alive)
	pl.zones = len(zones)
	for _, t := range m.Types {
		tp := &typePlan{t: t.Type}
		pl.activeLoad[t.Type.Name] = map[string]int{}
		pl.replicaLoad[t.Type.Name] = map[string]int{}
		for _, p := range t.Partitions {
			pp := &partPlan{orig: p, cur: p.clone(), avoid: pl.avoided(p)} // orig is read only
			tp.parts = append(tp.parts, pp)
			pl.account(pp, 1)
		}
		pl.types = append(pl.types, tp)
	}
	return pl
}

// avoided returns the alive nodes p avoids (PartitionAssignment.Avoids at
// their current incarnation), or none when it avoids every alive node: the
// partition must run somewhere, and then it may run on any.
func (pl *planner) avoided(p PartitionAssignment) map[string]bool {
	var av map[string]bool
	for _, a := range p.Avoid {
		if n, ok := pl.nodes[a.Node]; ok && n.Alive() && p.Avoids(n.ID, n.Incarnation) {
			if av == nil {
				av = map[string]bool{}
			}
			av[n.ID] = true
		}
	}
	if len(av) == len(pl.alive) {
		return nil
	}
	return av
}

// round runs the assignor's phases once over every partition.
func (pl *planner) round() {
	for _, tp := range pl.types {
		for _, p := range tp.parts {
			pl.recover(tp, p)
			pl.completeMoves(p)
		}
	}
	budget := pl.cfg.MaxConcurrentMoves
	for _, tp := range pl.types {
		for _, p := range tp.parts {
			budget -= p.cur.MovesInProgress()
		}
	}
	for _, tp := range pl.types {
		pl.balanceActives(tp, &budget)
	}
	for _, tp := range pl.types {
		for _, p := range tp.parts {
			pl.placeReplicas(tp, p, &budget)
		}
	}
	if pl.changed {
		return // balance replicas once the rest has settled
	}
	for _, tp := range pl.types {
		pl.balanceReplicas(tp, &budget)
	}
}

// changes lists the difference between the working copy and the input.
func (pl *planner) changes() []Change {
	var out []Change
	for _, tp := range pl.types {
		for _, p := range tp.parts {
			o, c := p.orig, p.cur
			inc := pl.nodes[c.Active].Incarnation // the active's current process
			if c.Active == o.Active && inc != o.ActiveIncarnation {
				p.note("%s restarted (incarnation %d -> %d): new epoch", c.Active, o.ActiveIncarnation, inc)
			}
			if !o.IsGivenBack() && o.Active == c.Active && inc == o.ActiveIncarnation && o.MovingTo == c.MovingTo && slices.EqualFunc(o.Replicas, c.Replicas, func(a, b Replica) bool {
				return a.Node == b.Node && a.Replaces == b.Replaces
			}) {
				continue
			}
			ch := Change{
				Type: c.Type, Partition: c.Partition,
				ExpectEpoch: o.Epoch, ExpectVersion: o.Version,
				Active: c.Active, ActiveIncarnation: inc, MovingTo: c.MovingTo,
				Reason: strings.Join(p.reasons, "; "),
			}
			ch.Epoch, _ = changeEpoch(o, ch)
			for _, r := range c.Replicas {
				ch.Replicas = append(ch.Replicas, ReplicaPlacement{Node: r.Node, Replaces: r.Replaces})
			}
			out = append(out, ch)
		}
	}
	return out
}

// --- the working copy of one partition ---

func (p *partPlan) note(format string, args ...any) {
	p.reasons = append(p.reasons, fmt.Sprintf(format, args...))
}

// planned is the node the partition's active is on once its move completes.
func (p *partPlan) planned() string {
	if p.cur.MovingTo != "" {
		return p.cur.MovingTo
	}
	return p.cur.Active
}

func (p *partPlan) replica(node string) (*Replica, bool) {
	i, ok := p.cur.replicaIndex(node)
	if !ok {
		return nil, false
	}
	return &p.cur.Replicas[i], true
}

// replaced reports whether another replica is warming up to replace node's.
func (p *partPlan) replaced(node string) bool {
	for _, r := range p.cur.Replicas {
		if r.Replaces == node {
			return true
		}
	}
	return false
}

// effective lists the replicas that count towards the replication factor:
// all but the move target (it will be the active) and those being replaced.
func (p *partPlan) effective() []Replica {
	var eff []Replica
	p.eachEffective(func(r Replica) { eff = append(eff, r) })
	return eff
}

func (p *partPlan) eachEffective(f func(Replica)) {
	for _, r := range p.cur.Replicas {
		if r.Node != p.cur.MovingTo && !p.replaced(r.Node) {
			f(r)
		}
	}
}

// countEffective is len(p.effective()).
func (p *partPlan) countEffective() int {
	n := 0
	p.eachEffective(func(Replica) { n++ })
	return n
}

// zonesOf counts the distinct zones of the active and the given nodes.
func (pl *planner) zonesOf(p *partPlan, nodes []string) map[string]int {
	z := map[string]int{pl.nodes[p.cur.Active].Zone: 1}
	for _, n := range nodes {
		z[pl.nodes[n].Zone]++
	}
	return z
}

func replicaNodes(rs []Replica) []string {
	ns := make([]string, len(rs))
	for i, r := range rs {
		ns[i] = r.Node
	}
	return ns
}

// --- mutations: every change of the working copy goes through mutate ---

// mutate changes p through f, keeping the loads current.
func (pl *planner) mutate(p *partPlan, f func(c *PartitionAssignment)) {
	pl.account(p, -1)
	f(&p.cur)
	pl.account(p, 1)
	pl.changed = true
}

func (pl *planner) account(p *partPlan, sign int) {
	typ := p.cur.Type
	if n := p.planned(); pl.isAlive[n] {
		pl.activeLoad[typ][n] += sign
		pl.totalActive[n] += sign
	}
	p.eachEffective(func(r Replica) {
		if pl.isAlive[r.Node] {
			pl.replicaLoad[typ][r.Node] += sign
			pl.totalReplica[r.Node] += sign
		}
	})
}

// addReplica places a replica on node; a node that was a replica in the
// input keeps its reported lag, as the FSM keeps it.
func (p *partPlan) addReplica(node, replaces string) {
	r := Replica{Node: node}
	if o, ok := p.orig.Replica(node); ok {
		r = o
	}
	r.Replaces = replaces
	i, _ := p.cur.replicaIndex(node)
	p.cur.Replicas = slices.Insert(p.cur.Replicas, i, r)
}

// dropReplica removes node's replica; a replica warming up to replace it
// becomes an ordinary one, and a move to it is cancelled.
func (p *partPlan) dropReplica(node string) {
	i, ok := p.cur.replicaIndex(node)
	if !ok {
		return
	}
	p.cur.Replicas = slices.Delete(p.cur.Replicas, i, i+1)
	for j := range p.cur.Replicas {
		if p.cur.Replicas[j].Replaces == node {
			p.cur.Replicas[j].Replaces = ""
		}
	}
	if p.cur.MovingTo == node {
		p.cur.MovingTo = ""
	}
}

// setActive makes node, one of the replicas or a fresh node, the active;
// a given-back partition is no longer given back (the FSM clears the
// give-back with the change, which gives it a new epoch).
func (p *partPlan) setActive(node string) {
	p.dropReplica(node)
	p.cur.Active = node
	p.cur.MovingTo = ""
	p.cur.GivenBack, p.cur.GiveBackReason, p.cur.EpochFloor = "", "", 0
}

// handOver moves the active to node and keeps the old active, whose store is
// current, as a replica; trimming drops it if it is one too many.
func (pl *planner) handOver(p *partPlan, node string) {
	pl.mutate(p, func(*PartitionAssignment) {
		old := p.cur.Active
		p.setActive(node)
		if pl.isAlive[old] {
			p.addReplica(old, "")
		}
	})
}

// --- phase 1: partitions whose node is gone ---

func (pl *planner) gone(node string) string {
	n, ok := pl.nodes[node]
	if !ok {
		return "node " + node + " unknown"
	}
	return "node " + node + " " + n.State.String()
}

// recover drops replicas on nodes that are gone, cancels a move to a node
// the partition avoids, and gives a partition whose active is gone, was
// given back, or is on a node it avoids a new active: its least-lagging
// replica on a node it does not avoid, else the least-loaded alive node it
// does not avoid (not the one that gave it back, unless no other may take it).
func (pl *planner) recover(tp *typePlan, p *partPlan) {
	for i := 0; i < len(p.cur.Replicas); {
		r := p.cur.Replicas[i]
		if pl.isAlive[r.Node] {
			i++
			continue
		}
		pl.mutate(p, func(*PartitionAssignment) { p.dropReplica(r.Node) })
		p.note("%s: drop its replica", pl.gone(r.Node))
	}
	if to := p.cur.MovingTo; p.avoid[to] {
		pl.mutate(p, func(c *PartitionAssignment) { c.MovingTo = "" })
		p.note("cancel move to %s: %s", to, avoidedWhy(to))
	}
	givenBack := p.cur.GivenBack // "" once placed again in this plan
	if pl.isAlive[p.cur.Active] && givenBack == "" && !p.avoid[p.cur.Active] {
		return
	}
	why := "new partition"
	switch {
	case givenBack != "" && pl.isAlive[givenBack]:
		why = givenBackWhy(p.cur)
	case givenBack != "":
		why = pl.gone(p.cur.Active) + "; " + givenBackWhy(p.cur)
	case p.avoid[p.cur.Active]:
		why = "active " + avoidedWhy(p.cur.Active)
	case p.cur.Active != "":
		why = pl.gone(p.cur.Active)
	}
	if cands := slices.DeleteFunc(slices.Clone(p.cur.Replicas), func(r Replica) bool { return p.avoid[r.Node] }); len(cands) > 0 {
		best := slices.MinFunc(cands, func(a, b Replica) int {
			return cmp.Or(
				compareLag(a, b),
				cmp.Compare(pl.activeLoad[tp.t.Name][a.Node], pl.activeLoad[tp.t.Name][b.Node]),
				cmp.Compare(pl.totalActive[a.Node], pl.totalActive[b.Node]),
				cmp.Compare(a.Node, b.Node))
		})
		pl.mutate(p, func(*PartitionAssignment) { p.setActive(best.Node) })
		p.note("%s: promote replica %s (%s)", why, best.Node, best.lagString())
		return
	}
	node := pl.leastLoaded(tp, p, givenBack)
	pl.mutate(p, func(*PartitionAssignment) { p.setActive(node) })
	switch {
	case p.orig.Active == "":
		p.note("%s: place on %s", why, node)
	case node == givenBack && len(pl.alive) == 1:
		p.note("%s: restore on %s again (no replica, no other node alive)", why, node)
	case node == givenBack:
		p.note("%s: restore on %s again (no replica, the partition avoids the other alive nodes)", why, node)
	case len(p.cur.Replicas) > 0:
		p.note("%s: restore on %s (no replica on a node the partition does not avoid)", why, node)
	default:
		p.note("%s: restore on %s (no replica)", why, node)
	}
}

// avoidedWhy says why a node is avoided, for change reasons.
func avoidedWhy(node string) string {
	return node + " gave the partition back for a fault of its own and has not restarted"
}

// givenBackWhy is the start of the reason of a change that places a given-back
// partition again: "n1 gave it back (its changelog holds epoch 7)".
func givenBackWhy(p PartitionAssignment) string {
	why := p.GivenBack + " gave it back"
	if p.GiveBackReason != "" {
		why += " (" + p.GiveBackReason + ")"
	}
	return why
}

// compareLag orders replicas by their reported lag, unknown lags last.
func compareLag(a, b Replica) int {
	if a.LagKnown() != b.LagKnown() {
		if a.LagKnown() {
			return -1
		}
		return 1
	}
	return cmp.Compare(a.Lag, b.Lag)
}

// leastLoaded returns the alive node p does not avoid with the fewest
// actives of the type, then in total; not exclude unless no other is left.
func (pl *planner) leastLoaded(tp *typePlan, p *partPlan, exclude string) string {
	best := ""
	for _, excluding := range []bool{true, false} {
		for _, n := range pl.alive {
			if p.avoid[n] || (excluding && n == exclude) {
				continue
			}
			if best == "" || cmp.Or(
				cmp.Compare(pl.activeLoad[tp.t.Name][n], pl.activeLoad[tp.t.Name][best]),
				cmp.Compare(pl.totalActive[n], pl.totalActive[best])) < 0 {
				best = n
			}
		}
		if best != "" {
			return best
		}
	}
	return best
}

// --- phase 2: warm-up moves whose replica has caught up ---

func (pl *planner) completeMoves(p *partPlan) {
	if to := p.cur.MovingTo; to != "" {
		if r, ok := p.replica(to); ok && r.warm(pl.cfg.MaxLagForMove) {
			lag := r.lagString()
			pl.handOver(p, to)
			p.note("balance: hand over to %s (%s)", to, lag)
		}
	}
	if !p.hasReplicaMove() {
		return
	}
	for _, r := range slices.Clone(p.cur.Replicas) {
		if r.Replaces != "" && r.warm(pl.cfg.MaxLagForMove) {
			pl.mutate(p, func(*PartitionAssignment) { p.dropReplica(r.Replaces) })
			p.note("replica %s warm (%s): drop replica %s", r.Node, r.lagString(), r.Replaces)
		}
	}
}

// --- phase 3: balance the actives of each actor type ---

// Kinds of active move, cheapest first.
const (
	moveInstant  = iota // to a replica that is warm already: hand over now
	moveCancel          // a move in progress goes back where it came from
	moveRedirect        // a move in progress gets another target
	moveWarm            // warm up an existing replica that lags
	moveCold            // warm up a new replica
)

type activeMove struct {
	p        *partPlan
	idx      int
	src, dst string
	gap      int // the planned actives of the type on src, less those on dst
	kind     int
	lag      Replica
}

// balanceActives moves planned actives of the type, one at a time, each from
// its node to an alive node the partition does not avoid that holds at
// least two fewer of them (the widest gap first, then the cheapest move),
// until no such move is left or the budget for warm-up moves is spent. So at
// a fixed point no partition's planned node holds two or more actives of
// its type than a node the partition may move to; with no node avoided,
// that is: the counts differ by at most one between alive nodes. Each move
// lowers the sum of the squared counts, so the loop ends, and moves never
// cycle while membership and avoidance stay as they are.
func (pl *planner) balanceActives(tp *typePlan, budget *int) {
	load := pl.activeLoad[tp.t.Name]
	for {
		var best *activeMove
		for i, p := range tp.parts {
			src := p.planned()
			if p.hasReplicaMove() {
				continue
			}
			for _, dst := range pl.alive {
				if dst == src || p.avoid[dst] || load[src]-load[dst] < 2 {
					continue
				}
				m := pl.classify(tp, p, src, dst)
				if m.kind >= moveWarm && *budget <= 0 {
					continue
				}
				m.idx, m.gap = i, load[src]-load[dst]
				if best == nil || compareMoves(pl, m, *best) < 0 {
					best = &m
				}
			}
		}
		if best == nil {
			return
		}
		if best.kind >= moveWarm {
			*budget--
		}
		pl.makeMove(*best)
	}
}

func (p *partPlan) hasReplicaMove() bool {
	for _, r := range p.cur.Replicas {
		if r.Replaces != "" {
			return true
		}
	}
	return false
}

func (pl *planner) classify(tp *typePlan, p *partPlan, src, dst string) activeMove {
	m := activeMove{p: p, src: src, dst: dst}
	r, isReplica := p.replica(dst)
	if isReplica {
		m.lag = *r
	}
	switch {
	case p.cur.MovingTo == src && dst == p.cur.Active:
		m.kind = moveCancel
	case isReplica && r.warm(pl.cfg.MaxLagForMove), tp.t.External:
		m.kind = moveInstant
	case p.cur.MovingTo == src:
		m.kind = moveRedirect
	case isReplica:
		m.kind = moveWarm
	default:
		m.kind = moveCold
	}
	return m
}

// compareMoves orders candidate moves: widest gap first, then the cheapest
// kind, then partitions whose active has not changed in this plan already (a
// promoted replica stays active), then the least-lagging target.
func compareMoves(pl *planner, a, b activeMove) int {
	return cmp.Or(
		-cmp.Compare(a.gap, b.gap),
		cmp.Compare(a.kind, b.kind),
		cmpBool(a.p.cur.Active != a.p.orig.Active, b.p.cur.Active != b.p.orig.Active),
		compareLag(a.lag, b.lag),
		cmp.Compare(a.idx, b.idx),
		cmp.Compare(pl.totalActive[a.dst], pl.totalActive[b.dst]),
		cmp.Compare(a.dst, b.dst),
		cmp.Compare(a.src, b.src))
}

// makeMove makes balance move m in the working copy.
func (pl *planner) makeMove(m activeMove) {
	p := m.p
	switch m.kind {
	case moveInstant:
		pl.handOver(p, m.dst)
		p.note("balance: move to warm replica %s (%s)", m.dst, m.lag.lagString())
	case moveCancel:
		pl.mutate(p, func(c *PartitionAssignment) { c.MovingTo = "" })
		p.note("balance: cancel move to %s", m.src)
	default:
		pl.mutate(p, func(c *PartitionAssignment) {
			if !c.HasReplica(m.dst) {
				p.addReplica(m.dst, "")
			}
			c.MovingTo = m.dst
		})
		if m.kind == moveRedirect {
			p.note("balance: warm up %s instead of %s", m.dst, m.src)
		} else {
			p.note("balance: warm up %s to take over from %s", m.dst, m.src)
		}
	}
}

// --- phase 4: the replicas of each partition ---

// wantReplicas is how many replicas a partition of tp gets.
func (pl *planner) wantReplicas(tp *typePlan) int {
	return max(0, min(tp.t.ReplicationFactor, len(pl.alive)-1))
}

// zoneRuleApplies reports whether a partition of tp must not have its
// active and all its replicas in one zone.
func (pl *planner) zoneRuleApplies(tp *typePlan) bool {
	return pl.zones >= 2 && pl.wantReplicas(tp) >= 1
}

// placeReplicas trims a partition's replicas to the wanted number (those on
// nodes it avoids first), places missing ones (on the node that gave the
// partition back, or on one it avoids, only when no other node can take
// one), and starts a replica move if all of them share the active's zone,
// else one off a node it avoids to one it does not (leaveAvoided).
func (pl *planner) placeReplicas(tp *typePlan, p *partPlan, budget *int) {
	for _, r := range slices.Clone(p.cur.Replicas) {
		if r.Replaces != "" && p.avoid[r.Node] && !pl.oneZoneWith(tp, p, r.Node, "") {
			// A replica may never warm up there (the node gave the partition
			// back); only zone spread, when no other node can, goes there.
			pl.mutate(p, func(*PartitionAssignment) { p.dropReplica(r.Node) })
			p.note("replica: cancel the warm-up of %s to replace %s: %s", r.Node, r.Replaces, avoidedWhy(r.Node))
		}
	}
	want := pl.wantReplicas(tp)
	for p.countEffective() > want {
		drop := pl.worstReplica(tp, p, p.effective())
		pl.mutate(p, func(*PartitionAssignment) { p.dropReplica(drop) })
		p.note("replica: drop %s (%d wanted)", drop, want)
	}
	for {
		n := p.countEffective()
		if p.cur.MovingTo != "" {
			n++
		}
		if n >= want {
			break
		}
		node := pl.newReplicaNode(tp, p, func(string) bool { return true })
		if node == "" {
			break
		}
		pl.mutate(p, func(*PartitionAssignment) { p.addReplica(node, "") })
		p.note("replica: place on %s", node)
	}
	if p.cur.MovesInProgress() > 0 || *budget <= 0 {
		return
	}
	if pl.zoneRuleApplies(tp) && len(pl.zonesOf(p, replicaNodes(p.cur.Replicas))) == 1 {
		pl.spreadZones(tp, p, budget)
		return
	}
	pl.leaveAvoided(tp, p, budget)
}

// newReplicaNode picks a node that ok accepts for a new replica of p (see
// bestReplicaNode): one that neither gave the partition back in the input
// (a broken disk, maybe) nor is avoided by it; else the one that gave it
// back, unless avoided; else one it avoids; "" if none.
func (pl *planner) newReplicaNode(tp *typePlan, p *partPlan, ok func(string) bool) string {
	for _, tier := range []func(string) bool{
		func(n string) bool { return n != p.orig.GivenBack && !p.avoid[n] },
		func(n string) bool { return !p.avoid[n] },
		func(string) bool { return true },
	} {
		if n := pl.bestReplicaNode(tp, p, func(n string) bool { return ok(n) && tier(n) }); n != "" {
			return n
		}
	}
	return ""
}

// spreadZones starts a replica move to another zone than the active's, for
// a partition whose active and replicas share one (to a node of another
// zone, by newReplicaNode).
func (pl *planner) spreadZones(tp *typePlan, p *partPlan, budget *int) {
	eff := p.effective()
	zone := pl.nodes[p.cur.Active].Zone
	node := pl.newReplicaNode(tp, p, func(n string) bool { return pl.nodes[n].Zone != zone })
	if node == "" || len(eff) == 0 {
		return
	}
	old := pl.worstReplica(tp, p, eff)
	*budget--
	pl.mutate(p, func(*PartitionAssignment) { p.addReplica(node, old) })
	p.note("zone spread: warm up replica %s in zone %q to replace %s", node, pl.nodes[node].Zone, old)
}

// leaveAvoided starts a replica move off a node the partition avoids (its
// replica there was placed when no other node could take one) to a node it
// does not avoid, if one can take it without putting the partition in one
// zone. So once a plan leaves budget for a move, a replica with no move in
// progress is on a node its partition avoids only if every other alive node
// but the active holds one, is avoided too, or would leave the partition in
// one zone.
func (pl *planner) leaveAvoided(tp *typePlan, p *partPlan, budget *int) {
	if len(p.avoid) == 0 {
		return
	}
	for _, r := range p.effective() {
		if !p.avoid[r.Node] {
			continue
		}
		node := pl.bestReplicaNode(tp, p, func(n string) bool {
			return !p.avoid[n] && !pl.oneZoneWith(tp, p, r.Node, n)
		})
		if node == "" {
			continue
		}
		*budget--
		pl.mutate(p, func(*PartitionAssignment) { p.addReplica(node, r.Node) })
		p.note("replica: warm up %s to replace %s: %s", node, r.Node, avoidedWhy(r.Node))
		return
	}
}

// oneZoneWith reports whether the zone rule applies to p and moving its
// replica on src to dst (dropping it, with dst "") would put its active and
// replicas in one zone.
func (pl *planner) oneZoneWith(tp *typePlan, p *partPlan, src, dst string) bool {
	if !pl.zoneRuleApplies(tp) {
		return false
	}
	var rest []string
	if dst != "" {
		rest = append(rest, dst)
	}
	for _, r := range p.cur.Replicas {
		if r.Node != src {
			rest = append(rest, r.Node)
		}
	}
	return len(pl.zonesOf(p, rest)) == 1
}

// worstReplica picks the replica to drop from eff: never one whose loss puts
// the partition in one zone, then one on a node the partition avoids, then
// the one on the node with the most replicas, then the most lagging.
func (pl *planner) worstReplica(tp *typePlan, p *partPlan, eff []Replica) string {
	all := replicaNodes(p.cur.Replicas)
	breaksZones := func(node string) bool {
		if !pl.zoneRuleApplies(tp) {
			return false
		}
		rest := slices.DeleteFunc(slices.Clone(all), func(n string) bool { return n == node })
		return len(pl.zonesOf(p, all)) > 1 && len(pl.zonesOf(p, rest)) == 1
	}
	load := pl.replicaLoad[tp.t.Name]
	worst := slices.MaxFunc(eff, func(a, b Replica) int {
		return cmp.Or(
			-cmpBool(breaksZones(a.Node), breaksZones(b.Node)),
			cmpBool(p.avoid[a.Node], p.avoid[b.Node]),
			cmp.Compare(load[a.Node], load[b.Node]),
			cmp.Compare(pl.totalReplica[a.Node], pl.totalReplica[b.Node]),
			compareLag(a, b),
			cmp.Compare(a.Node, b.Node))
	})
	return worst.Node
}

// bestReplicaNode picks an alive node that ok accepts for a new replica of
// p: if the partition sits in one zone, a node of another; then the zone
// with fewest of the partition's nodes; then the node with the fewest
// replicas of the type, then in total ("" if none).
func (pl *planner) bestReplicaNode(tp *typePlan, p *partPlan, ok func(string) bool) string {
	zs := pl.zonesOf(p, replicaNodes(p.cur.Replicas))
	oneZone := pl.zones >= 2 && len(zs) == 1
	load := pl.replicaLoad[tp.t.Name]
	key := func(n string) []int {
		z := pl.nodes[n].Zone
		return []int{cmpBool(oneZone && zs[z] > 0, false), zs[z], load[n], pl.totalReplica[n]}
	}
	best := ""
	for _, n := range pl.alive {
		if n == p.cur.Active || p.cur.HasReplica(n) || !ok(n) {
			continue
		}
		if best == "" || slices.Compare(key(n), key(best)) < 0 {
			best = n
		}
	}
	return best
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// --- phase 5: balance the replicas of each actor type ---

// balanceReplicas starts replica moves from the nodes with the most replicas
// of the type to those with the fewest while they differ by two or more and
// the budget lasts.
func (pl *planner) balanceReplicas(tp *typePlan, budget *int) {
	load := pl.replicaLoad[tp.t.Name]
	for *budget > 0 {
		type pair struct{ src, dst string }
		var pairs []pair
		for _, s := range pl.alive {
			for _, d := range pl.alive {
				if load[s]-load[d] >= 2 {
					pairs = append(pairs, pair{s, d})
				}
			}
		}
		slices.SortStableFunc(pairs, func(a, b pair) int {
			return cmp.Or(
				-cmp.Compare(load[a.src]-load[a.dst], load[b.src]-load[b.dst]),
				-cmp.Compare(load[a.src], load[b.src]))
		})
		moved := false
		for _, pr := range pairs {
			if p := pl.replicaToMove(tp, pr.src, pr.dst); p != nil {
				*budget--
				pl.mutate(p, func(*PartitionAssignment) { p.addReplica(pr.dst, pr.src) })
				p.note("balance: warm up replica %s to replace %s", pr.dst, pr.src)
				moved = true
				break
			}
		}
		if !moved {
			return
		}
	}
}

// replicaToMove finds a partition of tp with no move in progress whose
// replica on src could move to dst, a node it does not avoid, without
// breaking the zone rule.
func (pl *planner) replicaToMove(tp *typePlan, src, dst string) *partPlan {
	for _, p := range tp.parts {
		if p.cur.MovesInProgress() > 0 || !p.cur.HasReplica(src) || p.cur.HasReplica(dst) || p.cur.Active == dst || p.avoid[dst] {
			continue
		}
		if pl.oneZoneWith(tp, p, src, dst) {
			continue
		}
		return p
	}
	return nil
}
