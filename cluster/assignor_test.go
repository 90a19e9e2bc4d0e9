package cluster

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// assignTestSettle plans and applies until the plan is empty, reporting lag
// 0 for every replica between rounds, and returns every change applied.
func assignTestSettle(t testing.TB, a *fsmTestApplier, cfg AssignorConfig) []Change {
	t.Helper()
	var all []Change
	for range 100 {
		changes := Plan(a.f.Assignment(), cfg)
		if len(changes) > 0 {
			a.must(Assign{Changes: changes})
			all = append(all, changes...)
		}
		m := a.f.Assignment()
		if len(changes) == 0 && m.MovesInProgress() == 0 {
			return all
		}
		assignTestReportAll(a, 0)
	}
	t.Fatal("no fixed point after 100 rounds")
	return nil
}

// assignTestReportAll reports the same lag for every replica.
func assignTestReportAll(a *fsmTestApplier, lag uint64) {
	m := a.f.Assignment()
	byNode := map[string][]LagReport{}
	for _, p := range m.Partitions() {
		for _, r := range p.Replicas {
			byNode[r.Node] = append(byNode[r.Node], LagReport{Type: p.Type, Partition: p.Partition, Records: lag})
		}
	}
	for _, n := range m.Nodes {
		if len(byNode[n.ID]) > 0 && n.Alive() {
			a.must(ReportLag{Node: n.ID, At: time.Unix(int64(a.index), 0), Lags: byNode[n.ID]})
		}
	}
}

func assignTestActives(m Model, typ string) map[string]int {
	n := map[string]int{}
	for _, p := range m.Partitions() {
		if p.Type == typ {
			n[p.Active]++
		}
	}
	return n
}

func TestPlanFirstPlacement(t *testing.T) {
	a := fsmTestCluster(t) // n1, n2 in zone a; n3 in zone b; orders: 4 partitions, R=1
	changes := Plan(a.f.Assignment(), DefaultAssignorConfig())
	if len(changes) != 4 {
		t.Fatalf("%d changes, want 4: %v", len(changes), changes)
	}
	for _, ch := range changes {
		if ch.Epoch != 1 || ch.ExpectEpoch != 0 || len(ch.Replicas) != 1 || ch.Replicas[0].Node == ch.Active {
			t.Errorf("change %s", ch)
		}
		if !strings.Contains(ch.Reason, "new partition: place on "+ch.Active) {
			t.Errorf("reason %q", ch.Reason)
		}
	}
	if again := Plan(a.f.Assignment(), DefaultAssignorConfig()); !reflect.DeepEqual(changes, again) {
		t.Fatal("Plan is not deterministic")
	}
	a.must(Assign{Changes: changes})
	if again := Plan(a.f.Assignment(), DefaultAssignorConfig()); len(again) != 0 {
		t.Fatalf("planning again: %v", again)
	}
	m := a.f.Assignment()
	for n, c := range assignTestActives(m, "orders") {
		if c > 2 { // ceil(4/3)
			t.Errorf("%s holds %d actives", n, c)
		}
	}
	for _, p := range m.Partitions() {
		zones := map[string]bool{}
		for _, n := range append([]string{p.Active}, replicaNodes(p.Replicas)...) {
			node, _ := m.Node(n)
			zones[node.Zone] = true
		}
		if len(zones) < 2 {
			t.Errorf("%s: active and replicas all in one zone", p)
		}
	}
}

func TestPlanNodeDeadPromotesLeastLaggingReplica(t *testing.T) {
	a := newFSMTestApplier(t)
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		a.must(NodeUp{ID: n})
	}
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 1, ReplicationFactor: 2}})
	a.must(Assign{Changes: []Change{{Type: "orders", Partition: 0, Active: "n1", Epoch: 1,
		Replicas: []ReplicaPlacement{{Node: "n2"}, {Node: "n3"}}}}})
	now := time.Now()
	a.must(ReportLag{Node: "n2", At: now, Lags: []LagReport{{Type: "orders", Partition: 0, Records: 40}}})
	a.must(ReportLag{Node: "n3", At: now, Lags: []LagReport{{Type: "orders", Partition: 0, Records: 3}}})
	a.must(NodeDown{ID: "n1"})

	changes := Plan(a.f.Assignment(), DefaultAssignorConfig())
	if len(changes) != 1 {
		t.Fatalf("changes = %v", changes)
	}
	ch := changes[0]
	if ch.Active != "n3" || ch.Epoch != 2 || ch.ExpectEpoch != 1 {
		t.Fatalf("change %s: want n3 promoted at epoch 2", ch)
	}
	if !strings.HasPrefix(ch.Reason, "node n1 dead: promote replica n3 (lag 3)") {
		t.Fatalf("reason %q", ch.Reason)
	}
	// The promoted replica is replaced so the partition keeps two replicas.
	if len(ch.Replicas) != 2 || ch.Replicas[0].Node != "n2" || ch.Replicas[1].Node != "n4" {
		t.Fatalf("replicas %v, want n2 and n4", ch.Replicas)
	}
	a.must(Assign{Changes: changes})
	if p, _ := a.f.Assignment().Partition("orders", 0); p.Epoch != 2 || p.Active != "n3" {
		t.Fatalf("orders/0 = %+v", p)
	}
}

func TestPlanNodeLossWithoutReplicaRestoresOnLeastLoaded(t *testing.T) {
	a := newFSMTestApplier(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		a.must(NodeUp{ID: n})
	}
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 3}})
	a.must(Assign{Changes: []Change{
		{Type: "orders", Partition: 0, Active: "n1", Epoch: 1},
		{Type: "orders", Partition: 1, Active: "n2", Epoch: 1},
		{Type: "orders", Partition: 2, Active: "n2", Epoch: 1},
	}})
	a.must(NodeLeave{ID: "n1"})
	changes := Plan(a.f.Assignment(), DefaultAssignorConfig())
	if len(changes) != 1 || changes[0].Active != "n3" || changes[0].Epoch != 2 ||
		changes[0].Reason != "node n1 left: restore on n3 (no replica)" {
		t.Fatalf("changes = %v, want orders/0 restored on n3", changes)
	}
}

func TestPlanJoinWarmsUpBeforeMoving(t *testing.T) {
	a := newFSMTestApplier(t)
	a.must(NodeUp{ID: "n1"})
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 4}})
	cfg := AssignorConfig{MaxLagForMove: 10, MaxConcurrentMoves: 1}
	assignTestSettle(t, a, cfg)

	a.must(NodeUp{ID: "n2"})
	changes := Plan(a.f.Assignment(), cfg)
	if len(changes) != 1 || changes[0].MovingTo != "n2" || changes[0].Active != "n1" || changes[0].Epoch != 1 ||
		!strings.Contains(changes[0].Reason, "balance: warm up n2") {
		t.Fatalf("changes = %v, want one warm-up of n2 (the cap is 1)", changes)
	}
	a.must(Assign{Changes: changes})
	moving := changes[0].Partition

	// A lagging replica does not take over; one under the threshold does.
	assignTestReportAll(a, 11)
	if changes := Plan(a.f.Assignment(), cfg); len(changes) != 0 {
		t.Fatalf("moved with lag 11 > 10: %v", changes)
	}
	assignTestReportAll(a, 10)
	changes = Plan(a.f.Assignment(), cfg)
	if len(changes) != 2 {
		t.Fatalf("changes = %v, want the handover and the next warm-up", changes)
	}
	for _, ch := range changes {
		if ch.Partition == moving {
			if ch.Active != "n2" || ch.Epoch != 2 || ch.MovingTo != "" || !strings.Contains(ch.Reason, "balance: hand over to n2 (lag 10)") {
				t.Fatalf("handover %s", ch)
			}
		} else if ch.MovingTo != "n2" {
			t.Fatalf("next move %s", ch)
		}
	}
	a.must(Assign{Changes: changes})
	assignTestSettle(t, a, cfg)
	if n := assignTestActives(a.f.Assignment(), "orders"); n["n1"] != 2 || n["n2"] != 2 {
		t.Fatalf("actives %v, want 2 each", n)
	}
}

// A type whose state is in an external store has nothing to warm up: a
// node that joins takes its share of actives at once, by handover, with
// no replica and no move in progress.
func TestPlanJoinMovesExternalTypesAtOnce(t *testing.T) {
	a := newFSMTestApplier(t)
	a.must(NodeUp{ID: "n1"})
	a.must(RegisterType{Type: ActorType{Name: "accounts", Partitions: 4, External: true}})
	cfg := AssignorConfig{MaxLagForMove: 10, MaxConcurrentMoves: 1}
	assignTestSettle(t, a, cfg)

	a.must(NodeUp{ID: "n2"})
	changes := Plan(a.f.Assignment(), cfg)
	if len(changes) != 2 {
		t.Fatalf("changes = %v, want two handovers to n2 at once (the warm-up cap does not apply)", changes)
	}
	for _, ch := range changes {
		if ch.Active != "n2" || ch.Epoch != 2 || ch.MovingTo != "" || len(ch.Replicas) != 0 {
			t.Fatalf("change %s: want a handover to n2 at epoch 2, no replica, no move", ch)
		}
	}
	a.must(Assign{Changes: changes})
	assignTestSettle(t, a, cfg)
	if n := assignTestActives(a.f.Assignment(), "accounts"); n["n1"] != 2 || n["n2"] != 2 {
		t.Fatalf("actives %v, want 2 each", n)
	}
}

func TestPlanZoneSpread(t *testing.T) {
	a := newFSMTestApplier(t)
	a.must(NodeUp{ID: "n1", Zone: "a"})
	a.must(NodeUp{ID: "n2", Zone: "a"})
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 4, ReplicationFactor: 1}})
	assignTestSettle(t, a, DefaultAssignorConfig())

	// A node in a second zone: every partition gets a replica there, warmed
	// up before the replica it replaces goes.
	a.must(NodeUp{ID: "n3", Zone: "b"})
	changes := Plan(a.f.Assignment(), DefaultAssignorConfig())
	if len(changes) == 0 {
		t.Fatal("no changes")
	}
	for _, ch := range changes {
		if strings.Contains(ch.Reason, "zone spread") && (len(ch.Replicas) != 2 || ch.Replicas[1].Node != "n3" || ch.Replicas[1].Replaces == "") {
			t.Fatalf("zone move %s", ch)
		}
	}
	assignTestSettle(t, a, DefaultAssignorConfig())
	m := a.f.Assignment()
	for _, p := range m.Partitions() {
		n3 := p.Active == "n3" || p.HasReplica("n3")
		if !n3 || len(p.Replicas) != 1 {
			t.Errorf("%s: active %s replicas %v", p, p.Active, p.Replicas)
		}
	}
}

func TestChangeString(t *testing.T) {
	ch := Change{Type: "orders", Partition: 3, ExpectEpoch: 4, Active: "n3", Epoch: 5,
		Replicas: []ReplicaPlacement{{Node: "n1"}, {Node: "n5", Replaces: "n1"}}, MovingTo: "",
		Reason: "node n2 dead: promote replica n3 (lag 4)"}
	want := "orders/3: active n3 epoch 5 (was 4) replicas [n1 n5>n1]: node n2 dead: promote replica n3 (lag 4)"
	if got := ch.String(); got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestAssignorConfigValidate(t *testing.T) {
	if err := DefaultAssignorConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (AssignorConfig{}).Validate(); err == nil {
		t.Fatal("MaxConcurrentMoves 0 accepted")
	}
}

func TestPlanNoAliveNode(t *testing.T) {
	a := fsmTestCluster(t)
	assignTestSettle(t, a, DefaultAssignorConfig())
	for _, n := range []string{"n1", "n2", "n3"} {
		a.must(NodeDown{ID: n})
	}
	if changes := Plan(a.f.Assignment(), DefaultAssignorConfig()); len(changes) != 0 {
		t.Fatalf("planned with no alive node: %v", changes)
	}
	a.must(NodeUp{ID: "n2"})
	assignTestSettle(t, a, DefaultAssignorConfig())
	m := a.f.Assignment()
	if on := m.ActiveOn("n2"); len(on) != 4 {
		t.Fatalf("n2 is active for %d partitions, want all 4", len(on))
	}
	if on := m.ReplicasOn("n2"); len(on) != 0 {
		t.Fatalf("n2 holds replicas of its own actives: %v", on)
	}
}

// A plan made by a leader that lost its leadership before its Assign was
// applied must not undo what the next leader did.
func TestPlanFromOldLeaderIsStale(t *testing.T) {
	a := fsmTestCluster(t)
	assignTestSettle(t, a, DefaultAssignorConfig())
	a.must(NodeUp{ID: "n4", Zone: "b"})
	old := Plan(a.f.Assignment(), DefaultAssignorConfig()) // never applied in time
	a.must(NodeDown{ID: "n1"})
	a.must(Assign{Changes: Plan(a.f.Assignment(), DefaultAssignorConfig())})
	before := a.f.Assignment()
	if err := a.apply(Assign{Changes: old}); !errors.Is(err, ErrStale) {
		t.Fatalf("old leader's plan: %v, want ErrStale", err)
	}
	if after := a.f.Assignment(); !reflect.DeepEqual(before.Types, after.Types) {
		t.Fatal("a rejected plan changed the assignment")
	}
}
