package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/internal/testkit"
)

func TestGiveBackAvoidEncoding(t *testing.T) {
	g := GiveBack{Node: "n1", Type: "orders", Partition: 3, Epoch: 4, Reason: "keeps failing", Avoid: true}
	b, err := EncodeCommand(g)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCommand(b)
	if err != nil || !reflect.DeepEqual(got, g) {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, g)
	}
	if s, want := g.String(), "n1 gives back orders/3 at epoch 4 (avoid n1 until it restarts): keeps failing"; s != want {
		t.Fatalf("String() = %q, want %q", s, want)
	}
	// Without Avoid the command encodes as before the field existed.
	g.Avoid = false
	b, err = EncodeCommand(g)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := msgpack.Unmarshal(b[1:], &fields); err != nil {
		t.Fatal(err)
	}
	if _, ok := fields["av"]; ok {
		t.Fatalf("a give-back without Avoid encodes it: %v", fields)
	}
}

// avoidTestPartition returns partition p of orders in a's assignment.
func avoidTestPartition(a *fsmTestApplier, p int) PartitionAssignment {
	q, _ := a.f.Assignment().Partition("orders", p)
	return q
}

func TestFSMGiveBackAvoid(t *testing.T) {
	// n1..n3 at incarnations 10, 20, 30; orders: 4 partitions, R=1.
	a := incTestCluster(t)
	p := giveBackTestActive(t, a, "n2")

	// A give-back without Avoid records no avoidance; the same with Avoid
	// records n2's process, once.
	a.must(GiveBack{Node: "n2", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Reason: "disk"})
	if q := avoidTestPartition(a, p.Partition); q.Avoid != nil || q.Version != p.Version+1 {
		t.Fatalf("given back without Avoid: %+v", q)
	}
	a.must(GiveBack{Node: "n2", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Reason: "disk", Avoid: true})
	q := avoidTestPartition(a, p.Partition)
	if want := []AvoidNode{{Node: "n2", Incarnation: 20}}; !reflect.DeepEqual(q.Avoid, want) || q.Version != p.Version+2 {
		t.Fatalf("given back with Avoid: avoids %v at version %d; want %v at %d", q.Avoid, q.Version, want, p.Version+2)
	}
	if !q.Avoids("n2", 20) || q.Avoids("n2", 21) || q.Avoids("n1", 10) {
		t.Fatalf("Avoids: n2@20 %v, n2@21 %v, n1@10 %v; want true, false, false", q.Avoids("n2", 20), q.Avoids("n2", 21), q.Avoids("n1", 10))
	}
	mid := a.f.Assignment()
	a.must(GiveBack{Node: "n2", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Reason: "disk", Avoid: true})
	giveBackTestSameExceptIndex(t, mid, a.f.Assignment(), "a repeated give-back with Avoid")

	// Placed elsewhere, the partition still avoids n2, through anything
	// that leaves n2's process as it is: new addresses, death, return.
	giveBackTestPlan(t, a)
	for _, cmd := range []Command{
		nil,
		NodeUp{ID: "n2", Zone: "a", Incarnation: 20, HTTPAddr: "127.0.0.1:8002"},
		NodeDown{ID: "n2"},
		NodeUp{ID: "n2", Zone: "a", Incarnation: 20},
	} {
		if cmd != nil {
			a.must(cmd)
		}
		if r := avoidTestPartition(a, p.Partition); r.Active == "n2" || !reflect.DeepEqual(r.Avoid, q.Avoid) {
			t.Fatalf("after %T %+v: %+v; want off n2, still avoiding it", cmd, cmd, r)
		}
	}
	// n2 restarts: its new process may run the partition again. Only the
	// partitions that avoided it change (and their versions).
	before := a.f.Assignment()
	a.must(NodeUp{ID: "n2", Zone: "a", Incarnation: 21})
	for _, o := range before.Partitions() {
		r, _ := a.f.Assignment().Partition(o.Type, o.Partition)
		want := o.clone()
		if o.Partition == p.Partition && o.Type == "orders" {
			want.Avoid, want.Version = nil, o.Version+1
		}
		if !reflect.DeepEqual(r, want) {
			t.Fatalf("%s after n2's restart: %+v, want %+v", o, r, want)
		}
	}
}

// A give-back from a process that has been replaced already (the node
// restarted before the leader planned) records no avoidance: the new
// process may run the partition.
func TestFSMGiveBackAvoidFromReplacedProcess(t *testing.T) {
	a := incTestCluster(t)
	p := giveBackTestActive(t, a, "n3")
	a.must(NodeUp{ID: "n3", Zone: "b", Incarnation: 31})
	a.must(GiveBack{Node: "n3", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Reason: "disk", Avoid: true})
	if q := avoidTestPartition(a, p.Partition); q.GivenBack != "n3" || q.Avoid != nil {
		t.Fatalf("given back by n3's old process: %+v; want given back, avoiding nothing", q)
	}
}

// A forgotten node is avoided no more: the assignment forgets it whole.
func TestFSMForgetNodeDropsAvoid(t *testing.T) {
	a := incTestCluster(t)
	p := giveBackTestActive(t, a, "n1")
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Avoid: true})
	giveBackTestPlan(t, a)
	a.must(NodeDown{ID: "n1"})
	assignTestSettle(t, a, DefaultAssignorConfig())
	if q := avoidTestPartition(a, p.Partition); !q.Avoids("n1", 10) {
		t.Fatalf("%s does not avoid dead n1: %v", q, q.Avoid)
	}
	a.must(ForgetNode{ID: "n1"})
	if q := avoidTestPartition(a, p.Partition); q.Avoid != nil {
		t.Fatalf("%s avoids forgotten n1: %v", q, q.Avoid)
	}
}

func TestFSMAvoidSnapshot(t *testing.T) {
	a := incTestCluster(t)
	p := giveBackTestActive(t, a, "n2")
	a.must(GiveBack{Node: "n2", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Avoid: true})
	giveBackTestPlan(t, a)
	g := fsmTestSnapshot(t, a.f)
	if !bytes.Equal(fsmTestEncode(t, a.f.Assignment()), fsmTestEncode(t, g.Assignment())) {
		t.Fatal("restored assignment differs")
	}
	if q, _ := g.Assignment().Partition("orders", p.Partition); !q.Avoids("n2", 20) {
		t.Fatalf("restored %+v: avoidance lost", q)
	}

	// A snapshot whose avoided nodes break the model's rules is refused.
	for name, mutate := range map[string]func(*PartitionAssignment){
		"avoided twice":         func(p *PartitionAssignment) { p.Avoid = append(p.Avoid, p.Avoid[0]) },
		"not sorted":            func(p *PartitionAssignment) { p.Avoid = []AvoidNode{{"n3", 30}, {"n1", 10}} },
		"unknown node":          func(p *PartitionAssignment) { p.Avoid = []AvoidNode{{"n9", 0}} },
		"another incarnation":   func(p *PartitionAssignment) { p.Avoid = []AvoidNode{{"n2", 19}} },
		"another node's record": func(p *PartitionAssignment) { p.Avoid = []AvoidNode{{"n1", 20}} },
	} {
		m := a.f.Assignment()
		ti, _ := m.typeIndex("orders")
		mutate(&m.Types[ti].Partitions[p.Partition])
		if _, err := decodeSnapshot(fsmTestEncode(t, m)); err == nil {
			t.Errorf("%s: snapshot accepted", name)
		}
	}
}

// avoidTestBrokenN2 is n1 and n3, then n2, with orders (4 partitions, R=1),
// where n2 fails whatever it runs: it gives every partition the assignor
// hands it back at once, with Avoid, and the leader plans after each step.
// It checks that n2 gives each partition back once (the assignor never
// hands it one it gave back, nor starts a move there), that it gets the
// next one after a give-back, and returns the settled result.
func avoidTestBrokenN2(t *testing.T) *fsmTestApplier {
	t.Helper()
	cfg := DefaultAssignorConfig()
	a := newFSMTestApplier(t)
	a.must(NodeUp{ID: "n1", Incarnation: 1})
	a.must(NodeUp{ID: "n3", Incarnation: 3})
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 4, ReplicationFactor: 1}})
	assignTestSettle(t, a, cfg)
	a.must(NodeUp{ID: "n2", Incarnation: 2})
	var gave []int // partitions in the order n2 gave them back
	for range 100 {
		for _, p := range a.f.Assignment().ActiveOn("n2") {
			if slices.Contains(gave, p.Partition) {
				t.Fatalf("%s active on n2 again at epoch %d after n2 gave it back (%v)", p, p.Epoch, gave)
			}
			gave = append(gave, p.Partition)
			a.must(GiveBack{Node: "n2", Type: "orders", Partition: p.Partition, Epoch: p.Epoch, Reason: "keeps failing", Avoid: true})
		}
		changes := giveBackTestPlan(t, a)
		for _, ch := range changes {
			if slices.Contains(gave, ch.Partition) && (ch.Active == "n2" || ch.MovingTo == "n2") {
				t.Fatalf("n2 gave %s/%d back, and the assignor hands it back: %s", ch.Type, ch.Partition, ch)
			}
		}
		m := a.f.Assignment()
		if len(changes) == 0 && m.MovesInProgress() == 0 && len(m.ActiveOn("n2")) == 0 {
			if len(gave) != 4 {
				t.Fatalf("n2 gave back %v, want each of the 4 partitions once", gave)
			}
			return a
		}
		assignTestReportAll(a, 0)
	}
	t.Fatalf("no fixed point after 100 rounds; n2 gave back %v", gave)
	return nil
}

// A node that keeps failing the partitions it runs (a broken disk) does
// not have them flap: each partition it gives back with Avoid stays off it,
// balance still hands it the others in turn, and the cluster settles with
// it holding no active and no replica (n1 and n3 can hold them all).
func TestPlanAvoidNoFlapping(t *testing.T) {
	a := avoidTestBrokenN2(t)
	m := a.f.Assignment()
	if got := assignTestActives(m, "orders"); !reflect.DeepEqual(got, map[string]int{"n1": 2, "n3": 2}) {
		t.Fatalf("actives %v, want n1 and n3 two each", got)
	}
	for _, p := range m.Partitions() {
		other := map[string]string{"n1": "n3", "n3": "n1"}[p.Active]
		if !p.Avoids("n2", 2) || len(p.Replicas) != 1 || p.Replicas[0].Node != other {
			t.Fatalf("%s: active %s, replicas %v, avoids %v; want its replica on %s, avoiding n2", p, p.Active, p.Replicas, p.Avoid, other)
		}
	}
	// Settled: n2 holding none while n1 and n3 hold two each is balanced,
	// as every partition avoids n2.
	if changes := Plan(m, DefaultAssignorConfig()); len(changes) != 0 {
		t.Fatalf("a settled plan changes %v", changes)
	}
}

// Once the broken node restarts (its incarnation changes), the partitions
// no longer avoid it, and balance hands it its share again.
func TestPlanAvoidLiftedByRestart(t *testing.T) {
	a := avoidTestBrokenN2(t)
	a.must(NodeUp{ID: "n2", Incarnation: 4})
	for _, p := range a.f.Assignment().Partitions() {
		if p.Avoid != nil {
			t.Fatalf("%s still avoids %v after n2 restarted", p, p.Avoid)
		}
	}
	changes := Plan(a.f.Assignment(), DefaultAssignorConfig())
	if len(changes) == 0 || !slices.ContainsFunc(changes, func(ch Change) bool {
		return ch.MovingTo == "n2" && strings.Contains(ch.Reason, "balance: warm up n2")
	}) {
		t.Fatalf("changes %v: want a warm-up move to n2", changes)
	}
	assignTestSettle(t, a, DefaultAssignorConfig())
	if got := assignTestActives(a.f.Assignment(), "orders"); got["n2"] != 1 || got["n1"]+got["n3"] != 3 || got["n1"] > 2 || got["n3"] > 2 {
		t.Fatalf("actives %v after n2's restart, want one on n2", got)
	}
}

// With no other node alive, the partition runs on the node that avoids it
// (it must run somewhere); as soon as another node is alive, it moves there,
// and its replica goes to the avoided node only because no other can take it.
func TestPlanAvoidOnlyNodeAlive(t *testing.T) {
	a := giveBackTestOne(t, []string{"n1", "n2"}, 1)
	a.must(NodeDown{ID: "n2"})
	assignTestSettle(t, a, DefaultAssignorConfig())
	p := avoidTestPartition(a, 0)
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: 0, Epoch: p.Epoch, Reason: "keeps failing", Avoid: true})

	changes := giveBackTestPlan(t, a)
	want := Change{Type: "orders", Partition: 0, ExpectEpoch: p.Epoch, ExpectVersion: p.Version + 1,
		Active: "n1", Epoch: p.Epoch + 1,
		Reason: "n1 gave it back (keeps failing): restore on n1 again (no replica, no other node alive)"}
	if len(changes) != 1 || !reflect.DeepEqual(changes[0], want) {
		t.Fatalf("changes %v, want %v", changes, want)
	}
	if q := avoidTestPartition(a, 0); !q.Avoids("n1", 0) {
		t.Fatalf("%s does not avoid n1: %v", q, q.Avoid)
	}

	a.must(NodeUp{ID: "n2"}) // back, the same process: gossip had lost it
	q := avoidTestPartition(a, 0)
	changes = giveBackTestPlan(t, a)
	want = Change{Type: "orders", Partition: 0, ExpectEpoch: q.Epoch, ExpectVersion: q.Version,
		Active: "n2", Epoch: q.Epoch + 1, Replicas: []ReplicaPlacement{{Node: "n1"}},
		Reason: "active n1 gave the partition back for a fault of its own and has not restarted: restore on n2 (no replica); replica: place on n1"}
	if len(changes) != 1 || !reflect.DeepEqual(changes[0], want) {
		t.Fatalf("changes %v, want %v", changes, want)
	}
}

// avoidTestRestore returns an FSM test applier holding m (through a snapshot).
func avoidTestRestore(t *testing.T, m Model) *fsmTestApplier {
	t.Helper()
	a := newFSMTestApplier(t)
	if err := a.f.Restore(io.NopCloser(bytes.NewReader(fsmTestEncode(t, m)))); err != nil {
		t.Fatal(err)
	}
	a.index = m.Index
	return a
}

// A move in progress to a node the partition avoids (started while it
// avoided every alive node, say, before that node restarted) is cancelled,
// and its replica there, one too many, is dropped first.
func TestPlanAvoidCancelsMove(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	m := Model{
		Index: 10,
		Nodes: []NodeInfo{
			{ID: "n1", State: NodeAlive, Incarnation: 1},
			{ID: "n2", State: NodeAlive, Incarnation: 2},
			{ID: "n3", State: NodeAlive, Incarnation: 3},
		},
		Types: []TypeAssignment{{
			Type: ActorType{Name: "orders", Partitions: 1, ReplicationFactor: 1},
			Partitions: []PartitionAssignment{{
				Type: "orders", Active: "n1", Epoch: 3, ActiveIncarnation: 1, Version: 7,
				Replicas: []Replica{{Node: "n2", ReportedAt: at}, {Node: "n3", ReportedAt: at}},
				MovingTo: "n2",
				Avoid:    []AvoidNode{{Node: "n2", Incarnation: 2}},
			}},
		}},
	}
	a := avoidTestRestore(t, m)
	changes := giveBackTestPlan(t, a)
	want := Change{Type: "orders", ExpectEpoch: 3, ExpectVersion: 7, Active: "n1", Epoch: 3, ActiveIncarnation: 1,
		Replicas: []ReplicaPlacement{{Node: "n3"}},
		Reason:   "cancel move to n2: n2 gave the partition back for a fault of its own and has not restarted; replica: drop n2 (1 wanted)"}
	if len(changes) != 1 || !reflect.DeepEqual(changes[0], want) {
		t.Fatalf("changes %v, want %v", changes, want)
	}
}

// A partition given back for a fenced changelog (not the node's fault)
// gets its new replica on the node that gave it back rather than on a node
// it avoids, when those are the only ones left, even if the avoided one
// holds fewer replicas: the one that gave it back is the last choice but one.
func TestPlanAvoidPrefersGiverForReplica(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	a := avoidTestRestore(t, Model{
		Index: 10,
		Nodes: []NodeInfo{
			{ID: "n1", State: NodeAlive, Incarnation: 1},
			{ID: "n2", State: NodeAlive, Incarnation: 2},
			{ID: "n3", State: NodeAlive, Incarnation: 3},
			{ID: "n4", State: NodeAlive, Incarnation: 4},
		},
		Types: []TypeAssignment{{
			Type: ActorType{Name: "orders", Partitions: 2, ReplicationFactor: 2},
			Partitions: []PartitionAssignment{{
				Type: "orders", Active: "n1", Epoch: 2, ActiveIncarnation: 1, Version: 3,
				Replicas: []Replica{{Node: "n3", ReportedAt: at}, {Node: "n4", ReportedAt: at}},
				Avoid:    []AvoidNode{{Node: "n2", Incarnation: 2}},
			}, {
				Type: "orders", Partition: 1, Active: "n2", Epoch: 1, ActiveIncarnation: 2, Version: 1,
				Replicas: []Replica{{Node: "n1", ReportedAt: at}, {Node: "n3", ReportedAt: at}},
			}},
		}},
	})
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: 0, Epoch: 2, MinEpoch: 5, Reason: "fenced"})
	changes := giveBackTestPlan(t, a)
	want := Change{Type: "orders", ExpectEpoch: 2, ExpectVersion: 4, Active: "n3", Epoch: 6, ActiveIncarnation: 3,
		Replicas: []ReplicaPlacement{{Node: "n1"}, {Node: "n4"}},
		Reason:   "n1 gave it back (fenced): promote replica n3 (lag 0); replica: place on n1"}
	if len(changes) != 1 || !reflect.DeepEqual(changes[0], want) {
		t.Fatalf("changes %v, want %v", changes, want)
	}
}

// Replicas of a partition go to a node it avoids only when no other node
// can take one; when there are too many, that one is dropped first; and once
// another node can take it, it moves there (warmed up first).
func TestPlanAvoidReplicas(t *testing.T) {
	cfg := DefaultAssignorConfig()
	a := giveBackTestOne(t, []string{"n1", "n2", "n3"}, 2)
	p := avoidTestPartition(a, 0)
	a.must(GiveBack{Node: "n1", Type: "orders", Partition: 0, Epoch: p.Epoch, Reason: "keeps failing", Avoid: true})
	changes := giveBackTestPlan(t, a)
	if len(changes) != 1 || changes[0].Active != "n2" || !reflect.DeepEqual(replicaNodesOf(changes[0]), []string{"n1", "n3"}) {
		t.Fatalf("changes %v: want n2 promoted, replicas on n3 and (no other node can take one) n1", changes)
	}

	// One replica wanted: the one on n1, which the partition avoids, goes
	// (without the rule, n3's would: the same load and lag, the larger id).
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 1, ReplicationFactor: 1}})
	changes = giveBackTestPlan(t, a)
	if len(changes) != 1 || !reflect.DeepEqual(replicaNodesOf(changes[0]), []string{"n3"}) || changes[0].Reason != "replica: drop n1 (1 wanted)" {
		t.Fatalf("changes %v: want n1's replica dropped", changes)
	}
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 1, ReplicationFactor: 2}})
	changes = giveBackTestPlan(t, a)
	if len(changes) != 1 || !reflect.DeepEqual(replicaNodesOf(changes[0]), []string{"n1", "n3"}) {
		t.Fatalf("changes %v: want a replica on n1 again, the only node left", changes)
	}

	// n4 joins: it warms up to replace the replica on n1, which then goes.
	a.must(NodeUp{ID: "n4"})
	changes = giveBackTestPlan(t, a)
	want := "replica: warm up n4 to replace n1: n1 gave the partition back for a fault of its own and has not restarted"
	if len(changes) != 1 || changes[0].Reason != want || !slices.Contains(changes[0].Replicas, ReplicaPlacement{Node: "n4", Replaces: "n1"}) {
		t.Fatalf("changes %v: want %q", changes, want)
	}
	assignTestSettle(t, a, cfg)
	if q := avoidTestPartition(a, 0); q.Active != "n2" || !reflect.DeepEqual(replicaNodes(q.Replicas), []string{"n3", "n4"}) {
		t.Fatalf("settled: active %s, replicas %v; want n2 with replicas on n3 and n4", q.Active, q.Replicas)
	}
}

// In a three-node cluster, a follower whose partitions keep failing gives
// back, for a fault of its own, each partition the assignor hands it: each
// once, since the assignor does not hand it one it gave back. The cluster
// settles with every node agreeing that it holds none, and stays so; after
// it restarts it gets its share again.
func TestClusterBrokenNodeIsAvoided(t *testing.T) {
	e := clusterTestNewEnv(t)
	e.mutate = func(c *Config) {
		c.Forward = e.forward
		c.GossipProfile = ProfileLAN // the restart stays well inside the failure detector's time
	}
	e.form()
	leader := e.leader(5 * time.Second)
	var broken *Cluster
	for _, c := range e.alive() {
		if c != leader {
			broken = c
			break
		}
	}
	id, inc := broken.ID(), broken.Incarnation()

	// broken gives back every partition it is active for, once at each epoch.
	var (
		mu      sync.Mutex
		gave    = map[partitionKey][]uint64{} // the epochs each was given back at
		stop    = make(chan struct{})
		stopped = make(chan struct{})
	)
	go func() {
		defer close(stopped)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			for _, p := range broken.Assignment().ActiveOnIncarnation(id, inc) {
				k := partitionKey{p.Type, p.Partition}
				mu.Lock()
				done := slices.Contains(gave[k], p.Epoch)
				mu.Unlock()
				if done || p.IsGivenBack() {
					continue
				}
				err := broken.GiveBack(ctx, GiveBack{Type: p.Type, Partition: p.Partition, Epoch: p.Epoch, Reason: "keeps failing", Avoid: true})
				if err == nil || errors.Is(err, ErrStale) {
					mu.Lock()
					gave[k] = append(gave[k], p.Epoch)
					mu.Unlock()
				}
			}
		}
	}()
	start := time.Now()
	testkit.WaitFor(t, 15*time.Second, "every partition avoiding the broken node", func() bool {
		for _, p := range leader.Assignment().Partitions() {
			if !p.Avoids(id, inc) {
				return false
			}
		}
		return true
	})
	m := e.settled(15*time.Second, "the broken node given its partitions back")
	for _, p := range m.Partitions() {
		if !p.Avoids(id, inc) || p.Active == id {
			t.Fatalf("%s settled on %s avoiding %v; want it off %s, avoiding it", p, p.Active, p.Avoid, id)
		}
	}
	t.Logf("%s gave back its partitions, settled in %s", id, time.Since(start).Round(time.Millisecond))

	// Nothing moves any more: no active or epoch changes on the leader for
	// half a second (a partition handed to broken would be given back).
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if q, err := leader.Wait(ctx, func(q Model) bool {
		return !slices.EqualFunc(q.Partitions(), m.Partitions(), func(a, b PartitionAssignment) bool {
			return a.Active == b.Active && a.Epoch == b.Epoch
		})
	}); err == nil {
		t.Fatalf("the settled assignment changed: %v -> %v", clusterTestActives(m), clusterTestActives(q))
	}
	close(stop)
	<-stopped
	mu.Lock()
	for k, epochs := range gave {
		if len(epochs) != 1 {
			t.Errorf("%s gave %s back %d times (epochs %v), want once", id, k, len(epochs), epochs)
		}
	}
	if len(gave) != clusterTestType.Partitions {
		t.Errorf("%s gave back %d partitions, want each of the %d once", id, len(gave), clusterTestType.Partitions)
	}
	mu.Unlock()

	// Restarted, broken is avoided no more, and gets its share again.
	restarted := e.restart(broken)
	m = e.settled(15*time.Second, "after the broken node restarted")
	for _, p := range m.Partitions() {
		if p.Avoid != nil {
			t.Fatalf("%s avoids %v after %s restarted", p, p.Avoid, id)
		}
	}
	if n := len(m.ActiveOn(restarted.ID())); n == 0 {
		t.Fatalf("restarted %s holds no active: %v", id, clusterTestActives(m))
	}
}

// A node that gives back its hot replica of a partition is avoided by that
// partition: the assignor moves the replica to another node, and cancels a
// move towards the node, until the node restarts. A give-back from a node
// that holds no replica of the partition is stale.
func TestFSMGiveBackReplica(t *testing.T) {
	g := GiveBackReplica{Node: "n1", Type: "orders", Partition: 3, Reason: "tail keeps failing"}
	b, err := EncodeCommand(g)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeCommand(b); err != nil || !reflect.DeepEqual(got, g) {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, g)
	}

	a := incTestCluster(t)
	giveBackTestPlan(t, a)
	var p PartitionAssignment
	var holder string
	// A partition active in zone b, with its replica in zone a: the other
	// node of zone a can take the replica without putting the partition in
	// one zone.
	for _, q := range a.f.Assignment().Partitions() {
		if q.Type == "orders" && q.Active == "n3" && len(q.Replicas) > 0 {
			p, holder = q, q.Replicas[0].Node
			break
		}
	}
	if holder == "" {
		t.Fatal("no orders partition is active on n3 with a replica")
	}
	if err := a.apply(GiveBackReplica{Node: p.Active, Type: "orders", Partition: p.Partition}); !errors.Is(err, ErrStale) {
		t.Fatalf("the active giving back a replica it does not hold: %v, want ErrStale", err)
	}
	a.must(GiveBackReplica{Node: holder, Type: "orders", Partition: p.Partition, Reason: "disk"})
	n, _ := a.f.Assignment().Node(holder)
	q := avoidTestPartition(a, p.Partition)
	if !q.Avoids(holder, n.Incarnation) || q.Version != p.Version+1 {
		t.Fatalf("after the give-back: %+v; want %s avoided at version %d", q, holder, p.Version+1)
	}
	mid := a.f.Assignment()
	a.must(GiveBackReplica{Node: holder, Type: "orders", Partition: p.Partition, Reason: "disk"})
	giveBackTestSameExceptIndex(t, mid, a.f.Assignment(), "a repeated replica give-back")

	// The assignor moves the replica off the node (three nodes: another can take it).
	assignTestSettle(t, a, DefaultAssignorConfig())
	q = avoidTestPartition(a, p.Partition)
	if slices.ContainsFunc(q.Replicas, func(r Replica) bool { return r.Node == holder }) || q.Active == holder || len(q.Replicas) == 0 {
		t.Fatalf("after planning: %s active %s, replicas %+v, avoid %v; want a replica on a node other than %s", q, q.Active, q.Replicas, q.Avoid, holder)
	}
}

// A replica warm-up towards a node that then gives its replica back is
// cancelled: the replica it was to replace stays, and the warm-up no
// longer holds a move budget.
func TestPlanCancelsReplicaWarmUpToAGivenBackNode(t *testing.T) {
	a := giveBackTestOne(t, []string{"n1", "n2", "n3"}, 1)
	p, _ := a.f.Assignment().Partition("orders", 0)
	old := p.Replicas[0].Node
	to := "n2"
	if old == "n2" {
		to = "n3"
	}
	a.must(Assign{Changes: []Change{{Type: "orders", Partition: 0, ExpectEpoch: p.Epoch, ExpectVersion: p.Version,
		Active: p.Active, Epoch: p.Epoch, ActiveIncarnation: p.ActiveIncarnation,
		Replicas: []ReplicaPlacement{{Node: old}, {Node: to, Replaces: old}}, Reason: "test: warm up " + to}}})
	a.must(GiveBackReplica{Node: to, Type: "orders", Partition: 0, Reason: "disk"})
	giveBackTestPlan(t, a)
	q, _ := a.f.Assignment().Partition("orders", 0)
	if len(q.Replicas) != 1 || q.Replicas[0].Node != old || q.Replicas[0].Replaces != "" || q.MovesInProgress() != 0 {
		t.Fatalf("after planning: replicas %+v, %d moves in progress; want only %s, no move", q.Replicas, q.MovesInProgress(), old)
	}
}
