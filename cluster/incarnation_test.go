package cluster

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// incTestCluster is fsmTestCluster with incarnations 10, 20, 30 for n1..n3,
// settled.
func incTestCluster(t *testing.T) *fsmTestApplier {
	a := newFSMTestApplier(t)
	a.must(NodeUp{ID: "n1", Zone: "a", Incarnation: 10})
	a.must(NodeUp{ID: "n2", Zone: "a", Incarnation: 20})
	a.must(NodeUp{ID: "n3", Zone: "b", Incarnation: 30})
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 4, ReplicationFactor: 1}})
	a.must(RegisterType{Type: ActorType{Name: "billing", Partitions: 3}})
	assignTestSettle(t, a, DefaultAssignorConfig())
	return a
}

func TestIncarnationFirstPlacement(t *testing.T) {
	a := incTestCluster(t)
	m := a.f.Assignment()
	for _, p := range m.Partitions() {
		n, _ := m.Node(p.Active)
		if p.ActiveIncarnation != n.Incarnation || !p.ActiveFor(p.Active, n.Incarnation) {
			t.Fatalf("%s: active %s incarnation %d, node at %d", p, p.Active, p.ActiveIncarnation, n.Incarnation)
		}
	}
	for _, n := range m.Nodes {
		if got, want := m.ActiveOnIncarnation(n.ID, n.Incarnation), m.ActiveOn(n.ID); !reflect.DeepEqual(got, want) {
			t.Fatalf("ActiveOnIncarnation(%s, %d) = %v, want %v", n.ID, n.Incarnation, got, want)
		}
		if got := m.ActiveOnIncarnation(n.ID, n.Incarnation+1); len(got) != 0 {
			t.Fatalf("ActiveOnIncarnation(%s, other) = %v, want none", n.ID, got)
		}
	}
}

func TestIncarnationRestartBumpsOnlyItsActives(t *testing.T) {
	a := incTestCluster(t)
	before := a.f.Assignment()
	if len(before.ActiveOn("n1")) == 0 {
		t.Fatal("n1 holds no active partition")
	}
	a.must(NodeUp{ID: "n1", Zone: "a", Incarnation: 11}) // n1 restarted before gossip noticed
	mid := a.f.Assignment()
	if got := mid.ActiveOnIncarnation("n1", 11); len(got) != 0 {
		t.Fatalf("n1's new incarnation is active on %v before the leader planned", got)
	}
	changes := Plan(mid, DefaultAssignorConfig())
	if len(changes) != len(before.ActiveOn("n1")) {
		t.Fatalf("%d changes for %d actives of n1: %v", len(changes), len(before.ActiveOn("n1")), changes)
	}
	for _, ch := range changes {
		p, _ := before.Partition(ch.Type, ch.Partition)
		want := Change{
			Type: p.Type, Partition: p.Partition, ExpectEpoch: p.Epoch, ExpectVersion: p.Version,
			Active: "n1", Epoch: p.Epoch + 1, ActiveIncarnation: 11, MovingTo: p.MovingTo,
			Reason: "n1 restarted (incarnation 10 -> 11): new epoch",
		}
		for _, r := range p.Replicas {
			want.Replicas = append(want.Replicas, ReplicaPlacement{Node: r.Node, Replaces: r.Replaces})
		}
		if !reflect.DeepEqual(ch, want) {
			t.Fatalf("change %+v, want %+v", ch, want)
		}
	}
	a.must(Assign{Changes: changes})
	after := a.f.Assignment()
	for _, p0 := range before.Partitions() {
		p, _ := after.Partition(p0.Type, p0.Partition)
		want := p0.clone()
		if p0.Active == "n1" {
			want.Epoch++
			want.ActiveIncarnation = 11
			want.Version++
		}
		if !reflect.DeepEqual(p, want) {
			t.Fatalf("%s after the restart: %+v, want %+v", p0, p, want)
		}
	}
	if got, want := after.ActiveOnIncarnation("n1", 11), after.ActiveOn("n1"); !reflect.DeepEqual(got, want) {
		t.Fatalf("ActiveOnIncarnation(n1, 11) = %v, want %v", got, want)
	}
	if got := after.ActiveOnIncarnation("n1", 10); len(got) != 0 {
		t.Fatalf("old incarnation still active on %v", got)
	}
	if changes := Plan(after, DefaultAssignorConfig()); len(changes) != 0 {
		t.Fatalf("re-plan after the bump: %v", changes)
	}
	// The same NodeUp again changes nothing.
	a.must(NodeUp{ID: "n1", Zone: "a", Incarnation: 11})
	if changes := Plan(a.f.Assignment(), DefaultAssignorConfig()); len(changes) != 0 {
		t.Fatalf("re-plan after a repeated NodeUp: %v", changes)
	}
}

func TestIncarnationLateOldNodeUpIsStale(t *testing.T) {
	a := incTestCluster(t)
	a.must(NodeUp{ID: "n1", Zone: "a", Incarnation: 11})
	a.must(Assign{Changes: Plan(a.f.Assignment(), DefaultAssignorConfig())})
	before := a.f.Assignment()
	err := a.apply(NodeUp{ID: "n1", Zone: "a", RaftAddr: "changed", Incarnation: 10})
	if !errors.Is(err, ErrStale) {
		t.Fatalf("late NodeUp of the old incarnation: %v, want ErrStale", err)
	}
	after := a.f.Assignment()
	after.Index = before.Index
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("stale NodeUp changed the assignment")
	}
	if n, _ := after.Node("n1"); n.Incarnation != 11 || n.RaftAddr != "" {
		t.Fatalf("n1 = %+v, want incarnation 11 unchanged", n)
	}
}

func TestIncarnationRestartAfterDeath(t *testing.T) {
	// A node that restarted after gossip declared it dead gets its partitions
	// back only by balance; those it still holds (no other node) get new epochs.
	a := newFSMTestApplier(t)
	a.must(NodeUp{ID: "n1", Incarnation: 1})
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 2}})
	assignTestSettle(t, a, DefaultAssignorConfig())
	a.must(NodeDown{ID: "n1"})
	if changes := Plan(a.f.Assignment(), DefaultAssignorConfig()); len(changes) != 0 {
		t.Fatalf("plan with no alive node: %v", changes)
	}
	a.must(NodeUp{ID: "n1", Incarnation: 2})
	assignTestSettle(t, a, DefaultAssignorConfig())
	for _, p := range a.f.Assignment().Partitions() {
		if p.Active != "n1" || p.Epoch != 2 || p.ActiveIncarnation != 2 {
			t.Fatalf("%s = %+v, want n1 at epoch 2 for incarnation 2", p, p)
		}
	}
}

func TestFSMAssignIncarnationRules(t *testing.T) {
	a := incTestCluster(t)
	m := a.f.Assignment()
	p := m.ActiveOn("n1")[0]
	base := Change{Type: p.Type, Partition: p.Partition, ExpectEpoch: p.Epoch, ExpectVersion: p.Version,
		Active: "n1", Epoch: p.Epoch, ActiveIncarnation: 10, MovingTo: p.MovingTo}
	for _, r := range p.Replicas {
		base.Replicas = append(base.Replicas, ReplicaPlacement{Node: r.Node, Replaces: r.Replaces})
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Change)
		want  error
		inMsg string
	}{
		{"same incarnation, new epoch", func(c *Change) { c.Epoch++ }, ErrInvalidCommand, "epoch"},
		{"new incarnation, same epoch", func(c *Change) { c.ActiveIncarnation = 11 }, ErrInvalidCommand, "epoch"},
		{"new epoch for an incarnation the node is not at", func(c *Change) { c.ActiveIncarnation, c.Epoch = 11, c.Epoch+1 }, ErrStale, "incarnation"},
	} {
		ch := base
		tc.edit(&ch)
		err := a.apply(Assign{Changes: []Change{ch}})
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.inMsg) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// A plan made before the node restarted is stale once it has: the new
	// epoch it gives is for the old incarnation.
	q := m.ActiveOn("n2")[0]
	move := Change{Type: q.Type, Partition: q.Partition, ExpectEpoch: q.Epoch, ExpectVersion: q.Version,
		Active: "n1", Epoch: q.Epoch + 1, ActiveIncarnation: 10}
	a.must(NodeUp{ID: "n1", Zone: "a", Incarnation: 11})
	if err := a.apply(Assign{Changes: []Change{move}}); !errors.Is(err, ErrStale) {
		t.Fatalf("move to n1 planned for its old incarnation: %v, want ErrStale", err)
	}
	move.ActiveIncarnation = 11
	a.must(Assign{Changes: []Change{move}})
	if got, _ := a.f.Assignment().Partition(q.Type, q.Partition); !got.ActiveFor("n1", 11) || got.Epoch != q.Epoch+1 {
		t.Fatalf("%s = %+v, want n1 incarnation 11 at epoch %d", q, got, q.Epoch+1)
	}
}
