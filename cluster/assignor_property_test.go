package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
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
// Half the give-backs are for the node's own fault (Avoid), and sometimes a
// broken node gives back every partition it is active for.
// Every plan goes through the FSM as one Assign, and the FSM's model passes
// its structural check after every command (each avoided node known, at the
// incarnation recorded). It checks the assignor's guarantees after every plan
// and at every fixed point; after every plan, no partition is given back, and
// each one that was is at epoch max(Epoch, EpochFloor)+1 and active on
// another node than the one that gave it back unless no other alive node
// may take it (then on it); no active or move target is a node its partition
// avoids unless it avoids every alive node; and unless the moves in progress
// are at the cap, actives and replicas are balanced (checkBalance). 500
// clusters; 200 under the race detector (the simulation runs on one
// goroutine, the FSM's concurrency has its own test), 100 with -short.
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
	if err := s.a.f.Assignment().check(); err != nil {
		s.fatalf("after %T %+v the assignment breaks its rules: %v", cmd, cmd, err)
	}
}

// restarted checks that no partition avoids node, which has just announced
// a new incarnation.
func (s *assignSim) restarted(node string) {
	s.t.Helper()
	for _, p := range s.a.f.Assignment().Partitions() {
		if _, ok := p.avoidIndex(node); ok {
			s.fatalf("%s still avoids %s after its restart: %v", p, node, p.Avoid)
		}
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
	switch r := s.rng.IntN(12); {
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
		s.restarted(n.ID)
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
		s.restarted(n.ID)
		if err := s.a.apply(NodeUp{ID: n.ID, Zone: n.Zone, Incarnation: n.Incarnation}); !errors.Is(err, ErrStale) {
			s.fatalf("late NodeUp of %s's old incarnation: %v, want ErrStale", n.ID, err)
		}
	case r == 10:
		s.giveBack()
	case r == 11:
		s.wander()
	default:
		return false
	}
	return true
}

// giveBack has the actives of one to three random partitions give them back,
// with no floor, the floor at their epoch or above it, half of them for a
// fault of their own (Avoid); or, one time in four, a broken node gives back
// every partition it is active for, with Avoid. A stale give-back (another
// node, another epoch) must change nothing. Sometimes the node that gave a
// partition back then crashes, before the assignor places it again.
func (s *assignSim) giveBack() {
	m := s.a.f.Assignment()
	ps := m.Partitions()
	var picked []PartitionAssignment
	broken := false
	if alive := s.nodes(true); s.rng.IntN(4) == 0 {
		n := alive[s.rng.IntN(len(alive))].ID
		picked, broken = m.ActiveOn(n), true
		s.event("%s broken", n)
	}
	if len(picked) == 0 {
		for _, i := range s.rng.Perm(len(ps))[:min(len(ps), 1+s.rng.IntN(3))] {
			picked = append(picked, ps[i])
		}
	}
	var gave []string
	for _, p := range picked {
		floor := []uint64{0, p.Epoch, p.Epoch + 1 + s.rng.Uint64N(5), p.Epoch - 1}[s.rng.IntN(4)]
		avoid := broken || s.rng.IntN(2) == 0
		s.event("%s gives back %s at epoch %d (floor %d, avoid %v)", p.Active, p, p.Epoch, floor, avoid)
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
		s.must(GiveBack{Node: p.Active, Type: p.Type, Partition: p.Partition, Epoch: p.Epoch, MinEpoch: floor, Reason: "sim", Avoid: avoid})
		q, _ := s.a.f.Assignment().Partition(p.Type, p.Partition)
		if q.GivenBack != p.Active || q.EpochFloor != max(p.EpochFloor, floor) || q.Version != p.Version+1 {
			s.fatalf("%s given back: %+v", p, q)
		}
		// The avoidance is recorded once, at the process that ran the
		// partition (the node's current one: the sim plans after a restart).
		want := slices.DeleteFunc(slices.Clone(p.Avoid), func(a AvoidNode) bool { return a.Node == p.Active })
		if n, _ := m.Node(p.Active); avoid || p.Avoids(p.Active, n.Incarnation) {
			want = append(want, AvoidNode{Node: p.Active, Incarnation: n.Incarnation})
		}
		slices.SortFunc(want, func(a, b AvoidNode) int { return strings.Compare(a.Node, b.Node) })
		if !slices.Equal(q.Avoid, want) {
			s.fatalf("%s given back (avoid %v): avoids %v, want %v", p, avoid, q.Avoid, want)
		}
		gave = append(gave, p.Active)
	}
	if alive := s.nodes(true); len(alive) > 1 && s.rng.IntN(4) == 0 {
		s.event("crash %s", gave[0])
		s.must(NodeDown{ID: gave[0]})
	}
}

// wander has one partition fail wherever it runs: its active gives it back
// for a fault of its own and the assignor places it again, one more time
// than there are alive nodes, so that it comes to avoid every alive node
// (and may then run on any).
func (s *assignSim) wander() {
	m := s.a.f.Assignment()
	ps := m.Partitions()
	p := ps[s.rng.IntN(len(ps))]
	for range len(m.AliveNodes()) + 1 {
		p, _ = s.a.f.Assignment().Partition(p.Type, p.Partition)
		s.event("%s gives back %s at epoch %d (avoid, wandering)", p.Active, p, p.Epoch)
		s.must(GiveBack{Node: p.Active, Type: p.Type, Partition: p.Partition, Epoch: p.Epoch, Reason: "sim", Avoid: true})
		s.planOnce(false)
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
		changes, after := s.planOnce(round%4 == 0)
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

// planOnce plans, applies the plan and checks it (and, with twice, that
// planning twice gives the same plan); it returns the plan and the result.
func (s *assignSim) planOnce(twice bool) ([]Change, Model) {
	s.t.Helper()
	before := s.a.f.Assignment()
	changes := Plan(before, s.cfg)
	if twice && !reflect.DeepEqual(changes, Plan(before.Clone(), s.cfg)) {
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
	s.checkBalance(after)
	if again := Plan(after, s.cfg); len(again) != 0 {
		s.fatalf("planning again on the result changes %v\nfirst plan: %v", again, changes)
	}
	return changes, after
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
	// promotions, and moves cancelled because the target is avoided, change
	// the loads it balances).
	recovering := false
	for _, p := range before.Partitions() {
		avoid := avoidedBy(p, alive)
		if _, ok := alive[p.Active]; !ok || p.IsGivenBack() || avoid[p.Active] || avoid[p.MovingTo] {
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
			if !slices.Equal(p1.Avoid, p0.Avoid) {
				s.fatalf("%s: avoids %v -> %v: a plan changed it", p1, p0.Avoid, p1.Avoid)
			}
			avoid := avoidedBy(p0, alive)
			if avoid[p1.Active] || avoid[p1.MovingTo] {
				s.fatalf("%s: active %s, moving to %q, avoids %v of alive %v: %s", p1, p1.Active, p1.MovingTo, p1.Avoid, slices.Sorted(maps.Keys(alive)), reason(changes, p1))
			}
			if p0.IsGivenBack() {
				// Placed again, not on the node that gave it back while
				// another alive node it does not avoid exists: a promoted
				// replica is never on it (a replica is never on its
				// partition's active), and a restore avoids it.
				_, giverAlive := alive[p0.GivenBack]
				others := 0
				for id := range alive {
					if id != p0.GivenBack && !avoid[id] {
						others++
					}
				}
				if others > 0 && p1.Active == p0.GivenBack {
					s.fatalf("%s given back by %s, placed on it again though %d other nodes may take it: %s", p1, p0.GivenBack, others, reason(changes, p1))
				}
				if others == 0 && giverAlive && p1.Active != p0.GivenBack {
					s.fatalf("%s given back by %s, the only alive node it may run on, placed on %s", p1, p0.GivenBack, p1.Active)
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
			case !wasAlive || p0.IsGivenBack() || avoid[p0.Active]:
				// Promotion: the least-lagging replica on an alive node the
				// partition does not avoid, if any.
				var cands []Replica
				for _, r := range p0.Replicas {
					if _, ok := alive[r.Node]; ok && !avoid[r.Node] {
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
					if replicaSpread < 2 || avoid[r.Node] {
						s.fatalf("replica move without need (spread %d) or to a node the partition avoids (%v): %s", replicaSpread, avoid, why)
					}
				case strings.Contains(why, "replica: warm up "+r.Node+" to replace "+r.Replaces+": "+r.Replaces+" gave the partition back"):
					if !avoid[r.Replaces] || avoid[r.Node] {
						s.fatalf("replica move off a node the partition avoids, but it avoids %v: %s", avoid, why)
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
	s.checkBalance(m)
	for _, t := range m.Types {
		P := t.Type.Partitions
		avoiding := false // some partition of t avoids an alive node
		for _, p := range t.Partitions {
			avoiding = avoiding || len(avoidedBy(p, alive)) > 0
		}
		for node, c := range plannedActives(t, alive) {
			if !avoiding && (c > (P+n-1)/n || c < P/n) {
				s.fatalf("%s: %s holds %d actives of %d partitions on %d nodes", t.Type.Name, node, c, P, n)
			}
		}
		want := min(t.Type.ReplicationFactor, n-1)
		for _, p := range t.Partitions {
			if !p.ActiveFor(p.Active, alive[p.Active].Incarnation) {
				s.fatalf("%s: active %s assigned to incarnation %d, node at %d", p, p.Active, p.ActiveIncarnation, alive[p.Active].Incarnation)
			}
			if avoidedBy(p, alive)[p.Active] {
				s.fatalf("%s: active on %s, which it avoids: %v", p, p.Active, p.Avoid)
			}
			if len(p.Replicas) != want {
				s.fatalf("%s: %d replicas, want %d", p, len(p.Replicas), want)
			}
			if want > 0 && len(zones) > 1 && oneZone(p, alive) {
				s.fatalf("%s: active %s and replicas %v all in one zone", p, p.Active, p.Replicas)
			}
		}
		if len(zones) == 1 && want > 0 && !avoiding {
			// Replicas spread over nodes. Plan promises "about as many": a
			// node holds no replica of its own actives, so a move that would
			// even them out may not exist; in these clusters it always did.
			if sp := spread(effectiveReplicas(t, alive)); sp > 1 {
				s.fatalf("%s: replicas per node differ by %d: %v", t.Type.Name, sp, effectiveReplicas(t, alive))
			}
		}
	}
}

// avoidedBy returns the alive nodes p avoids: those of p.Avoid at the
// incarnation recorded there, or none if that is every alive node.
func avoidedBy(p PartitionAssignment, alive map[string]NodeInfo) map[string]bool {
	av := map[string]bool{}
	for _, a := range p.Avoid {
		if n, ok := alive[a.Node]; ok && n.Incarnation == a.Incarnation {
			av[a.Node] = true
		}
	}
	if len(av) == len(alive) {
		return map[string]bool{}
	}
	return av
}

// checkBalance checks m, a plan's result, for what the assignor's last
// round (the one that changes nothing) guarantees when it has budget for a
// move: at a fixed point, or after a plan that leaves fewer moves in
// progress than the cap. For every partition p of a type:
//   - actives (unless p has a replica move in progress): the node p's active
//     is or is moving to holds at most one more active of the type, counting
//     those moving there, than any alive node p does not avoid;
//   - replicas (unless p has a move in progress): the node of each of its
//     replicas holds at most one more replica of the type (that counts
//     towards R) than any alive node that p does not avoid, is not its
//     active, holds no replica of it, and would not leave it in one zone;
//   - and, with no move in progress and not in one zone, a replica of p on
//     a node it avoids has no such node to go to either.
//
// With no partition avoiding a node, the first is: the actives of a type
// differ by at most one between alive nodes.
func (s *assignSim) checkBalance(m Model) {
	s.t.Helper()
	if m.MovesInProgress() >= s.cfg.MaxConcurrentMoves {
		return
	}
	alive := map[string]NodeInfo{}
	zones := map[string]bool{}
	for _, n := range m.AliveNodes() {
		alive[n.ID] = n
		zones[n.Zone] = true
	}
	for _, t := range m.Types {
		actives, replicas := plannedActives(t, alive), effectiveReplicas(t, alive)
		zoneRule := len(zones) > 1 && min(t.Type.ReplicationFactor, len(alive)-1) >= 1
		// oneZoneWith reports whether moving p's replica on src to dst
		// leaves p's active and replicas in one zone, under the zone rule.
		oneZoneWith := func(p PartitionAssignment, src, dst string) bool {
			zs := map[string]bool{alive[p.Active].Zone: true, alive[dst].Zone: true}
			for _, r := range p.Replicas {
				if r.Node != src {
					zs[alive[r.Node].Zone] = true
				}
			}
			return zoneRule && len(zs) == 1
		}
		for _, p := range t.Partitions {
			avoid := avoidedBy(p, alive)
			replicaMove := p.MovesInProgress() > 0 && (p.MovingTo == "" || p.MovesInProgress() > 1)
			if src := cmp.Or(p.MovingTo, p.Active); !replicaMove {
				for dst := range alive {
					if dst != src && !avoid[dst] && actives[src]-actives[dst] > 1 {
						s.fatalf("%s: on %s, which holds %d actives of %s, and could move to %s, which holds %d (avoids %v): %v",
							p, src, actives[src], t.Type.Name, dst, actives[dst], p.Avoid, actives)
					}
				}
			}
			if p.MovesInProgress() > 0 {
				continue
			}
			inOneZone := zoneRule && oneZone(p, alive)
			for _, r := range p.Replicas {
				for dst := range alive {
					if dst == p.Active || p.HasReplica(dst) || avoid[dst] || oneZoneWith(p, r.Node, dst) {
						continue
					}
					if replicas[r.Node]-replicas[dst] > 1 {
						s.fatalf("%s: replica on %s, which holds %d replicas of %s, could move to %s, which holds %d: %v",
							p, r.Node, replicas[r.Node], t.Type.Name, dst, replicas[dst], replicas)
					}
					if avoid[r.Node] && !inOneZone {
						s.fatalf("%s: replica on %s, which it avoids (%v), could move to %s", p, r.Node, p.Avoid, dst)
					}
				}
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
