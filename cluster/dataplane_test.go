package cluster

import (
	"context"
	"testing"
	"time"
)

// A node that loses its data plane (NATS) while its gossip and Raft are
// fine has its partitions failed over once it has been down for
// DataPlaneGrace, if another node's data plane is up; when every node's is
// down, nothing moves. Once its data plane is back, it takes work again.
func TestClusterDataPlaneDown(t *testing.T) {
	const grace = 500 * time.Millisecond
	e := clusterTestNewEnv(t)
	e.mutate = func(c *Config) { c.DataPlaneGrace = grace }
	e.form()
	leader := e.leader(5 * time.Second)
	before := e.settled(time.Second, "formed")

	// NATS away for every node: nothing moves.
	for _, c := range e.alive() {
		if err := c.SetDataPlaneDown(true); err != nil {
			t.Fatal(err)
		}
	}
	waitMembers(t, leader, func(mb Member) bool { return mb.Meta.DataPlaneDown })
	time.Sleep(3 * grace) // nothing to wait for: the assignment must stay as it is
	if m := leader.Assignment(); !sameActives(before, m) {
		t.Fatalf("partitions moved while every node's data plane was down: %v -> %v", clusterTestActives(before), clusterTestActives(m))
	}
	// NATS back: the nodes reconnect one after the other, within the
	// grace; the later ones are not taken for nodes cut off alone, however
	// long NATS was away.
	for _, c := range e.alive() {
		if err := c.SetDataPlaneDown(false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(grace / 4)
	}
	waitMembers(t, leader, func(mb Member) bool { return !mb.Meta.DataPlaneDown })
	time.Sleep(2 * grace) // nothing to wait for, again
	if m := leader.Assignment(); !sameActives(before, m) {
		t.Fatalf("partitions moved as the nodes reconnected to NATS: %v -> %v", clusterTestActives(before), clusterTestActives(m))
	}

	// The leader alone loses NATS (the hardest case: the assignor records
	// itself down): its actives fail over within the grace and a pass.
	victim := leader
	lost := before.ActiveOn(victim.ID())
	if len(lost) == 0 {
		t.Fatalf("%s holds no active", victim.ID())
	}
	start := time.Now()
	if err := victim.SetDataPlaneDown(true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := victim.Wait(ctx, func(m Model) bool {
		for _, old := range lost {
			if p, _ := m.Partition(old.Type, old.Partition); p.Active == victim.ID() || p.Epoch <= old.Epoch {
				return false
			}
		}
		n, _ := m.Node(victim.ID())
		return n.State == NodeDead
	}); err != nil {
		t.Fatalf("actives of %s, whose data plane is down, not failed over: %v", victim.ID(), err)
	}
	took := time.Since(start)
	t.Logf("data plane of %s down: its %d actives failed over in %v (grace %v)", victim.ID(), len(lost), took.Round(time.Millisecond), grace)
	if took < grace {
		t.Errorf("failed over after %v, within the grace of %v", took, grace)
	}
	e.markDown(victim)
	e.settled(10*time.Second, "without the node whose data plane is down")

	// Back: it is alive in the assignment again and takes its share.
	if err := victim.SetDataPlaneDown(false); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	delete(e.down, victim.ID())
	e.mu.Unlock()
	m := e.settled(15*time.Second, "data plane back")
	if len(m.ActiveOn(victim.ID())) == 0 {
		t.Fatalf("%s holds no active once its data plane is back", victim.ID())
	}
}

// waitMembers waits until every member c's gossip sees satisfies ok.
func waitMembers(t *testing.T, c *Cluster, ok func(Member) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		all := true
		for _, mb := range c.Members() {
			all = all && ok(mb)
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("members not as expected within 5 s: %+v", c.Members())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sameActives reports whether a and b place every partition's active on the
// same node at the same epoch.
func sameActives(a, b Model) bool {
	for _, p := range a.Partitions() {
		if q, _ := b.Partition(p.Type, p.Partition); q.Active != p.Active || q.Epoch != p.Epoch {
			return false
		}
	}
	return true
}
