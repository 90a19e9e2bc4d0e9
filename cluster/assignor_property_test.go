package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPlanProperties drives the assignor through random clusters: random
// actor types (P in 1..32, R in 0..2), 1..7 nodes in random zones, then a
// sequence of crashes, leaves, joins, returns, zone outages, new types, new
// replication factors, forgotten nodes, give-backs (some followed by the
// crash of the node that gave back) and quiet steps, planning to a fixed
// point after each (replicas report random lags meanwhile, small ones after a
// few rounds; membership may change again while moves are in progress).
// Every plan goes through the FSM as one Assign. It checks the assignor's guarantees after every plan
// and at every fixed point; after every plan, no partition is given back, and
// each one that was is at epoch max(Epoch, EpochFloor)+1 and active on
// another node than the one that gave it back unless that is the only alive
// node (then on it). 500 clusters; 200 under the race detector (the
// simulation runs on one goroutine, the FSM's concurrency has its own test),
// 100 with -short.
func TestPlanProperties(t *testing.T) {
	cases := 500
	switch {
	case testing.Short():
		cases = 100
	case raceEnabled:
		cases = 200
	}
	const shards = 4
	for shard := range shards {
		t.Run(fmt.Sprintf("shard%d", shard), func(t *testing.T) {
			t.Parallel()
			for seed := shard; seed < cases; seed += shards {
				newAssignSim(t, uint64(seed)).run()
				if t.Failed() {
					return
				}
			}
		})
	}
}

type assignSim struct {
	t        *testing.T
	seed     uint64
	rng      *rand.Rand
	a        *fsmTestApplier
	cfg      AssignorConfig
	zones    []string
	nextNode int
	nextType int
	nextInc  uint64 // the last incarnation a node process got
	history  []string
}

func newAssignSim(t *testing.T, seed uint64) *assignSim {
	s := &assignSim{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x5eed)), a: newFSMTestApplier(t)}
	s.cfg = AssignorConfig{
		MaxLagForMove:      []uint64{0, 10, 1000}[s.rng.IntN(3)],
		MaxConcurrentMoves: 1 + s.rng.IntN(4),
	}
	switch s.rng.IntN(3) {
	case 0:
		s.zones = []string{""}
	case 1:
		s.zones = []string{"a", "b"}
	default:
		s.zones = []string{"a", "b", "c"}
	}
	return s
}

func (s *assignSim) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("seed %d, cfg %+v, after %s:\n"+format, append([]any{s.seed, s.cfg, strings.Join(s.history, " | ")}, args...)...)
}

func (s *assignSim) must(cmd Command) {
	s.t.Helper()
	if err := s.a.apply(cmd); err != nil {
		s.fatalf("apply %T %+v: %v", cmd, cmd, err)
	}
}

func (s *assignSim) event(format string, args ...any) {
	s.history = append(s.history, fmt.Sprintf(format, args...))
}

func (s *assignSim) run() {
	for range 1 + s.rng.IntN(7) {
		s.join()
	}
	for range 1 + s.rng.IntN(3) {
		s.registerType()
	}
	s.settle(false)
	for range 12 {
		s.step()
		if s.t.Failed() {
			return
		}
	}
}

func (s *assignSim) join() {
	s.nextNode++
	id := fmt.Sprintf("n%d", s.nextNode)
	zone := s.zones[s.rng.IntN(len(s.zones))]
	s.event("join %s@%s", id, zone)
	s.must(NodeUp{ID: id, Zone: zone, Incarnation: s.incarnation()})
}

// incarnation returns a new node process's incarnation.
func (s *assignSim) incarnation() uint64 {
	s.nextInc++
	return s.nextInc
}

func (s *assignSim) registerType() {
	s.nextType++
	typ := ActorType{Name: fmt.Sprintf("t%d", s.nextType), Partitions: 1 + s.rng.IntN(32), ReplicationFactor: s.rng.IntN(3)}
	s.event("register %s P=%d R=%d", typ.Name, typ.Partitions, typ.ReplicationFactor)
	s.must(RegisterType{Type: typ})
}

func (s *assignSim) nodes(alive bool) []NodeInfo {
	var ns []NodeInfo
	for _, n := range s.a.f.Assignment().Nodes {
		if n.Alive() == alive {
			ns = append(ns, n)
		}
	}
	return ns
}

// step changes the cluster at random, then plans to a fixed point.
func (s *assignSim) step() {
	if !s.perturb() {
		s.quiet()
		return
	}
	s.settle(true)
}

// perturb changes membership or actor types at random; it reports false if
// it changed nothing.
func (s *assignSim) perturb() bool {
	alive, gone := s.nodes(true), s.nodes(false)
	switch r := s.rng.IntN(11); {
	case r < 2 && len(alive) > 1: // crash one, sometimes two
		for _, i := range s.rng.Perm(len(alive))[:min(len(alive)-1, 1+s.rng.IntN(2))] {
			s.event("crash %s", alive[i].ID)
			s.must(NodeDown{ID: alive[i].ID})
		}
	case r == 2 && len(alive) > 1:
		n := alive[s.rng.IntN(len(alive))]
		s.event("leave %s", n.ID)
		s.must(NodeLeave{ID: n.ID})
	case r == 3 && len(alive) < 7:
		s.join()
	case r == 4 && len(gone) > 0 && len(alive) < 7:
		n := gone[s.rng.IntN(len(gone))]
		s.event("return %s", n.ID)
		s.must(NodeUp{ID: n.ID, Zone: n.Zone, Incarnation: s.incarnation()})
	case r == 5 && len(s.zones) > 1: // a zone outage, if another zone survives
		zone := s.zones[s.rng.IntN(len(s.zones))]
		var down []string
		for _, n := range alive {
			if n.Zone == zone {
				down = append(down, n.ID)
			}
		}
		if len(down) == 0 || len(down) == len(alive) {
			return false
		}
		s.event("zone %s down", zone)
		for _, id := range down {
			s.must(NodeDown{ID: id})
		}
	case r == 6 && s.nextType < 4:
		s.registerType()
	case r == 7: // a new replication factor
		m := s.a.f.Assignment()
		typ := m.Types[s.rng.IntN(len(m.Types))].Type
		typ.ReplicationFactor = s.rng.IntN(3)
		s.event("%s R=%d", typ.Name, typ.ReplicationFactor)
		s.must(RegisterType{Type: typ})
	case r == 8 && len(gone) > 0: // forget a gone node, refused while it holds anything
		n := gone[s.rng.IntN(len(gone))]
		held := false
		for _, p := range s.a.f.Assignment().Partitions() {
			held = held || p.Active == n.ID || p.HasReplica(n.ID)
		}
		s.event("forget %s", n.ID)
		if err := s.a.apply(ForgetNode{ID: n.ID}); held != errors.Is(err, ErrStale) || (!held && err != nil) {
			s.fatalf("forget %s (held: %v): %v", n.ID, held, err)
		}
	case r == 9: // a quick restart: alive all along, a new process; then the old one's NodeUp, late
		n := alive[s.rng.IntN(len(alive))]
		s.event("restart %s", n.ID)
		s.must(NodeUp{ID: n.ID, Zone: n.Zone, Incarnation: s.incarnation()})
		if err := s.a.apply(NodeUp{ID: n.ID, Zone: n.Zone, Incarnation: n.Incarnation}); !errors.Is(err, ErrStale) {
			s.fatalf("late NodeUp of %s's old incarnation: %v, want ErrStale", n.ID, err)
		}
	case r == 10:
		s.giveBack()
	default:
		return false
	}
	return true
}

// giveBack has the actives of one to three random partitions give them back,
// with no floor, the floor at their epoch or above it; a stale give-back
// (another node, another epoch) must change nothing. Sometimes the node that
// gave a partition back then crashes, before the assignor places it again.
func (s *assignSim) giveBack() {
	m := s.a.f.Assignment()
	ps := m.Partitions()
	var gave []string
	for _, i := range s.rng.Perm(len(ps))[:min(len(ps), 1+s.rng.IntN(3))] {
		p := ps[i]
		floor := []uint64{0, p.Epoch, p.Epoch + 1 + s.rng.Uint64N(5), p.Epoch - 1}[s.rng.IntN(4)]
		s.event("%s gives back %s at epoch %d (floor %d)", p.Active, p, p.Epoch, floor)
		before := s.a.f.Assignment()
		for _, stale := range []GiveBack{
			{Node: p.Active + "x", Type: p.Type, Partition: p.Partition, Epoch: p.Epoch},
			{Node: p.Active, Type: p.Type, Partition: p.Partition, Epoch: p.Epoch + 1},
		} {
			if err := s.a.apply(stale); !errors.Is(err, ErrStale) {
				s.fatalf("stale %s: %v, want ErrStale", stale, err)
			}
		}
		if after := s.a.f.Assignment(); !reflect.DeepEqual(before.Types, after.Types) {
			s.fatalf("a stale give-back changed the assignment")
		}
		s.must(GiveBack{Node: p.Active, Type: p.Type, Partition: p.Partition, Epoch: p.Epoch, MinEpoch: floor, Reason: "sim"})
		if q, _ := s.a.f.Assignment().Partition(p.Type, p.Partition); q.GivenBack != p.Active || q.EpochFloor != max(p.EpochFloor, floor) || q.Version != p.Version+1 {
			s.fatalf("%s given back: %+v", p, q)
		}
		gave = append(gave, p.Active)
	}
	if alive := s.nodes(true); len(alive) > 1 && s.rng.IntN(4) == 0 {
		s.event("crash %s", gave[0])
		s.must(NodeDown{ID: gave[0]})
	}
}

// quiet is a step where membership does not change: replicas report new lags
// and the assignor must move nothing.
func (s *assignSim) quiet() {
	s.event("quiet")
	s.reportLags(s.cfg.MaxLagForMove*2 + 2)
	if changes := Plan(s.a.f.Assignment(), s.cfg); len(changes) != 0 {
		s.fatalf("a quiet step moved partitions: %v", changes)
	}
}

// reportLags has every alive node report a random lag below limit for each
// of its replicas.
func (s *assignSim) reportLags(limit uint64) {
	m := s.a.f.Assignment()
	byNode := map[string][]LagReport{}
	for _, p := range m.Partitions() {
		for _, r := range p.Replicas {
			byNode[r.Node] = append(byNode[r.Node], LagReport{Type: p.Type, Partition: p.Partition, Records: s.rng.Uint64N(limit)})
		}
	}
	at := time.Unix(1_700_000_000+int64(s.a.index), 0)
	for _, n := range m.AliveNodes() {
		if len(byNode[n.ID]) > 0 {
			s.must(ReportLag{Node: n.ID, At: at, Lags: byNode[n.ID]})
		}
	}
}

// settle plans and applies until nothing changes and no move is in progress.
// With interrupt, membership may also change once while moves are in progress.
func (s *assignSim) settle(interrupt bool) {
	s.t.Helper()
	for round := range 200 {
		before := s.a.f.Assignment()
		changes := Plan(before, s.cfg)
		if round%4 == 0 && !reflect.DeepEqual(changes, Plan(before.Clone(), s.cfg)) {
			s.fatalf("Plan is not deterministic:\n%v\n%v", changes, Plan(before, s.cfg))
		}
		if len(changes) > 0 {
			if err := s.a.apply(Assign{Changes: changes}); err != nil {
				s.fatalf("the FSM refused the plan: %v\n%v", err, changes)
			}
		}
		after := s.a.f.Assignment()
		if err := after.check(); err != nil {
			s.fatalf("the assignment breaks its rules: %v", err)
		}
		s.checkPlan(before, after, changes)
		if again := Plan(after, s.cfg); len(again) != 0 {
			s.fatalf("planning again on the result changes %v\nfirst plan: %v", again, changes)
		}
		if len(changes) == 0 && after.MovesInProgress() == 0 {
			s.checkSettled(after)
			return
		}
		if interrupt && after.MovesInProgress() > 0 && s.rng.IntN(3) == 0 {
			s.event("(moves in progress)")
			interrupt = !s.perturb()
			continue
		}
		// Warming replicas catch up: random lags first, then small ones.
		limit := s.cfg.MaxLagForMove*3 + 2
		if round >= 3 {
			limit = s.cfg.MaxLagForMove + 1
		}
		s.reportLags(limit)
	}
	s.fatalf("no fixed point after 200 rounds: %d moves in progress", s.a.f.Assignment().MovesInProgress())
}

// checkPlan checks one applied plan: before -> after.
func (s *assignSim) checkPlan(before, after Model, changes []Change) {
	s.t.Helper()
	alive := map[string]NodeInfo{}
	for _, n := range before.AliveNodes() {
		alive[n.ID] = n
	}
	if n := after.MovesInProgress(); n > s.cfg.MaxConcurrentMoves {
		s.fatalf("%d moves in progress, cap %d: %v", n, s.cfg.MaxConcurrentMoves, changes)
	}
	// Whether a move was needed is judged against the state the plan
	// started from, unless the plan also had to recover partitions (their
	// promotions change the loads it balances).
	recovering := false
	for _, p := range before.Partitions() {
		if _, ok := alive[p.Active]; !ok || p.IsGivenBack() {
			recovering = true
		}
		for _, r := range p.Replicas {
			if _, ok := alive[r.Node]; !ok {
				recovering = true
			}
		}
	}
	for ti, t := range after.Types {
		bt := before.Types[ti]
		activeSpread := spread(plannedActives(bt, alive))
		// Replica moves for balance are judged against the result without
		// them: the plan starts them last.
		replicaSpread := spread(effectiveReplicas(withoutBalanceReplicaMoves(bt, t, changes), alive))
		for i, p1 := range t.Partitions {
			p0 := bt.Partitions[i]
			if _, ok := alive[p1.Active]; !ok {
				s.fatalf("%s: active %q is not an alive node", p1, p1.Active)
			}
			moved := p1.Active != p0.Active
			restarted := !moved && p1.ActiveIncarnation != p0.ActiveIncarnation
			want := p0.Epoch + map[bool]uint64{true: 1}[moved || restarted]
			if p0.IsGivenBack() {
				want = max(p0.Epoch, p0.EpochFloor) + 1 // above the floor, even on the same node
			}
			if p1.Epoch != want {
				s.fatalf("%s: epoch %d -> %d (floor %d, given back by %q) with active %s (incarnation %d) -> %s (incarnation %d)",
					p1, p0.Epoch, p1.Epoch, p0.EpochFloor, p0.GivenBack, p0.Active, p0.ActiveIncarnation, p1.Active, p1.ActiveIncarnation)
			}
			if p1.IsGivenBack() || p1.EpochFloor != 0 || p1.GiveBackReason != "" {
				s.fatalf("%s still given back after the plan: %+v", p1, p1)
			}
			if p0.IsGivenBack() {
				// Placed again, not on the node that gave it back while
				// another is alive: a promoted replica is never on it (a
				// replica is never on its partition's active), and a
				// restore avoids it.
				_, giverAlive := alive[p0.GivenBack]
				if (len(alive) > 1 || !giverAlive) && p1.Active == p0.GivenBack {
					s.fatalf("%s given back by %s, placed on it again though %d nodes are alive: %s", p1, p0.GivenBack, len(alive), reason(changes, p1))
				}
				if len(alive) == 1 && giverAlive && p1.Active != p0.GivenBack {
					s.fatalf("%s given back by %s, the only alive node, placed on %s", p1, p0.GivenBack, p1.Active)
				}
				if !strings.Contains(reason(changes, p1), p0.GivenBack+" gave it back (sim): ") {
					s.fatalf("%s given back by %s without the reason: %s", p1, p0.GivenBack, reason(changes, p1))
				}
			}
			if inc := alive[p1.Active].Incarnation; p1.ActiveIncarnation != inc {
				s.fatalf("%s: active %s at incarnation %d, assigned to incarnation %d", p1, p1.Active, inc, p1.ActiveIncarnation)
			}
			if restarted && !strings.Contains(reason(changes, p1), fmt.Sprintf("%s restarted (incarnation %d -> %d): new epoch", p1.Active, p0.ActiveIncarnation, p1.ActiveIncarnation)) {
				s.fatalf("%s: new epoch for a restart without the reason: %s", p1, reason(changes, p1))
			}
			for _, r := range p1.Replicas {
				if _, ok := alive[r.Node]; !ok || r.Node == p1.Active {
					s.fatalf("%s: replica on %s (active %s)", p1, r.Node, p1.Active)
				}
			}
			if p1.MovingTo != "" && !p1.HasReplica(p1.MovingTo) {
				s.fatalf("%s: moving to %s, not a replica", p1, p1.MovingTo)
			}
			why := func() string {
				return fmt.Sprintf("%s: active %s -> %s, moving %q -> %q, replicas %v -> %v: %s",
					p1, p0.Active, p1.Active, p0.MovingTo, p1.MovingTo, p0.Replicas, p1.Replicas, reason(changes, p1))
			}
			_, wasAlive := alive[p0.Active]
			switch {
			case !wasAlive || p0.IsGivenBack():
				// Promotion: the least-lagging replica on an alive node, if any.
				var cands []Replica
				for _, r := range p0.Replicas {
					if _, ok := alive[r.Node]; ok {
						cands = append(cands, r)
					}
				}
				if len(cands) > 0 {
					// The plan may go on to move it for balance, within the
					// same change, to a replica warm enough for a handover.
					best := slices.MinFunc(cands, compareLag)
					got, ok := p0.Replica(p1.Active)
					balanced := ok && got.warm(s.cfg.MaxLagForMove) && strings.Contains(reason(changes, p1), "balance: move to warm replica "+p1.Active)
					if !ok || (compareLag(got, best) != 0 && !balanced) {
						s.fatalf("%s: promoted %s, but replica %s lags less (%v): %s", p1, p1.Active, best.Node, cands, reason(changes, p1))
					}
				}
			case moved:
				// Sticky: an alive active moves only to a warm replica, to
				// complete a warm-up move or for balance.
				r, ok := p0.Replica(p1.Active)
				if !ok || !r.warm(s.cfg.MaxLagForMove) || (p0.MovingTo != p1.Active && !recovering && activeSpread < 2) {
					s.fatalf("moved without need: %s (spread %d)", why(), activeSpread)
				}
			}
			if p1.MovingTo != "" && p1.MovingTo != p0.MovingTo && !recovering && activeSpread < 2 {
				s.fatalf("warm-up move while balanced: %s", why())
			}
			for _, r := range p1.Replicas {
				if !isNewReplicaMove(p0, r) {
					continue
				}
				without := p1.clone()
				without.Replicas = slices.DeleteFunc(without.Replicas, func(x Replica) bool { return x.Node == r.Node })
				switch why := reason(changes, p1); {
				case strings.Contains(why, "zone spread: warm up replica "+r.Node):
					if !oneZone(without, alive) {
						s.fatalf("zone move without need: %s", why)
					}
				case strings.Contains(why, "balance: warm up replica "+r.Node):
					if replicaSpread < 2 {
						s.fatalf("replica move without need (spread %d): %s", replicaSpread, why)
					}
				default:
					s.fatalf("replica move without a reason: %s", why)
				}
			}
		}
	}
}

// isNewReplicaMove reports whether r, a replica after a plan, is a replica
// move the plan started.
func isNewReplicaMove(p0 PartitionAssignment, r Replica) bool {
	if r.Replaces == "" {
		return false
	}
	o, ok := p0.Replica(r.Node)
	return !ok || o.Replaces != r.Replaces
}

// withoutBalanceReplicaMoves returns after's partitions without the replica
// moves for balance started since before.
func withoutBalanceReplicaMoves(before, after TypeAssignment, changes []Change) TypeAssignment {
	out := TypeAssignment{Type: after.Type}
	for i, p := range after.Partitions {
		p = p.clone()
		why := reason(changes, p)
		p.Replicas = slices.DeleteFunc(p.Replicas, func(r Replica) bool {
			return isNewReplicaMove(before.Partitions[i], r) && strings.Contains(why, "balance: warm up replica "+r.Node)
		})
		out.Partitions = append(out.Partitions, p)
	}
	return out
}

// checkSettled checks a fixed point: no change planned, no move in progress.
func (s *assignSim) checkSettled(m Model) {
	s.t.Helper()
	alive := map[string]NodeInfo{}
	zones := map[string]bool{}
	for _, n := range m.AliveNodes() {
		alive[n.ID] = n
		zones[n.Zone] = true
	}
	n := len(alive)
	for _, t := range m.Types {
		P := t.Type.Partitions
		for node, c := range plannedActives(t, alive) {
			if c > (P+n-1)/n || c < P/n {
				s.fatalf("%s: %s holds %d actives of %d partitions on %d nodes", t.Type.Name, node, c, P, n)
			}
		}
		want := min(t.Type.ReplicationFactor, n-1)
		for _, p := range t.Partitions {
			if !p.ActiveFor(p.Active, alive[p.Active].Incarnation) {
				s.fatalf("%s: active %s assigned to incarnation %d, node at %d", p, p.Active, p.ActiveIncarnation, alive[p.Active].Incarnation)
			}
			if len(p.Replicas) != want {
				s.fatalf("%s: %d replicas, want %d", p, len(p.Replicas), want)
			}
			if want > 0 && len(zones) > 1 && oneZone(p, alive) {
				s.fatalf("%s: active %s and replicas %v all in one zone", p, p.Active, p.Replicas)
			}
		}
		if len(zones) == 1 && want > 0 {
			// Replicas spread over nodes. Plan promises "about as many": a
			// node holds no replica of its own actives, so a move that would
			// even them out may not exist; in these clusters it always did.
			if sp := spread(effectiveReplicas(t, alive)); sp > 1 {
				s.fatalf("%s: replicas per node differ by %d: %v", t.Type.Name, sp, effectiveReplicas(t, alive))
			}
		}
	}
}

// plannedActives counts, per alive node, the partitions of t whose active is
// or is moving there.
func plannedActives(t TypeAssignment, alive map[string]NodeInfo) map[string]int {
	c := map[string]int{}
	for id := range alive {
		c[id] = 0
	}
	for _, p := range t.Partitions {
		n := p.Active
		if p.MovingTo != "" {
			n = p.MovingTo
		}
		if _, ok := alive[n]; ok {
			c[n]++
		}
	}
	return c
}

// effectiveReplicas counts, per alive node, the replicas of t that count
// towards the replication factor (not a move target, not being replaced).
func effectiveReplicas(t TypeAssignment, alive map[string]NodeInfo) map[string]int {
	c := map[string]int{}
	for id := range alive {
		c[id] = 0
	}
	for _, p := range t.Partitions {
		replaced := map[string]bool{}
		for _, r := range p.Replicas {
			replaced[r.Replaces] = true
		}
		for _, r := range p.Replicas {
			if _, ok := alive[r.Node]; ok && r.Node != p.MovingTo && !replaced[r.Node] {
				c[r.Node]++
			}
		}
	}
	return c
}

func spread(c map[string]int) int {
	lo, hi, first := 0, 0, true
	for _, v := range c {
		if first || v < lo {
			lo = v
		}
		if first || v > hi {
			hi = v
		}
		first = false
	}
	return hi - lo
}

// oneZone reports whether p's active and replicas on alive nodes share one
// zone while another zone has an alive node.
func oneZone(p PartitionAssignment, alive map[string]NodeInfo) bool {
	all := map[string]bool{}
	for _, n := range alive {
		all[n.Zone] = true
	}
	zs := map[string]bool{alive[p.Active].Zone: true}
	for _, r := range p.Replicas {
		if n, ok := alive[r.Node]; ok {
			zs[n.Zone] = true
		}
	}
	return len(all) > 1 && len(zs) == 1
}

// reason is the reason of the change of p in changes.
func reason(changes []Change, p PartitionAssignment) string {
	for _, ch := range changes {
		if ch.Type == p.Type && ch.Partition == p.Partition {
			return ch.Reason
		}
	}
	return ""
}
