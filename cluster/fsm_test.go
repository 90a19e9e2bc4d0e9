package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// fsmTestApplier applies commands to an FSM as Raft would, with increasing indexes.
type fsmTestApplier struct {
	t     testing.TB
	f     *FSM
	index uint64
}

func newFSMTestApplier(t testing.TB) *fsmTestApplier {
	return &fsmTestApplier{t: t, f: NewFSM()}
}

// apply applies cmd and returns the FSM's response.
func (a *fsmTestApplier) apply(cmd Command) error {
	a.t.Helper()
	b, err := EncodeCommand(cmd)
	if err != nil {
		a.t.Fatalf("encode %T: %v", cmd, err)
	}
	return a.applyRaw(b)
}

func (a *fsmTestApplier) applyRaw(b []byte) error {
	a.index++
	resp := a.f.Apply(&raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: b})
	if resp == nil {
		return nil
	}
	err, ok := resp.(error)
	if !ok {
		a.t.Fatalf("Apply returned %T, want nil or error", resp)
	}
	return err
}

// must applies cmd and fails the test if the FSM refuses it.
func (a *fsmTestApplier) must(cmd Command) {
	a.t.Helper()
	if err := a.apply(cmd); err != nil {
		a.t.Fatalf("apply %T: %v", cmd, err)
	}
}

// fsmTestCluster is three alive nodes in two zones and actor type "orders"
// with 4 partitions and one replica each.
func fsmTestCluster(t testing.TB) *fsmTestApplier {
	a := newFSMTestApplier(t)
	a.must(NodeUp{ID: "n1", Zone: "a", RaftAddr: "127.0.0.1:7001", HTTPAddr: "127.0.0.1:8001"})
	a.must(NodeUp{ID: "n2", Zone: "a"})
	a.must(NodeUp{ID: "n3", Zone: "b"})
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 4, ReplicationFactor: 1}})
	return a
}

func TestFSMRegisterTypeAndNodes(t *testing.T) {
	a := fsmTestCluster(t)
	a.must(RegisterType{Type: ActorType{Name: "billing", Partitions: 2}})
	m := a.f.Assignment()
	if m.Index != a.index {
		t.Fatalf("Index = %d, want %d", m.Index, a.index)
	}
	if len(m.Types) != 2 || m.Types[0].Type.Name != "billing" || m.Types[1].Type.Name != "orders" {
		t.Fatalf("types not sorted by name: %+v", m.Types)
	}
	if p, ok := m.Partition("orders", 3); !ok || p.Active != "" || p.Epoch != 0 || p.Partition != 3 {
		t.Fatalf("orders/3 = %+v, %v; want unassigned at epoch 0", p, ok)
	}
	if n, ok := m.Node("n1"); !ok || n.Zone != "a" || n.RaftAddr != "127.0.0.1:7001" || !n.Alive() {
		t.Fatalf("n1 = %+v", n)
	}

	// Re-registering with another replication factor updates it; another
	// partition count is refused.
	a.must(RegisterType{Type: ActorType{Name: "orders", Partitions: 4, ReplicationFactor: 2}})
	if typ, _ := a.f.Assignment().ActorType("orders"); typ.ReplicationFactor != 2 {
		t.Fatalf("replication factor = %d, want 2", typ.ReplicationFactor)
	}
	if err := a.apply(RegisterType{Type: ActorType{Name: "orders", Partitions: 8}}); !errors.Is(err, ErrTypeConflict) {
		t.Fatalf("re-register with 8 partitions: %v, want ErrTypeConflict", err)
	}

	a.must(NodeDown{ID: "n2"})
	a.must(NodeLeave{ID: "n3"})
	m = a.f.Assignment()
	if n, _ := m.Node("n2"); n.State != NodeDead {
		t.Fatalf("n2 state = %s, want dead", n.State)
	}
	if n, _ := m.Node("n3"); n.State != NodeLeft {
		t.Fatalf("n3 state = %s, want left", n.State)
	}
	if alive := m.AliveNodes(); len(alive) != 1 || alive[0].ID != "n1" {
		t.Fatalf("alive = %+v, want n1", alive)
	}
	if err := a.apply(NodeDown{ID: "n9"}); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("down of an unknown node: %v, want ErrUnknownNode", err)
	}
	a.must(NodeUp{ID: "n2", Zone: "c"}) // back, in another zone
	if n, _ := a.f.Assignment().Node("n2"); !n.Alive() || n.Zone != "c" {
		t.Fatalf("n2 = %+v, want alive in zone c", n)
	}

	// A gone node is forgotten only once nothing is placed on it.
	a.must(Assign{Changes: []Change{{Type: "orders", Partition: 0, Active: "n1", Epoch: 1, Replicas: []ReplicaPlacement{{Node: "n2"}}}}})
	a.must(NodeDown{ID: "n2"})
	if err := a.apply(ForgetNode{ID: "n2"}); !errors.Is(err, ErrStale) {
		t.Fatalf("forget a node holding a replica: %v, want ErrStale", err)
	}
	if err := a.apply(ForgetNode{ID: "n1"}); !errors.Is(err, ErrStale) {
		t.Fatalf("forget an alive node: %v, want ErrStale", err)
	}
	a.must(ForgetNode{ID: "n3"})
	if _, ok := a.f.Assignment().Node("n3"); ok {
		t.Fatal("n3 still known after ForgetNode")
	}
}

func TestFSMAssignCompareAndSet(t *testing.T) {
	a := fsmTestCluster(t)
	first := Change{Type: "orders", Partition: 1, Active: "n1", Epoch: 1, Replicas: []ReplicaPlacement{{Node: "n3"}}}
	a.must(Assign{Changes: []Change{first}})
	p, _ := a.f.Assignment().Partition("orders", 1)
	if p.Active != "n1" || p.Epoch != 1 || p.Version != 1 || len(p.Replicas) != 1 || p.Replicas[0].Node != "n3" {
		t.Fatalf("orders/1 = %+v", p)
	}

	// A new leader moves the active to n3 (epoch 2).
	a.must(Assign{Changes: []Change{{Type: "orders", Partition: 1, ExpectEpoch: 1, ExpectVersion: 1,
		Active: "n3", Epoch: 2, Replicas: []ReplicaPlacement{{Node: "n1"}}}}})

	// The old leader's delayed commands, planned at epoch 1 or version 1, must not land.
	for _, stale := range []Change{
		{Type: "orders", Partition: 1, ExpectEpoch: 1, ExpectVersion: 1, Active: "n2", Epoch: 2},
		{Type: "orders", Partition: 1, ExpectEpoch: 2, ExpectVersion: 1, Active: "n3", Epoch: 2}, // same epoch, older version
		{Type: "orders", Partition: 1, Active: "n2", Epoch: 1},                                   // the very first placement again
	} {
		if err := a.apply(Assign{Changes: []Change{stale}}); !errors.Is(err, ErrStale) {
			t.Fatalf("stale %+v: %v, want ErrStale", stale, err)
		}
	}
	if p, _ := a.f.Assignment().Partition("orders", 1); p.Active != "n3" || p.Epoch != 2 || p.Version != 2 {
		t.Fatalf("orders/1 = %+v after stale commands, want n3 at epoch 2 version 2", p)
	}

	// Changes against the current epoch and version that break the rules.
	bad := func(active string, epoch uint64, movingTo string, replicas ...ReplicaPlacement) Change {
		return Change{Type: "orders", Partition: 1, ExpectEpoch: 2, ExpectVersion: 2,
			Active: active, Epoch: epoch, MovingTo: movingTo, Replicas: replicas}
	}
	unknownType, noPartition := bad("n3", 2, ""), bad("n3", 2, "")
	unknownType.Type, noPartition.Partition = "nope", 4
	for _, tc := range []struct {
		name string
		ch   Change
		want error
	}{
		{"epoch not bumped", bad("n1", 2, ""), ErrInvalidCommand},
		{"epoch bumped twice", bad("n1", 4, ""), ErrInvalidCommand},
		{"epoch bumped, no move", bad("n3", 3, ""), ErrInvalidCommand},
		{"replica on active", bad("n3", 2, "", ReplicaPlacement{Node: "n3"}), ErrInvalidCommand},
		{"replica twice", bad("n3", 2, "", ReplicaPlacement{Node: "n1"}, ReplicaPlacement{Node: "n1"}), ErrInvalidCommand},
		{"moving to no replica", bad("n3", 2, "n1"), ErrInvalidCommand},
		{"replaces no replica", bad("n3", 2, "", ReplicaPlacement{Node: "n1", Replaces: "n2"}), ErrInvalidCommand},
		{"no active", bad("", 3, ""), ErrInvalidCommand},
		{"unknown type", unknownType, ErrInvalidCommand},
		{"no such partition", noPartition, ErrInvalidCommand},
		{"active on unknown node", bad("n9", 3, ""), ErrStale},
	} {
		if err := a.apply(Assign{Changes: []Change{tc.ch}}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	// A batch applies all or nothing: a change to a node gone since planning
	// rejects the whole batch.
	a.must(NodeDown{ID: "n2"})
	batch := []Change{
		{Type: "orders", Partition: 0, Active: "n1", Epoch: 1},
		{Type: "orders", Partition: 2, Active: "n2", Epoch: 1},
	}
	if err := a.apply(Assign{Changes: batch}); !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "n2 is dead") {
		t.Fatalf("batch with a dead node: %v, want ErrStale naming n2", err)
	}
	if p, _ := a.f.Assignment().Partition("orders", 0); p.Active != "" {
		t.Fatalf("orders/0 = %+v: part of a rejected batch was applied", p)
	}
	if err := a.apply(Assign{Changes: []Change{batch[0], batch[0]}}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("a partition twice in a batch: %v, want ErrInvalidCommand", err)
	}
}

func TestFSMReportLag(t *testing.T) {
	a := fsmTestCluster(t)
	a.must(Assign{Changes: []Change{{Type: "orders", Partition: 0, Active: "n1", Epoch: 1,
		Replicas: []ReplicaPlacement{{Node: "n2"}, {Node: "n3"}}}}})
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	a.must(ReportLag{Node: "n2", At: t0, Lags: []LagReport{
		{Type: "orders", Partition: 0, Records: 12, Behind: 30 * time.Millisecond},
		{Type: "orders", Partition: 1, Records: 1}, // no replica there: ignored
		{Type: "nope", Partition: 0, Records: 1},   // no such type: ignored
	}})
	a.must(ReportLag{Node: "n2", At: t0.Add(-time.Second), Lags: []LagReport{{Type: "orders", Partition: 0, Records: 99}}}) // older: ignored
	p, _ := a.f.Assignment().Partition("orders", 0)
	r, _ := p.Replica("n2")
	if r.Lag != 12 || r.Behind != 30*time.Millisecond || !r.ReportedAt.Equal(t0) || !r.LagKnown() {
		t.Fatalf("n2 replica = %+v, want lag 12 reported at %s", r, t0)
	}
	if r, _ := p.Replica("n3"); r.LagKnown() {
		t.Fatalf("n3 replica = %+v, want no lag reported", r)
	}
	if p2, _ := a.f.Assignment().Partition("orders", 1); len(p2.Replicas) != 0 {
		t.Fatalf("orders/1 got replicas from a lag report: %+v", p2)
	}

	// An Assign keeps the lag of replicas that stay; a new replica starts unknown.
	a.must(Assign{Changes: []Change{{Type: "orders", Partition: 0, ExpectEpoch: 1, ExpectVersion: 1, Active: "n1", Epoch: 1,
		Replicas: []ReplicaPlacement{{Node: "n2"}}}}})
	a.must(NodeUp{ID: "n4"})
	a.must(Assign{Changes: []Change{{Type: "orders", Partition: 0, ExpectEpoch: 1, ExpectVersion: 2, Active: "n1", Epoch: 1,
		Replicas: []ReplicaPlacement{{Node: "n2"}, {Node: "n4"}}, MovingTo: "n4"}}})
	p, _ = a.f.Assignment().Partition("orders", 0)
	if r, _ := p.Replica("n2"); r.Lag != 12 {
		t.Fatalf("n2 replica = %+v after Assign, want its lag kept", r)
	}
	if r, _ := p.Replica("n4"); r.LagKnown() || p.MovingTo != "n4" {
		t.Fatalf("orders/0 = %+v, want a fresh n4 replica being moved to", p)
	}
	if a.f.Assignment().MovesInProgress() != 1 {
		t.Fatal("MovesInProgress != 1")
	}
}

func TestFSMMalformedCommands(t *testing.T) {
	a := fsmTestCluster(t)
	before := a.f.Assignment()
	for name, b := range map[string][]byte{
		"empty":        nil,
		"unknown type": {0xee, 0x80},
		"not msgpack":  {byte(CommandAssign), 0xc1},
		"wrong shape":  append([]byte{byte(CommandNodeUp)}, 0x93, 1, 2, 3),
		"invalid":      append([]byte{byte(CommandNodeUp)}, 0x80), // decodes to an empty id
	} {
		err := a.applyRaw(b)
		if !errors.Is(err, ErrMalformedCommand) && !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: %v, want ErrMalformedCommand or ErrInvalidCommand", name, err)
		}
	}
	after := a.f.Assignment()
	if after.Index != a.index {
		t.Fatalf("Index = %d, want %d: refused commands are applied too", after.Index, a.index)
	}
	after.Index = before.Index
	if !bytes.Equal(fsmTestEncode(t, before), fsmTestEncode(t, after)) {
		t.Fatal("a refused command changed the assignment")
	}
	if _, err := EncodeCommand(NodeUp{}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("encode NodeUp without id: %v, want ErrInvalidCommand", err)
	}
}

func fsmTestEncode(t testing.TB, m Model) []byte {
	t.Helper()
	b, err := encodeSnapshot(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fsmTestSnapshot runs a snapshot through raft's in-memory snapshot store and
// restores it into a new FSM.
func fsmTestSnapshot(t testing.TB, f *FSM) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	store := raft.NewInmemSnapshotStore()
	sink, err := store.Create(raft.SnapshotVersionMax, f.Assignment().Index, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	_, rc, err := store.Open(sink.ID())
	if err != nil {
		t.Fatal(err)
	}
	g := NewFSM()
	if err := g.Restore(rc); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestFSMSnapshotRestore(t *testing.T) {
	a := fsmTestCluster(t)
	a.must(RegisterType{Type: ActorType{Name: "billing", Partitions: 2, ReplicationFactor: 2}})
	for _, ch := range Plan(a.f.Assignment(), DefaultAssignorConfig()) {
		a.must(Assign{Changes: []Change{ch}})
	}
	a.must(ReportLag{Node: "n3", At: time.Now(), Lags: []LagReport{{Type: "orders", Partition: 0, Records: 7, Behind: time.Second}}})
	a.must(NodeDown{ID: "n2"})

	g := fsmTestSnapshot(t, a.f)
	want, got := a.f.Assignment(), g.Assignment()
	if !bytes.Equal(fsmTestEncode(t, want), fsmTestEncode(t, got)) {
		t.Fatalf("restored assignment differs:\n got %+v\nwant %+v", got, want)
	}
	// Both go on identically: the restored FSM is the same state machine.
	b := &fsmTestApplier{t: t, f: g, index: a.index}
	for _, ch := range Plan(want, DefaultAssignorConfig()) {
		if err1, err2 := a.apply(Assign{Changes: []Change{ch}}), b.apply(Assign{Changes: []Change{ch}}); err1 != nil || err2 != nil {
			t.Fatalf("apply after restore: %v / %v", err1, err2)
		}
	}
	if !bytes.Equal(fsmTestEncode(t, a.f.Assignment()), fsmTestEncode(t, g.Assignment())) {
		t.Fatal("FSMs diverge after the same commands")
	}

	// Restore replaces the state and refuses what is not a snapshot.
	if err := g.Restore(io.NopCloser(strings.NewReader("nope"))); err == nil {
		t.Fatal("Restore accepted garbage")
	}
	empty := fsmTestSnapshot(t, NewFSM())
	if err := g.Restore(io.NopCloser(bytes.NewReader(fsmTestEncode(t, empty.Assignment())))); err != nil {
		t.Fatal(err)
	}
	if m := g.Assignment(); len(m.Nodes) != 0 || len(m.Types) != 0 {
		t.Fatalf("Restore kept old state: %+v", m)
	}
}

func TestFSMApplyBatch(t *testing.T) {
	f := NewFSM()
	enc := func(c Command) []byte {
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	resps := f.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogCommand, Data: enc(NodeUp{ID: "n1"})},
		{Index: 2, Type: raft.LogConfiguration},
		{Index: 3, Type: raft.LogCommand, Data: enc(NodeDown{ID: "n9"})},
		{Index: 4, Type: raft.LogCommand, Data: enc(RegisterType{Type: ActorType{Name: "t", Partitions: 1}})},
	})
	if len(resps) != 4 || resps[0] != nil || resps[1] != nil || resps[3] != nil {
		t.Fatalf("responses = %v", resps)
	}
	if err, _ := resps[2].(error); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("response 2 = %v, want ErrUnknownNode", resps[2])
	}
	if m := f.Assignment(); m.Index != 4 || len(m.Nodes) != 1 || len(m.Types) != 1 {
		t.Fatalf("after batch: %+v", m)
	}
}

func TestFSMSubscribe(t *testing.T) {
	a := fsmTestCluster(t)
	ch, cancel := a.f.Subscribe()
	expect := func(want bool, what string) {
		t.Helper()
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatalf("%s: channel closed", what)
			}
			if !want {
				t.Fatalf("%s: unexpected notification", what)
			}
		case <-time.After(20 * time.Millisecond):
			if want {
				t.Fatalf("%s: no notification", what)
			}
		}
	}
	expect(true, "initial")
	expect(false, "idle")

	a.must(NodeUp{ID: "n4"})
	a.must(NodeUp{ID: "n5"})
	expect(true, "two changes")
	expect(false, "coalesced")

	a.must(NodeUp{ID: "n4"}) // no change
	_ = a.apply(NodeDown{ID: "n9"})
	expect(false, "refused or no-op commands")

	// Readers on other goroutines race with Apply safely (go test -race).
	var wg sync.WaitGroup
	ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := a.f.Wait(ctx, func(m Model) bool { n, _ := m.Node("n8"); return n.Alive() }); err != nil {
			t.Errorf("Wait: %v", err)
		}
	}()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				m := a.f.Assignment()
				m.Nodes[0].Zone = "mutated" // a copy: must not reach the FSM
			}
		}()
	}
	for _, id := range []string{"n6", "n7", "n8"} {
		a.must(NodeUp{ID: id})
	}
	wg.Wait()
	if n, _ := a.f.Assignment().Node("n1"); n.Zone != "a" {
		t.Fatal("mutating a returned Model changed the FSM")
	}
	expect(true, "after concurrent changes")

	cancel()
	cancel() // idempotent
	if _, ok := <-ch; ok {
		t.Fatal("channel open after cancel")
	}
	a.must(NodeUp{ID: "n9"}) // no send on a closed channel

	if _, err := a.f.Wait(ctx, func(m Model) bool { return len(m.Nodes) == 9 }); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if _, err := a.f.Wait(short, func(Model) bool { return false }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want DeadlineExceeded", err)
	}
}

// The FSM under a real (single-node, in-memory) Raft with batched applies:
// responses reach the caller, snapshots restore.
func TestFSMUnderRaft(t *testing.T) {
	cfg := raft.DefaultConfig()
	cfg.LocalID = "n1"
	cfg.BatchApplyCh = true
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	cfg.LogOutput = io.Discard
	fsm := NewFSM()
	store := raft.NewInmemStore()
	snaps := raft.NewInmemSnapshotStore()
	addr, trans := raft.NewInmemTransport("")
	r, err := raft.NewRaft(cfg, fsm, store, store, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown()
	if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: "n1", Address: addr}}}).Error(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.LeaderCh():
	case <-time.After(5 * time.Second):
		t.Fatal("no leader after 5s")
	}
	apply := func(cmd Command) error {
		t.Helper()
		b, err := EncodeCommand(cmd)
		if err != nil {
			t.Fatal(err)
		}
		f := r.Apply(b, 5*time.Second)
		if err := f.Error(); err != nil {
			t.Fatal(err)
		}
		err, _ = f.Response().(error)
		return err
	}
	for _, cmd := range []Command{
		NodeUp{ID: "n1"}, NodeUp{ID: "n2"},
		RegisterType{Type: ActorType{Name: "orders", Partitions: 8, ReplicationFactor: 1}},
	} {
		if err := apply(cmd); err != nil {
			t.Fatal(err)
		}
	}
	plan := Plan(fsm.Assignment(), DefaultAssignorConfig())
	if err := apply(Assign{Changes: plan}); err != nil {
		t.Fatal(err)
	}
	if err := apply(Assign{Changes: plan}); !errors.Is(err, ErrStale) {
		t.Fatalf("the same plan twice: %v, want ErrStale", err)
	}
	if err := r.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	metas, err := snaps.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("snapshots %v, %v", metas, err)
	}
	_, rc, err := snaps.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	restored := NewFSM()
	if err := restored.Restore(rc); err != nil {
		t.Fatal(err)
	}
	if got, want := fsmTestEncode(t, restored.Assignment()), fsmTestEncode(t, fsm.Assignment()); !bytes.Equal(got, want) {
		t.Fatal("the snapshot Raft took does not restore the assignment")
	}
}
