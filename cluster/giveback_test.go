package cluster

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The command type bytes are in Raft logs: GiveBack comes after the others,
// which keep their meaning.
func TestGiveBackCommandEncoding(t *testing.T) {
	if CommandReportLag != 7 || CommandGiveBack != 8 {
		t.Fatalf("ReportLag = %d, GiveBack = %d; want 7 and 8", CommandReportLag, CommandGiveBack)
	}
	g := GiveBack{Node: "n1", Type: "orders", Partition: 3, Epoch: 4, MinEpoch: 9, Reason: "another owner holds epoch 9 in its changelog"}
	b, err := EncodeCommand(g)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != byte(CommandGiveBack) {
		t.Fatalf("type byte %d", b[0])
	}
	got, err := DecodeCommand(b)
	if err != nil || !reflect.DeepEqual(got, g) {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, g)
	}
	if s, want := g.String(), "n1 gives back orders/3 at epoch 4 (changelog at epoch 9): another owner holds epoch 9 in its changelog"; s != want {
		t.Fatalf("String() = %q, want %q", s, want)
	}
	for name, bad := range map[string]GiveBack{
		"no node":            {Type: "orders", Epoch: 1},
		"no type":            {Node: "n1", Epoch: 1},
		"negative partition": {Node: "n1", Type: "orders", Partition: -1, Epoch: 1},
		"epoch 0":            {Node: "n1", Type: "orders"},
	} {
		if _, err := EncodeCommand(bad); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: %v, want ErrInvalidCommand", name, err)
		}
	}
}

// giveBackTestActive returns a partition of orders active on node in a's
// assignment.
func giveBackTestActive(t testing.TB, a *fsmTestApplier, node string) PartitionAssignment {
	t.Helper()
	for _, p := range a.f.Assignment().ActiveOn(node) {
		if p.Type == "orders" {
			return p
		}
	}
	t.Fatalf("%s is active for no partition of orders", node)
	return PartitionAssignment{}
}

func TestFSMGiveBack(t *testing.T) {
	// n1..n3 at incarnations 10, 20, 30; orders: 4 partitions, R=1. n1
	// restarts, so that its partitions are past epoch 1.
	a := incTestCluster(t)
	a.must(NodeUp{ID: "n1", Zone: "a", Incarnation: 11})
	assignTestSettle(t, a, DefaultAssignorConfig())
	p := giveBackTestActive(t, a, "n1")
	if p.Epoch < 2 {
		t.Fatalf("%s at epoch %d after a restart", p, p.Epoch)
	}
	other := p.Replicas[0].Node

	// Only the active, at its epoch, can give the partition back; anything
	// else is stale and changes nothing.
	before := a.f.Assignment()
	for _, tc := range []struct {
		name string
		g    GiveBack
		want error
	}{
		{"another node", GiveBack{Node: other, Type: "orders", Partition: p.Partition, Epoch: p.Epoch}, ErrStale},
		{"an older epoch", GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch - 1}, ErrStale},
		{"a newer epoch", GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch + 1}, ErrStale},
		{"unknown type", GiveBack{Node: "n1", Type: "nope", Partition: 0, Epoch: 1}, ErrInvalidCommand},
		{"no such partition", GiveBack{Node: "n1", Type: "orders", Partition: 4, Epoch: 1}, ErrInvalidCommand},
	} {
		if err := a.apply(tc.g); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	giveBackTestSameExceptIndex(t, before, a.f.Assignment(), "refused give-backs")

	// The active gives it back: marked, Version bumped, nothing else.
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, MinEpoch: p.Epoch + 5, Reason: "another owner holds its epoch"})
	q, _ := a.f.Assignment().Partition("orders", p.Partition)
	want := p.clone()
	want.GivenBack, want.EpochFloor, want.GiveBackReason, want.Version = "n1", p.Epoch+5, "another owner holds its epoch", p.Version+1
	if !reflect.DeepEqual(q, want) {
		t.Fatalf("after the give-back:\n got %+v\nwant %+v", q, want)
	}
	if !q.IsGivenBack() || q.NextEpoch() != p.Epoch+6 {
		t.Fatalf("IsGivenBack %v, NextEpoch %d; want true, %d", q.IsGivenBack(), q.NextEpoch(), p.Epoch+6)
	}

	// Repeated: the same, or a lower floor, changes nothing; a higher floor
	// raises it (and the version, so that a plan made before is stale).
	mid := a.f.Assignment()
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, MinEpoch: p.Epoch + 5, Reason: "another owner holds its epoch"})
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, MinEpoch: 1, Reason: "another owner holds its epoch"})
	giveBackTestSameExceptIndex(t, mid, a.f.Assignment(), "repeated give-backs")
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, MinEpoch: p.Epoch + 7, Reason: "another owner holds its epoch"})
	q, _ = a.f.Assignment().Partition("orders", p.Partition)
	if q.EpochFloor != p.Epoch+7 || q.Version != p.Version+2 || q.NextEpoch() != p.Epoch+8 {
		t.Fatalf("after a higher floor: %+v", q)
	}

	// The next change must set exactly NextEpoch, whoever the active is.
	next := q.NextEpoch()
	ch := func(active string, inc, epoch uint64) Change {
		return Change{Type: "orders", Partition: p.Partition, ExpectEpoch: q.Epoch, ExpectVersion: q.Version,
			Active: active, ActiveIncarnation: inc, Epoch: epoch}
	}
	stale := ch(other, map[string]uint64{"n2": 20, "n3": 30}[other], next)
	stale.ExpectVersion = p.Version // planned before the give-back
	for _, tc := range []struct {
		name string
		ch   Change
		want error
	}{
		{"same active, same epoch", ch("n1", 11, q.Epoch), ErrInvalidCommand},
		{"same active, epoch+1 under the floor", ch("n1", 11, q.Epoch+1), ErrInvalidCommand},
		{"another node, epoch+1 under the floor", ch(other, 0, q.Epoch+1), ErrInvalidCommand},
		{"above the floor by two", ch("n1", 11, next+1), ErrInvalidCommand},
		{"planned before the give-back", stale, ErrStale},
		{"an old incarnation of the same node", ch("n1", 10, next), ErrStale},
	} {
		if err := a.apply(Assign{Changes: []Change{tc.ch}}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// The same node may take it again at the new epoch (the only alive node
	// does); the change clears the give-back.
	a.must(Assign{Changes: []Change{ch("n1", 11, next)}})
	r, _ := a.f.Assignment().Partition("orders", p.Partition)
	if r.Active != "n1" || r.Epoch != next || r.Version != q.Version+1 || r.IsGivenBack() || r.EpochFloor != 0 || r.GiveBackReason != "" {
		t.Fatalf("after the change: %+v; want n1 at epoch %d, not given back", r, next)
	}
	// A late give-back at the old epoch is stale.
	if err := a.apply(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch}); !errors.Is(err, ErrStale) {
		t.Fatalf("late give-back: %v, want ErrStale", err)
	}

	// A floor below the epoch constrains nothing: the next epoch is Epoch+1.
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: next, MinEpoch: 2})
	if r, _ := a.f.Assignment().Partition("orders", p.Partition); r.NextEpoch() != next+1 || r.EpochFloor != 2 {
		t.Fatalf("floor below the epoch: %+v", r)
	}
}

// giveBackTestSameExceptIndex fails unless the two assignments differ in
// their index only.
func giveBackTestSameExceptIndex(t testing.TB, before, after Model, what string) {
	t.Helper()
	after.Index = before.Index
	if !bytes.Equal(fsmTestEncode(t, before), fsmTestEncode(t, after)) {
		t.Fatalf("%s changed the assignment", what)
	}
}

func TestFSMGiveBackSnapshot(t *testing.T) {
	a := incTestCluster(t)
	p := giveBackTestActive(t, a, "n2")
	a.must(GiveBack{Node: "n2", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, MinEpoch: 40, Reason: "disk"})
	g := fsmTestSnapshot(t, a.f)
	if !bytes.Equal(fsmTestEncode(t, a.f.Assignment()), fsmTestEncode(t, g.Assignment())) {
		t.Fatal("restored assignment differs")
	}
	q, _ := g.Assignment().Partition("orders", p.Partition)
	if q.GivenBack != "n2" || q.EpochFloor != 40 || q.GiveBackReason != "disk" {
		t.Fatalf("restored %+v: give-back lost", q)
	}

	// A snapshot whose give-back breaks the model's rules is refused.
	for name, mutate := range map[string]func(*PartitionAssignment){
		"given back by another node": func(p *PartitionAssignment) { p.GivenBack = "n9" },
		"floor without give-back":    func(p *PartitionAssignment) { p.GivenBack, p.GiveBackReason = "", "" },
		"reason without give-back":   func(p *PartitionAssignment) { p.GivenBack, p.EpochFloor = "", 0 },
	} {
		m := a.f.Assignment()
		ti, _ := m.typeIndex("orders")
		mutate(&m.Types[ti].Partitions[p.Partition])
		if _, err := decodeSnapshot(fsmTestEncode(t, m)); err == nil {
			t.Errorf("%s: snapshot accepted", name)
		}
	}
}

// giveBackTestOne is n1..nodes alive, orders with one partition and R
// replicas, settled; its active is on n1.
func giveBackTestOne(t testing.TB, nodes []string, r int) *fsmTestApplier {
	a := newFSMTestApplier(t)
	for _, n := range nodes {
		a.must(NodeUp{ID: n})
	}
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 1, ReplicationFactor: r}})
	assignTestSettle(t, a, DefaultAssignorConfig())
	if p, _ := a.f.Assignment().Partition("orders", 0); p.Active != "n1" {
		t.Fatalf("orders/0 active on %s, want n1", p.Active)
	}
	return a
}

// giveBackTestPlan plans once, applies the plan and checks that planning
// again changes nothing; it returns the plan.
func giveBackTestPlan(t testing.TB, a *fsmTestApplier) []Change {
	t.Helper()
	changes := Plan(a.f.Assignment(), DefaultAssignorConfig())
	if len(changes) > 0 {
		a.must(Assign{Changes: changes})
	}
	if again := Plan(a.f.Assignment(), DefaultAssignorConfig()); len(again) != 0 {
		t.Fatalf("planning again changes %v", again)
	}
	return changes
}

func TestPlanGiveBackPromotesReplica(t *testing.T) {
	a := giveBackTestOne(t, []string{"n1", "n2", "n3", "n4"}, 2)
	p, _ := a.f.Assignment().Partition("orders", 0)
	lags := map[string]uint64{p.Replicas[0].Node: 40, p.Replicas[1].Node: 0}
	best := p.Replicas[1].Node
	for n, l := range lags {
		a.must(ReportLag{Node: n, At: time.Now(), Lags: []LagReport{{Type: "orders", Partition: 0, Records: l}}})
	}
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: 0, Epoch: p.Epoch, MinEpoch: 7, Reason: "another owner holds epoch 7 in its changelog"})
	q, _ := a.f.Assignment().Partition("orders", 0)

	changes := giveBackTestPlan(t, a)
	if len(changes) != 1 {
		t.Fatalf("changes %v, want one", changes)
	}
	ch := changes[0]
	if ch.Active != best || ch.Epoch != 8 || ch.ExpectEpoch != p.Epoch || ch.ExpectVersion != q.Version {
		t.Fatalf("change %s: want %s promoted at epoch 8", ch, best)
	}
	if want := "n1 gave it back (another owner holds epoch 7 in its changelog): promote replica " + best + " (lag 0)"; !strings.HasPrefix(ch.Reason, want) {
		t.Fatalf("reason %q, want it to start with %q", ch.Reason, want)
	}
	// The promoted replica is replaced, not on n1 (which gave it back) while
	// n4 can take it.
	if got := replicaNodesOf(ch); len(got) != 2 || slices.Contains(got, "n1") || slices.Contains(got, best) {
		t.Fatalf("replicas %v: want two, neither on n1 nor on %s", got, best)
	}
	r, _ := a.f.Assignment().Partition("orders", 0)
	if r.IsGivenBack() || r.Epoch != 8 || r.Active != best {
		t.Fatalf("after the plan: %+v", r)
	}
}

func replicaNodesOf(ch Change) []string {
	var ns []string
	for _, r := range ch.Replicas {
		ns = append(ns, r.Node)
	}
	return ns
}

func TestPlanGiveBackRestoresElsewhere(t *testing.T) {
	// Three nodes, three partitions, one each, no replicas.
	a := newFSMTestApplier(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		a.must(NodeUp{ID: n})
	}
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 3}})
	assignTestSettle(t, a, DefaultAssignorConfig())
	p := giveBackTestActive(t, a, "n1")
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Reason: "keeps failing: disk"})

	changes := giveBackTestPlan(t, a)
	m := a.f.Assignment()
	q, _ := m.Partition("orders", p.Partition)
	if q.Active == "n1" || q.Epoch != p.Epoch+1 || q.IsGivenBack() {
		t.Fatalf("given back %s: %+v; want on another node at epoch %d", p, q, p.Epoch+1)
	}
	if want := "n1 gave it back (keeps failing: disk): restore on " + q.Active + " (no replica)"; reason(changes, q) != want {
		t.Fatalf("reason %q, want %q", reason(changes, q), want)
	}
	// n1 now holds none and another node two: balance warms n1 up for another
	// partition, not the one it gave back.
	for _, ch := range changes {
		if ch.Partition != p.Partition && (ch.MovingTo != "n1" || !strings.Contains(ch.Reason, "balance: warm up n1")) {
			t.Fatalf("change %s: want a warm-up move to n1", ch)
		}
	}
}

func TestPlanGiveBackOnlyNodeAlive(t *testing.T) {
	a := giveBackTestOne(t, []string{"n1", "n2"}, 1)
	a.must(NodeDown{ID: "n2"})
	assignTestSettle(t, a, DefaultAssignorConfig())
	p, _ := a.f.Assignment().Partition("orders", 0)
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: 0, Epoch: p.Epoch, Reason: "same epoch written by another owner"})

	changes := giveBackTestPlan(t, a)
	want := Change{Type: "orders", Partition: 0, ExpectEpoch: p.Epoch, ExpectVersion: p.Version + 1,
		Active: "n1", Epoch: p.Epoch + 1,
		Reason: "n1 gave it back (same epoch written by another owner): restore on n1 again (no replica, no other node alive)"}
	if len(changes) != 1 || !reflect.DeepEqual(changes[0], want) {
		t.Fatalf("changes %v, want %v", changes, want)
	}
	if q, _ := a.f.Assignment().Partition("orders", 0); q.Active != "n1" || q.Epoch != p.Epoch+1 || q.IsGivenBack() {
		t.Fatalf("after the plan: %+v", q)
	}
}

func TestPlanGiveBackFloorAboveEpoch(t *testing.T) {
	for _, tc := range []struct {
		name      string
		minEpoch  uint64
		dead      bool
		wantEpoch uint64 // the partition is at epoch 1
		wantWhy   string
	}{
		{"no floor", 0, false, 2, "n1 gave it back: promote replica n2 (lag 0)"},
		{"floor at the epoch", 1, false, 2, "n1 gave it back: promote replica n2 (lag 0)"},
		{"floor above", 9, false, 10, "n1 gave it back: promote replica n2 (lag 0)"},
		{"floor above, then dead", 9, true, 10, "node n1 dead; n1 gave it back: promote replica n2 (lag 0)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := giveBackTestOne(t, []string{"n1", "n2"}, 1)
			p, _ := a.f.Assignment().Partition("orders", 0)
			if p.Epoch != 1 {
				t.Fatalf("orders/0 at epoch %d", p.Epoch)
			}
			a.must(GiveBack{Node: "n1", Type: "orders", Partition: 0, Epoch: 1, MinEpoch: tc.minEpoch})
			if tc.dead {
				a.must(NodeDown{ID: "n1"})
			}
			changes := giveBackTestPlan(t, a)
			if len(changes) != 1 || changes[0].Epoch != tc.wantEpoch || changes[0].Active != "n2" || !strings.HasPrefix(changes[0].Reason, tc.wantWhy) {
				t.Fatalf("changes %v: want n2 at epoch %d because %q", changes, tc.wantEpoch, tc.wantWhy)
			}
		})
	}
}

// A plan made before a give-back was applied is stale (the give-back bumps
// the partition's version): the leader plans again and sees the give-back.
func TestPlanBeforeGiveBackIsStale(t *testing.T) {
	a := incTestCluster(t)
	p := giveBackTestActive(t, a, "n1")
	a.must(NodeUp{ID: "n1", Zone: "a", Incarnation: 11}) // n1 restarted: the plan gives p a new epoch
	old := Plan(a.f.Assignment(), DefaultAssignorConfig())
	if reason(old, p) == "" {
		t.Fatalf("the plan %v does not change %s", old, p)
	}
	a.must(GiveBack{Node: "n1", Type: p.Type, Partition: p.Partition, Epoch: p.Epoch, MinEpoch: p.Epoch + 3})
	if err := a.apply(Assign{Changes: old}); !errors.Is(err, ErrStale) {
		t.Fatalf("a plan made before the give-back: %v, want ErrStale", err)
	}
	giveBackTestPlan(t, a)
	if q, _ := a.f.Assignment().Partition(p.Type, p.Partition); q.IsGivenBack() || q.Active == "n1" || q.Epoch != p.Epoch+4 {
		t.Fatalf("after planning again: %+v; want off n1 at epoch %d", q, p.Epoch+4)
	}
}

// A follower gives back a partition it is active for: the leader applies
// the forwarded give-back and places the partition elsewhere at a new epoch
// above the floor, within a couple of seconds.
func TestClusterGiveBackMovesPartition(t *testing.T) {
	e := clusterTestNewEnv(t)
	e.mutate = func(c *Config) { c.Forward = e.forward }
	e.form()
	leader := e.leader(5 * time.Second)
	var follower *Cluster
	for _, c := range e.alive() {
		if c != leader && len(c.Assignment().ActiveOn(c.ID())) > 0 {
			follower = c
			break
		}
	}
	if follower == nil {
		t.Fatal("no follower holds an active")
	}
	before := e.settled(time.Second, "formed")
	p := before.ActiveOn(follower.ID())[0]
	g := GiveBack{Type: p.Type, Partition: p.Partition, Epoch: p.Epoch, MinEpoch: p.Epoch + 10, Reason: "another owner holds a newer epoch in its changelog"}
	want := p.Epoch + 11

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := follower.GiveBack(ctx, g); err != nil {
		t.Fatalf("give back %s from %s: %v", p, follower.ID(), err)
	}
	wait, cancelWait := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancelWait()
	for _, c := range []*Cluster{leader, follower} {
		if _, err := c.Wait(wait, func(m Model) bool {
			q, _ := m.Partition(p.Type, p.Partition)
			return q.Active != follower.ID() && q.Epoch == want && !q.IsGivenBack()
		}); err != nil {
			q, _ := c.Assignment().Partition(p.Type, p.Partition)
			t.Fatalf("%s given back by %s: %s holds %+v after %s, want another active at epoch %d", p, follower.ID(), c.ID(), q, time.Since(start), want)
		}
	}
	t.Logf("%s given back by %s: active elsewhere at epoch %d after %s", p, follower.ID(), want, time.Since(start).Round(time.Millisecond))

	// Late again: stale, through the leader's answer.
	if err := follower.GiveBack(ctx, g); !errors.Is(err, ErrStale) {
		t.Fatalf("a late give-back: %v, want ErrStale", err)
	}
	if err := follower.GiveBack(ctx, GiveBack{Node: leader.ID(), Type: p.Type, Partition: p.Partition, Epoch: want}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("a give-back for another node: %v, want ErrInvalidCommand", err)
	}
	if b, _ := EncodeCommand(NodeDown{ID: follower.ID()}); leader.ApplyForwarded(b) == nil {
		t.Fatal("ApplyForwarded accepted a NodeDown")
	}

	after := e.settled(10*time.Second, "after the give-back")
	for _, o := range before.Partitions() {
		q, _ := after.Partition(o.Type, o.Partition)
		switch {
		case q.IsGivenBack():
			t.Errorf("%s still given back", q)
		case o.Partition == p.Partition:
			if q.Epoch < want {
				t.Errorf("%s at epoch %d, want at least %d", q, q.Epoch, want)
			}
		case q.Active == o.Active && q.Epoch != o.Epoch, q.Active != o.Active && q.Epoch != o.Epoch+1:
			t.Errorf("%s: %s at epoch %d -> %s at epoch %d", o, o.Active, o.Epoch, q.Active, q.Epoch)
		}
	}
}

// forward stands in for the node's transport of Config.Forward: it hands the
// command to the leader's ApplyForwarded, in process.
func (e *clusterTestEnv) forward(_ context.Context, leaderID string, cmd []byte) error {
	for _, c := range e.alive() {
		if c.ID() == leaderID {
			return c.ApplyForwarded(cmd)
		}
	}
	return ErrNotLeader
}
